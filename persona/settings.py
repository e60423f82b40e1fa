"""Typed settings loaded from ``conf/*.yaml`` plus environment overrides, validated at start-up.

Every error names the file and the dotted key, on one line::

    conf/job.yaml: redis.flush_interval_ms: Input should be greater than 0

Environment variables override hosts, ports and secrets (see ``ENV_OVERRIDES``); ``--set key=value``
style overrides (``apply_overrides``) let tests and CLIs point a job at other topics.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Literal, TypeVar
from urllib.parse import quote

import redis
import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator

from operators.config_files import ConfigError, read_yaml
from state.keys import RedisKeys
from state.redis_client import RedisTarget

__all__ = ["ConfigError", "read_yaml"]

ROOT = Path(__file__).resolve().parent.parent
CONF_DIR = ROOT / "conf"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# --------------------------------------------------------------------------- job settings
class Topics(_Strict):
    events: str = Field(min_length=1)
    dead_letter: str = Field(min_length=1)
    triggers: str = Field(min_length=1)
    models: str = Field(min_length=1)
    profiles: str = Field(min_length=1)      # the profile changelog (compacted; created by the job if missing)
    audit: str = Field(min_length=1)         # consent changes and erasures (created by the job if missing)
    # Every profile version, with history.profile_versions (created by the job if missing); "": {profiles}.history
    profile_history: str = ""

    @property
    def history(self) -> str:
        return self.profile_history or f"{self.profiles}.history"


SHADED_KAFKA = "org.apache.flink.kafka.shaded.org.apache.kafka"
_KAFKA_PYTHON_NAMES = {"bootstrap": "bootstrap_servers", "protocol": "security_protocol", "mechanism": "sasl_mechanism",
                       "username": "sasl_plain_username", "password": "sasl_plain_password", "cafile": "ssl_cafile"}
_LIBRDKAFKA_NAMES = {"bootstrap": "bootstrap.servers", "protocol": "security.protocol", "mechanism": "sasl.mechanism",
                     "username": "sasl.username", "password": "sasl.password", "cafile": "ssl.ca.location"}


class KafkaSecurity(_Strict):
    """How every Kafka client of the project connects (docs/operations.md "Security"). Secrets come from the environment."""

    protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] = "PLAIN"
    username: str = ""
    password: SecretStr = SecretStr("")
    ssl_cafile: str = ""          # PEM bundle that verifies the brokers ("": the system's)

    @property
    def sasl(self) -> bool:
        return self.protocol.startswith("SASL")

    def model_post_init(self, _: Any) -> None:
        if self.sasl and not (self.username and self.password.get_secret_value()):
            raise ValueError(f"protocol {self.protocol} needs username and password "
                             "(env KAFKA_SASL_USERNAME, KAFKA_SASL_PASSWORD)")


class KafkaSettings(_Strict):
    bootstrap_servers: str = Field(min_length=1)
    group_id: str = Field(min_length=1)
    starting_offsets: Literal["earliest", "latest", "committed", "timestamp"] = "committed"
    # With starting_offsets timestamp: each partition from its first record at or after this time (epoch ms;
    # persona backfill --from)
    starting_timestamp_ms: int = Field(default=0, ge=0)
    topics: Topics
    partitions: int = Field(ge=1, le=1024)
    replication_factor: int = Field(default=1, ge=1, le=16)   # topics the project or the job creates
    security: KafkaSecurity = KafkaSecurity()
    triggers_delivery: Literal["at-least-once", "exactly-once"] = "at-least-once"
    transaction_timeout_ms: int = Field(default=600_000, ge=60_000, le=900_000)   # below the broker's 15 min maximum
    sink_linger_ms: int = Field(default=20, ge=0, le=1000)
    sink_batch_bytes: int = Field(default=262_144, ge=16_384, le=16_777_216)

    def client_config(self) -> dict[str, Any]:
        """Keyword arguments for kafka-python's producer, consumer and admin client."""
        return self._client_settings(_KAFKA_PYTHON_NAMES)

    def librdkafka_config(self) -> dict[str, Any]:
        """The same for confluent-kafka (librdkafka's names): the profile loader and the fast producers."""
        return self._client_settings(_LIBRDKAFKA_NAMES)

    def _client_settings(self, names: Mapping[str, str]) -> dict[str, Any]:
        """Bootstrap servers and security, under a client library's own names for them."""
        s = self.security
        values: dict[str, Any] = {"bootstrap": self.bootstrap_servers, "protocol": s.protocol}
        if s.sasl:
            values |= {"mechanism": s.sasl_mechanism, "username": s.username,
                       "password": s.password.get_secret_value()}
        if s.ssl_cafile:
            values["cafile"] = str(resolve_path(s.ssl_cafile))
        return {names[k]: v for k, v in values.items()}

    def connector_properties(self) -> dict[str, str]:
        """The same for Flink's Kafka connector (its table options). Kafka's Java client logs a JAAS config as
        [hidden]; the options are not part of Flink's configuration dump."""
        s = self.security
        out = {"properties.security.protocol": s.protocol}
        if s.sasl:
            # flink-sql-connector-kafka shades the Kafka client: its login modules live under the shaded package.
            module = (f"{SHADED_KAFKA}.common.security.plain.PlainLoginModule" if s.sasl_mechanism == "PLAIN"
                      else f"{SHADED_KAFKA}.common.security.scram.ScramLoginModule")

            def quoted(v: str) -> str:
                return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
            out |= {"properties.sasl.mechanism": s.sasl_mechanism,
                    "properties.sasl.jaas.config": f"{module} required username={quoted(s.username)} "
                                                   f"password={quoted(s.password.get_secret_value())};"}
        if s.ssl_cafile:
            out |= {"properties.ssl.truststore.type": "PEM", "properties.ssl.truststore.location":
                    str(resolve_path(s.ssl_cafile))}
        return out


