"""Item records in a real Redis: the folded-count guard, the weight sets, and `persona recommend` reading them
with the list rules of the rule set in force."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from operators.co_occurrence import ItemSignal, RecommendRules
from operators.item_table import ItemTable, publications
from operators.rule_sets import next_rule_set
from persona.settings import ROOT
from state.item_store import ItemWriter, read_item
from state.keys import RedisKeys
from state.redis_client import connect
from state.rule_registry import publish

pytestmark = pytest.mark.integration
DAY = 86_400_000


@pytest.fixture(params=["server", "cluster"])
def store(request: pytest.FixtureRequest, redis_prefix: str) -> tuple[str, RedisKeys, list[str]]:
    """(url, keys, overrides) of one Redis server, or of a Redis Cluster (items in shards): the same expectations."""
    if request.param == "server":
        return request.getfixturevalue("redis_url"), RedisKeys(redis_prefix), []
    return request.getfixturevalue("redis_cluster").url, RedisKeys(redis_prefix, 64), ["redis.cluster=true"]


def test_an_older_item_state_never_overwrites_a_newer_one(store: tuple[str, RedisKeys, list[str]]) -> None:
    url, keys, _ = store
    rules = RecommendRules()
    client = connect(url, keys.clustered, decode_responses=True)
    writer, table = ItemWriter(client, keys), ItemTable(rules)
    first = table.fold([ItemSignal("a", "toys", "", 1.0, DAY), ItemSignal("b", "toys", "", 1.0, DAY)])
    older = list(publications(first.values(), rules))
    newer = table.fold([ItemSignal("a", "toys", "b", 2.0, 2 * DAY)])
    assert writer.publish(publications(newer.values(), rules)) == 1
    assert writer.publish(older) == 1            # a replay after a failover: "a" refused, "b" is new
    stored = read_item(client, keys, "a")
    assert stored is not None and stored["folded"] == 2 and stored["neighbours"] == [["b", 2.0]]
    # Weights as scores: "a" (1 at day 1) and "b" (1 at day 1) rank equal; the score is log2(1) + days.
    assert client.zscore(keys.item_weights("toys", "a"), "a") == pytest.approx(1 / 7)
    assert {item for key in keys.item_weight_keys() for item in client.zrange(key, 0, -1)} == {"a", "b"}
    client.script_flush()                         # a restarted Redis forgets its scripts: loaded again
    assert writer.publish(publications(table.fold([ItemSignal("b", "toys", "", 1.0, 3 * DAY)]).values(), rules)) == 1


def test_persona_recommend_reads_the_list_a_front_end_would(store: tuple[str, RedisKeys, list[str]]) -> None:
    url, keys, overrides = store
    rules = RecommendRules()
    client = connect(url, keys.clustered, decode_responses=True)
    table = ItemTable(rules)
    signals = [ItemSignal(i, "games" if i == "d" else "toys", "", w, DAY)
               for i, w in (("a", 1.0), ("b", 5.0), ("c", 3.0), ("d", 1.0))]
    signals += [ItemSignal("a", "toys", "c", 3.0, DAY), ItemSignal("c", "toys", "a", 3.0, DAY)]
    ItemWriter(client, keys).publish(publications(table.fold(signals).values(), rules))
    client.hset(keys.profile("u1"), mapping={"last_event_time": str(DAY), "cart_products": json.dumps(["b"]),
                                            "recent_items": json.dumps([["a", "toys", 1.0, DAY]])})

    def ask(user: str) -> dict:  # type: ignore[type-arg]
        out = subprocess.run([sys.executable, "-m", "persona.cli", "recommend", user, "--json",
                              "--set", f"redis.url={url}", "--set", f"redis.key_prefix={keys.prefix}",
                              *(a for o in overrides for a in ("--set", o))],
                             cwd=ROOT, capture_output=True, text=True, timeout=60, check=True)
        return json.loads(out.stdout)   # type: ignore[no-any-return]

    mine = ask("u1")
    # "c" is a's neighbour; "b" is in the cart and "a" is being viewed; "d" comes from the shop's best.
    assert mine["known"] and mine["as_of"] == DAY and [x["item"] for x in mine["items"]] == ["c", "d"]
    stranger = ask("nobody")
    assert not stranger["known"] and [x["item"] for x in stranger["items"]] == ["b", "c", "a", "d"]
    assert stranger["rules_version"] == 0

    # A rule set in force: no "games" (d's category, read from its item hash), and a tenfold boost for "a".
    source = (ROOT / "conf" / "patterns.yaml").read_text()
    ruled = source + "\nrecommend: {exclude: {categories: [games]}, boost: {items: {a: 10}}}\n"
    v1 = publish(client, keys, lambda newest: next_rule_set(newest, ruled, "test", 1))
    mine, stranger = ask("u1"), ask("nobody")
    assert [x["item"] for x in mine["items"]] == ["c"] and mine["rules_version"] == v1.version
    # The shop's best by weight, relative to b's 5: a 1/5 * 10 = 2, b 1, c 3/5; d excluded.
    assert [x["item"] for x in stranger["items"]] == ["a", "b", "c"]
    assert [x["score"] for x in stranger["items"]][0] == pytest.approx(10 * stranger["items"][1]["score"] / 5)
    # Rolled back: the previous source published again, and the lists are the plain ones.
    v2 = publish(client, keys, lambda newest: next_rule_set(newest, source, "test", 2, rollback_of=v1.version))
    assert [x["item"] for x in ask("nobody")["items"]] == ["b", "c", "a", "d"] and ask("u1")["rules_version"] == v2.version
