"""Create the job's topics (idempotently) with kafka-python's admin client."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from kafka.admin import KafkaAdminClient, NewTopic
from kafka.errors import KafkaError, TopicAlreadyExistsError

from persona.stack.procs import StackError, wait_until


def ensure_topics(bootstrap: str, names: Iterable[str], partitions: int, timeout_s: float = 30,
                  client_config: Mapping[str, Any] | None = None) -> list[str]:
    """Create missing topics; returns the names created. Existing topics are left as they are.

    ``client_config``: kafka-python settings (``KafkaSettings.client_config()``: SASL/SSL), else plaintext.
    """
    wanted = list(dict.fromkeys(names))
    config = {"bootstrap_servers": bootstrap, **(client_config or {})}
    try:
        admin = KafkaAdminClient(**config, client_id="persona-admin", request_timeout_ms=int(timeout_s * 1000))
    except KafkaError as e:
        raise StackError(f"kafka at {bootstrap} did not answer: {e}") from None
    try:
        existing = set(admin.list_topics())
        missing = [n for n in wanted if n not in existing]
        if missing:
            try:
                admin.create_topics([NewTopic(n, num_partitions=partitions, replication_factor=1) for n in missing])
            except TopicAlreadyExistsError:
                pass
        wait_until(lambda: set(wanted) <= set(admin.list_topics()), timeout_s, f"topics {wanted} on {bootstrap}")
        return missing
    finally:
        admin.close()
