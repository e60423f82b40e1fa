"""The Flink environment for our jobs: execution mode, Python executable, checkpoints and connector jars.

``deployment="local"`` runs on the embedded mini-cluster and adds the connector jars from the cache;
``deployment="cluster"`` expects ``flink run --jarfile`` to have shipped them.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Literal

from pyflink.common import Configuration
from pyflink.datastream import CheckpointingMode, StreamExecutionEnvironment
from pyflink.table import EnvironmentSettings, StreamTableEnvironment

from persona.settings import FlinkSettings, load_stack_settings

Deployment = Literal["local", "cluster"]
PROMETHEUS_FACTORY = "org.apache.flink.metrics.prometheus.PrometheusReporterFactory"


def use_lib_with_prometheus() -> None:
    """The mini-cluster finds metric reporters on the JVM's classpath only (not in the plugins folder, which a
    cluster reads): start it with a lib folder of its own, the wheel's jars plus the Prometheus reporter that the
    wheel ships in plugins/. Must run before the first Java call starts PyFlink's gateway."""
    from pyflink import java_gateway

    from persona.stack.flink_cluster import FLINK_HOME
    if getattr(java_gateway, "_gateway", None) is not None:
        logging.getLogger(__name__).warning("the Flink gateway runs already: no Prometheus reporter in this process")
        return
    lib = load_stack_settings().run_path / "flink-lib"
    lib.mkdir(parents=True, exist_ok=True)
    jars = [*(FLINK_HOME / "lib").glob("*.jar"), *(FLINK_HOME / "plugins" / "metrics-prometheus").glob("*.jar")]
    for jar in jars:
        link = lib / jar.name
        if link.is_symlink() and link.resolve() != jar.resolve():   # left by another installation
            link.unlink()
        try:
            link.symlink_to(jar)
        except FileExistsError:   # made by an earlier run, or by a job starting beside this one
            pass
    # With FLINK_HOME unset, PyFlink's launcher finds the wheel itself and overwrites FLINK_LIB_DIR with its lib/.
    os.environ.setdefault("FLINK_HOME", str(FLINK_HOME))
    os.environ["FLINK_LIB_DIR"] = str(lib)


def make_environment(flink: FlinkSettings, deployment: Deployment, rest_port: int | None = None,
                     prometheus_port: int | None = None, savepoint: str | None = None,
                     allow_non_restored_state: bool = False) -> tuple[StreamExecutionEnvironment, StreamTableEnvironment]:
    """``rest_port``: the embedded mini-cluster's REST API and web UI on 127.0.0.1 at this port (else random).
    ``prometheus_port``: Flink's Prometheus reporter on this port (the plugin ships in the wheel's plugins/).
    ``savepoint``: restore the job's state and source offsets from it (on a cluster: ``flink run -s``);
    ``allow_non_restored_state``: drop the savepoint's state of operators this job does not have."""
    prepare_driver(flink, deployment, prometheus_port)
    conf = Configuration()
    if savepoint:
        conf.set_string("execution.savepoint.path", savepoint)
        if allow_non_restored_state:
            conf.set_string("execution.savepoint.ignore-unclaimed-state", "true")
    if deployment == "local" and rest_port is not None:
        # The REST API serves metrics fetched from the TaskManagers this often (Flink's default: 10 s): `persona
        # status` and the live line read them.
        conf.set_string("metrics.fetcher.update-interval", "2 s")
        conf.set_string("rest.port", str(rest_port))
        conf.set_string("rest.address", "127.0.0.1")
        conf.set_string("rest.bind-address", "127.0.0.1")
    if deployment == "local" and prometheus_port is not None:
        conf.set_string("metrics.reporter.prom.factory.class", PROMETHEUS_FACTORY)
        conf.set_string("metrics.reporter.prom.port", str(prometheus_port))
    if deployment == "local":   # Flink's local default is 64 MB, all touched at start; a few shuffles need far less
        conf.set_string("taskmanager.memory.network.min", "32 mb")
        conf.set_string("taskmanager.memory.network.max", "32 mb")
    conf.set_string("python.execution-mode", flink.execution_mode)
    conf.set_string("python.executable", sys.executable)
    conf.set_string("python.client.executable", sys.executable)
    if flink.execution_mode == "process":
        # The default 1 s bundle time adds up to a second of latency per Python stage.
        conf.set_string("python.fn-execution.bundle.time", "20")
    _restart_strategy(conf, flink)
    checkpoints = flink.checkpoint_uri()
    if checkpoints:
        conf.set_string("execution.checkpointing.dir", checkpoints)
        # A cancelled job keeps its last checkpoint: the way back after a cancel without a savepoint.
        conf.set_string("execution.checkpointing.externalized-checkpoint-retention", "RETAIN_ON_CANCELLATION")
    env = StreamExecutionEnvironment.get_execution_environment(conf)
    env.set_parallelism(flink.parallelism)
    # A record waits at most this long in a network buffer between operators: part of every event's freshness.
    env.set_buffer_timeout(flink.buffer_timeout_ms)
    if flink.checkpoint_interval_ms > 0:
        env.enable_checkpointing(flink.checkpoint_interval_ms, CheckpointingMode.EXACTLY_ONCE)
    if deployment == "local":
        env.add_jars(*(jar.as_uri() for jar in flink.connector_jars()))
    t_env = StreamTableEnvironment.create(env, EnvironmentSettings.in_streaming_mode())
    return env, t_env


