"""The Redis key schema, declared once. Consumers (front-ends) read these keys; see docs/contract.md "Redis profiles".

Two layouts. On a single Redis server (``buckets=0``), plain names:

>>> k = RedisKeys("persona:")
>>> k.profile("u1"), k.segment_of("cart_abandoners", "u1"), k.model("propensity")
('persona:profile:u1', 'persona:segment:cart_abandoners', 'persona:model:propensity')

On Redis Cluster (``redis.cluster: true``), every key a script or a transaction touches together shares one hash
tag, so it lives in one slot: a user's profile and the shard of each segment set that holds the user carry the
user's bucket (CRC-32 of the id modulo ``buckets``), and a segment is ``buckets`` sets, so no slot is hot:

>>> c = RedisKeys("persona:", buckets=64)
>>> c.bucket("u1"), c.profile("u1"), c.segment_of("cart_abandoners", "u1")
(54, 'persona:{b54}:profile:u1', 'persona:{b54}:segment:cart_abandoners')
>>> len(c.segment_keys("cart_abandoners")), c.model("propensity"), c.model_versions("propensity")
(64, 'persona:{model:propensity}', 'persona:{model:propensity}:versions')
>>> c.user_of_profile_key(c.profile("u1")), k.user_of_profile_key(k.profile("u1"))
('u1', 'u1')
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

PROFILE_SCHEMA_VERSION = "1"
# On Redis Cluster, the item weight rankings are split in this many sets (by item): enough to spread their writes
# over 16 masters, few enough that a lookup reads each ranking's shards in one pipeline.
ITEM_SHARDS = 16


@dataclass(frozen=True, slots=True)
class RedisKeys:
    prefix: str
    buckets: int = 0   # 0: one Redis server, no hash tags; > 0: Redis Cluster, per-user keys in this many buckets

    @property
    def clustered(self) -> bool:
        return self.buckets > 0

    def bucket(self, user_id: str) -> int:
        """The user's bucket on Redis Cluster: ``crc32(utf-8 id) % buckets`` (any language computes it)."""
        return zlib.crc32(user_id.encode()) % self.buckets

    def _user_tag(self, user_id: str) -> str:
        return f"{{b{self.bucket(user_id)}}}:" if self.buckets else ""

    def profile(self, user_id: str) -> str:
        """Hash with the user's profile (schemas/profile.v1.json)."""
        return f"{self.prefix}{self._user_tag(user_id)}profile:{user_id}"

    def profile_pattern(self) -> str:
        """A SCAN pattern matching every profile key."""
        return f"{self.prefix}{{b*}}:profile:*" if self.buckets else f"{self.prefix}profile:*"

    def user_of_profile_key(self, key: str | bytes) -> str:
        text = key.decode() if isinstance(key, bytes) else key
        return text.split(":profile:", 1)[1] if self.buckets else text.removeprefix(f"{self.prefix}profile:")

    def segment(self, name: str) -> str:
        """Set of user ids in a segment, on one Redis server (on Redis Cluster: ``segment_keys``)."""
        if self.buckets:
            raise ValueError("on Redis Cluster a segment is one set per bucket: use segment_keys or segment_of")
        return f"{self.prefix}segment:{name}"

    def segment_of(self, name: str, user_id: str) -> str:
        """The set of the segment that holds ``user_id`` (in the slot of the user's profile)."""
        return f"{self.prefix}{self._user_tag(user_id)}segment:{name}"

    def segment_keys(self, name: str) -> list[str]:
        """Every set of the segment: its members are their union."""
        if not self.buckets:
            return [self.segment(name)]
        return [f"{self.prefix}{{b{b}}}:segment:{name}" for b in range(self.buckets)]

    def segment_pattern(self) -> str:
        """A SCAN pattern matching every segment set (``segment_name`` gives a match's segment)."""
        return f"{self.prefix}{{b*}}:segment:*" if self.buckets else f"{self.prefix}segment:*"

    def segment_name(self, key: str | bytes) -> str:
        text = key.decode() if isinstance(key, bytes) else key
        return text.split(":segment:", 1)[1] if self.buckets else text.removeprefix(f"{self.prefix}segment:")

    def _model(self, name: str) -> str:
        return f"{self.prefix}{{model:{name}}}" if self.buckets else f"{self.prefix}model:{name}"

    def model(self, name: str) -> str:
        """Hash describing the newest published snapshot of a model: version, metrics, examples, updated_at."""
        return self._model(name)

    def model_versions(self, name: str) -> str:
        """Sorted set of the kept snapshot versions (score = version)."""
        return f"{self._model(name)}:versions"

    def model_blob(self, name: str, version: int) -> str:
        """The models-topic record of one kept snapshot (JSON), for pinning and rollback."""
        return f"{self._model(name)}:v{version}"

    def experiment(self, name: str) -> str:
        """Hash of an experiment's tallies: ``summary`` (JSON per variant: exposed, converted, rate, ci95, share,
        holdout) and ``updated_at``."""
        return f"{self.prefix}experiment:{name}"

    def _rules(self) -> str:
        return f"{self.prefix}{{rules}}" if self.buckets else f"{self.prefix}rules"

    def rules_versions(self) -> str:
        """Hash of every published rule set: version -> JSON (operators/rule_sets.py)."""
        return f"{self._rules()}:versions"

    def rules_current(self) -> str:
        """The rule-set version in force."""
        return f"{self._rules()}:current"

    def rules_applied(self) -> str:
        """Hash: job subtask -> the rule-set version it switched to, and when."""
        return f"{self._rules()}:applied"

    def item_shard(self, item_id: str) -> int:
        """On Redis Cluster, the shard of an item's keys: ``crc32(utf-8 id) % ITEM_SHARDS``."""
        return zlib.crc32(item_id.encode()) % ITEM_SHARDS

    def item(self, item_id: str) -> str:
        """Hash of an item's neighbours, written by the item operator: ``folded`` (orders the writes) and
        ``record`` (JSON, schemas/item_neighbours.v1.json)."""
        tag = f"{{i{self.item_shard(item_id)}}}:" if self.buckets else ""
        return f"{self.prefix}{tag}item:{item_id}"

    def item_pattern(self) -> str:
        """A SCAN pattern matching every item hash."""
        return f"{self.prefix}{{i*}}:item:*" if self.buckets else f"{self.prefix}item:*"

    def item_weights(self, category: str | None = None, item_id: str | None = None) -> str:
        """Sorted set of items by decayed weight (score ``log2(weight) + at / half_life``, operators/item_table.py):
        every item, or a category's. On Redis Cluster each is split in ``ITEM_SHARDS`` sets, and this is the one
        that holds ``item_id`` (in the slot of the item's hash); ``item_weight_keys`` lists them all."""
        if self.buckets:
            if item_id is None:
                raise ValueError("on Redis Cluster the item weights are one set per shard: use item_weight_keys")
            return self._item_weights(category, self.item_shard(item_id))
        return f"{self.prefix}items:weight" + (f":{category}" if category is not None else "")

    def item_weight_keys(self, category: str | None = None) -> list[str]:
        """Every set of a ranking: the best items are the best of their union."""
        if not self.buckets:
            return [self.item_weights(category)]
        return [self._item_weights(category, shard) for shard in range(ITEM_SHARDS)]

    def _item_weights(self, category: str | None, shard: int) -> str:
        return f"{self.prefix}{{i{shard}}}:items:weight" + (f":{category}" if category is not None else "")
