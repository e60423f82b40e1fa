"""The Flink environment for our jobs: execution mode, Python executable, checkpoints and connector jars.

``deployment="local"`` runs on the embedded mini-cluster and adds the connector jars from the cache;
``deployment="cluster"`` expects ``flink run --jarfile`` to have shipped them.
"""

from __future__ import annotations

import os
import sys
from typing import Literal

from pyflink.common import Configuration
from pyflink.datastream import CheckpointingMode, StreamExecutionEnvironment
from pyflink.table import EnvironmentSettings, StreamTableEnvironment

from persona.settings import FlinkSettings

Deployment = Literal["local", "cluster"]


def make_environment(flink: FlinkSettings, deployment: Deployment) -> tuple[StreamExecutionEnvironment, StreamTableEnvironment]:
    # Python workers start `python` from PATH; make it this interpreter (the venv) whatever the caller's PATH.
    bin_dir = os.path.dirname(sys.executable)
    if not os.environ.get("PATH", "").startswith(bin_dir + os.pathsep):
        os.environ["PATH"] = bin_dir + os.pathsep + os.environ.get("PATH", "")
    conf = Configuration()
    conf.set_string("python.execution-mode", flink.execution_mode)
    conf.set_string("python.executable", sys.executable)
    conf.set_string("python.client.executable", sys.executable)
    if flink.execution_mode == "process":
        # The default 1 s bundle time adds up to a second of latency per Python stage.
        conf.set_string("python.fn-execution.bundle.time", "20")
    # Bounded restarts: an endless restart loop would hide a failing job from operators and tests.
    conf.set_string("restart-strategy.type", "fixed-delay")
    conf.set_string("restart-strategy.fixed-delay.attempts", str(flink.restart_attempts))
    conf.set_string("restart-strategy.fixed-delay.delay", "2 s")
    if flink.checkpoint_dir:
        conf.set_string("execution.checkpointing.dir", flink.checkpoint_dir)
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
