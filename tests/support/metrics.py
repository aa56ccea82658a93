"""Scraping `finpulse ingest --metrics-port`: a run in its own process group, its port from the
log, and the samples of /metrics (test_metrics, test_secure)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from support import ROOT

WAIT_S = 90  # generous on a busy 2-core machine; a hang fails instead of blocking CI

Samples = dict[tuple[str, frozenset], float]


def wait_for(predicate, what: str, timeout: float = WAIT_S, run: Run | None = None) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}" + (run.tail() if run else ""))
        time.sleep(0.2)


def get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, exc.read().decode()


def scrape(port: int) -> Samples:
    status, text = get(port, "/metrics")
    assert status == 200, text
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


def series(samples: Samples, name: str) -> dict[frozenset, float]:
    return {labels: v for (n, labels), v in samples.items() if n == name}


class Run:
    """`finpulse [root options] ingest ...` in its own process group; stdout and stderr in files
    (a pipe nobody reads could stall it)."""

    def __init__(self, tmp_path: Path, env: dict[str, str], *args: str, root: tuple[str, ...] = ()):
        tag = uuid.uuid4().hex[:6]
        self.out_path, self.err_path = tmp_path / f"ingest-{tag}.out", tmp_path / f"ingest-{tag}.err"
        with self.out_path.open("w") as out, self.err_path.open("w") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "finpulse", *root, "ingest", *args],
                env=env,
                cwd=ROOT,
                stdout=out,
                stderr=err,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )

    def stderr(self) -> str:
        return self.err_path.read_text(errors="replace")

    def tail(self) -> str:
        lines = [line for line in self.stderr().splitlines() if "psycopg.pool" not in line]
        return "\nstderr:\n" + "\n".join(lines[-40:])

    def port(self) -> int:
        """The port `--metrics-port 0` chose, from its log line."""
        found: list[int] = []

        def logged() -> bool:
            assert self.proc.poll() is None, f"ingest exited {self.proc.returncode}{self.tail()}"
            found.extend(int(p) for p in re.findall(r"metrics on http://0\.0\.0\.0:(\d+)/metrics", self.stderr()))
            return bool(found)

        wait_for(logged, "the metrics port in the log", run=self)
        return found[0]

    def stop(self, sig: int = signal.SIGINT, timeout: float = 60) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)
            raise AssertionError(f"ingest still running {timeout:.0f}s after signal {sig}{self.tail()}") from None

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)