class SourceSettings(_Strict):
    max_out_of_orderness_ms: int = Field(ge=0)
    idleness_ms: int = Field(gt=0)
    max_timestamp_skew_ms: int = Field(ge=1000)


class RedisSettings(_Strict):
    url: SecretStr
    key_prefix: str
    flush_interval_ms: int = Field(gt=0)
    flush_max_batch: int = Field(gt=0)
    profile_ttl_s: int = Field(gt=0)
    username: str = ""            # ACL user (env REDIS_USERNAME); "" with a password: the default user
    password: SecretStr = SecretStr("")   # env REDIS_PASSWORD: keeps the secret off the command line
    tls: bool = False             # rediss://
    tls_ca_file: str = ""         # PEM bundle that verifies the server ("": the system's)
    cluster: bool = False         # a Redis Cluster (url: any node of it); env REDIS_CLUSTER
    cluster_buckets: int = Field(default=64, ge=1, le=16384)   # per-user hash-tag buckets on a cluster (state/keys.py)

    def target(self) -> RedisTarget:
        """Where the project's Redis is and how its keys are laid out (picklable, for Flink functions)."""
        return RedisTarget(self.connection_url(), self.key_prefix, self.cluster_buckets if self.cluster else 0)

    def keys(self) -> RedisKeys:
        return self.target().keys()

    def client(self, **options: Any) -> redis.Redis:
        """A client (a ``RedisCluster`` with ``cluster``); ``options`` as for ``redis.Redis``."""
        return self.target().client(**options)

    def connection_url(self) -> str:
        """``url`` with the credentials and TLS settings merged in (the password stays out of settings files and
        command lines; this string is built in memory, and logs show ``masked_url``)."""
        url = self.url.get_secret_value()
        scheme, sep, rest = url.partition("://")
        if scheme == "unix" or not sep:
            return url
        if self.tls:
            scheme = "rediss"
        password = self.password.get_secret_value()
        if password or self.username:
            rest = rest.rpartition("@")[2]
            creds = f"{quote(self.username, safe='')}:{quote(password, safe='')}@"
            rest = creds + rest
        if self.tls_ca_file:
            rest += ("&" if "?" in rest else "?") + "ssl_ca_certs=" + quote(str(resolve_path(self.tls_ca_file)))
        return f"{scheme}://{rest}"

    @field_validator("url")
    @classmethod
    def _scheme(cls, v: SecretStr) -> SecretStr:
        if not v.get_secret_value().startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("must start with redis://, rediss:// or unix://")
        return v

    @property
    def masked_url(self) -> str:
        return mask_url(self.url.get_secret_value())


