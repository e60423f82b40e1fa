"""A real Redis Cluster on this machine: masters with a replica each, from the local ``redis-server`` binary.

Started the way an operator would (``redis-server --cluster-enabled yes`` per node, then ``redis-cli --cluster
create``), for the tests that prove the project works on Redis Cluster, failover included. Every node is a
process of this checkout, stopped by its pid.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import redis

from persona.stack.prereqs import redis_server_binary
from persona.stack.procs import StackError, pid_alive, port_is_free, read_pid, spawn, stop_pid, tail, wait_until
from persona.stack.redis_server import PROFILE_LISTPACK_VALUE

BUS_OFFSET = 10_000   # a node's cluster bus listens on its port + 10000


@dataclass
class LocalRedisCluster:
    run_dir: Path
    masters: int = 3
    replicas: int = 1
    node_timeout_ms: int = 1_000   # a master that stops answering this long is failed over to its replica
    start_timeout_s: float = 30.0
    ports: list[int] = field(default_factory=list)

    @property
    def url(self) -> str:
        """A seed node: the cluster client discovers the others."""
        return f"redis://127.0.0.1:{self.ports[0]}/0"

    def up(self) -> str:
        binary, cli = redis_server_binary(), shutil.which("redis-cli")
        if cli is None:
            raise StackError("redis-cli not found: install Debian's redis-tools (it comes with redis-server)")
        self.ports = _free_ports(self.masters * (1 + self.replicas))
        for port in self.ports:
            node = self.run_dir / str(port)
            node.mkdir(parents=True, exist_ok=True)
            spawn([binary, "--port", str(port), "--bind", "127.0.0.1", "--cluster-enabled", "yes",
                   "--cluster-config-file", str(node / "nodes.conf"), "--cluster-node-timeout", str(self.node_timeout_ms),
                   "--save", "", "--appendonly", "no", "--dir", str(node), "--daemonize", "no",
                   "--hash-max-listpack-value", str(PROFILE_LISTPACK_VALUE)], node / "redis.log", node / "redis.pid")
        for port in self.ports:
            wait_until(lambda p=port: self._pings(p), self.start_timeout_s, f"redis cluster node :{port}",
                       failed=lambda p=port: None if self.pid(p) else f"exited: {tail(self.run_dir / str(p) / 'redis.log')}")
        create = subprocess.run([cli, "--cluster", "create", *(f"127.0.0.1:{p}" for p in self.ports),
                                 "--cluster-replicas", str(self.replicas), "--cluster-yes"],
                                capture_output=True, text=True, timeout=60)
        if create.returncode != 0:
            self.down()
            raise StackError(f"redis-cli --cluster create failed: {create.stdout[-500:]} {create.stderr[-500:]}")
        wait_until(self.healthy, self.start_timeout_s, "redis cluster: every slot served, every node agreeing")
        return f"redis cluster started: {self.masters} masters, {self.replicas} replica(s) each, ports {self.ports}"

    def down(self) -> None:
        for port in self.ports:
            stop_pid(self.run_dir / str(port) / "redis.pid")

    def pid(self, port: int) -> int | None:
        return read_pid(self.run_dir / str(port) / "redis.pid")

    def master_of(self, key: str) -> int:
        """The port of the master serving ``key``'s slot now."""
        client = redis.Redis(port=self._live_port(), socket_timeout=2, decode_responses=True)
        slot = int(client.execute_command("CLUSTER KEYSLOT", key))
        for start, end, master, *_ in client.execute_command("CLUSTER SLOTS"):
            if int(start) <= slot <= int(end):
                return int(master[1])
        raise StackError(f"no master serves slot {slot}")

    def kill(self, port: int) -> None:
        """SIGKILL one node (a crash, not a shutdown): its replica takes over after ``node_timeout_ms``."""
        pid = self.pid(port)
        if pid is None:
            raise StackError(f"node :{port} is not running")
        os.kill(pid, signal.SIGKILL)   # our own node, by the pid recorded at spawn
        wait_until(lambda: not pid_alive(pid), 10, f"killing node :{port}")
        (self.run_dir / str(port) / "redis.pid").unlink(missing_ok=True)

    def healthy(self) -> bool:
        """Every live node says the cluster is ok and every slot is served."""
        live = [p for p in self.ports if self.pid(p) is not None]
        try:
            for port in live:
                info = redis.Redis(port=port, socket_timeout=1, decode_responses=True).execute_command("CLUSTER INFO")
                if info.get("cluster_state") != "ok" or info.get("cluster_slots_ok") != "16384":   # parsed by redis-py
                    return False
        except redis.RedisError:
            return False
        return bool(live)

    def _live_port(self) -> int:
        return next(p for p in self.ports if self.pid(p) is not None)

    @staticmethod
    def _pings(port: int) -> bool:
        try:
            return bool(redis.Redis(port=port, socket_connect_timeout=0.5).ping())
        except redis.exceptions.ConnectionError:
            return False


def _free_ports(n: int) -> list[int]:
    """``n`` consecutive ports free with their bus ports (port + 10000), in 20000-29999 + n."""
    for _ in range(200):
        base = random.randrange(20_000, 30_000 - n)
        ports = list(range(base, base + n))
        if all(port_is_free(p) and port_is_free(p + BUS_OFFSET) for p in ports):
            return ports
    raise StackError(f"no {n} consecutive free ports (with their cluster bus ports) in 20000-40000")

