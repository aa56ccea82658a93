"""Benchmark fixtures: a backlog produced once per session, fresh sinks for every measured run.

Sizes come from BENCH_TICKS (default 1,000,000; `scripts/bench --quick` uses 200,000), so one
suite serves a quick CI check and a full run.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
import time
import uuid
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import pytest
from support.cli import descendants
from support.stack import fresh_stack

from finpulse import deadletter, produce, source, supervisor
from finpulse.config import Settings, load_settings

ROOT = Path(__file__).resolve().parent.parent
os.chdir(ROOT)

BENCH_TICKS = int(os.environ.get("BENCH_TICKS", "1000000"))
QUICK = os.environ.get("BENCH_QUICK") == "1"  # scripts/bench --quick: fewer combinations
PARTITIONS = 4  # the product's default topic layout (`finpulse init`)
STAGE_TICKS = 100_000  # stages in isolation run on this many canonical ticks


@dataclass(frozen=True)
class Backlog:
    settings: Settings  # points at the backlog's topic
    ticks: int


@pytest.fixture(scope="session")
def backlog() -> Backlog:
    """BENCH_TICKS canonical ticks waiting in a topic of their own."""
    s = load_settings(kafka_topic=f"bench-{uuid.uuid4().hex[:8]}")
    try:
        source.create_topic(s, PARTITIONS)
    except Exception as exc:  # a benchmark without its broker is a failure, not a skip
        pytest.fail(f"Kafka is not reachable ({exc}); start it with `scripts/services up`", pytrace=False)
    produce.send(s, produce.encoded(produce.ticks(BENCH_TICKS)))
    yield Backlog(s, BENCH_TICKS)
    client = source.admin(s)
    client.delete_topics([s.kafka_topic])[s.kafka_topic].result(timeout=30)


class FreshSinks:
    """A new PostgreSQL schema, Delta path and consumer group per run (support.stack.fresh_stack) on
    the backlog's topic: every run starts from offset 0."""

    def __init__(self, base: Settings):
        self.base = base
        self._stacks = ExitStack()
        # scratch space of a run that writes outside a sink (a bare delta-rs write, the naive design)
        self.root = Path(tempfile.mkdtemp(prefix="finpulse-bench-"))

    def __call__(self, **overrides) -> Settings:
        s = self._stacks.enter_context(fresh_stack(self.base, prefix="bench", own_topic=False, **overrides))
        deadletter.create_topic(s)  # what `finpulse ingest` would make too (a DLQ topic when asked for)
        return s

    def cleanup(self) -> None:
        self._stacks.close()
        shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture
def fresh_sinks(backlog: Backlog):
    sinks = FreshSinks(backlog.settings)
    yield sinks
    sinks.cleanup()


def drain(s: Settings, workers: int) -> tuple[float, float]:
    """Run `finpulse ingest --drain` in-process (workers are real processes).
    Returns (seconds, peak RSS in MiB of the largest worker)."""
    with PeakRss() as rss:
        started = time.perf_counter()
        result = supervisor.run(s, workers=workers, drain=True)
        elapsed = time.perf_counter() - started
    assert result.totals.restarts == 0
    return elapsed, rss.peak_mib


class PeakRss:
    """Samples the high-water mark of resident memory (VmHWM) of this process's descendants."""

    def __init__(self, every_s: float = 0.2):
        self.every_s, self.peak_kib = every_s, 0
        self._stop = threading.Event()

    @property
    def peak_mib(self) -> float:
        return round(self.peak_kib / 1024, 1)

    def _sample(self) -> None:
        # the workers are children of the supervisor's fork server, a child of this process
        for pid in descendants(os.getpid()):
            try:
                for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                    if line.startswith("VmHWM:"):
                        self.peak_kib = max(self.peak_kib, int(line.split()[1]))
            except (OSError, IndexError, ValueError):
                continue  # the process ended while we looked

    def _run(self) -> None:
        while not self._stop.wait(self.every_s):
            self._sample()

    def __enter__(self) -> PeakRss:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