class FlinkSettings(_Strict):
    execution_mode: Literal["thread", "process"] = "thread"
    parallelism: int = Field(ge=1, le=256)
    checkpoint_interval_ms: int = Field(ge=0)
    checkpoint_dir: str = ""
    restart_attempts: int = Field(ge=0)
    restart_max_backoff_ms: int = Field(default=30_000, ge=100)
    state_ttl_s: int = Field(gt=0)
    state_cache_users: int = Field(ge=0)
    buffer_timeout_ms: int = Field(ge=0)
    # The batched crossing (docs/performance.md): users are spread over `shards` keys, each a batch of at most
    # `batch_records` records, flushed at the latest `batch_ms` after it started. `shards` is persisted layout
    # (the most subtasks the job can rescale to; changing it loses the state) and is fixed for a deployment.
    shards: int = Field(default=128, ge=1, le=32_768)
    batch_records: int = Field(default=500, ge=1, le=100_000)
    batch_ms: int = Field(default=20, ge=1, le=60_000)
    # Items are spread over `item_shards` keys of the item operator (one record per shard and batch): the most
    # subtasks it can rescale to, and persisted layout like `shards`.
    item_shards: int = Field(default=16, ge=1, le=32_768)
    tick_ms: int = Field(default=100, gt=0)
    jvm_args: str = ""
    local_heap_mb: int = Field(default=512, ge=0, le=1_048_576)
    # The mini-cluster JVM's JIT (docs/performance.md "JIT"): "c1" stops at the client compiler, "tiered" is the JVM's
    # default (C1 then C2).
    local_jit: Literal["c1", "tiered"] = "c1"
    # The mini-cluster JVM's garbage collector (docs/performance.md "Memory"): "serial" holds ~40 MB less than G1 at
    # the same throughput for a heap of this size; "g1" is the JVM's default.
    local_gc: Literal["serial", "g1"] = "serial"
    # Once, to upgrade from a build with one Flink state per user (docs/operations.md "Failures and upgrades"): each shard's
    # states and timers are rebuilt from the profile changelog at its first batch or timer.
    seed_from_changelog: bool = False
    prometheus: bool = True   # Flink's Prometheus reporter on the mini-cluster (a free port, printed)
    connector_jars_dir: str = Field(min_length=1)
    # Upgrading from a build before the Kafka source had a uid (docs/operations.md "Failures and upgrades"): that job's
    # source vertex id (web UI, 32 hex digits), so its savepoint's offsets map to the source.
    previous_source_id: str = Field(default="", pattern=r"^([0-9a-f]{32})?$")

    @field_validator("local_heap_mb")
    @classmethod
    def _heap(cls, v: int) -> int:
        if 0 < v < 256:   # Flink's mini-cluster alone needs more: the job would fail at start with a JVM error
            raise ValueError("must be 0 (the JVM's default) or at least 256")
        return v

    def checkpoint_uri(self) -> str | None:
        """Where checkpoints go: a Flink URI as given (``file:///…``, ``s3://…``), a path (relative to the project)
        as a ``file://`` URI, or None for the JobManager's memory (``""``: lost with the process)."""
        if not self.checkpoint_dir:
            return None
        if "://" in self.checkpoint_dir:
            return self.checkpoint_dir
        return resolve_path(self.checkpoint_dir).as_uri()

    def connector_jars(self) -> list[Path]:
        """The connector jars, or a ConfigError that says how to get them."""
        folder = resolve_path(self.connector_jars_dir)
        jars = sorted(folder.glob("*.jar")) if folder.is_dir() else []
        if not jars:
            raise ConfigError(
                f"flink.connector_jars_dir: no jars in {folder}; run `persona jars` to resolve them"
            )
        return jars


class ProfileSettings(_Strict):
    allowed_lateness_ms: int = Field(ge=0)
    session_gap_ms: int = Field(gt=0)
    recent_sessions: int = Field(ge=1, le=100)
    affinity_half_life_ms: int = Field(gt=0)
    affinity_keep: int = Field(ge=1, le=100)
    loyal_min_purchases: int = Field(ge=1)


