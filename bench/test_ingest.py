"""End to end: drain a backlog from the real broker into the real sinks, as `ingest --drain` does.

Timed from the command's start to its exit, worker start-up and group join included: the
figure a user sees. Each run records ticks_per_s and the largest worker's peak RSS.
"""

from __future__ import annotations

import pytest
from conftest import QUICK, drain

BATCH_SIZES = [5, 10_000] if QUICK else [5, 100, 1_000, 10_000]
WORKERS = [2] if QUICK else [1, 2]
GRID = [(b, w, "all") for b in BATCH_SIZES for w in WORKERS] + [
    (b, 2, sinks) for sinks in ("postgres", "delta") for b in ([10_000] if QUICK else [5, 10_000])
]


@pytest.mark.parametrize("batch_size, workers, sinks", GRID)
def test_drain_backlog(benchmark, backlog, fresh_sinks, batch_size, workers, sinks):
    runs = []

    def setup():
        return (fresh_sinks(batch_size=batch_size, sinks=sinks),), {}

    def run(s):
        runs.append(drain(s, workers))

    benchmark.pedantic(run, setup=setup, rounds=1, iterations=1)
    seconds, rss = runs[-1]
    benchmark.extra_info.update(
        ticks_per_s=round(backlog.ticks / seconds),
        ticks=backlog.ticks,
        batch_size=batch_size,
        workers=workers,
        sinks=sinks,
        design="finpulse",
        kind="end-to-end",
        peak_rss_mib=rss,
    )
