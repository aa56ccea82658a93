"""A private PostgreSQL cluster, from Debian's initdb/pg_ctl/postgres under /usr/lib/postgresql/<major>/bin."""

from __future__ import annotations

import os
import pwd
import subprocess
from pathlib import Path

import psycopg

from support.private.base import READY_TIMEOUT_S, Service, missing, tail, wait_ready

PG_USER = PG_DB = "finpulse"
PG_PASSWORD = "finpulse-private"


def _pg_bin() -> Path:
    """The newest installed major version's bin dir (scripts/services installs Debian's package)."""
    for d in sorted(
        Path("/usr/lib/postgresql").glob("*/bin"),
        key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0,
        reverse=True,
    ):
        if all((d / b).exists() for b in ("initdb", "pg_ctl", "postgres")):
            return d
    missing("PostgreSQL: no initdb/pg_ctl/postgres under /usr/lib/postgresql/*/bin")
    raise AssertionError  # unreachable


class PrivatePostgres(Service):
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
                missing("PostgreSQL: no `postgres` system user to run the server as root")
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

        wait_ready(ready, "postgres", self.log)

    def stop(self, mode: str = "immediate") -> None:
        """`immediate`: the server quits without a checkpoint, as in a crash (WAL recovery on start)."""
        self._run_as([str(self.bin / "pg_ctl"), "stop", "-D", str(self.data), "-m", mode, "-w", "-t", "60"])

    def _halt(self) -> None:
        if self.data.joinpath("postmaster.pid").exists():
            self._run_as(
                [str(self.bin / "pg_ctl"), "stop", "-D", str(self.data), "-m", "immediate", "-w", "-t", "60"],
                check=False,
            )
