"""A private schema registry (scripts/lib/schema_registry.py on a port of its own), for the tests
that stop one: the stack's shared registry serves the other test processes meanwhile."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from support import ROOT

SERVER = ROOT / "scripts" / "lib" / "schema_registry.py"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class PrivateRegistry:
    """start() and stop() at will; the schemas (and their ids) survive in `data`."""

    def __init__(self, data: Path, port: int | None = None):
        self.data, self.port = data, port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(SERVER), "--port", str(self.port), "--data", str(self.data)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                urllib.request.urlopen(f"{self.url}/subjects", timeout=1).close()
                return
            except OSError:
                time.sleep(0.1)
        raise AssertionError(f"the private registry did not answer on {self.url}")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None
