"""The job's view of what the trainer and the operators publish in Redis: served models, rule sets, experiment
tallies (docs/models.md, "Rules at runtime", "Experiments").

Read by processing time and by events seen, not as a second Flink input on purpose: a connected stream's
watermark would either hold event time back or, once the events go idle, push it forward and fire every
pattern and label timer early.
"""

from __future__ import annotations

import json
import logging
import time

import redis

from operators.model_scoring import ServedModels
from operators.online_models import MODEL_SCHEMA
from operators.personalize import Personalizer
from operators.rule_sets import book_of
from persona.rules import check_book
from persona.settings import ConfigError
from state.keys import RedisKeys
from state.model_registry import kept_record, kept_versions
from state.rule_registry import current_version, record_applied, rule_set

log = logging.getLogger(__name__)


class ServedFollower:
    """Switches the core to newly published rule sets and refreshes its served models and experiment tallies."""

    def __init__(self, core: Personalizer, served: ServedModels, client: redis.Redis, keys: RedisKeys,
                 models_refresh_ms: int, models_refresh_events: int, rules_refresh_ms: int, allowed_lateness_ms: int,
                 subtask: tuple[int, int]) -> None:
        self.core, self.served, self._client, self._keys = core, served, client, keys
        self._models_s, self._events = models_refresh_ms / 1000, models_refresh_events
        self._rules_s, self._lateness = rules_refresh_ms / 1000, allowed_lateness_ms
        self._subtask = subtask
        self._next_models = 0.0
        self._until_models = 0
        self._next_rules = 0.0
        self._refused_rules = 0
        # Moved by the difference since the last call, for Flink's counters.
        self.counts: dict[tuple[str, ...], int] = {}

    def _count(self, path: tuple[str, ...], n: int = 1) -> None:
        self.counts[path] = self.counts.get(path, 0) + n

    def take_counts(self) -> dict[tuple[str, ...], int]:
        counts, self.counts = self.counts, {}
        return counts

    def after_events(self, events: int) -> None:
        """Every ``models.refresh_ms`` and every ``models.refresh_every_events``: in a catch-up replay one second holds
        hours of event time, and a model served that stale would score (and be judged on) old knowledge."""
        self._until_models -= events
        now = time.monotonic()
        if now >= self._next_rules:
            self.rules(now)
        if now >= self._next_models or self._until_models <= 0:
            self._next_models = now + self._models_s
            self._until_models = self._events
            self._models()

    def rules(self, now: float) -> None:
        """Every ``rules.refresh_ms``: switch to a newly published rule set. One that fails the start-up checks is
        refused and counted; the one in force goes on."""
        self._next_rules = now + self._rules_s
        try:
            version = current_version(self._client, self._keys)
            if version is None or version in (self.core.engine.book.version, self._refused_rules):
                return
            published = rule_set(self._client, self._keys, version)
            if published is None:
                return
            try:
                book = check_book(book_of(published), self._lateness, f"rule set v{version}")
            except ConfigError as e:
                self._refused_rules = version
                self._count(("personalize", "rules", "refused"))
                log.error("refused rule set v%d (v%d stays in force): %s", version, self.core.engine.book.version, e)
                return
            was = self.core.engine.book.version
            self.core.use_rules(book)
            # The version in force, as a counter moved by the difference: a Python gauge is called from Flink's
            # metric-reporter thread, which crashed a TaskManager (jobs/model_training.py).
            self._count(("personalize", "rules", "version"), version - was)
            self._count(("personalize", "rules", "switches"))
            log.info("rule set v%d in force (was v%d)", version, was)
            record_applied(self._client, self._keys, *self._subtask, version)
        except redis.RedisError as e:   # the rule set in force goes on; the next check retries
            log.warning("could not check the rule-set registry: %s", e)

    def rules_due(self) -> None:
        now = time.monotonic()
        if now >= self._next_rules:
            self.rules(now)

    def _models(self) -> None:
        refused = self.served.refused
        try:
            follow_model_registry(self.served, self._client, self._keys)
        except redis.RedisError as e:   # keep serving what we have; the next refresh retries
            log.warning("could not refresh the served models: %s", e)
        self._experiments()
        if self.served.refused > refused:   # a malformed snapshot in Redis: refused, the last good one serves
            self._count(("personalize", "models_refused"), self.served.refused - refused)
            log.warning("refused a model snapshot (the last good one keeps serving): %s", self.served.last_refusal)

    def _experiments(self) -> None:
        """The tallies of the Thompson-sampled experiments, for assigning new users (at the models' pace)."""
        for name in self.core.engine.thompson_experiments():
            try:
                raw = self._client.hget(self._keys.experiment(name), "summary")
            except redis.RedisError as e:
                log.warning("could not read experiment %s: %s", name, e)
                return
            if raw:
                summary = json.loads(raw)
                self.core.engine.experiment_stats[name] = {v: (int(x["exposed"]), int(x["converted"]))
                                                           for v, x in summary.items()}


def follow_model_registry(served: ServedModels, client: redis.Redis, keys: RedisKeys) -> None:
    """Serve what the registry in Redis (``state.model_registry``) says: the pinned version, else the newest.

    A version is fetched only when it differs from the one served; a version no longer kept is skipped.
    """
    pipe = client.pipeline(transaction=False)
    for name in MODEL_SCHEMA:
        pipe.hmget(keys.model(name), "version", "pinned")
    for name, (version, pinned) in zip(MODEL_SCHEMA, pipe.execute(), strict=True):
        if pinned is not None:
            if served.refused_before(name, int(pinned)):
                continue
            if name not in served.pinned or served.pinned[name].version != int(pinned):
                record = kept_record(client, keys, name, int(pinned))
                if record is not None:
                    served.apply({**record, "kind": "pin"})
            continue
        if name in served.pinned:
            served.apply({"kind": "unpin", "model": name})
        if version is not None and not served.refused_before(name, int(version)) and (
                name not in served.latest or served.latest[name].version < int(version)):
            record = kept_record(client, keys, name, int(version))
            if (record is None or not served.apply(record)) and name not in served.latest:
                # Nothing served yet (a restarted scorer) and the newest is gone or refused: the newest valid
                # kept version.
                for older in kept_versions(client, keys, name):
                    kept = kept_record(client, keys, name, older) if older < int(version) else None
                    if kept is not None and served.apply(kept):
                        break
