"""End to end: drain a backlog from the real broker into the real sinks, as `ingest --drain` does.

Timed from the command's start to its exit, worker start-up and group join included: the
figure a user sees. ticks_per_s is recorded in extra_info for the table scripts/bench prints.
"""

from __future__ import annotations

import pytest

from conftest import drain


@pytest.mark.parametrize("batch_size", [5, 10_000])
def test_drain_backlog_both_sinks(benchmark, backlog, fresh_sinks, batch_size):
    workers = 2
    runs = []

    def setup():
        return (fresh_sinks(batch_size=batch_size),), {}

    def run(s):
        runs.append(drain(s, workers))

    benchmark.pedantic(run, setup=setup, rounds=1, iterations=1)
    benchmark.extra_info.update(
        ticks_per_s=round(backlog.ticks / runs[-1]), ticks=backlog.ticks, batch_size=batch_size,
        workers=workers, sinks="all", design="finpulse",
    )
