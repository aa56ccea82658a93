"""What the supervisor shows while workers run: a live table on a terminal, log lines otherwise."""

from __future__ import annotations

import bisect
import logging
import threading
import time
from dataclasses import dataclass, field

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

log = logging.getLogger("finpulse.progress")

LOG_EVERY_S = 5.0  # plain progress lines when output is not a terminal
GONE_KEPT = 64  # exited workers whose late reports are told apart from a live worker's (Totals.gone)


# Upper bounds (seconds) of the write-duration buckets: a small write to a local sink takes a few
# milliseconds, a large group commit a second or more, and a write that waited out an outage
# (retries are included) minutes; past 60 s only "longer" matters.
WRITE_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


@dataclass
class Durations:
    """A histogram of durations with fixed buckets (WRITE_BUCKETS, then +Inf): a few ints however
    many writes it counts, so a worker can ship it every second."""

    counts: list[int] = field(default_factory=lambda: [0] * (len(WRITE_BUCKETS) + 1))
    total: float = 0.0  # sum of the durations, seconds

    def observe(self, seconds: float) -> None:
        self.counts[bisect.bisect_left(WRITE_BUCKETS, seconds)] += 1
        self.total += seconds

    def merge(self, other: Durations) -> None:
        self.counts = [a + b for a, b in zip(self.counts, other.counts)]
        self.total += other.total

    def copy(self) -> Durations:
        return Durations(list(self.counts), self.total)


@dataclass
class WorkerStats:
    """What a worker reports every second: counts since its last report, and its state now."""

    messages: int = 0
    ticks: int = 0
    rejected: int = 0
    skipped: int = 0
    rows: dict[str, int] = field(default_factory=dict)  # sink -> rows written since the last report
    rejects: dict[str, int] = field(default_factory=dict)  # sink -> rejects it recorded since then
    writes: dict[str, Durations] = field(default_factory=dict)  # sink -> its writes since then
    lag: dict[int, int] = field(default_factory=dict)  # partition -> messages behind the high watermark
    # sink -> partition -> messages between what the sink holds durably and the high watermark
    held_lag: dict[str, dict[int, int]] = field(default_factory=dict)
    partitions: list[int] = field(default_factory=list)  # assigned to this worker now
    paused: bool = False  # backpressure
    down: dict[str, str] = field(default_factory=dict)  # sink -> why it is unavailable
    duplicates: dict[str, int] = field(default_factory=dict)  # exchange -> re-sent trades removed since then
    sequence_gaps: dict[str, int] = field(default_factory=dict)  # exchange -> sequence gaps found since then


