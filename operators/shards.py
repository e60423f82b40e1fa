"""Which shard a user belongs to: the same function as the Java ``ShardKey`` (docker/jars/batcher), which keys the
records before they are batched, so Python can tell a user's shard without asking the JVM (an upgrade that
rebuilds each shard's states from the profile changelog, ``jobs/changelog_seed.py``).

>>> java_string_hash("u1"), shard_of("u1", 128), shard_of("", 128)
(3676, 92, 0)
>>> java_string_hash("Ωmega😀") == 1_586_081_342   # UTF-16 code units: what Java prints for "Ωmega😀".hashCode()
True
"""

from __future__ import annotations


def java_string_hash(text: str) -> int:
    """Java's ``String.hashCode``: 31-polynomial over the UTF-16 code units, as a signed 32-bit int."""
    h = 0
    data = text.encode("utf-16-be")
    for i in range(0, len(data), 2):
        h = (31 * h + (data[i] << 8 | data[i + 1])) & 0xFFFFFFFF
    return h - (1 << 32) if h >= 1 << 31 else h


def shard_of(user_id: str, shards: int) -> int:
    """Java's ``Math.floorMod(user_id.hashCode(), shards)``."""
    return java_string_hash(user_id) % shards
