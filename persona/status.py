"""``persona status``: one view of a running personalization job, from Flink's REST API, Kafka and Redis.

Where the job runs: ``persona run`` (the embedded mini-cluster) writes its REST address to
``{run_dir}/jobs/{kafka.group_id}.json`` while it runs; otherwise the local standalone cluster of
``conf/stack.yaml``, or any REST URL given with ``--rest``.

The job's own counters are Flink metrics of the ``personalize`` operator (docs/operations.md "Running it"): valid
events, dead letters by reason, late events, triggers by pattern, suppressions by reason, erasures.
Counters are summed over the operator's subtasks.
"""

from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from persona.settings import JobSettings, load_stack_settings

JOB_NAME = "persona-personalization"


class StatusError(Exception):
    """No job to report on, or a store that does not answer: one line for the user."""


def state_file(settings: JobSettings) -> Path:
    return load_stack_settings().run_path / "jobs" / f"{settings.kafka.group_id}.json"


def announce(settings: JobSettings, rest_url: str) -> Path:
    """Written by the job's process on the mini-cluster, removed when it ends (``withdraw``)."""
    path = state_file(settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"rest_url": rest_url, "pid": os.getpid(), "started_at": int(time.time() * 1000)}))
    return path


def withdraw(path: Path) -> None:
    try:
        if json.loads(path.read_text()).get("pid") == os.getpid():
            path.unlink()
    except (OSError, ValueError):
        pass


def _get(url: str, timeout_s: float = 5) -> Any:
    with urllib.request.urlopen(url, timeout=timeout_s) as r:   # noqa: S310 - a local REST URL from settings
        return json.loads(r.read())


def find_rest_url(settings: JobSettings, rest: str | None = None) -> str:
    """The REST URL of the Flink that runs the job: ``rest``, this checkout's ``persona run``, or its cluster."""
    if rest:
        return rest.rstrip("/")
    path = state_file(settings)
    if path.is_file():
        try:
            doc = json.loads(path.read_text())
            os.kill(int(doc["pid"]), 0)   # the process that wrote it still runs
            return str(doc["rest_url"])
        except (OSError, ValueError, KeyError):
            pass
    stack = load_stack_settings()
    return f"http://127.0.0.1:{stack.flink_cluster.rest_port}"


def _job_id(rest_url: str) -> str:
    try:
        jobs = _get(f"{rest_url}/jobs/overview")["jobs"]
    except (urllib.error.URLError, OSError) as e:
        raise StatusError(f"no Flink REST API at {rest_url} ({e}); is the job running (persona run)?") from None
    mine = sorted((j for j in jobs if j["name"] == JOB_NAME), key=lambda j: (j["state"] != "RUNNING", -j["start-time"]))
    if not mine:
        raise StatusError(f"no {JOB_NAME} job at {rest_url}")
    return str(mine[0]["jid"])


def _sum_metrics(rest_url: str, job: str, vertex: str, wanted: list[str]) -> dict[str, float]:
    out: dict[str, float] = {}
    for i in range(0, len(wanted), 40):   # the URL stays short
        ids = ",".join(wanted[i:i + 40])
        for m in _get(f"{rest_url}/jobs/{job}/vertices/{vertex}/subtasks/metrics?get={ids}&agg=sum,min"):
            out[m["id"]] = m.get("sum", m.get("min", 0.0))
            if m["id"].endswith("currentInputWatermark"):
                out[m["id"]] = m.get("min", 0.0)
    return out


