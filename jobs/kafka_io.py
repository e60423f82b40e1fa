"""Kafka sources and sinks of the jobs, declared with the official connector's SQL tables.

The SQL connector gives what the DataStream ``KafkaSource`` does not expose to Python: each record's raw
bytes together with its topic, partition, offset and timestamp, which dead-letter entries must carry.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime

from pyflink.common import Types
from pyflink.datastream import DataStream, KeyedStream, StreamExecutionEnvironment
from pyflink.java_gateway import get_gateway
from pyflink.table import StreamTableEnvironment

from persona.settings import KafkaSettings, SourceSettings

_STARTUP = {"earliest": "earliest-offset", "latest": "latest-offset", "committed": "group-offsets",
            "timestamp": "timestamp"}


def kafka_timestamp_ms(ts: str | None) -> int | None:
    """The record timestamp as the source query gives it ('2026-11-23 00:11:21.123', UTC) -> epoch ms."""
    if not ts:
        return None
    return int(datetime.fromisoformat(ts).replace(tzinfo=UTC).timestamp() * 1000)


def _quote(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


# How far the record's Kafka timestamp is from its own `event_time`, in seconds (Long.MAX_VALUE when it has none that
# reads): the Java function EventTimeSkew (docker/jars/batcher), which reads the event time as the contract's RFC 3339,
# to the second. It runs for every record twice, in the source's watermark generator and in the query that keeps
# `wm_ts = ts`; the SQL built-ins it replaces (a regular-expression extraction, UPPER, a REGEXP_REPLACE that compiles
# its pattern per call, two SimpleDateFormat parses) were ~half of the source thread's CPU (docs/performance.md).
TIME_SKEW_FUNCTION = ("persona_time_skew_s", "io.streampersona.batch.EventTimeSkew")


def _trusted_timestamp(source: SourceSettings, max_future_ms: int) -> str:
    """SQL: TRUE when the record's Kafka timestamp may move the watermark: within ``max_timestamp_skew_ms`` of
    the event's own time, and not more than ``max_future_ms`` ahead of the wall clock."""
    skew_s = max(source.max_timestamp_skew_ms // 1000, 1)
    return (f"({TIME_SKEW_FUNCTION[0]}(`value`, `ts`) <= {skew_s} "
            f"AND `ts` <= TIMESTAMPADD(SECOND, {max_future_ms // 1000}, CURRENT_TIMESTAMP))")


def raw_event_stream(t_env: StreamTableEnvironment, kafka: KafkaSettings, source: SourceSettings,
                     bounded: bool, select: bool = True, max_future_ms: int = 3_600_000) -> DataStream:
    """Rows of (value: bytes, topic, partition, offset, timestamp text in UTC) from the events topic.

    Event-time watermarks are generated in the source, per partition, from the Kafka record timestamp:
    producers set it to the event's time (the contract in docs/behaviour.md "Event time and lateness"). A watermark made after
    the source would see the partitions interleaved and could outrun the slower one.

    Only a trusted timestamp moves the watermark (``_trusted_timestamp``): one bad producer (timestamps
    of the produce time on a replayed history, or from the far future) would otherwise fire every other
    user's timers early. An untrusted record counts at the epoch (it cannot move the watermark), and
    keeps its own timestamp for its dead letter.
    ``bounded`` stops at the offsets that are latest when the job starts (tests and replays).
    """
    opts = {
        "connector": "kafka",
        "topic": kafka.topics.events,
        "properties.bootstrap.servers": kafka.bootstrap_servers,
        "properties.group.id": kafka.group_id,
        "scan.startup.mode": _STARTUP[kafka.starting_offsets],
        # `committed` resumes where the group's last checkpoint left off; a new group starts at the end, so a
        # redeploy without a savepoint neither replays the topic nor re-sends its triggers. Replays ask for earliest,
        # and so does a bounded run, which would otherwise end where it starts (persona/bounded_start.py).
        "properties.auto.offset.reset": "latest" if kafka.starting_offsets == "committed" and not bounded
        else "earliest",
        # The record key is the user id (the contract, schemas/event.v1.json): read as it is, it spares a JSON
        # parse per record on the Java side (~14 µs per event).
        "key.format": "raw",
        "key.fields": "k",
        "value.format": "raw",
        "value.fields-include": "EXCEPT_KEY",
        # A shop that writes its events in Kafka transactions aborts some: their records stay in the log, and a
        # consumer at read_uncommitted (the client's default, which the connector keeps) would apply them.
        "properties.isolation.level": "read_committed",
        **kafka.connector_properties(),
    }
    if kafka.starting_offsets == "timestamp":
        opts["scan.startup.timestamp-millis"] = str(kafka.starting_timestamp_ms)
    if bounded:
        opts["scan.bounded.mode"] = "latest-offset"
    t_env.create_java_temporary_system_function(*TIME_SKEW_FUNCTION)
    t_env.execute_sql(f"""
        CREATE TEMPORARY TABLE raw_events (
          `k` STRING,
          `value` BYTES,
          `topic` STRING METADATA VIRTUAL,
          `partition` INT METADATA VIRTUAL,
          `offset` BIGINT METADATA VIRTUAL,
          `ts` TIMESTAMP_LTZ(3) METADATA FROM 'timestamp' VIRTUAL,
          `wm_ts` AS CASE WHEN {_trusted_timestamp(source, max_future_ms)} THEN `ts` ELSE TO_TIMESTAMP_LTZ(0, 3) END,
          WATERMARK FOR `wm_ts` AS `wm_ts` - INTERVAL '{source.max_out_of_orderness_ms / 1000:.3f}' SECOND
        ) WITH ({", ".join(f"{_quote(k)} = {_quote(v)}" for k, v in opts.items())})
    """)
    # The timestamp crosses into Python as text (UTC): a TIMESTAMP_LTZ arrives as an opaque Java object in thread mode.
    t_env.get_config().set_local_timezone("UTC")
    # An idle partition stops holding the watermark back after this long.
    t_env.get_config().set("table.exec.source.idle-timeout", f"{source.idleness_ms} ms")
    if not select:
        return None  # type: ignore[return-value]   # the caller queries raw_events itself
    # The rowtime `wm_ts` stays selected (last) so the rows keep it as their event-time timestamp.
    table = t_env.sql_query("SELECT `value`, `topic`, `partition`, `offset`, CAST(`ts` AS STRING), `wm_ts` FROM raw_events")
    return t_env.to_data_stream(table)


def sharded_batches(t_env: StreamTableEnvironment, kafka: KafkaSettings, source: SourceSettings, bounded: bool,
                    shards: int, batch_records: int, batch_ms: int, max_future_ms: int = 3_600_000,
                    wake_every_shard: bool = False) -> KeyedStream:
    """The events topic as batches of records, one Python call per batch (docs/performance.md).

    The user id is the record's Kafka key; a record without a key has its JSON ``user_id`` read on the Java side
    (``JSON_VALUE``; ``""`` when unreadable; the runner dead-letters a key that is not the user id), the records are keyed by shard
    (``floorMod(user_id.hashCode(), shards)``, the Java ``ShardKey``), and the Java operator ``BatchByShard``
    (docker/jars/batcher) buffers each shard's records and flushes them as one MessagePack batch at
    ``batch_records`` records, after ``batch_ms``, before any watermark and before any checkpoint barrier.
    The batches are keyed by shard again without a shuffle (``reinterpretAsKeyedStream``: the batcher is chained
    to the keyed function), so the Python function receives ``bytes`` (``operators.runner.decode_batch``) with
    the shard as its key. ``wake_every_shard``: an empty batch to every shard once after start (an upgrade's
    seeding visits every shard, jobs/changelog_seed.py).
    """
    from pyflink.util.java_utils import load_java_class

    raw_event_stream(t_env, kafka, source, bounded, select=False, max_future_ms=max_future_ms)
    table = t_env.sql_query(
        # CASE, not COALESCE: Flink evaluates every argument of COALESCE, a JSON parse per keyed record.
        "SELECT CASE WHEN `k` IS NULL OR `k` = '' THEN COALESCE(JSON_VALUE(CAST(`value` AS STRING), '$.user_id'), '') "
        "ELSE `k` END AS `user_key`, "
        "ROW(`value`, `topic`, `partition`, `offset`, `ts`, `wm_ts` = `ts`) AS `record` FROM raw_events")
    record_type = Types.ROW([Types.PRIMITIVE_ARRAY(Types.BYTE()), Types.STRING(), Types.INT(), Types.LONG(),
                             Types.INSTANT(), Types.BOOLEAN()])
    stream = t_env.to_append_stream(table, Types.ROW([Types.STRING(), record_type]))
    gateway = get_gateway()
    key_type = Types.ROW([Types.INT()]).get_java_type_info()
    shard_key = load_java_class("io.streampersona.batch.ShardKey").newInstance().configure(shards)
    batcher = load_java_class("io.streampersona.batch.BatchByShard").newInstance().configure(
        shards, batch_records, batch_ms).wakeEveryShard(wake_every_shard)
    batch_type = Types.ROW([Types.INT(), Types.PRIMITIVE_ARRAY(Types.BYTE())])
    j_batches = (stream._j_data_stream.keyBy(shard_key, key_type)
                 .transform("batch-by-shard", batch_type.get_java_type_info(), batcher)
                 .uid("batch-by-shard").name("batch-by-shard"))
    j_keyed = gateway.jvm.org.apache.flink.streaming.api.datastream.DataStreamUtils.reinterpretAsKeyedStream(
        j_batches, gateway.jvm.KeyByKeySelector(), key_type)
    return KeyedStream(j_keyed, Types.PRIMITIVE_ARRAY(Types.BYTE()), DataStream(j_batches))


def keyed_json_sink(t_env: StreamTableEnvironment, kafka: KafkaSettings, name: str, topic: str,
                    exactly_once: bool = False, value_type: str = "STRING", compression: str | None = None) -> str:
    """Declare a sink table (k STRING key, v STRING value) writing to ``topic``; returns the table name.

    ``value_type="BYTES"``: binary values; a null value is written as a Kafka tombstone. The other arguments:
    ``sink_options``."""
    opts = sink_options(kafka, name, topic, exactly_once, compression)
    t_env.execute_sql(f"""
        CREATE TEMPORARY TABLE {name} (`k` STRING, `v` {value_type})
        WITH ({", ".join(f"{_quote(k)} = {_quote(v)}" for k, v in opts.items())})
    """)
    return name


def sink_options(kafka: KafkaSettings, name: str, topic: str, exactly_once: bool = False,
                 compression: str | None = None) -> dict[str, str]:
    """The Kafka connector's options of the sink table ``name``.

    ``exactly_once``: Kafka transactions committed at each checkpoint (read_committed consumers see each
    record once, a checkpoint interval after it was made); else at-least-once (records visible at once,
    duplicated after a failover: consumers de-duplicate on their stable ids). ``compression``: the producer's
    ``compression.type`` (None: uncompressed); consumers decompress on their own."""
    opts = {
        "connector": "kafka",
        "topic": topic,
        "properties.bootstrap.servers": kafka.bootstrap_servers,
        "key.format": "raw",
        "key.fields": "k",
        "value.format": "raw",
        "value.fields-include": "EXCEPT_KEY",
        "sink.delivery-guarantee": "exactly-once" if exactly_once else "at-least-once",
        # A batch per few records made the broker the third busiest process of a drain (docs/performance.md).
        "properties.linger.ms": str(kafka.sink_linger_ms),
        "properties.batch.size": str(kafka.sink_batch_bytes),
        **kafka.connector_properties(),
    }
    if compression is not None:
        opts["properties.compression.type"] = compression
    if exactly_once:
        opts |= {"sink.transactional-id-prefix": f"{kafka.group_id}.{name}",
                 "properties.transaction.timeout.ms": str(kafka.transaction_timeout_ms)}
    return opts




_NUMBERED = re.compile(r"\[\d+\]")
_SOURCES = frozenset({"raw_events"})   # the source tables declared here


def pin_kafka_uids(env: StreamExecutionEnvironment, previous_source_id: str = "") -> list[str]:
    """Give the Kafka source and sinks (our SQL tables) stable uids, named after their tables.

    The SQL planner leaves them auto-generated ids, which are hashes of the graph's shape: adding an output
    (as the profile changelog did) changes them, and a savepoint's source offsets and sink state then no
    longer map to the new job. Call after ``attach_as_datastream()``; returns the uids set.

    ``previous_source_id``: the source's operator id in a build that had none pinned (its job's source vertex
    id), kept for that one upgrade so the savepoint's offsets restore (Flink's ``setUidHash``).
    """
    pinned = []
    seen = set()
    stack = list(env._j_stream_execution_environment.getTransformations())
    while stack:
        t = stack.pop()
        if t.getId() in seen:
            continue
        seen.add(t.getId())
        stack.extend(t.getInputs())
        name = _NUMBERED.sub("", t.getName())
        if name in _SOURCES and previous_source_id:
            t.setUidHash(previous_source_id)
            pinned.append(f"{name}={previous_source_id}")
        elif t.getUid() is None and (name in _SOURCES or name.endswith("_sink")):
            # A sink's writer and committer take their uids from the sink's.
            t.setUid(f"kafka:{name}")
            pinned.append(f"kafka:{name}")
    return sorted(pinned)
