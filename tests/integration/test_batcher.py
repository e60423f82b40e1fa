"""The Java batching operator (docker/jars/batcher) on the embedded mini-cluster: every record once, in order per
shard, batches no larger than asked, and each batch's users in the shard Python computes for them."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from pyflink.common import Instant, Row, Types
from pyflink.datastream import DataStream
from pyflink.util.java_utils import load_java_class

from jobs.runtime import make_environment
from operators.runner import Record, decode_batch
from operators.shards import shard_of
from persona.settings import load_job_settings

SHARDS, MAX_RECORDS = 16, 64
T0 = 1_793_620_800_000

pytestmark = pytest.mark.integration   # a JVM: not in the fast tier


def test_batches_hold_every_record_once_in_order_per_shard(connector_jars: list[Path]) -> None:
    # The job's own environment (thread mode, this interpreter, the jars): the Python map below runs as in the job.
    settings = load_job_settings({"flink.parallelism": 2, "flink.checkpoint_interval_ms": 0, "flink.prometheus": False})
    assert set(settings.flink.connector_jars()) == set(connector_jars)
    env, _ = make_environment(settings.flink, "local")
    record_type = Types.ROW([Types.PRIMITIVE_ARRAY(Types.BYTE()), Types.STRING(), Types.INT(), Types.LONG(),
                             Types.INSTANT(), Types.BOOLEAN()])
    users = [f"u{i % 37}" if i % 11 else "Ωmega😀" for i in range(3_000)]
    rows = [Row(u, Row(f'{{"n":{i}}}'.encode(), "shop.events", i % 2, i, Instant.of_epoch_milli(T0 + i), i % 5 != 0)) for i, u in enumerate(users)]
    source = env.from_collection(rows, type_info=Types.ROW([Types.STRING(), record_type])).set_parallelism(1)
    key_type = Types.ROW([Types.INT()]).get_java_type_info()
    shard_key = load_java_class("io.streampersona.batch.ShardKey").newInstance().configure(SHARDS)
    batcher = load_java_class("io.streampersona.batch.BatchByShard").newInstance().configure(SHARDS, MAX_RECORDS, 50)
    batch_type = Types.ROW([Types.INT(), Types.PRIMITIVE_ARRAY(Types.BYTE())])
    j_batches = source._j_data_stream.keyBy(shard_key, key_type).transform(
        "batch-by-shard", batch_type.get_java_type_info(), batcher)
    # Decoded by a Python map, in thread mode as in the job (the client's collect turns bytes >= 128 into errors).
    summaries = DataStream(j_batches).map(
        lambda b: json.dumps([b[0], [[r.user_key, r.raw.decode(), *r[2:]] for r in decode_batch(b[1])]]),
        output_type=Types.STRING())
    batches = [json.loads(s) for s in summaries.execute_and_collect()]

    seen: list[int] = []
    per_user: dict[str, list[int]] = {}
    for shard, summary in batches:
        records = [Record(user, raw.encode(), *rest) for user, raw, *rest in summary]
        assert 0 < len(records) <= MAX_RECORDS
        for r in records:
            assert shard_of(r.user_key or "", SHARDS) == shard   # Java's ShardKey and operators/shards.py agree
            assert (r.topic, r.partition, r.trusted) == ("shop.events", r.offset % 2, r.offset % 5 != 0)
            assert r.timestamp_ms == T0 + r.offset
            assert r.raw == f'{{"n":{r.offset}}}'.encode()
            seen.append(r.offset)
            per_user.setdefault(r.user_key or "", []).append(r.offset)
    assert sorted(seen) == list(range(len(rows)))
    assert all(offsets == sorted(offsets) for offsets in per_user.values())
    assert len(batches) < len(rows) / 10   # batched, not one per record


def test_arrays_of_one_shard_are_joined_in_order(connector_jars: list[Path]) -> None:
    """``ConcatByShard`` (the item operator's input): the elements of every array once, in arrival order per shard,
    whatever the array's header size (fixarray, array 16, array 32), and no empty array passed on."""
    import msgspec

    settings = load_job_settings({"flink.parallelism": 1, "flink.checkpoint_interval_ms": 0, "flink.prometheus": False})
    env, _ = make_environment(settings.flink, "local")
    sizes = [0, 1, 3, 15, 16, 17, 200, 70_000, 2, 5]
    rows, n = [], 0
    for i, size in enumerate(sizes * 3):
        rows.append(Row(i % 3, msgspec.msgpack.encode([[i % 3, n + k] for k in range(size)])))
        n += size
    row_type = Types.ROW([Types.INT(), Types.PRIMITIVE_ARRAY(Types.BYTE())])
    source = env.from_collection(rows, type_info=row_type).set_parallelism(1)
    key_type = Types.ROW([Types.INT()]).get_java_type_info()
    from pyflink.java_gateway import get_gateway
    joiner = load_java_class("io.streampersona.batch.ConcatByShard").newInstance().configure(100_000, 50)
    j_joined = source._j_data_stream.keyBy(get_gateway().jvm.KeyByKeySelector(), key_type).transform(
        "concat-by-shard", row_type.get_java_type_info(), joiner)
    summaries = DataStream(j_joined).map(lambda b: json.dumps([b[0], msgspec.msgpack.decode(b[1])]),
                                         output_type=Types.STRING())
    joined = [json.loads(s) for s in summaries.execute_and_collect()]
    per_shard: dict[int, list[int]] = {}
    for shard, elements in joined:
        assert elements and all(e[0] == shard for e in elements)
        per_shard.setdefault(shard, []).extend(e[1] for e in elements)
    want: dict[int, list[int]] = {}
    for row in rows:
        want.setdefault(row[0], []).extend(e[1] for e in msgspec.msgpack.decode(row[1]))
    assert per_shard == {s: v for s, v in want.items() if v}
    assert len(joined) < len(rows) / 3   # joined, not passed on one by one


def _event_seconds(text: str) -> int:
    """The oracle: Python's own reading of an RFC 3339 time, without its fraction, in epoch seconds."""
    from datetime import datetime
    return int(datetime.fromisoformat(re.sub(r"\.[0-9]+", "", text.upper()).replace("Z", "+00:00")).timestamp())


def test_the_time_skew_function_reads_the_contracts_event_time(connector_jars: list[Path]) -> None:
    """EventTimeSkew (jobs/kafka_io.py ``_trusted_timestamp``): |event_time - Kafka timestamp| in whole seconds, or
    Long.MAX_VALUE when the record carries no event_time that reads as the contract's RFC 3339."""
    from jobs.kafka_io import TIME_SKEW_FUNCTION

    settings = load_job_settings({"flink.parallelism": 1, "flink.checkpoint_interval_ms": 0, "flink.prometheus": False})
    _, t_env = make_environment(settings.flink, "local")
    t_env.create_java_temporary_system_function(*TIME_SKEW_FUNCTION)
    unreadable = 2**63 - 1
    ts = T0 + 999   # 12:00:00.999 UTC: the Kafka timestamp counts floored, the event time without its fraction
    cases = [   # (record, expected)
        ('{"event_time":"2026-11-02T12:00:00Z"}', 0),
        ('{"event_time" :\t "2026-11-02t13:00:00.123456789+01:00"}', 0),   # a fraction, lower case, an offset
        ('{"event_time":"2026-11-02T07:30:00-04:30","user_id":"u"}', 0),
        ('{"event_time":"2026-11-02T13:00:05Z"}', 3605),
        ('{"event_time":"2026-11-02T11:59:00.5z"}', 60),
        ('{"event_time":123,"payload":{"event_time":"2026-11-02T12:00:07Z"}}', 7),   # the first string member
        ('{"payload":{"event_time":"2026-11-01T12:00:00Z"},"event_time":"2026-11-02T12:00:00Z"}', 86_400),
        ('{"event_time":"2026-11-31T12:00:00Z"}', unreadable),   # no 31 November (SimpleDateFormat said 1 December)
        ('{"event_time":"2026-11-02T24:00:00Z"}', unreadable),
        ('{"event_time":"2026-11-02T12:00:00"}', unreadable),    # no offset: 19 characters
        ('{"event_time":"2026-11-02T12:00:00+0100"}', unreadable),
        ('{"event_time":"2026-11-02T12:00:00.Z"}', unreadable),
        ('{"event_time":"2026-11-02T12:00:00.' + "1" * 20 + 'Z"}', unreadable),   # 41 characters
        ('{"event_time":"2026-11-02 12:00:00Z"}', unreadable),
        ('{"user_id":"u"}', unreadable),
        ('not json \u00e9\u00e8 "event_time":', unreadable),
    ]
    values = ", ".join(f"('{record.replace(chr(39), chr(39) * 2)}', {i})" for i, (record, _) in enumerate(cases))
    query = (f"SELECT i, {TIME_SKEW_FUNCTION[0]}(CAST(r AS BYTES), TO_TIMESTAMP_LTZ({ts}, 3)), "
             f"{TIME_SKEW_FUNCTION[0]}(CAST(NULL AS BYTES), TO_TIMESTAMP_LTZ({ts}, 3)) FROM (VALUES {values}) AS t(r, i)")
    with t_env.execute_sql(query).collect() as rows:
        got = {row[0]: (row[1], row[2]) for row in rows}
    assert {i: skew for i, (skew, _) in got.items()} == {i: expected for i, (_, expected) in enumerate(cases)}
    assert {none for _, none in got.values()} == {unreadable}   # a tombstone (no value)
    # The expected skews of the readable ones, by Python's own reading of the same texts.
    for record, expected in cases[:5]:
        text = record.split('"event_time"')[1].split('"')[1]
        assert abs(_event_seconds(text) - ts // 1000) == expected
