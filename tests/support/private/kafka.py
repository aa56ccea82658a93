"""A private Kafka (4.x, KRaft) node, from the jars Maven resolved into .stack/kafka/libs, run with `java`."""

from __future__ import annotations

import base64
import shutil
import signal
import subprocess
import time
import uuid
from pathlib import Path

from support.private.base import (
    READY_TIMEOUT_S,
    ROOT,
    STACK,
    Service,
    free_port,
    missing,
    port_open,
    stop_process,
    wait_ready,
)


class PrivateKafka(Service):
    """A single KRaft node (broker + controller), configured as scripts/services configures the
    shared one, on two free ports, its log dirs kept across restarts."""

    name = "kafka"

    def __init__(self, base: Path):
        self.libs = STACK / "kafka" / "libs"
        self.java = shutil.which("java")
        if self.java is None:
            missing("Kafka: `java` is not on PATH")
        if not list(self.libs.glob("kafka_*.jar")):
            missing(f"Kafka: no Kafka jars in {self.libs}")
        self.proc: subprocess.Popen | None = None
        super().__init__(base)
        self.controller_port = free_port()
        self.data = base / "data"
        self.config = base / "server.properties"
        self.config.write_text(f"""\
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:{self.controller_port}
controller.listener.names=CONTROLLER
listeners=PLAINTEXT://127.0.0.1:{self.port},CONTROLLER://127.0.0.1:{self.controller_port}
advertised.listeners=PLAINTEXT://127.0.0.1:{self.port}
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
log.dirs={self.data}
num.partitions=4
default.replication.factor=1
offsets.topic.replication.factor=1
# a few group-offset partitions instead of 50: less to create and to reload after a restart
offsets.topic.num.partitions=4
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
auto.create.topics.enable=false
# After a SIGKILL the restarted node waits for its old registration's session to time out before
# it registers again: 2 s instead of 9 s keeps a restart short
broker.session.timeout.ms=2000
broker.heartbeat.interval.ms=500
""")
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
        tools_log = ROOT / "scripts" / "kafka" / "tools-log4j2.properties"
        fmt = subprocess.run(
            [
                self.java,
                f"-Dlog4j2.configurationFile={tools_log}",
                "-cp",
                f"{self.libs}/*",
                "kafka.tools.StorageTool",
                "format",
                "-t",
                cluster_id,
                "-c",
                str(self.config),
            ],
            capture_output=True,
            text=True,
            timeout=READY_TIMEOUT_S,
        )
        if fmt.returncode != 0:
            raise AssertionError(f"private kafka: formatting {self.data} failed:\n{fmt.stdout}{fmt.stderr}")
        self.start()

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        assert self.proc is None or self.proc.poll() is not None, "private kafka is already running"
        server_log = ROOT / "scripts" / "kafka" / "log4j2.properties"
        with self.log.open("a") as out:
            out.write(f"\n===== {time.strftime('%H:%M:%S')} starting private kafka =====\n")
            out.flush()
            self.proc = subprocess.Popen(
                [
                    self.java,
                    "-Xms128m",
                    "-Xmx512m",
                    "-XX:+UseG1GC",
                    "-XX:MaxGCPauseMillis=20",
                    "-Djava.awt.headless=true",
                    f"-Dlog4j2.configurationFile={server_log}",
                    "-cp",
                    f"{self.libs}/*",
                    "kafka.Kafka",
                    str(self.config),
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        wait_ready(self._answers, "kafka", self.log, self.proc)

    def _answers(self) -> bool:
        from confluent_kafka.admin import AdminClient

        if not port_open(self.port):
            return False
        try:
            md = AdminClient({"bootstrap.servers": self.bootstrap, "log_level": 0}).list_topics(timeout=3)
        except Exception:
            return False
        return bool(md.brokers)

    def kill(self) -> None:
        """SIGKILL the broker: a crash. Its data stays in the page cache and the log dirs."""
        stop_process(self.proc, signal.SIGKILL)

    def _halt(self) -> None:
        stop_process(self.proc, signal.SIGKILL)