class ModelSettings(_Strict):
    label_window_ms: int = Field(gt=0)
    label_timer_resolution_ms: int = Field(gt=0)
    max_pending_per_user: int = Field(ge=1, le=1000)
    publish_every_examples: int = Field(ge=1)
    publish_interval_ms: int = Field(gt=0)
    refresh_ms: int = Field(gt=0)
    refresh_every_events: int = Field(gt=0)
    keep_versions: int = Field(ge=1)
    segments: int = Field(ge=2, le=50)
    score_every_events: int = Field(ge=1)
    bot_threshold: float = Field(gt=0, le=1)
    bot_min_session_events: int = Field(ge=1)
    bot_rule_events_per_min: float = Field(gt=0)
    bot_rule_min_events: int = Field(ge=1)
    seed: int = 42


class LimitsSettings(_Strict):
    max_record_bytes: int = Field(ge=1024, le=16 * 1024 * 1024)
    max_json_depth: int = Field(ge=3, le=1000)
    max_purchase_items: int = Field(ge=1, le=500)          # the event contract allows at most 500
    max_event_age_ms: int = Field(gt=0)
    max_event_future_ms: int = Field(ge=0)
    dead_letter_raw_bytes: int = Field(ge=64, le=262_144)  # the entry must stay below the producer's max.request.size
    max_cart_items: int = Field(ge=1, le=10_000)
    demographic_attributes: list[str] = Field(default_factory=list)
    max_attribute_chars: int = Field(ge=1, le=4096)
    max_pattern_marks: int = Field(ge=8, le=100_000)


class DedupSettings(_Strict):
    event_ids_per_user: int = Field(ge=0, le=1000)
    order_ids_per_user: int = Field(ge=0, le=1000)


class ConsentDefaults(_Strict):
    """Consent per purpose before the user chose (operators/consent.py)."""

    analytics: bool = True
    personalization: bool = True
    marketing: bool = True

    def values(self) -> tuple[bool, bool, bool]:
        return (self.analytics, self.personalization, self.marketing)


class ConsentRegion(ConsentDefaults):
    countries: list[str] = Field(min_length=1)   # ISO 3166-1 alpha-2

    @field_validator("countries")
    @classmethod
    def _alpha2(cls, v: list[str]) -> list[str]:
        bad = [c for c in v if not (isinstance(c, str) and len(c) == 2 and c.isalpha())]
        if bad:
            raise ValueError(f"not ISO 3166-1 alpha-2 country codes: {bad}")
        return [c.upper() for c in v]


class ConsentSettings(_Strict):
    default: ConsentDefaults = ConsentDefaults()
    regions: dict[str, ConsentRegion] = {}

    def model_post_init(self, _: Any) -> None:
        seen: dict[str, str] = {}
        for name, region in self.regions.items():
            for c in region.countries:
                if c in seen:
                    raise ValueError(f"country {c} is in regions {seen[c]!r} and {name!r}")
                seen[c] = name


class RetentionSettings(_Strict):
    """How long the topics the project creates keep their records (docs/privacy.md: retention)."""

    events_days: float = Field(gt=0)
    dead_letter_days: float = Field(gt=0)
    triggers_days: float = Field(gt=0)
    audit_days: float = Field(gt=0)
    profile_history_days: float = Field(default=30, gt=0)   # every profile version (history.profile_versions)


class PrivacySettings(_Strict):
    consent: ConsentSettings = ConsentSettings()
    pii_fields: list[str] = ["email", "phone", "name", "first_name", "last_name"]
    pii_join_keys: list[str] = []
    pii_salt: SecretStr = SecretStr("")   # env PERSONA_PII_SALT
    ip_geolocation: bool = True
    retention: RetentionSettings = RetentionSettings(events_days=7, dead_letter_days=14, triggers_days=7,
                                                     audit_days=1095)

    def model_post_init(self, _: Any) -> None:
        stray = sorted(set(self.pii_join_keys) - set(self.pii_fields))
        if stray:
            raise ValueError(f"pii_join_keys {stray} are not in pii_fields")
        if self.pii_join_keys and not self.pii_salt.get_secret_value():
            raise ValueError("pii_join_keys need a pii_salt (env PERSONA_PII_SALT): an unsalted hash of an email "
                             "address is reversed by hashing a list of addresses")