_prepared = False


def prepare_driver(flink: FlinkSettings, deployment: Deployment, prometheus_port: int | None) -> None:
    """Environment variables the Python workers and the mini-cluster read, set before the gateway starts (by
    ``make_environment``, or by a driver that starts the gateway before it builds the graph). Once per process."""
    global _prepared
    if not _prepared:
        _prepare_process(flink, deployment, prometheus_port)
        _prepared = True


def _prepare_process(flink: FlinkSettings, deployment: Deployment, prometheus_port: int | None) -> None:
    # Python workers start `python` from PATH; make it this interpreter (the venv) whatever the caller's PATH.
    bin_dir = os.path.dirname(sys.executable)
    if not os.environ.get("PATH", "").startswith(bin_dir + os.pathsep):
        os.environ["PATH"] = bin_dir + os.pathsep + os.environ.get("PATH", "")
    if deployment != "local":
        return
    # The embedded mini-cluster's log (with every Python operator's log lines) goes to FLINK_LOG_DIR, by default
    # a folder inside the installed pyflink package, shared by every job: keep it in this checkout's run folder.
    if not os.environ.get("FLINK_LOG_DIR"):
        log_dir = load_stack_settings().run_path / "logs"
        log_dir.mkdir(parents=True, exist_ok=True)
        os.environ["FLINK_LOG_DIR"] = str(log_dir)
    logging.getLogger(__name__).info("job log (Flink and the Python operators): %s/flink-*-python-*.log",
                                     os.environ["FLINK_LOG_DIR"])
    if prometheus_port is not None:
        use_lib_with_prometheus()
    if flink.execution_mode == "thread":
        # On a mini-cluster PyFlink starts Beam's loopback worker pool in the driver, for process-mode workers to
        # run in it: in thread mode nothing uses it, and its imports (Beam, pandas, pyarrow, gRPC) cost the driver
        # ~133 MB and ~1 s of start-up (docs/performance.md "Memory"). "process" is PyFlink's name for "no loopback".
        os.environ.setdefault("_python_worker_execution_mode", "process")
    # Memory of the mini-cluster's JVM (docs/performance.md "Memory"): uncapped, G1 grew its heap to ~430 MB for
    # ~5 MB of live state; one malloc arena per thread (the JVM's and the embedded Python's) holds freed memory.
    os.environ.setdefault("MALLOC_ARENA_MAX", "2")
    # PyFlink's launcher of the mini-cluster's JVM adds JVM_ARGS to its command line.
    os.environ["JVM_ARGS"] = mini_cluster_jvm_args(flink, os.environ.get("JVM_ARGS", ""))


def mini_cluster_jvm_args(flink: FlinkSettings, inherited: str = "") -> str:
    """The mini-cluster JVM's options: the caller's, the heap cap, the JIT, the collector, then ``flink.jvm_args`` (the last of
    each option wins; tests/unit/test_job_config.py)."""
    heap = f"-Xmx{flink.local_heap_mb}m" if flink.local_heap_mb else ""
    # C1 only (docs/performance.md "JIT"): on 2 cores, C2 compiling through the first minutes took the core the
    # Python function waits for; a long-lived job on a cluster keeps the cluster's own JVM options.
    jit = "-XX:TieredStopAtLevel=1" if flink.local_jit == "c1" else ""
    # The serial collector (docs/performance.md "Memory"): for a heap capped at a few hundred MB with ~5 MB of
    # live state, G1's regions and remembered sets cost ~40 MB of RSS and buy nothing on 2 cores.
    gc = "-XX:+UseSerialGC" if flink.local_gc == "serial" else ""
    return " ".join(a for a in (inherited, heap, jit, gc, flink.jvm_args) if a)


def _restart_strategy(conf: Configuration, flink: FlinkSettings) -> None:
    # Restarts made for failover, bounded for crash loops. A lost TaskManager costs several attempts: redeploys
    # to its slots fail until the JobManager declares it lost (~15-20 s here), so a fixed budget of 3 quick
    # restarts was used up by one kill. Backing off (1 s, x1.5, capped) spans that with a few attempts; a job
    # that keeps failing still fails after `restart_attempts` attempts without 10 min of stable running.
    if flink.restart_attempts == 0:   # no restart at all: a failure ends the job (tests that must see every crash)
        conf.set_string("restart-strategy.type", "none")
    else:
        conf.set_string("restart-strategy.type", "exponential-delay")
    conf.set_string("restart-strategy.exponential-delay.initial-backoff", "1 s")
    conf.set_string("restart-strategy.exponential-delay.backoff-multiplier", "1.5")
    conf.set_string("restart-strategy.exponential-delay.max-backoff", f"{flink.restart_max_backoff_ms} ms")
    conf.set_string("restart-strategy.exponential-delay.reset-backoff-threshold", "10 min")
    conf.set_string("restart-strategy.exponential-delay.jitter-factor", "0.1")
    conf.set_string("restart-strategy.exponential-delay.attempts-before-reset-backoff", str(flink.restart_attempts))
