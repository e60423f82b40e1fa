"""State TTL for keyed state, built so it also works on a real cluster in thread mode.

PyFlink's default background cleanup includes a RocksDB compaction-filter strategy whose default
``Duration.of_days(30)`` is built through the Py4J gateway. Inside a TaskManager's embedded Python
worker there is no gateway, so the operator fails to open (FileNotFoundError while launching one).
Choosing the cleanup strategies explicitly avoids that call.
"""

from __future__ import annotations

from pyflink.common import Time
from pyflink.datastream.state import StateTtlConfig


def state_ttl(seconds: int) -> StateTtlConfig:
    return (
        StateTtlConfig.new_builder(Time.seconds(seconds))
        .set_update_type(StateTtlConfig.UpdateType.OnCreateAndWrite)
        .set_state_visibility(StateTtlConfig.StateVisibility.NeverReturnExpired)
        .disable_cleanup_in_background()
        .cleanup_incrementally(10, False)
        .cleanup_full_snapshot()
        .build()
    )
