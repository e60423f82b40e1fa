"""A local standalone Flink cluster from the installed apache-flink distribution, and job submission to it.

The wheel ships ``pyflink/bin`` and ``pyflink/conf``; we copy the conf to a run folder, bind everything
to 127.0.0.1 with modest memory (2-core machines), and drive Flink's own scripts and CLI.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyflink
import yaml

from persona.settings import ROOT, FlinkClusterSettings
from persona.stack.prereqs import check_java
from persona.stack.procs import StackError, port_is_free, wait_until

FLINK_HOME = Path(pyflink.__file__).parent


@dataclass(frozen=True)
class FlinkCluster:
    run_dir: Path
    settings: FlinkClusterSettings

    @property
    def conf_dir(self) -> Path:
        return self.run_dir / "conf"

    @property
    def lib_dir(self) -> Path:
        return self.run_dir / "lib"

    @property
    def log_dir(self) -> Path:
        return self.run_dir / "log"

    @property
    def pid_dir(self) -> Path:
        """Where Flink's scripts keep their pid files: this checkout's own (the default /tmp is shared, and
        stop-cluster.sh stops whatever its pid files name, another checkout's cluster included)."""
        return self.run_dir / "pid"

    @property
    def tmp_dir(self) -> Path:
        return self.run_dir / "tmp"

    @property
    def rest_url(self) -> str:
        return f"http://127.0.0.1:{self.settings.rest_port}"

    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(FLINK_CONF_DIR=str(self.conf_dir), FLINK_LOG_DIR=str(self.log_dir), FLINK_HOME=str(FLINK_HOME),
                   FLINK_LIB_DIR=str(self.lib_dir), FLINK_PID_DIR=str(self.pid_dir))
        # TaskManagers start Python workers with `python` from PATH: make it this venv's interpreter.
        env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
        return env

    def _write_conf(self) -> None:
        shutil.rmtree(self.conf_dir, ignore_errors=True)
        shutil.copytree(FLINK_HOME / "conf", self.conf_dir)
        for folder in (self.log_dir, self.pid_dir, self.tmp_dir):
            folder.mkdir(parents=True, exist_ok=True)
        self._write_lib()
        conf = yaml.safe_load((self.conf_dir / "config.yaml").read_text())
        s = self.settings
        conf["jobmanager"].update({"bind-host": "127.0.0.1", "rpc": {"address": "127.0.0.1", "port": s.rpc_port},
                                   "memory": {"process": {"size": f"{s.jobmanager_memory_mb}m"}}})
        conf["taskmanager"].update({"bind-host": "127.0.0.1", "host": "127.0.0.1", "numberOfTaskSlots": s.taskmanager_slots,
                                    "memory": {"process": {"size": f"{s.taskmanager_memory_mb}m"}}})
        conf["rest"] = {"address": "127.0.0.1", "bind-address": "127.0.0.1", "port": s.rest_port}
        # pemja's native library may be loaded once per JVM: load it parent-first (from lib/), or the second
        # Python job on a TaskManager fails with NoSuchFieldException: loadedLibraryNames.
        conf["classloader"] = {"parent-first-patterns": {"additional": "pemja."}}
        conf["python"] = {"executable": sys.executable, "client": {"executable": sys.executable}}
        conf["env"] = {**conf.get("env", {}), "pid": {"dir": str(self.pid_dir)}}
        conf["io"] = {"tmp": {"dirs": str(self.tmp_dir)}}
        # Flink's Prometheus reporter, from the wheel's plugins/ folder (the cluster's processes read it).
        conf["metrics"] = {**conf.get("metrics", {}), "reporter": {"prom": {
            "factory.class": "org.apache.flink.metrics.prometheus.PrometheusReporterFactory",
            "port": s.prometheus_ports}}}
        (self.conf_dir / "config.yaml").write_text(yaml.safe_dump(conf, sort_keys=False))
        (self.conf_dir / "masters").write_text(f"127.0.0.1:{s.rest_port}\n")
        (self.conf_dir / "workers").write_text("127.0.0.1\n" * s.taskmanagers)   # start-cluster.sh starts one per line

    def _write_lib(self) -> None:
        """The wheel's lib/ plus opt/flink-python (symlinks), so Python support is on the parent classpath."""
        shutil.rmtree(self.lib_dir, ignore_errors=True)
        self.lib_dir.mkdir(parents=True)
        for jar in [*(FLINK_HOME / "lib").glob("*.jar"), *(FLINK_HOME / "opt").glob("flink-python-*.jar")]:
            (self.lib_dir / jar.name).symlink_to(jar)

    def rest(self, path: str, method: str = "GET", body: dict[str, Any] | None = None) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.rest_url + path, method=method, data=data,
                                     headers={"Content-Type": "application/json"} if data else {})
        with urllib.request.urlopen(req, timeout=5) as resp:
            body = resp.read()
        return json.loads(body) if body else None

    def running(self) -> bool:
        return self._taskmanagers() >= 1

    def _taskmanagers(self) -> int:
        try:
            return int(self.rest("/overview")["taskmanagers"])
        except (urllib.error.URLError, OSError, KeyError, ValueError):
            return 0

    def up(self) -> str:
        if self.running():
            return f"flink cluster already running at {self.rest_url}"
        check_java()
        for name, port in (("flink_cluster.rest_port", self.settings.rest_port), ("flink_cluster.rpc_port", self.settings.rpc_port)):
            if not port_is_free(port):
                raise StackError(f"port {port} is busy ({name} in conf/stack.yaml); free it or choose another port")
        self._write_conf()
        proc = subprocess.run([str(FLINK_HOME / "bin" / "start-cluster.sh")], env=self._env(), capture_output=True,
                              text=True, check=False)
        if proc.returncode != 0:
            raise StackError(f"start-cluster.sh failed: {(proc.stdout + proc.stderr).strip()[-300:]}")
        n = self.settings.taskmanagers
        wait_until(lambda: self._taskmanagers() >= n, self.settings.start_timeout_s,
                   f"flink cluster at {self.rest_url} with {n} TaskManager(s)", interval_s=0.5)
        return f"flink cluster started ({n} TaskManager(s) x {self.settings.taskmanager_slots} slot(s)); web UI {self.rest_url}"

    def taskmanager_pids(self) -> list[int]:
        """Live TaskManager processes of this cluster (from its own pid files)."""
        pids = []
        for pid_file in self.pid_dir.glob("*taskexecutor*.pid"):
            for line in pid_file.read_text().split():
                if line.isdigit() and Path(f"/proc/{line}").exists():
                    pids.append(int(line))
        return pids

    def pids(self) -> list[int]:
        """Live JobManager and TaskManager processes of this cluster (from its own pid files)."""
        pids = []
        for pid_file in self.pid_dir.glob("*.pid"):
            pids += [int(x) for x in pid_file.read_text().split() if x.isdigit() and Path(f"/proc/{x}").exists()]
        return pids

    def add_taskmanager(self) -> None:
        """Start one more TaskManager (what a supervisor does after losing one)."""
        proc = subprocess.run([str(FLINK_HOME / "bin" / "taskmanager.sh"), "start"], env=self._env(),
                              capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise StackError(f"taskmanager.sh start failed: {(proc.stdout + proc.stderr).strip()[-300:]}")

    def restart_taskmanagers(self, timeout_s: float = 120) -> None:
        """Replace every TaskManager with a fresh one. In thread mode a TaskManager's Python interpreter keeps
        the modules of the jobs it ran: a new build of a job needs fresh TaskManagers (or a cluster per job)."""
        pids = self.taskmanager_pids()
        for pid in pids:
            os.kill(pid, signal.SIGTERM)
        wait_until(lambda: not any(Path(f"/proc/{p}").exists() for p in pids), timeout_s, "the TaskManagers to stop",
                   interval_s=0.5)
        for _ in pids:
            self.add_taskmanager()
        slots = len(pids) * self.settings.taskmanager_slots

        def fresh() -> bool:
            overview = self.rest("/overview")
            return int(overview["taskmanagers"]) == len(pids) and int(overview["slots-available"]) == slots
        wait_until(fresh, timeout_s, f"{len(pids)} fresh TaskManager(s)", interval_s=0.5)

    def down(self) -> str:
        if not self.conf_dir.exists():
            return "flink cluster was not running"
        subprocess.run([str(FLINK_HOME / "bin" / "stop-cluster.sh")], env=self._env(), capture_output=True, check=False)
        wait_until(lambda: not self.running(), 30, "stopping the flink cluster", interval_s=0.5)
        return "flink cluster stopped"

    def submit(self, module: str, job_args: list[str], jars: list[Path], detach: bool = True,
               from_savepoint: str | None = None, allow_non_restored_state: bool = False, root: Path = ROOT) -> str:
        """``flink run -d -py`` the job module; returns the job id. ``detach=False`` returns when the job has ended.

        ``from_savepoint`` restores the job's state and Kafka offsets from a savepoint (or retained checkpoint);
        ``allow_non_restored_state`` lets it drop state of operators the new job no longer has (explicitly).
        ``root``: another checkout of the project (an older build, for upgrade tests), shipped to the workers
        with ``-pyfs`` and put first on the client's path, so its modules are the ones that run.
        """
        if not self.running():
            raise StackError(f"no flink cluster at {self.rest_url}; start it with `persona cluster up`")
        script = root / Path(*module.split(".")).with_suffix(".py")
        cmd = [str(FLINK_HOME / "bin" / "flink"), "run", *(["-d"] if detach else []),
               "-m", f"127.0.0.1:{self.settings.rest_port}",
               "-py", str(script), "-pyexec", sys.executable, "-pyclientexec", sys.executable]
        env = self._env()
        if root != ROOT:
            cmd += ["-pyfs", str(root)]
            env["PYTHONPATH"] = str(root) + os.pathsep + env.get("PYTHONPATH", "")
        if from_savepoint:
            cmd += ["-s", from_savepoint, *(["--allowNonRestoredState"] if allow_non_restored_state else [])]
        # `flink run` takes one --jarfile; the others (the batching operator) go on the user classpath, a URL each
        # node can read (this machine's files, for the local cluster).
        for i, jar in enumerate(jars):
            cmd += ["--jarfile", str(jar)] if i == 0 else ["-C", jar.resolve().as_uri()]
        cmd += ["--deployment", "cluster", *job_args]
        proc = subprocess.run(cmd, env=env, cwd=root, capture_output=True, text=True, check=False)
        match = re.search(r"JobID ([0-9a-f]{32})", proc.stdout + proc.stderr)
        if proc.returncode != 0 or not match:
            raise StackError(f"flink run failed: {(proc.stdout + proc.stderr).strip()[-600:]}")
        return match.group(1)

    def job_status(self, job_id: str) -> str:
        return str(self.rest(f"/jobs/{job_id}")["state"])

    def cancel(self, job_id: str) -> None:
        self.rest(f"/jobs/{job_id}?mode=cancel", method="PATCH")

    def stop_with_savepoint(self, job_id: str, directory: str, timeout_s: float = 300) -> str:
        """Stop the job with a savepoint in ``directory`` (a path or Flink URI); returns the savepoint's location.

        Sources stop first and the sinks flush, so nothing the job emitted is emitted again after a restore.
        """
        target = directory if "://" in directory else Path(directory).resolve().as_uri()
        trigger = self.rest(f"/jobs/{job_id}/stop", method="POST", body={"targetDirectory": target, "drain": False})
        status: dict[str, Any] = {}

        def done() -> bool:
            status.update(self.rest(f"/jobs/{job_id}/savepoints/{trigger['request-id']}"))
            return bool(status.get("status", {}).get("id") == "COMPLETED")
        wait_until(done, timeout_s, f"savepoint of job {job_id}", interval_s=0.5)
        op = status.get("operation") or {}
        if "location" not in op:
            raise StackError(f"savepoint of job {job_id} failed: {str(op.get('failure-cause', op))[:600]}")
        return str(op["location"])
