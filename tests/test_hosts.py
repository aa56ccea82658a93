"""Several `finpulse ingest` processes (hosts) in one consumer group, sharing one live feed and one
pair of tables: one is killed mid-run. Their committers and background compactors meet in one Delta
log; nothing may be lost or doubled, and no host may see a sink as down because of another's commit."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from support import ROOT
from support.cli import env_for, finish, finpulse, start_ingest
from support.sinks import assert_exactly_once, delta_rows, pg_rows, produced
from support.stack import fresh_stack

pytestmark = [pytest.mark.kafka, pytest.mark.postgres, pytest.mark.slow]

PARTITIONS, HOSTS, WORKERS = 8, 3, 2
TICKS, RATE = 40_000, 2_000  # 20 s of a live feed


@pytest.fixture
def eight_partitions(kafka, postgres):
    with fresh_stack(partitions=PARTITIONS, prefix="hosts") as s:
        yield s


def uncommitted_files(uri: str) -> int:
    """Parquet files in the table's folder that no commit of its log ever named."""
    named = set()
    for entry in Path(uri, "_delta_log").glob("*.json"):
        for line in entry.read_text().splitlines():
            add = json.loads(line).get("add")
            if add:
                named.add(add["path"])
    on_disk = {str(p.relative_to(uri)) for p in Path(uri).rglob("*.parquet") if "_delta_log" not in p.parts}
    return len(on_disk - named)


def test_three_hosts_share_a_live_feed_and_one_is_killed(eight_partitions):
    s = eight_partitions
    env = env_for(
        s,
        FINPULSE_AUTO_COMPACT_FILES="10",  # every host's compactor runs: they must not compact twice
        FINPULSE_AUTO_COMPACT_EVERY_S="3",
    )
    hosts = [start_ingest(env, "--workers", str(WORKERS)) for _ in range(HOSTS)]
    feed = subprocess.Popen(
        [sys.executable, "-m", "finpulse", "produce", "--count", str(TICKS), "--rate", str(RATE)],
        env=env,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
    )
    try:
        time.sleep(TICKS / RATE / 2)
        os.killpg(hosts[0].pid, signal.SIGKILL)  # a host dies mid-feed: its partitions move
        assert feed.wait(120) == 0
        deadline = time.monotonic() + 180
        while True:  # the survivors take over and catch up with the feed
            st = json.loads(finpulse("status", "--json", env=env).stdout)
            lags = (st["totals"]["postgres_lag"], st["totals"]["delta_lag"])
            if lags == (0, 0):
                break
            assert time.monotonic() < deadline, f"the survivors did not catch up: lags {lags}"
            time.sleep(2)
    finally:
        feed.kill()
        for host in hosts[1:]:
            host.send_signal(signal.SIGTERM)
    outputs = [finish(host, timeout=120) for host in hosts[1:]]
    hosts[0].communicate()
    for out in outputs:
        assert not re.search(r"WARNING finpulse.lanes: (delta|postgres) unavailable", out), out[-3000:]
        assert "Delta commit of" not in out or "failed" not in out, out[-3000:]
        assert "compacted twice" not in out
    assert any("background compaction:" in out for out in outputs), "no compactor ran: the test proves less"
    finpulse("verify", env=env, timeout=300)
    expected = produced(TICKS)
    assert_exactly_once(pg_rows(s), expected, "postgres")
    assert_exactly_once(delta_rows(s), expected, "delta")
    assert uncommitted_files(s.delta_uri) <= WORKERS, "files written but never committed: more than the kill explains"
