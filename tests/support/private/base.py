"""What the private services share: free ports, waiting for readiness, stopping a server we
started, the `Service` base class, and their lifetime (`running`, `close_all` at interpreter exit)."""

from __future__ import annotations

import atexit
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import pytest

from support import ROOT

STACK = ROOT / ".stack"
INSTALL_HINT = "run `scripts/services up` once: it installs the local stack's binaries"
READY_TIMEOUT_S = 120.0

_live: list[Service] = []  # everything started and not yet closed, for the atexit hook


def missing(what: str) -> None:
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


def wait_ready(
    ready, what: str, log: Path, proc: subprocess.Popen | None = None, timeout: float = READY_TIMEOUT_S
) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"private {what} exited with {proc.returncode} during start-up; {log}:\n{tail(log)}")
        if ready():
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"private {what} not ready after {timeout:.0f}s; {log}:\n{tail(log)}")
        time.sleep(0.3)


def stop_process(proc: subprocess.Popen | None, sig: int = signal.SIGKILL, grace: float = 30.0) -> None:
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


class Service:
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