class LoaderSettings(_Strict):
    embedded: bool = True         # `persona run` (mini-cluster) runs the profile loader in its own process
    metrics_port: int = Field(default=0, ge=-1, le=65535)   # its Prometheus endpoint: 0 a free port, -1 none
    metrics_host: str = "127.0.0.1"


class HistorySettings(_Strict):
    # Matches decided at an event time before this (epoch ms) are history: suppressed (reason ``history``), never
    # sent. ``persona backfill`` sets it to its start for the backfill and for the live job it prints.
    triggers_before_ms: int = Field(default=0, ge=0)
    # Write every profile version to kafka.topics.profile_history (docs/history.md "Profile history"): what
    # persona profile USER --at/--history reads. Off by default: it costs a changelog record per event.
    profile_versions: bool = False
    # A topic for the matches of history (persona backfill --dry-run-topic): each as the trigger it would have been,
    # marked "history": true, never on the triggers topic ("": only counted). The job creates it if missing.
    dry_run_topic: str = ""


class RulesSettings(_Strict):
    refresh_ms: int = Field(default=1000, gt=0, le=5000)   # the job looks for a newly published rule set this often


class RecommendSettings(_Strict):
    """The recommender (docs/recommendations.md): ``enabled`` and ``publish_ms`` (the job's wiring), then the fields
    of ``operators.co_occurrence.RecommendRules``, by name."""

    enabled: bool = False
    publish_ms: int = Field(default=10_000, ge=10, le=600_000)
    fold_ms: int = Field(default=1_000, ge=1, le=60_000)
    view_weight: float = Field(gt=0)
    cart_weight: float = Field(gt=0)
    purchase_weight: float = Field(gt=0)
    half_life_ms: int = Field(gt=0)
    recent_items: int = Field(ge=1, le=200)
    pair_window_ms: int = Field(gt=0)
    pair_items: int = Field(ge=1, le=200)
    neighbours_per_item: int = Field(ge=1, le=1_000)
    list_size: int = Field(ge=1, le=200)
    recency_half_life_ms: int = Field(gt=0)
    content_weight: float = Field(ge=0)
    popularity_weight: float = Field(ge=0)


class JobSettings(_Strict):
    kafka: KafkaSettings
    source: SourceSettings
    redis: RedisSettings
    flink: FlinkSettings
    profile: ProfileSettings
    models: ModelSettings
    limits: LimitsSettings
    dedup: DedupSettings
    loader: LoaderSettings = LoaderSettings()
    privacy: PrivacySettings = PrivacySettings()
    rules: RulesSettings = RulesSettings()
    history: HistorySettings = HistorySettings()
    recommend: RecommendSettings

    def model_post_init(self, _: Any) -> None:
        # Process mode's Python workers dump their whole environment into the log at job end (STACK-FACTS):
        # with a secret in the environment or the settings, that would print it.
        secret = (self.kafka.security.password.get_secret_value() or self.redis.password.get_secret_value()
                  or "@" in self.redis.url.get_secret_value())
        if self.kafka.triggers_delivery == "exactly-once" and self.flink.checkpoint_interval_ms <= 0:
            raise ValueError("kafka.triggers_delivery: exactly-once commits at checkpoints; "
                             "flink.checkpoint_interval_ms must be > 0")
        history_s = self.privacy.retention.profile_history_days * 86_400
        if self.history.profile_versions and history_s > self.flink.state_ttl_s:
            # An erasure tombstones the versions its user's state counts; a state dropped by its TTL counts none,
            # so the history of a user silent that long must have gone with retention already.
            raise ValueError(f"privacy.retention.profile_history_days: {history_s:.0f} s of profile history outlive "
                             f"flink.state_ttl_s ({self.flink.state_ttl_s} s): an erasure after a user's state expired "
                             "could not find their history; keep the history no longer than the state")
        if self.flink.execution_mode == "process" and secret:
            raise ValueError("flink.execution_mode: process is refused while a Kafka or Redis secret is set "
                             "(its workers log their environment); use thread")
    patterns_file: str = Field(min_length=1)