@dataclass
class Totals:
    """The run so far: counts summed over every report, and each live worker's latest state (its
    view, replaced by each report and dropped when the worker exits). The metrics endpoint reads it
    from another thread, through `snapshot()`."""

    messages: int = 0
    ticks: int = 0
    rejected: int = 0
    skipped: int = 0
    rows: dict[str, int] = field(default_factory=dict)  # sink -> rows written this run
    rejects: dict[str, int] = field(default_factory=dict)  # sink -> rejects it recorded this run
    writes: dict[str, Durations] = field(default_factory=dict)  # sink -> its writes this run
    duplicates: dict[str, int] = field(default_factory=dict)  # exchange -> re-sent trades removed (re-reads included)
    sequence_gaps: dict[str, int] = field(default_factory=dict)  # exchange -> sequence gaps found (re-reads included)
    lag: dict[int, dict[int, int]] = field(default_factory=dict)  # worker -> partition -> lag
    held_lag: dict[int, dict[str, dict[int, int]]] = field(default_factory=dict)  # worker -> sink -> partition -> lag
    partitions: dict[int, list[int]] = field(default_factory=dict)  # worker -> assigned partitions
    pids: dict[int, int] = field(default_factory=dict)
    down: dict[int, dict[str, str]] = field(default_factory=dict)
    paused: dict[int, bool] = field(default_factory=dict)
    reported: dict[int, float] = field(default_factory=dict)  # worker -> when its view arrived (monotonic)
    # pids of the workers that exited last (late reports add counts only), oldest first. A dead
    # worker's pipe is read to its end before it counts as exited, so its late words come within
    # moments: the last GONE_KEPT are plenty, and months of restarts keep no more.
    gone: dict[int, None] = field(default_factory=dict)
    restarts: int = 0
    alive: int = 0  # worker processes running now (set by the supervisor)
    started: float = field(default_factory=time.monotonic)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, worker: int, pid: int, stats: WorkerStats) -> None:
        with self._lock:
            self.messages += stats.messages
            self.ticks += stats.ticks
            self.rejected += stats.rejected
            self.skipped += stats.skipped
            for sink, n in stats.rows.items():
                self.rows[sink] = self.rows.get(sink, 0) + n
            for sink, n in stats.rejects.items():
                self.rejects[sink] = self.rejects.get(sink, 0) + n
            for sink, d in stats.writes.items():
                self.writes.setdefault(sink, Durations()).merge(d)
            for venue, n in stats.duplicates.items():
                self.duplicates[venue] = self.duplicates.get(venue, 0) + n
            for venue, n in stats.sequence_gaps.items():
                self.sequence_gaps[venue] = self.sequence_gaps.get(venue, 0) + n
            if pid in self.gone:  # the last words of a worker that exited: its view is stale
                return
            self.lag[worker] = stats.lag
            self.held_lag[worker] = stats.held_lag
            self.partitions[worker] = stats.partitions
            self.pids[worker] = pid
            self.down[worker] = stats.down
            self.paused[worker] = stats.paused
            self.reported[worker] = time.monotonic()

    def forget(self, worker: int) -> None:
        """The worker's process exited: its partitions, lag and sink states no longer count."""
        with self._lock:
            pid = self.pids.pop(worker, None)
            if pid is not None:
                self.gone[pid] = None
                while len(self.gone) > GONE_KEPT:
                    del self.gone[next(iter(self.gone))]
            for view in (self.lag, self.held_lag, self.partitions, self.down, self.paused, self.reported):
                view.pop(worker, None)

    def snapshot(self) -> Totals:
        """A consistent copy, safe to read while the supervisor goes on adding reports."""
        with self._lock:
            return Totals(
                messages=self.messages,
                ticks=self.ticks,
                rejected=self.rejected,
                skipped=self.skipped,
                rows=dict(self.rows),
                rejects=dict(self.rejects),
                writes={sink: d.copy() for sink, d in self.writes.items()},
                duplicates=dict(self.duplicates),
                sequence_gaps=dict(self.sequence_gaps),
                # a report replaces a worker's inner dicts, never changes them: one level suffices
                lag=dict(self.lag),
                held_lag=dict(self.held_lag),
                partitions=dict(self.partitions),
                pids=dict(self.pids),
                down=dict(self.down),
                paused=dict(self.paused),
                reported=dict(self.reported),
                restarts=self.restarts,
                alive=self.alive,
                started=self.started,
            )

    @property
    def elapsed(self) -> float:
        return max(time.monotonic() - self.started, 1e-9)

    def total_lag(self) -> int:
        return sum(sum(parts.values()) for parts in self.lag.values())

    def line(self) -> str:
        down = sorted({s for d in self.down.values() for s in d})
        return (
            f"ticks {self.ticks:,} ({self.ticks / self.elapsed:,.0f}/s) | "
            + "".join(f"{sink} {n:,} | " for sink, n in self.rows.items())
            + f"rejected {self.rejected:,} | skipped {self.skipped:,} "
            + (f"| duplicates {sum(self.duplicates.values()):,} " if self.duplicates else "")
            + (f"| gaps {sum(self.sequence_gaps.values()):,} " if self.sequence_gaps else "")
            + f"| lag {self.total_lag():,}"
            + (f" | waiting for {', '.join(down)}" if down else "")
        )

    def table(self) -> Table:
        t = Table(expand=False)
        for col in ("worker", "pid", "partitions", "lag", "state"):
            t.add_column(col, justify="right" if col in ("pid", "lag") else "left")
        for w in sorted(self.pids):
            parts = self.lag.get(w, {})
            state = ", ".join(f"{s} down" for s in self.down.get(w, {})) or ("paused" if self.paused.get(w) else "ok")
            t.add_row(
                str(w), str(self.pids[w]), ",".join(map(str, sorted(parts))) or "-", f"{sum(parts.values()):,}", state
            )
        return t

    def view(self) -> Group:
        return Group(Text(self.line(), overflow="fold"), self.table())


class Progress:
    """A live table on `console` when it is a terminal; a log line every LOG_EVERY_S otherwise.
    Log records go through the same console, so they scroll above the table instead of tearing it."""

    def __init__(self, totals: Totals, console: Console | None = None):
        self.totals = totals
        self.console = console if console is not None and console.is_terminal else None
        self._live: Live | None = None
        self._next_log = time.monotonic() + LOG_EVERY_S

    def __enter__(self) -> Progress:
        if self.console is not None:
            self._live = Live(self.totals.view(), console=self.console, refresh_per_second=4, transient=False)
            self._live.__enter__()
        return self

    def refresh(self) -> None:
        if self._live is not None:
            self._live.update(self.totals.view())
        elif time.monotonic() >= self._next_log:
            self._next_log = time.monotonic() + LOG_EVERY_S
            log.info("%s", self.totals.line())

    def __exit__(self, *exc) -> None:
        if self._live is not None:
            self._live.update(self.totals.view())
            self._live.__exit__(*exc)
