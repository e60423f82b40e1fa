"""Kafka sources and sinks of the jobs, declared with the official connector's SQL tables.

The SQL connector gives what the DataStream ``KafkaSource`` does not expose to Python: each record's raw
bytes together with its topic, partition, offset and timestamp, which dead-letter entries must carry.
"""

from __future__ import annotations

from datetime import UTC, datetime

from pyflink.common import Types
from pyflink.datastream import DataStream, KeyedStream
from pyflink.java_gateway import get_gateway
from pyflink.table import StreamTableEnvironment

from persona.settings import KafkaSettings, SourceSettings

_STARTUP = {"earliest": "earliest-offset", "latest": "latest-offset", "committed": "group-offsets"}


def kafka_timestamp_ms(ts: str | None) -> int | None:
    """The record timestamp as the source query gives it ('2026-11-23 00:11:21.123', UTC) -> epoch ms."""
    if not ts:
        return None
    return int(datetime.fromisoformat(ts).replace(tzinfo=UTC).timestamp() * 1000)


def _quote(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def raw_event_stream(t_env: StreamTableEnvironment, kafka: KafkaSettings, source: SourceSettings,
                     bounded: bool, select: bool = True) -> DataStream:
    """Rows of (value: bytes, topic, partition, offset, timestamp text in UTC) from the events topic.

    Event-time watermarks are generated in the source, per partition, from the Kafka record timestamp:
    producers set it to the event's time (the contract in README "Event time"). A watermark made after
    the source would see the partitions interleaved and could outrun the slower one.
    ``bounded`` stops at the offsets that are latest when the job starts (tests and replays).
    """
    opts = {
        "connector": "kafka",
        "topic": kafka.topics.events,
        "properties.bootstrap.servers": kafka.bootstrap_servers,
        "properties.group.id": kafka.group_id,
        "scan.startup.mode": _STARTUP[kafka.starting_offsets],
        "properties.auto.offset.reset": "earliest",
        "format": "raw",
    }
    if bounded:
        opts["scan.bounded.mode"] = "latest-offset"
    t_env.execute_sql(f"""
        CREATE TEMPORARY TABLE raw_events (
          `value` BYTES,
          `topic` STRING METADATA VIRTUAL,
          `partition` INT METADATA VIRTUAL,
          `offset` BIGINT METADATA VIRTUAL,
          `ts` TIMESTAMP_LTZ(3) METADATA FROM 'timestamp' VIRTUAL,
          WATERMARK FOR `ts` AS `ts` - INTERVAL '{source.max_out_of_orderness_ms / 1000:.3f}' SECOND
        ) WITH ({", ".join(f"{_quote(k)} = {_quote(v)}" for k, v in opts.items())})
    """)
    # The timestamp crosses into Python as text (UTC): a TIMESTAMP_LTZ arrives as an opaque Java object in thread mode.
    t_env.get_config().set_local_timezone("UTC")
    # An idle partition stops holding the watermark back after this long.
    t_env.get_config().set("table.exec.source.idle-timeout", f"{source.idleness_ms} ms")
    if not select:
        return None  # type: ignore[return-value]   # the caller queries raw_events itself
    # `ts` stays selected (last) so the rows keep it as their event-time timestamp.
    table = t_env.sql_query("SELECT `value`, `topic`, `partition`, `offset`, CAST(`ts` AS STRING), `ts` FROM raw_events")
    return t_env.to_data_stream(table)


def keyed_raw_events(t_env: StreamTableEnvironment, kafka: KafkaSettings, source: SourceSettings,
                     bounded: bool) -> KeyedStream:
    """The events topic keyed by user, with no Python operator before the keyed function.

    The user id is read on the Java side (``JSON_VALUE``) and the stream is keyed on it there, so a record
    crosses into Python once, in the keyed function, which parses it. A record whose user id cannot be
    read is keyed by ``""``; the keyed function then rejects it with its reason. The function receives
    ``Row(value, topic, partition, offset, timestamp text)``, and must check that the parsed user id
    equals its key (a JSON document with duplicate keys could be read differently by the two parsers).
    """
    raw_event_stream(t_env, kafka, source, bounded, select=False)
    table = t_env.sql_query(
        "SELECT COALESCE(JSON_VALUE(CAST(`value` AS STRING), '$.user_id'), '') AS `user_key`, "
        "ROW(`value`, `topic`, `partition`, `offset`, CAST(`ts` AS STRING)) AS `record` FROM raw_events")
    record_type = Types.ROW([Types.PRIMITIVE_ARRAY(Types.BYTE()), Types.STRING(), Types.INT(), Types.LONG(),
                             Types.STRING()])
    # A plain RowTypeInfo (to_data_stream gives an ExternalTypeInfo, which the keyed Python operator refuses).
    stream = t_env.to_append_stream(table, Types.ROW([Types.STRING(), record_type]))
    # What PyFlink's own key_by builds after its Python key-selector map: the key is field 0 of the row.
    gateway = get_gateway()
    j_keyed = stream._j_data_stream.keyBy(gateway.jvm.KeyByKeySelector(),
                                          Types.ROW([Types.STRING()]).get_java_type_info())
    return KeyedStream(j_keyed, record_type, stream)


def keyed_json_sink(t_env: StreamTableEnvironment, kafka: KafkaSettings, name: str, topic: str) -> str:
    """Declare a sink table (k STRING key, v STRING value) writing to ``topic``; returns the table name."""
    opts = {
        "connector": "kafka",
        "topic": topic,
        "properties.bootstrap.servers": kafka.bootstrap_servers,
        "key.format": "raw",
        "key.fields": "k",
        "value.format": "raw",
        "value.fields-include": "EXCEPT_KEY",
        "sink.delivery-guarantee": "at-least-once",
    }
    t_env.execute_sql(f"""
        CREATE TEMPORARY TABLE {name} (`k` STRING, `v` STRING)
        WITH ({", ".join(f"{_quote(k)} = {_quote(v)}" for k, v in opts.items())})
    """)
    return name

