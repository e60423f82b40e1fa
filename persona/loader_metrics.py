"""The profile loader's own Prometheus endpoint (docs/operations.md "Running it"): its counters and the profiles' freshness.

A collector reads ``LoaderStats`` at each scrape, so the loader keeps one set of numbers. Served on
``loader.metrics_host:loader.metrics_port`` (port 0: a free one, printed; -1: none).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from persona.stack.procs import free_port

if TYPE_CHECKING:
    from persona.loader import LoaderStats

COUNTERS = {"records": "changelog records read", "written": "profiles that replaced the stored one",
            "stale": "changes refused by the version guard (a replay, or an older state)",
            "erased": "erasure tombstones applied", "malformed": "changelog records that could not be read (skipped)",
            "redis_errors": "failed Redis flushes (retried with backoff)", "batches": "batches applied"}


class LoaderCollector(Collector):
    def __init__(self, stats: LoaderStats) -> None:
        self._stats = stats

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        s = self._stats
        for name, doc in COUNTERS.items():
            yield CounterMetricFamily(f"persona_loader_{name}", doc, value=getattr(s, name))
        yield GaugeMetricFamily("persona_loader_freshness_seconds", "age of the newest profile change of the last "
                                "batch when Redis acknowledged it (job change to Redis)", value=s.freshness_ms / 1000)
        age = time.time() - s.last_batch_at_ms / 1000 if s.last_batch_at_ms else float("nan")
        yield GaugeMetricFamily("persona_loader_seconds_since_last_batch", "seconds since the last batch reached Redis",
                                value=age)


def serve_loader_metrics(stats: LoaderStats, host: str, port: int) -> int | None:
    """Start the endpoint in a daemon thread; returns its port (None when ``port`` is -1)."""
    if port < 0:
        return None
    port = port or free_port()
    registry = CollectorRegistry()
    registry.register(LoaderCollector(stats))
    start_http_server(port, addr=host, registry=registry)
    return port