def flink_status(rest_url: str, only: str | None = None) -> dict[str, Any]:
    """``only``: the vertex that chains the operator of that name (the live line reads the personalize operator only);
    a vertex is named after that operator when it chains it (the batcher runs chained before personalize)."""
    job = _job_id(rest_url)
    detail = _get(f"{rest_url}/jobs/{job}")
    restarts = _get(f"{rest_url}/jobs/{job}/metrics?get=numRestarts")
    out: dict[str, Any] = {"rest_url": rest_url, "job_id": job, "state": detail["state"],
                           "uptime_s": round(detail.get("duration", 0) / 1000, 1),
                           "restarts": int(float(restarts[0]["value"])) if restarts else 0, "operators": {}}
    counters: dict[str, Any] = {"valid": 0, "late_events": 0, "dead_letters": {}, "triggers": {}, "suppressed": {},
                                "history": {},
                                "erasures": 0, "consent_changes": 0, "duplicates": 0, "bots": {}}
    for v in detail["vertices"]:
        chain = [n.strip() for n in v["name"].split(" -> ")]
        if only is not None and only not in chain:
            continue
        ids = [m["id"] for m in _get(f"{rest_url}/jobs/{job}/vertices/{v['id']}/subtasks/metrics")]
        rates = [i for i in ids if i in ("numRecordsInPerSecond", "numRecordsOutPerSecond")]
        own = [i for i in ids if i.startswith(("personalize.ingest.", "personalize.personalize."))]
        marks = [i for i in ids if i == "currentInputWatermark"]
        values = _sum_metrics(rest_url, job, v["id"], rates + own + marks) if rates + own + marks else {}
        name = "personalize" if "personalize" in chain else chain[0]
        out["operators"][name] = {"parallelism": v["parallelism"], "status": v["status"],
                                  "in_per_s": round(values.get("numRecordsInPerSecond", 0.0), 1),
                                  "out_per_s": round(values.get("numRecordsOutPerSecond", 0.0), 1)}
        if "currentInputWatermark" in values and name == "personalize":
            wm = int(values["currentInputWatermark"])
            out["watermark_ms"] = wm
            out["watermark_lag_s"] = round(time.time() - wm / 1000, 1) if wm > 0 else None
        for key, value in values.items():
            n = int(value)
            parts = key.split(".")
            if key == "personalize.ingest.valid":
                counters["valid"] += n
            elif key.startswith("personalize.ingest.rejected.") and n:
                counters["dead_letters"][parts[-1]] = counters["dead_letters"].get(parts[-1], 0) + n
            elif key == "personalize.personalize.late_events" and n:
                counters["late_events"] += n
                counters["dead_letters"]["late_event"] = counters["dead_letters"].get("late_event", 0) + n
            elif key.startswith("personalize.personalize.triggers.") and n:
                counters["triggers"][parts[-1]] = counters["triggers"].get(parts[-1], 0) + n
            elif key.startswith("personalize.personalize.suppressed.") and n:
                counters["suppressed"][parts[-1]] = counters["suppressed"].get(parts[-1], 0) + n
            elif key.startswith("personalize.personalize.history.") and n:   # persona backfill: per pattern
                counters["history"][parts[-1]] = counters["history"].get(parts[-1], 0) + n
            elif key == "personalize.personalize.bot_flags" or key.startswith(
                    ("personalize.personalize.bot_flags_by.", "personalize.personalize.bot_model.")):
                name = "flagged" if key.endswith(".bot_flags") else "_".join(parts[-2:])
                counters["bots"][name] = counters["bots"].get(name, 0) + n
            elif key in ("personalize.personalize.erasures", "personalize.personalize.consent_changes",
                         "personalize.personalize.duplicates"):
                counters[parts[-1]] += n
    out["counters"] = counters
    if only is not None:
        return out
    cp = _get(f"{rest_url}/jobs/{job}/checkpoints")
    latest = (cp.get("latest") or {}).get("completed")
    out["checkpoint"] = None if not latest else {
        "id": latest["id"], "age_s": round(time.time() - latest["latest_ack_timestamp"] / 1000, 1),
        "size_bytes": latest.get("checkpointed_size", latest.get("state_size")), "failed": cp["counts"]["failed"]}
    return out