# --------------------------------------------------------------------------- local stack
class KafkaServiceSettings(_Strict):
    port: int = Field(ge=1, le=65535)
    controller_port: int = Field(ge=1, le=65535)
    heap_mb: int = Field(ge=128)
    start_timeout_s: float = Field(gt=0)
    sasl_port: int = Field(default=0, ge=0, le=65535)   # 0: no SASL_PLAINTEXT listener (tests of secure clients)


class RedisServiceSettings(_Strict):
    port: int = Field(ge=1, le=65535)
    start_timeout_s: float = Field(gt=0)


class FlinkClusterSettings(_Strict):
    rest_port: int = Field(ge=1, le=65535)
    rpc_port: int = Field(ge=1, le=65535)
    jobmanager_memory_mb: int = Field(ge=512)
    taskmanager_memory_mb: int = Field(ge=1024)
    taskmanagers: int = Field(ge=1)
    taskmanager_slots: int = Field(ge=1)
    start_timeout_s: float = Field(gt=0)
    # Flink's Prometheus reporter: the JobManager and each TaskManager take a port of this range (docs/operations.md "Running it").
    prometheus_ports: str = Field(default="9250-9260", pattern=r"^\d+(-\d+)?$")


class StackSettings(_Strict):
    run_dir: str
    jars_dir: str
    kafka: KafkaServiceSettings
    redis: RedisServiceSettings
    flink_cluster: FlinkClusterSettings

    @property
    def run_path(self) -> Path:
        return resolve_path(self.run_dir)

    @property
    def jars_path(self) -> Path:
        return resolve_path(self.jars_dir)


# --------------------------------------------------------------------------- generator
MalformedKind = Literal[
    "bad_json", "not_utf8", "missing_field", "wrong_type", "unknown_event_type", "absurd_value"
]


class GeneratorSettings(_Strict):
    seed: int
    users: int = Field(ge=1)
    start_time: str
    span_hours: float = Field(gt=0)
    out_of_order_fraction: float = Field(ge=0, le=1)
    max_out_of_orderness_ms: int = Field(ge=0)
    late_fraction: float = Field(ge=0, le=1)
    late_margin_ms: int = Field(gt=0)
    malformed_fraction: float = Field(ge=0, lt=1)
    malformed_kinds: tuple[MalformedKind, ...] = Field(min_length=1)
    bot_fraction: float = Field(ge=0, le=1)
    # How much of the buying signal the stream carries (docs/models.md: the noisier stream). Defaults keep the
    # default stream as it was; extra draws come from a generator of their own.
    signal_strength: float = Field(default=1.0, ge=0, le=1)   # share of product views whose dwell follows intent
    dwell_noise: float = Field(default=0.3, ge=0, lt=1)       # dwell times vary by this factor either way
    drift: float = Field(default=0.0, ge=0, le=1)             # share of the signal lost by the end of the span
    seasonality: float = Field(default=0.0, ge=0, le=1)       # daily swing of the purchase probability (peak 20h UTC)
    # The item structure a recommender can find (persona/generator/items.py; defaults in conf/generator.yaml);
    # all 0 is the control stream, where a product view picks uniformly in its category.
    item_zipf: float = Field(ge=0, le=3)          # popularity: the rank-r item of a category weighs 1/r**zipf
    item_styles: float = Field(ge=0, le=1)        # share of views from the shopper's style (latent factor)
    item_pairs: float = Field(ge=0, le=1)         # after an add-to-cart, the next view is its partner
    item_sequences: float = Field(ge=0, le=1)     # after a view, the next view is the item's successor
    # How much shoppers' categories follow them: favourite categories (0.8 on arrival, 0.7 later, times this) and
    # product views that stay in the session's category; 0 with every item_* at 0: no structure at all (the
    # recommender's control; persona/generator/shoppers.py).
    category_focus: float = Field(default=1.0, ge=0, le=1)


