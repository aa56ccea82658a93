"""What the supervisor shows while workers run: a live table on a terminal, log lines otherwise."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

log = logging.getLogger("finpulse.progress")

LOG_EVERY_S = 5.0  # plain progress lines when output is not a terminal


@dataclass
class WorkerStats:
    """What a worker reports every second: counts since its last report, and its state now."""

    messages: int = 0
    ticks: int = 0
    rejected: int = 0
    skipped: int = 0
    rows: dict[str, int] = field(default_factory=dict)  # sink -> rows written since the last report
    lag: dict[int, int] = field(default_factory=dict)  # partition -> messages behind the high watermark
    paused: bool = False  # backpressure
    down: dict[str, str] = field(default_factory=dict)  # sink -> why it is unavailable


@dataclass
class Totals:
    messages: int = 0
    ticks: int = 0
    rejected: int = 0
    skipped: int = 0
    rows: dict[str, int] = field(default_factory=dict)  # sink -> rows written this run
    lag: dict[int, dict[int, int]] = field(default_factory=dict)  # worker -> partition -> lag
    pids: dict[int, int] = field(default_factory=dict)
    down: dict[int, dict[str, str]] = field(default_factory=dict)
    paused: dict[int, bool] = field(default_factory=dict)
    restarts: int = 0
    started: float = field(default_factory=time.monotonic)

    def add(self, worker: int, pid: int, stats: WorkerStats) -> None:
        self.messages += stats.messages
        self.ticks += stats.ticks
        self.rejected += stats.rejected
        self.skipped += stats.skipped
        for sink, n in stats.rows.items():
            self.rows[sink] = self.rows.get(sink, 0) + n
        self.lag[worker] = stats.lag
        self.pids[worker] = pid
        self.down[worker] = stats.down
        self.paused[worker] = stats.paused

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
            f"| lag {self.total_lag():,}" + (f" | waiting for {', '.join(down)}" if down else "")
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