def kafka_lag(settings: JobSettings) -> dict[str, Any]:
    """Per partition of the events topic: the job's committed offset (at its checkpoints) and the lag behind the end."""
    from kafka import KafkaConsumer, TopicPartition
    from kafka.admin import KafkaAdminClient
    from kafka.errors import KafkaError

    topic = settings.kafka.topics.events
    try:
        admin = KafkaAdminClient(**settings.kafka.client_config(), request_timeout_ms=10_000)
        try:
            committed = admin.list_group_offsets(settings.kafka.group_id).get(settings.kafka.group_id, {})
        finally:
            admin.close()
        consumer = KafkaConsumer(**settings.kafka.client_config(), enable_auto_commit=False)
        try:
            parts = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
            ends = consumer.end_offsets(parts) if parts else {}
        finally:
            consumer.close()
    except KafkaError as e:
        return {"error": f"kafka at {settings.kafka.bootstrap_servers}: {e}"}
    rows = {}
    for tp in parts:
        done = committed.get(tp)
        offset = done.offset if done is not None and done.offset >= 0 else None
        rows[str(tp.partition)] = {"end": ends[tp], "committed": offset,
                                   "lag": None if offset is None else ends[tp] - offset}
    return {"topic": topic, "group": settings.kafka.group_id, "partitions": rows,
            "lag": sum(r["lag"] or 0 for r in rows.values())}


def redis_status(settings: JobSettings) -> dict[str, Any]:
    import redis

    client = settings.redis.client()
    try:
        if settings.redis.cluster:   # every master's
            per_node = client.info("memory", target_nodes="primaries")  # type: ignore[call-arg]  # RedisCluster's
            info = {"used_memory": sum(node["used_memory"] for node in per_node.values())}
        else:
            info = client.info("memory")
        keys = settings.redis.keys()
        profiles = sum(1 for _ in client.scan_iter(match=keys.profile_pattern(), count=5000))
        model = client.hmget(keys.model("propensity"), "version", "metrics")
        propensity = None if model[0] is None else {"version": int(model[0]), **json.loads(model[1] or "{}")}
        return {"used_memory_bytes": info["used_memory"], "profiles": profiles, "propensity": propensity}
    except redis.RedisError as e:
        return {"error": f"redis at {settings.redis.masked_url}: {e}"}
    finally:
        client.close()


def collect(settings: JobSettings, rest: str | None = None) -> dict[str, Any]:
    status = flink_status(find_rest_url(settings, rest))
    status["kafka"] = kafka_lag(settings)
    status["redis"] = redis_status(settings)
    return status


def _pairs(d: Mapping[str, int]) -> str:
    return ", ".join(f"{k} {v:,}" for k, v in sorted(d.items())) or "none"


def bot_line(b: Mapping[str, int]) -> str:
    """Users flagged as bots, and the bot model measured against the rule (live traffic has no ground truth).

    >>> bot_line({"flagged": 5, "bot_flags_by_rule": 5, "bot_model_verdicts": 4, "bot_model_agreed": 3})
    'bots flagged 5 (rule 5, model 0); the model against the rule: precision 0.75, recall 0.60 (4 verdicts)'
    """
    rule, verdicts, agreed = b.get("bot_flags_by_rule", 0), b.get("bot_model_verdicts", 0), b.get("bot_model_agreed", 0)
    precision = f"{agreed / verdicts:.2f}" if verdicts else "n/a"
    recall = f"{agreed / rule:.2f}" if rule else "n/a"
    return (f"bots flagged {b.get('flagged', 0):,} (rule {rule:,}, model {b.get('bot_flags_by_model', 0):,}); the model "
            f"against the rule: precision {precision}, recall {recall} ({verdicts:,} verdicts)")


def propensity_line(m: Mapping[str, Any] | None) -> str:
    """The served propensity model's quality and its drift detector (docs/models.md "Drift").

    >>> propensity_line({"version": 12, "roc_auc": 0.8123, "roc_auc_recent": 0.83, "log_loss": 0.452,
    ...                  "loss_window": 0.47, "drifts": 2, "drift_at_examples": 14000})
    "propensity v12: AUC 0.812 (recent 0.830), log loss 0.452 (over ADWIN's window, capped: 0.470); 2 drift(s) of the loss, the last at example 14,000 (policy: keep learning)"
    >>> propensity_line(None)
    'propensity: no version published yet'
    """
    if not m:
        return "propensity: no version published yet"
    drifts = int(m.get("drifts", 0))
    drift = (f"{drifts} drift(s) of the loss, the last at example {int(m.get('drift_at_examples', 0)):,} "
             "(policy: keep learning)" if drifts else "no drift of the loss detected")
    return (f"propensity v{m['version']}: AUC {m.get('roc_auc', 0):.3f} (recent {m.get('roc_auc_recent', 0):.3f}), "
            f"log loss {m.get('log_loss', 0):.3f} (over ADWIN's window, capped: {m.get('loss_window', 0):.3f}); {drift}")