# --------------------------------------------------------------------------- loading
ENV_OVERRIDES: dict[str, dict[str, str]] = {
    "job.yaml": {"KAFKA_BOOTSTRAP_SERVERS": "kafka.bootstrap_servers", "REDIS_URL": "redis.url",
                 "KAFKA_SECURITY_PROTOCOL": "kafka.security.protocol",
                 "KAFKA_SASL_USERNAME": "kafka.security.username", "KAFKA_SASL_PASSWORD": "kafka.security.password",
                 "REDIS_USERNAME": "redis.username", "REDIS_PASSWORD": "redis.password", "REDIS_CLUSTER": "redis.cluster",
                 "PERSONA_PII_SALT": "privacy.pii_salt"},
    "stack.yaml": {
        "PERSONA_KAFKA_PORT": "kafka.port",
        "PERSONA_KAFKA_CONTROLLER_PORT": "kafka.controller_port",
        "PERSONA_REDIS_PORT": "redis.port",
        "PERSONA_FLINK_REST_PORT": "flink_cluster.rest_port",
    },
}

M = TypeVar("M", bound=BaseModel)


def resolve_path(p: str | Path) -> Path:
    """Relative paths in settings are relative to the project root, not the working directory."""
    path = Path(p)
    return path if path.is_absolute() else ROOT / path


def mask_url(url: str) -> str:
    """``redis://:secret@host:6379/0`` -> ``redis://:***@host:6379/0``."""
    scheme, sep, rest = url.partition("://")
    if not sep or "@" not in rest:
        return url
    creds, _, host = rest.rpartition("@")
    user = creds.split(":", 1)[0]
    return f"{scheme}://{user}:***@{host}"


def parse_overrides(pairs: Iterable[str]) -> dict[str, str]:
    """``["kafka.topics.events=x"]`` -> ``{"kafka.topics.events": "x"}``; raises ConfigError on a bad pair."""
    out: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override {pair!r}: expected KEY=VALUE, e.g. kafka.topics.events=my.events")
        out[key.strip()] = value
    return out


def apply_overrides(data: dict[str, Any], overrides: Mapping[str, Any], source: str) -> dict[str, Any]:
    """Set dotted keys in a nested dict; a key whose parent is not a section is refused by name."""
    for dotted, value in overrides.items():
        node = data
        parts = dotted.split(".")
        for part in parts[:-1]:
            child = node.get(part)
            if not isinstance(child, dict):
                raise ConfigError(f"{source}: {dotted}: unknown key {part!r}")
            node = child
        if parts[-1] not in node:
            raise ConfigError(f"{source}: {dotted}: unknown key {parts[-1]!r}")
        # Strings stay strings ("1:20" must not become sexagesimal 80); other values parse as YAML scalars.
        current = node[parts[-1]]
        if isinstance(value, str) and not isinstance(current, str):
            value = yaml.safe_load(value)
        node[parts[-1]] = value
    return data


def _load(
    model: type[M], name: str, overrides: Mapping[str, Any] | None, path: Path | None
) -> M:
    path = path or CONF_DIR / name
    raw = read_yaml(path)
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    env = {key: os.environ[var] for var, key in ENV_OVERRIDES.get(name, {}).items() if os.environ.get(var)}
    data = apply_overrides(raw, env, f"{path} (environment)")
    data = apply_overrides(data, overrides or {}, f"{path} (override)")
    try:
        return model.model_validate(data)
    except ValidationError as e:
        first = e.errors()[0]
        key = ".".join(str(p) for p in first["loc"]) or "(top level)"
        more = f" (+{e.error_count() - 1} more)" if e.error_count() > 1 else ""
        raise ConfigError(f"{path}: {key}: {first['msg']}{more}") from None


def load_job_settings(overrides: Mapping[str, Any] | None = None, path: Path | None = None) -> JobSettings:
    return _load(JobSettings, "job.yaml", overrides, path)


def load_stack_settings(overrides: Mapping[str, Any] | None = None, path: Path | None = None) -> StackSettings:
    return _load(StackSettings, "stack.yaml", overrides, path)


def load_generator_settings(
    overrides: Mapping[str, Any] | None = None, path: Path | None = None
) -> GeneratorSettings:
    return _load(GeneratorSettings, "generator.yaml", overrides, path)
