"""Private instances of the local stack's services, for tests that stop and start them.

The shared services (Kafka :29092, PostgreSQL :5433, Azurite :10000) are used by other tests and
by people at the same time, so a fault test must never stop them. This module starts its own
PostgreSQL, Kafka and Azurite on free ports, with their state in a temporary directory, from the
binaries that `scripts/services up` installs:

  PostgreSQL  Debian's initdb/pg_ctl/postgres under /usr/lib/postgresql/<major>/bin
  Kafka       the jars Maven resolved into .stack/kafka/libs (Kafka 4.x, KRaft), run with `java`
  Azurite     the npm install in .stack/azurite/node_modules/.bin/azurite-blob, run with `node`

A missing binary fails the test (never skips) with what to run. Each service can be stopped and
started again on the same data, and `close()` stops everything this module started: the
fixtures call it in their teardown, and an atexit hook calls it again as a last resort.
"""

from __future__ import annotations

import atexit
import base64
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from contextlib import contextmanager
from pathlib import Path

import psycopg
import pytest

ROOT = Path(__file__).resolve().parent.parent
STACK = ROOT / ".stack"
INSTALL_HINT = "run `scripts/services up` once: it installs the local stack's binaries"
READY_TIMEOUT_S = 120.0

PG_USER = PG_DB = "finpulse"
PG_PASSWORD = "finpulse-private"
AZURITE_ACCOUNT = "devstoreaccount1"
AZURITE_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
AZURITE_CONTAINER = "delta-lake"

_live: list[_Service] = []  # everything started and not yet closed, for the atexit hook


def _missing(what: str) -> None:
    pytest.fail(f"cannot start a private {what}; {INSTALL_HINT}", pytrace=False)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_open(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


def tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _wait(ready, what: str, log: Path, proc: subprocess.Popen | None = None, timeout: float = READY_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"private {what} exited with {proc.returncode} during start-up; {log}:\n{tail(log)}")
        if ready():
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"private {what} not ready after {timeout:.0f}s; {log}:\n{tail(log)}")
        time.sleep(0.3)


def _stop_process(proc: subprocess.Popen | None, sig: int = signal.SIGKILL, grace: float = 30.0) -> None:
    """Signal a server we started (its own session) and reap it; SIGKILL after `grace`."""
    if proc is None or proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        pass
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)


class _Service:
    name = "service"

    def __init__(self, base: Path):
        self.base = base
        self.base.mkdir(parents=True, exist_ok=True)
        self.log = base / f"{self.name}.log"
        self.port = free_port()
        _live.append(self)  # from here on close() (or the atexit hook) cleans up, even half-way

    def close(self) -> None:
        self._halt()
        if self in _live:
            _live.remove(self)
        shutil.rmtree(self.base, ignore_errors=True)

    def _halt(self) -> None:
        raise NotImplementedError


# ============================================================================ PostgreSQL
def _pg_bin() -> Path:
    """The newest installed major version's bin dir (scripts/services installs Debian's package)."""
    for d in sorted(
        Path("/usr/lib/postgresql").glob("*/bin"),
        key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0,
        reverse=True,
    ):
        if all((d / b).exists() for b in ("initdb", "pg_ctl", "postgres")):
            return d
    _missing("PostgreSQL: no initdb/pg_ctl/postgres under /usr/lib/postgresql/*/bin")
    raise AssertionError  # unreachable


