"""A Redis server from the local `redis-server` binary (Debian's package), without persistence."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import redis

from persona.settings import RedisServiceSettings
from persona.stack.prereqs import redis_server_binary
from persona.stack.procs import StackError, port_is_free, read_pid, spawn, stop_pid, tail, wait_until

PROFILE_LISTPACK_VALUE = 512


@dataclass(frozen=True)
class RedisServer:
    run_dir: Path
    settings: RedisServiceSettings
    password: str | None = None   # requirepass, written to a config file (never on the command line, where `ps` shows it)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.settings.port}/0"

    @property
    def pid_file(self) -> Path:
        return self.run_dir / "redis.pid"

    @property
    def log_file(self) -> Path:
        return self.run_dir / "redis.log"

    def running(self) -> int | None:
        return read_pid(self.pid_file)

    def up(self) -> str:
        if (pid := self.running()) is not None:
            return f"redis already running (pid {pid}) at {self.url}"
        binary = redis_server_binary()
        port = self.settings.port
        if not port_is_free(port):
            raise StackError(f"port {port} is busy (redis.port in conf/stack.yaml); free it or choose another port")
        self.run_dir.mkdir(parents=True, exist_ok=True)
        conf = self.run_dir / "redis.conf"
        conf.touch(mode=0o600)
        conf.write_text(f"requirepass {self.password}\n" if self.password else "")
        cmd = [binary, str(conf), "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
               "--dir", str(self.run_dir), "--daemonize", "no",
               # A profile hash has ~30 fields, two of them (windows, rfm) over Redis's default 64-byte limit
               # of the compact listpack encoding: with 512 a profile takes ~1.2 KB instead of ~2.9 KB.
               # docs/contract.md "Redis profiles" asks operators to set the same on their servers.
               "--hash-max-listpack-value", str(PROFILE_LISTPACK_VALUE)]
        pid = spawn(cmd, self.log_file, self.pid_file)
        wait_until(self._pings, self.settings.start_timeout_s, f"redis at {self.url}",
                   failed=lambda: None if self.running() else f"exited while starting: {tail(self.log_file)}")
        return f"redis started (pid {pid}) at {self.url}"

    def down(self) -> str:
        return "redis stopped" if stop_pid(self.pid_file) else "redis was not running"

    def _pings(self) -> bool:
        try:
            return bool(redis.Redis.from_url(self.url, socket_connect_timeout=0.5, password=self.password).ping())
        except redis.exceptions.ConnectionError:
            return False
