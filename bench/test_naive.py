"""The naive design on the same topic in the same run, so every figure of ours has a ratio."""

from __future__ import annotations

import os

from conftest import QUICK
from naive import consume

# The naive consumer manages a few hundred ticks/s; this many keep its run under a minute.
NAIVE_TICKS = int(os.environ.get("BENCH_NAIVE_TICKS", "3000" if QUICK else "10000"))


def test_naive_consumer(benchmark, backlog, fresh_sinks):
    runs = []

    def setup():
        s = fresh_sinks()
        return (s, str(fresh_sinks.root / f"naive-{s.postgres_schema}")), {}

    benchmark.pedantic(lambda s, path: runs.append(consume(s, NAIVE_TICKS, path)), setup=setup, rounds=1, iterations=1)
    benchmark.extra_info.update(
        ticks_per_s=round(NAIVE_TICKS / runs[-1]),
        ticks=NAIVE_TICKS,
        batch_size=5,
        workers=1,
        sinks="all",
        design="naive",
        kind="end-to-end",
    )
