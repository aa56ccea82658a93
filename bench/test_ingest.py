"""End to end: drain a backlog from the real broker into the real sinks, as `ingest --drain` does.

Timed from the command's start to its exit, worker start-up and group join included: the
figure a user sees. Each run records ticks_per_s and the largest worker's peak RSS.
"""

from __future__ import annotations

import pytest
from conftest import QUICK, ROOT, drain

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


def _secure_env() -> dict[str, str]:
    """The settings of .stack/secure.env (written by `scripts/services up`), as Settings fields."""
    path = ROOT / ".stack" / "secure.env"
    if not path.is_file():
        pytest.fail(f"{path} is missing; `scripts/services up` writes it", pytrace=False)
    pairs = (line.split("=", 1) for line in path.read_text().splitlines() if "=" in line and line[0] != "#")
    return {k.strip().lower(): v.strip() for k, v in pairs if k.strip().startswith(("KAFKA_", "POSTGRES_"))}


@pytest.mark.parametrize("transport", ["plaintext", "secured"])
def test_drain_over_secured_endpoints(benchmark, backlog, fresh_sinks, transport):
    """The same drain (batch 5, 2 workers, both sinks, Delta on a local path) over the open
    endpoints and over Kafka SASL_SSL (SCRAM-SHA-512) with verify-full TLS to PostgreSQL; the
    report prints their ratio."""
    # the local PostgreSQL serves TLS too, and libpq's default (prefer) would use it: say disable
    overrides = _secure_env() if transport == "secured" else {"postgres_sslmode": "disable"}
    runs = []

    def setup():
        return (fresh_sinks(batch_size=5, **overrides),), {}

    def run(s):
        runs.append(drain(s, 2))

    benchmark.pedantic(run, setup=setup, rounds=1, iterations=1)
    seconds, rss = runs[-1]
    benchmark.extra_info.update(
        ticks_per_s=round(backlog.ticks / seconds),
        ticks=backlog.ticks,
        batch_size=5,
        workers=2,
        sinks="all",
        design="finpulse",
        kind="transport",
        transport=transport,
        peak_rss_mib=rss,
    )
