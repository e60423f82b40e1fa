"""Triggers that carry the user's personal list (a pattern's ``include_list``): filled by the runner when the
trigger is sent, from the lookup the driver gives it, under the rule set's list rules; a failed lookup never holds
the trigger back."""

from __future__ import annotations

import json
from typing import Any

import pytest
import yaml

from operators.config_files import ConfigError
from operators.list_rules import ListRules
from operators.pattern_spec import compile_patterns
from operators.personalize import DEFAULT_MODEL_RULES, Personalizer
from operators.profile_fold import ProfileRules
from operators.runner import TRIGGER, TRIGGER_LIST_ERRORS, Record, Runner
from persona.settings import ROOT
from state.user_state import UserState
from state.user_timers import UserTimers
from tests.unit.test_runner import CART, MIN, T0, _raw

LISTED = [("p7", 0.9), ("p8", 0.5), ("p9", 0.1)]


def _book(include_list: int | None, recommend: dict[str, Any] | None = None) -> Any:
    doc = yaml.safe_load((ROOT / "conf" / "patterns.yaml").read_text())
    if include_list is not None:
        doc["patterns"]["cart_abandonment"]["include_list"] = include_list
    if recommend is not None:
        doc["recommend"] = recommend
    return compile_patterns(doc, "test")


def _abandon(runner: Runner) -> tuple[list[dict[str, Any]], Any]:
    timers, store = UserTimers(), {}
    out = runner.on_batch([Record("u1", _raw("add_to_cart", CART, "e1", T0))], timers, store.get, None)
    store.update(out.dirty)
    fired = runner.on_watermark(T0 + 30 * MIN, timers, store.get, None)
    return [json.loads(v) for kind, _, v in fired.emitted() if kind == TRIGGER and v], fired


def test_the_trigger_carries_the_first_n_items_of_the_list_as_of_its_send_time() -> None:
    asked: list[tuple[UserState, int, ListRules]] = []

    def lists(state: UserState, now: int, rules: ListRules) -> list[tuple[str, float]]:
        asked.append((state, now, rules))
        return LISTED

    book = _book(2, {"exclude": {"categories": ["alcohol"]}})
    runner = Runner(Personalizer(ProfileRules(), DEFAULT_MODEL_RULES, book, segments=5), trigger_lists=lists)
    triggers, _ = _abandon(runner)
    assert [(t["pattern"], t["alternatives"]) for t in triggers] == [("cart_abandonment", ["p7", "p8"])]
    state, now, rules = asked[0]
    # The lookup sees the user's state (their cart, to leave out), the send time, and the rule set's list rules.
    assert set(state.cart) == {"p1"} and now == T0 + 30 * MIN and rules.excluded_categories == {"alcohol"}


def test_a_pattern_without_include_list_never_asks_for_a_list() -> None:
    def lists(state: UserState, now: int, rules: ListRules) -> list[tuple[str, float]]:
        raise AssertionError("asked")

    runner = Runner(Personalizer(ProfileRules(), DEFAULT_MODEL_RULES, _book(None), segments=5), trigger_lists=lists)
    triggers, fired = _abandon(runner)
    assert len(triggers) == 1 and "alternatives" not in triggers[0] and not fired.errors


def test_a_failed_lookup_sends_the_trigger_without_its_list_and_counts_it() -> None:
    def lists(state: UserState, now: int, rules: ListRules) -> list[tuple[str, float]]:
        raise TimeoutError("redis did not answer")

    runner = Runner(Personalizer(ProfileRules(), DEFAULT_MODEL_RULES, _book(3), segments=5), trigger_lists=lists)
    triggers, fired = _abandon(runner)
    assert len(triggers) == 1 and "alternatives" not in triggers[0]
    assert fired.counts[TRIGGER_LIST_ERRORS] == 1 and "TimeoutError: redis did not answer" in fired.errors[0]


@pytest.mark.parametrize("value", [0, 21, "3", True])
def test_include_list_is_a_small_positive_integer(value: Any) -> None:
    with pytest.raises(ConfigError, match=r"test: patterns.cart_abandonment.include_list: expected an integer 1..20"):
        _book(value)