class PrivatePostgres(_Service):
    """A cluster of its own: role and database `finpulse` (password auth on TCP), fsync on."""

    name = "postgres"

    def __init__(self, base: Path):
        self.bin = _pg_bin()
        self.as_user: list[str] = []
        pw = None
        if os.geteuid() == 0:  # PostgreSQL refuses to run as root: use Debian's `postgres` account
            try:
                pw = pwd.getpwnam("postgres")
            except KeyError:
                _missing("PostgreSQL: no `postgres` system user to run the server as root")
            self.as_user = ["runuser", "-u", "postgres", "--"]
        self.data = base / "data"
        self.socket_dir = base / "run"
        super().__init__(base)
        if pw is not None:
            os.chown(base, pw.pw_uid, pw.pw_gid)
        self._run_as(["mkdir", "-p", str(self.socket_dir)])
        pwfile = base / "pwfile"
        pwfile.write_text(PG_PASSWORD + "\n")
        if pw is not None:
            os.chown(pwfile, pw.pw_uid, pw.pw_gid)
        self._run_as(
            [
                str(self.bin / "initdb"),
                "-D",
                str(self.data),
                "-U",
                PG_USER,
                f"--pwfile={pwfile}",
                "--auth=scram-sha-256",
                "--encoding=UTF8",
                "--locale=C",
                "--no-sync",
            ]
        )
        conf = (
            f"\nport = {self.port}\nlisten_addresses = '127.0.0.1'\n"
            f"unix_socket_directories = '{self.socket_dir}'\nmax_connections = 60\n"
            "shared_buffers = 64MB\nfsync = on\nsynchronous_commit = on\n"
            "wal_level = minimal\nmax_wal_senders = 0\nlogging_collector = off\n"
        )
        self._run_as(["sh", "-c", f"cat >> {self.data}/postgresql.conf"], input=conf)
        self.start()
        with psycopg.connect(self.conninfo("postgres"), autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {PG_DB}")

    def _run_as(self, cmd: list[str], input: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
        proc = subprocess.run(
            self.as_user + cmd,
            cwd="/",
            input=input,
            capture_output=True,
            text=True,
            timeout=READY_TIMEOUT_S,
            start_new_session=True,
        )
        if check and proc.returncode != 0:
            raise AssertionError(
                f"private postgres: {' '.join(cmd)} exited {proc.returncode}:\n"
                f"{proc.stdout}{proc.stderr}\n{self.log}:\n{tail(self.log)}"
            )
        return proc

    def conninfo(self, db: str = PG_DB) -> str:
        return f"host=127.0.0.1 port={self.port} dbname={db} user={PG_USER} password={PG_PASSWORD} connect_timeout=5"

    @property
    def settings_overrides(self) -> dict:
        return {
            "postgres_host": "127.0.0.1",
            "postgres_port": self.port,
            "postgres_db": PG_DB,
            "postgres_user": PG_USER,
            "postgres_password": PG_PASSWORD,
        }

    def running(self) -> bool:
        return self._run_as([str(self.bin / "pg_ctl"), "status", "-D", str(self.data)], check=False).returncode == 0

    def start(self) -> None:
        # pg_ctl's -l log is opened by the server user, so it lives in the cluster's own dir
        self._run_as([str(self.bin / "pg_ctl"), "start", "-D", str(self.data), "-w", "-t", "60", "-l", str(self.log)])

        def ready() -> bool:
            try:
                psycopg.connect(self.conninfo("postgres")).close()
                return True
            except psycopg.Error:
                return False

        _wait(ready, "postgres", self.log)

    def stop(self, mode: str = "immediate") -> None:
        """`immediate`: the server quits without a checkpoint, as in a crash (WAL recovery on start)."""
        self._run_as([str(self.bin / "pg_ctl"), "stop", "-D", str(self.data), "-m", mode, "-w", "-t", "60"])

    def _halt(self) -> None:
        if self.data.joinpath("postmaster.pid").exists():
            self._run_as(
                [str(self.bin / "pg_ctl"), "stop", "-D", str(self.data), "-m", "immediate", "-w", "-t", "60"],
                check=False,
            )


# ============================================================================ Kafka
class PrivateKafka(_Service):
    """A single KRaft node (broker + controller), configured as scripts/services configures the
    shared one, on two free ports, its log dirs kept across restarts."""

    name = "kafka"

    def __init__(self, base: Path):
        self.libs = STACK / "kafka" / "libs"
        self.java = shutil.which("java")
        if self.java is None:
            _missing("Kafka: `java` is not on PATH")
        if not list(self.libs.glob("kafka_*.jar")):
            _missing(f"Kafka: no Kafka jars in {self.libs}")
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
        _wait(self._answers, "kafka", self.log, self.proc)

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
        _stop_process(self.proc, signal.SIGKILL)

    def _halt(self) -> None:
        _stop_process(self.proc, signal.SIGKILL)


# ============================================================================ Azurite
class PrivateAzurite(_Service):
    """Azurite's blob service with the container `delta-lake`. delta-rs (object_store) sends
    emulator traffic to $AZURITE_BLOB_STORAGE_URL, so `env` points a process at this instance."""

    name = "azurite"

    def __init__(self, base: Path):
        self.bin = STACK / "azurite" / "node_modules" / ".bin" / "azurite-blob"
        if not self.bin.exists():
            _missing(f"Azurite: {self.bin} is missing")
        if shutil.which("node") is None:
            _missing("Azurite: `node` is not on PATH")
        self.proc: subprocess.Popen | None = None
        super().__init__(base)
        self.data = base / "data"
        self.data.mkdir(exist_ok=True)
        self.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def env(self) -> dict[str, str]:
        return {
            "AZURE_STORAGE_ACCOUNT_NAME": AZURITE_ACCOUNT,
            "AZURE_STORAGE_ACCOUNT_KEY": AZURITE_KEY,
            "AZURE_STORAGE_USE_EMULATOR": "true",
            "AZURE_CONTAINER_NAME": AZURITE_CONTAINER,
            "AZURITE_BLOB_STORAGE_URL": self.url,
        }

    def start(self) -> None:
        assert self.proc is None or self.proc.poll() is not None, "private azurite is already running"
        with self.log.open("a") as out:
            out.write(f"\n===== {time.strftime('%H:%M:%S')} starting private azurite =====\n")
            out.flush()
            self.proc = subprocess.Popen(
                [
                    str(self.bin),
                    "--blobHost",
                    "127.0.0.1",
                    "--blobPort",
                    str(self.port),
                    "--location",
                    str(self.data),
                    "--skipApiVersionCheck",
                    "--loose",
                    "--disableTelemetry",
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        script = ROOT / "scripts" / "lib" / "azurite_container.py"

        def ready() -> bool:
            if not port_open(self.port):
                return False
            return (
                subprocess.run(
                    [
                        sys.executable,
                        str(script),
                        "--endpoint",
                        f"{self.url}/{AZURITE_ACCOUNT}",
                        "ensure",
                        AZURITE_CONTAINER,
                    ],
                    capture_output=True,
                    timeout=30,
                ).returncode
                == 0
            )

        _wait(ready, "azurite", self.log, self.proc)

    def stop(self) -> None:
        """Stop answering. SIGTERM, not SIGKILL: Azurite keeps blob metadata in memory and saves it
        every 5 s, so a SIGKILL would lose writes it acknowledged, which Azure itself never does."""
        _stop_process(self.proc, signal.SIGTERM, grace=30)

    def _halt(self) -> None:
        _stop_process(self.proc, signal.SIGKILL)


# ============================================================================ lifetime
def new_base(name: str) -> Path:
    """A fresh directory for one service. Under the system temp dir, not pytest's (mode 700 under
    root): PostgreSQL runs as the `postgres` user, which must be able to reach its data dir."""
    base = Path(tempfile.mkdtemp(prefix=f"finpulse-private-{name}-"))
    base.chmod(0o755)
    return base


@contextmanager
def running(cls):
    """A started instance of `cls`; on exit it is stopped and its directory removed, as is anything
    the start left half-way (a start that fails raises with the service log's tail)."""
    before = list(_live)
    base = new_base(cls.name)
    try:
        yield cls(base)
    finally:
        for service in [s for s in _live if s not in before]:
            service.close()
        shutil.rmtree(base, ignore_errors=True)


def close_all() -> None:
    for service in list(_live):
        try:
            service.close()
        except Exception as exc:  # keep stopping the others
            print(f"private {service.name}: close failed: {exc}", file=sys.stderr)


atexit.register(close_all)
