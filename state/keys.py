"""The Redis key schema, declared once. Consumers (front-ends) read these keys; see docs/contract.md "Redis profiles".

>>> k = RedisKeys("persona:")
>>> k.profile("u1"), k.segment("cart_abandoners")
('persona:profile:u1', 'persona:segment:cart_abandoners')
"""

from __future__ import annotations

from dataclasses import dataclass

PROFILE_SCHEMA_VERSION = "1"


@dataclass(frozen=True, slots=True)
class RedisKeys:
    prefix: str

    def profile(self, user_id: str) -> str:
        """Hash with the user's profile (schemas/profile.v1.json)."""
        return f"{self.prefix}profile:{user_id}"

    def segment(self, name: str) -> str:
        """Set of user ids in a segment."""
        return f"{self.prefix}segment:{name}"

    def model(self, name: str) -> str:
        """Hash describing the newest published snapshot of a model: version, metrics, examples, updated_at."""
        return f"{self.prefix}model:{name}"

    def model_versions(self, name: str) -> str:
        """Sorted set of the kept snapshot versions (score = version)."""
        return f"{self.prefix}model:{name}:versions"

    def model_blob(self, name: str, version: int) -> str:
        """The models-topic record of one kept snapshot (JSON), for pinning and rollback."""
        return f"{self.prefix}model:{name}:v{version}"

    def experiment(self, name: str) -> str:
        """Hash of an experiment's tallies: ``summary`` (JSON per variant: exposed, converted, rate, ci95, share,
        holdout) and ``updated_at``."""
        return f"{self.prefix}experiment:{name}"

    def rules_versions(self) -> str:
        """Hash of every published rule set: version -> JSON (operators/rule_sets.py)."""
        return f"{self.prefix}rules:versions"

    def rules_current(self) -> str:
        """The rule-set version in force."""
        return f"{self.prefix}rules:current"

    def rules_applied(self) -> str:
        """Hash: job subtask -> the rule-set version it switched to, and when."""
        return f"{self.prefix}rules:applied"

    def item(self, item_id: str) -> str:
        """Hash of an item's neighbours, written by the item operator: ``folded`` (orders the writes) and
        ``record`` (JSON, schemas/item_neighbours.v1.json)."""
        return f"{self.prefix}item:{item_id}"

    def item_weights(self, category: str | None = None) -> str:
        """Sorted set of items by decayed weight (score ``log2(weight) + at / half_life``, operators/item_table.py):
        every item, or a category's."""
        return f"{self.prefix}items:weight" + (f":{category}" if category is not None else "")

    def profile_pattern(self) -> str:
        return f"{self.prefix}profile:*"
