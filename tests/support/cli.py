"""Running the real `finpulse` CLI in subprocesses, as a user would."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from finpulse.config import Settings
from support import ROOT


def env_for(s: Settings, **extra: str) -> dict[str, str]:
    """Environment that makes a `finpulse` subprocess use the same topic, schema and table as `s`."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("KAFKA_", "POSTGRES_", "DELTA_", "AZURE_", "FINPULSE_", "SCHEMA_REGISTRY_"))
    }
    env.update(
        KAFKA_BOOTSTRAP_SERVERS=s.kafka_bootstrap_servers,
        KAFKA_TOPIC=s.kafka_topic,
        KAFKA_GROUP_ID=s.kafka_group_id,
        POSTGRES_HOST=s.postgres_host,
        POSTGRES_PORT=str(s.postgres_port),
        POSTGRES_DB=s.postgres_db,
        POSTGRES_USER=s.postgres_user,
        POSTGRES_SCHEMA=s.postgres_schema,
        POSTGRES_PASSWORD=s.postgres_password.get_secret_value() if s.postgres_password else "",
        DELTA_TABLE_URI=s.delta_uri,
        PYTHONUNBUFFERED="1",
    )
    if s.schema_registry_url:
        env["SCHEMA_REGISTRY_URL"] = s.schema_registry_url
    env.update(extra)
    return env


def finpulse(
    *args: str, env: dict[str, str], check: bool = True, timeout: float = 300, **kw
) -> subprocess.CompletedProcess:
    """Run the real CLI in a subprocess, as a user would."""
    proc = subprocess.run(
        [sys.executable, "-m", "finpulse", *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        **kw,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"finpulse {' '.join(args)} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc


def start_ingest(env, *args) -> subprocess.Popen:
    """`finpulse ingest` in its own process group, so a test can kill the whole group."""
    return subprocess.Popen(
        [sys.executable, "-m", "finpulse", "ingest", *args],
        env=env,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


def finish(proc: subprocess.Popen, timeout: float = 300) -> str:
    """Wait for a `start_ingest` run to end by itself and succeed; its output. A hang kills the group."""
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        raise AssertionError(f"ingest still running after {timeout}s:\n{out[-6000:]}") from None
    assert proc.returncode == 0, f"ingest exited {proc.returncode}:\n{out[-4000:]}"
    return out


def processes() -> dict[int, tuple[int, bytes]]:
    """Every live process (zombies left out): pid -> (parent pid, command line)."""
    out: dict[int, tuple[int, bytes]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            cmdline = (stat.parent / "cmdline").read_bytes()
        except OSError:
            continue  # the process ended while we looked
        if fields[0] != "Z":
            out[int(stat.parent.name)] = (int(fields[1]), cmdline)
    return out


def descendants(pid: int, procs: dict[int, tuple[int, bytes]] | None = None) -> set[int]:
    """Children of `pid`, their children, and so on."""
    procs = processes() if procs is None else procs
    found: set[int] = set()
    parents = {pid}
    while parents:
        parents = {p for p, (ppid, _) in procs.items() if ppid in parents} - found
        found |= parents
    return found


def children(pid: int) -> list[int]:
    """Worker processes of a supervisor: the children of its fork server (multiprocessing's
    resource tracker is a child too, and so were the workers before the fork server)."""
    procs = processes()
    servers = {p for p, (ppid, cmd) in procs.items() if ppid == pid and b"forkserver" in cmd}
    return [
        p
        for p, (ppid, cmd) in procs.items()
        if (ppid == pid or ppid in servers) and p not in servers and b"resource_tracker" not in cmd
    ]
