"""Counts of the per-event runner, reaching Flink's counters at each tick: a counter's ``inc`` is a Java call (and
a GIL hand-off) that one addition to a dict per batch replaces."""

from __future__ import annotations

from typing import Any

from pyflink.metrics import MetricGroup


class FlinkCounters:
    """Counters by path (metric groups, then the counter), registered on first use: a name not known at start-up
    (a pattern a new rule set adds) never raises."""

    def __init__(self, root: MetricGroup, known: list[tuple[str, ...]]) -> None:
        self._root = root
        self._groups: dict[tuple[str, ...], Any] = {}
        self._counters: dict[tuple[str, ...], Any] = {}
        self._pending: dict[tuple[str, ...], int] = {}
        for path in known:   # shown at 0 from the start (dashboards, `persona status`)
            self.counter(path)

    def counter(self, path: tuple[str, ...]) -> Any:
        c = self._counters.get(path)
        if c is None:
            c = self._counters[path] = self._group(path[:-1]).counter(path[-1])
        return c

    def _group(self, path: tuple[str, ...]) -> Any:
        g = self._groups.get(path)
        if g is None:
            g = self._root if not path else self._group(path[:-1]).add_group(path[-1])
            self._groups[path] = g
        return g

    def add(self, counts: dict[tuple[str, ...], int]) -> None:
        pending = self._pending
        for path, n in counts.items():
            pending[path] = pending.get(path, 0) + n

    def flush(self) -> None:
        for path, n in self._pending.items():
            if n:
                self.counter(path).inc(n)
        self._pending = {}