def format_status(s: Mapping[str, Any]) -> str:
    c = s["counters"]
    lines = [f"job {s['job_id']} {s['state']}, up {s['uptime_s']:,.0f} s, {s['restarts']} restart(s); {s['rest_url']}"]
    for name, op in s["operators"].items():
        lines.append(f"  {name[:60]:<60} x{op['parallelism']} {op['status']:<9} in {op['in_per_s']:>9,.1f}/s "
                     f"out {op['out_per_s']:>9,.1f}/s")
    lines.append(f"valid {c['valid']:,}; dead letters {sum(c['dead_letters'].values()):,} ({_pairs(c['dead_letters'])})")
    lines.append(f"triggers {sum(c['triggers'].values()):,} ({_pairs(c['triggers'])}); suppressed "
                 f"{_pairs(c['suppressed'])}; erasures {c['erasures']:,}; duplicates {c['duplicates']:,}")
    lines.append(bot_line(c.get("bots", {})))
    if s.get("watermark_lag_s") is not None:
        lines.append(f"watermark {s['watermark_ms']} ({s['watermark_lag_s']:,} s behind the wall clock)")
    cp = s.get("checkpoint")
    lines.append("checkpoint: none yet" if not cp else
                 f"checkpoint {cp['id']}: {cp['age_s']} s ago, {cp['size_bytes']:,} bytes, {cp['failed']} failed")
    k = s.get("kafka", {})
    lines.append(f"kafka: {k['error']}" if "error" in k else
                 f"kafka lag {k['lag']:,} on {k['topic']} (" + ", ".join(
                     f"p{p} {r['lag'] if r['lag'] is not None else 'no commit'}" for p, r in k["partitions"].items()) + ")")
    r = s.get("redis", {})
    lines.append(f"redis: {r['error']}" if "error" in r else
                 f"redis {r['used_memory_bytes'] / 2**20:,.1f} MiB, {r['profiles']:,} profiles")
    if "error" not in r:
        lines.append(propensity_line(r.get("propensity")))
    return "\n".join(lines)


def live_line(s: Mapping[str, Any], previous: Mapping[str, Any] | None, seconds: float) -> str:
    """One short line for ``persona run``: events/s, dead letters, triggers."""
    c = s["counters"]
    rate = (c["valid"] - previous["counters"]["valid"]) / seconds if previous and seconds > 0 else 0.0
    return (f"live: {c['valid']:,} valid ({rate:,.0f}/s), {sum(c['dead_letters'].values()):,} dead letters, "
            f"{sum(c['triggers'].values()):,} triggers")


def follow(rest_url: str, job_id: str, every_s: float = 5.0) -> None:
    """``persona cluster submit``: a live line every few seconds until the job ends or Ctrl-C (the job goes on)."""
    previous, at = None, time.monotonic()
    try:
        while True:
            time.sleep(every_s)   # the live line's own pace
            try:
                state = _get(f"{rest_url}/jobs/{job_id}")["state"]
                status = flink_status(rest_url, only="personalize")
            except (StatusError, urllib.error.URLError, OSError, KeyError):
                continue   # not up yet, or a restart: the next tick tries again
            if state in ("FINISHED", "FAILED", "CANCELED"):
                print(f"job {job_id} {state.lower()}", flush=True)
                return
            now = time.monotonic()
            print(live_line(status, previous, now - at), flush=True)
            previous, at = status, now
    except KeyboardInterrupt:
        print(f"stopped following; job {job_id} goes on (persona status, persona cluster cancel {job_id})", flush=True)
