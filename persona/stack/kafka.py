"""A single-node Kafka broker in KRaft mode, run from the official Maven jars."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path
from string import Template

from persona.settings import ROOT, KafkaServiceSettings
from persona.stack.prereqs import check_java
from persona.stack.procs import StackError, port_is_free, read_pid, spawn, stop_pid, tail, wait_until

TEMPLATE = ROOT / "docker" / "kafka" / "server.properties.template"
LOG4J = ROOT / "docker" / "kafka" / "log4j2.properties"
READY_LINE = "Kafka Server started"


@dataclass(frozen=True)
class KafkaBroker:
    run_dir: Path        # this broker's folder: config, data, log, pid
    jars_dir: Path       # the resolved kafka jars
    settings: KafkaServiceSettings
    sasl_user: tuple[str, str] | None = None   # (username, password) accepted on settings.sasl_port (PLAIN)

    @property
    def sasl_bootstrap(self) -> str:
        return f"127.0.0.1:{self.settings.sasl_port}"

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.settings.port}"

    @property
    def pid_file(self) -> Path:
        return self.run_dir / "kafka.pid"

    @property
    def log_file(self) -> Path:
        return self.run_dir / "kafka.log"

    def running(self) -> int | None:
        return read_pid(self.pid_file)

    def up(self) -> str:
        if (pid := self.running()) is not None:
            return f"kafka already running (pid {pid}) on {self.bootstrap}"
        check_java()
        ports = [("kafka.port", self.settings.port), ("kafka.controller_port", self.settings.controller_port)]
        if self.settings.sasl_port:
            ports.append(("kafka.sasl_port", self.settings.sasl_port))
        for name, port in ports:
            if not port_is_free(port):
                raise StackError(f"port {port} is busy ({name} in conf/stack.yaml); free it or choose another port")
        props = self._render()
        self._format_storage(props)
        cmd = ["java", f"-Xms{min(256, self.settings.heap_mb)}m", f"-Xmx{self.settings.heap_mb}m",
               "-cp", f"{self.jars_dir}/*", f"-Dlog4j2.configurationFile={LOG4J}",
               "kafka.Kafka", str(props)]
        offset = self.log_file.stat().st_size if self.log_file.exists() else 0
        pid = spawn(cmd, self.log_file, self.pid_file)
        wait_until(lambda: self._log_since(offset).find(READY_LINE) >= 0, self.settings.start_timeout_s,
                   f"kafka on {self.bootstrap}",
                   failed=lambda: None if self.running() else f"exited while starting: {tail(self.log_file)}")
        return f"kafka started (pid {pid}) on {self.bootstrap}"

    def down(self) -> str:
        return "kafka stopped" if stop_pid(self.pid_file) else "kafka was not running"

    def _render(self) -> Path:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        props = self.run_dir / "server.properties"
        text = Template(TEMPLATE.read_text()).substitute(
            port=self.settings.port, controller_port=self.settings.controller_port,
            data_dir=self.run_dir / "data")
        s = self.settings
        if s.sasl_port and self.sasl_user:
            # A SASL_PLAINTEXT listener beside the plaintext one (inter-broker and controller traffic stay plaintext);
            # later keys override earlier ones in a properties file. The file is the broker's own (mode 0600).
            user, password = self.sasl_user
            listeners = (f"PLAINTEXT://127.0.0.1:{s.port},CONTROLLER://127.0.0.1:{s.controller_port},"
                         f"SASL_PLAINTEXT://127.0.0.1:{s.sasl_port}")
            text += (f"\nlisteners={listeners}\nadvertised.listeners={listeners}\n"
                     "listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT,SASL_PLAINTEXT:SASL_PLAINTEXT\n"
                     "sasl.enabled.mechanisms=PLAIN\n"
                     "listener.name.sasl_plaintext.plain.sasl.jaas.config=org.apache.kafka.common.security.plain."
                     f'PlainLoginModule required username="{user}" password="{password}" user_{user}="{password}";\n')
        props.touch(mode=0o600)
        props.write_text(text)
        return props

    def _format_storage(self, props: Path) -> None:
        if (self.run_dir / "data" / "meta.properties").exists():
            return
        base = ["java", "-cp", f"{self.jars_dir}/*", f"-Dlog4j2.configurationFile={LOG4J}", "kafka.tools.StorageTool"]
        cluster_id = subprocess.run(base + ["random-uuid"], capture_output=True, text=True, check=False).stdout.strip()
        fmt = subprocess.run(base + ["format", "-t", cluster_id, "-c", str(props), "--standalone"],
                             capture_output=True, text=True, check=False)
        if fmt.returncode != 0 or not cluster_id:
            raise StackError(f"kafka storage format failed: {(fmt.stdout + fmt.stderr).strip()[-300:]}")

    def _log_since(self, offset: int) -> str:
        try:
            with open(self.log_file, "rb") as f:
                f.seek(offset)
                return f.read().decode(errors="replace")
        except OSError:
            return ""
