"""`finpulse maintain` and the Delta table's health: compaction keeps every position, a later ingest
goes on exactly once, vacuum removes files no commit made visible, status shows the health."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest
from support.cli import env_for, finish, finpulse, start_ingest
from support.sinks import delta_rows, pg_rows

pytestmark = [pytest.mark.kafka, pytest.mark.postgres, pytest.mark.slow]

ROUNDS = 6  # separate drains: each adds at least one small file per worker and date


def status(env) -> dict:
    return json.loads(finpulse("status", "--json", env=env).stdout)


def test_maintain_compacts_checkpoints_and_vacuums_without_touching_positions(isolated):
    env = env_for(isolated, FINPULSE_DELTA_FLUSH_MS="0")
    for seed in range(ROUNDS):
        finpulse("produce", "--count", "300", "--seed", str(seed), env=env)
        finpulse("ingest", "--drain", "--workers", "2", env=env, timeout=180)
    before = status(env)
    assert before["delta"]["small_files"] == before["delta"]["files"] >= ROUNDS
    assert before["delta"]["last_compaction"] is None
    positions = [p["delta_position"] for p in before["partitions"]]
    rows = sorted(delta_rows(isolated))

    # A Parquet file of a commit that never happened (a worker killed mid-write), 8 days old.
    table = Path(isolated.delta_uri)
    orphan = next(table.glob("trade_date=*")) / "part-00000-never-committed.parquet"
    orphan.write_bytes(next(table.glob("trade_date=*/*.parquet")).read_bytes())
    eight_days_ago = time.time() - 8 * 86_400
    os.utime(orphan, (eight_days_ago, eight_days_ago))

    out = finpulse("maintain", env=env, timeout=180).stdout
    assert "delta: compacted" in out and "vacuumed 1 files" in out, out
    assert not orphan.exists()

    after = status(env)
    dates = len(list(table.glob("trade_date=*")))
    assert after["delta"]["files"] <= dates < before["delta"]["files"]
    assert after["delta"]["last_compaction"] is not None
    assert after["delta"]["last_checkpoint"] == after["delta"]["version"]
    assert [p["delta_position"] for p in after["partitions"]] == positions, "compaction keeps the txn positions"
    assert sorted(delta_rows(isolated)) == rows

    # ingest goes on exactly once after maintenance
    finpulse("produce", "--count", "500", "--seed", "99", env=env)
    finpulse("ingest", "--drain", env=env, timeout=180)
    assert len(delta_rows(isolated)) == len(pg_rows(isolated)) == ROUNDS * 300 + 500
    finpulse("verify", env=env, timeout=180)


def test_ingest_compacts_in_the_background_while_it_commits_and_stays_exactly_once(isolated):
    env = env_for(
        isolated,
        FINPULSE_DELTA_FLUSH_MS="200",  # many small commits, quickly
        FINPULSE_AUTO_COMPACT_FILES="6",
        FINPULSE_AUTO_COMPACT_EVERY_S="1",
    )
    run = start_ingest(env, "--workers", "2")
    compacted = False
    try:
        # Rounds that each land before the next is sent: every round commits at least one file, so
        # the small files pile up however fast this box drains (a single trickle, caught up late on a
        # busy box, could land in a few large files and leave nothing to compact).
        for i in range(ROUNDS + 2):
            finpulse("produce", "--count", "750", "--seed", str(i), env=env, timeout=60)
            deadline = time.monotonic() + 60
            while sum(p["delta_position"] or 0 for p in status(env)["partitions"]) < 750 * (i + 1):
                assert time.monotonic() < deadline, f"round {i} did not land in Delta within a minute"
                time.sleep(0.3)
        deadline = time.monotonic() + 60
        while not (compacted := status(env)["delta"]["last_compaction"] is not None) and time.monotonic() < deadline:
            time.sleep(1)
    finally:
        run.send_signal(signal.SIGTERM)
        out = finish(run, timeout=120)
    assert compacted, f"no background compaction within a minute; the ingest log:\n{out[-6000:]}"
    assert "background compaction:" in out
    finpulse("ingest", "--drain", env=env, timeout=180)
    assert len(delta_rows(isolated)) == len(pg_rows(isolated)) == 750 * (ROUNDS + 2)
    finpulse("verify", env=env, timeout=180)
