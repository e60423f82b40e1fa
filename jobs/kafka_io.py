"""Kafka sources and sinks of the jobs, declared with the official connector's SQL tables.

The SQL connector gives what the DataStream ``KafkaSource`` does not expose to Python: each record's raw
bytes together with its topic, partition, offset and timestamp, which dead-letter entries must carry.
"""

from __future__ import annotations

from pyflink.datastream import DataStream
from pyflink.table import StreamTableEnvironment

from persona.settings import KafkaSettings, SourceSettings

_STARTUP = {"earliest": "earliest-offset", "latest": "latest-offset", "committed": "group-offsets"}


def _quote(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def raw_event_stream(t_env: StreamTableEnvironment, kafka: KafkaSettings, source: SourceSettings,
                     bounded: bool) -> DataStream:
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
    # `ts` stays selected (last) so the rows keep it as their event-time timestamp.
    table = t_env.sql_query("SELECT `value`, `topic`, `partition`, `offset`, CAST(`ts` AS STRING), `ts` FROM raw_events")
    return t_env.to_data_stream(table)


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

