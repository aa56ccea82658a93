"""`finpulse replay` against the real broker, PostgreSQL and a local Delta table."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time

import psycopg
import pytest
from deltalake import DeltaTable
from support import ROOT
from support.cli import env_for, finpulse
from support.sinks import assert_exactly_once, delta_rows, pg_count, pg_rows, produced

from finpulse import produce, source
from finpulse.sinks.delta.azure import storage_options

pytestmark = [pytest.mark.kafka, pytest.mark.postgres, pytest.mark.slow]

# Messages no feed can read: each must land in prices_rejected exactly once, whoever reads it.
BAD = [
    b"\xff\xfe not utf-8",
    b'{"symbol": "A", "price"',
    b"null",
    b"{}",
    b'{"symbol":"A","price":-1,"size":1,"timestamp_ms":1700000000000}',
]


def send(s, count: int, bad: list[bytes] = ()) -> None:
    """`count` ticks of the seeded walk (as `finpulse produce` sends them), `bad` in the middle."""
    good = list(produce.encoded(produce.ticks(count)))
    produce.send(s, iter(good[: count // 2] + [(b"bad%d" % i, v) for i, v in enumerate(bad)] + good[count // 2 :]))


def delta_version(s) -> int:
    return DeltaTable(s.delta_uri, storage_options=storage_options(s)).version()


def rejects(s) -> list[tuple]:
    with psycopg.connect(s.postgres_conninfo()) as conn:
        return conn.execute("SELECT kafka_partition, kafka_offset, tick_index, reason FROM prices_rejected").fetchall()


def dry_run_spans(out: str) -> dict[int, tuple[int, int]]:
    """partition -> (first offset, end) from `replay --dry-run` lines."""
    found = re.findall(r"partition (\d+): [\d,]+ messages, offsets ([\d,]+) up to ([\d,]+)", out)
    return {int(p): (int(a.replace(",", "")), int(b.replace(",", ""))) for p, a, b in found}


def test_replaying_an_ingested_range_twice_changes_nothing(isolated):
    env = env_for(isolated)
    send(isolated, 30_000, BAD)
    finpulse("ingest", "--drain", env=env)

    def contents():
        return (
            sorted(pg_rows(isolated)),
            sorted(rejects(isolated)),
            sorted(delta_rows(isolated)),
            delta_version(isolated),
        )

    before = contents()
    assert len(before[1]) == len(BAD)

    for _ in range(2):
        out = finpulse("replay", "--from-offset", "0", env=env).stdout
        assert "replayed 30,005 messages" in out
        assert "postgres +0 rows, +0 rejects; delta +0 rows" in out
        assert contents() == before


def test_replay_restores_exactly_the_deleted_rows_and_rejects(isolated):
    env = env_for(isolated)
    send(isolated, 20_000, BAD)
    finpulse("ingest", "--drain", env=env)
    with psycopg.connect(isolated.postgres_conninfo(), autocommit=True) as conn:
        gone = conn.execute("DELETE FROM prices_raw WHERE kafka_offset % 7 = 2").rowcount
        gone_rejects = conn.execute("DELETE FROM prices_rejected WHERE kafka_offset % 2 = 0").rowcount
    removed = DeltaTable(isolated.delta_uri).delete("kafka_offset % 5 = 1")["num_deleted_rows"]
    assert gone and gone_rejects and removed

    out = finpulse("replay", "--from-offset", "0", env=env).stdout
    assert f"postgres +{gone:,} rows, +{gone_rejects:,} rejects; delta +{removed:,} rows" in out
    expected = produced(20_000)
    assert_exactly_once(pg_rows(isolated), expected, "postgres")
    assert_exactly_once(delta_rows(isolated), expected, "delta")
    assert len(rejects(isolated)) == len(BAD), "each malformed message rejected once, not twice"


def test_dry_run_counts_and_sink_postgres_leaves_delta_untouched(isolated):
    env = env_for(isolated)
    send(isolated, 20_000)
    marks = source.watermarks(isolated)
    version = delta_version(isolated)

    out = finpulse("replay", "--from-offset", "0", "--dry-run", env=env).stdout
    assert dry_run_spans(out) == {p: (low, high) for p, (low, high) in marks.items()}
    assert "would read 20,000 messages from 4 partitions" in out
    part = finpulse("replay", "--from-offset", "100", "--to-offset", "300", "-p", "1", "--dry-run", env=env).stdout
    assert dry_run_spans(part) == {1: (100, min(300, marks[1][1]))}
    assert pg_count(isolated) == 0 and delta_version(isolated) == version

    # An empty sink starts where ingest would (the low watermark): the guarded write path lands
    # everything and advances its positions; Delta is never opened for writing.
    out = finpulse("replay", "--from-offset", "0", "--sink", "postgres", env=env).stdout
    assert "postgres +20,000 rows, +0 rejects" in out and "delta" not in out
    assert_exactly_once(pg_rows(isolated), produced(20_000), "postgres")
    assert delta_version(isolated) == version and delta_rows(isolated) == []
    with psycopg.connect(isolated.postgres_conninfo()) as conn:
        held = dict(conn.execute("SELECT kafka_partition, next_offset FROM finpulse_offsets").fetchall())
    assert held == {p: high for p, (_, high) in marks.items() if high > 0}


def test_from_timestamp_starts_each_partition_at_the_first_later_message(isolated):
    env = env_for(isolated)
    send(isolated, 10_000)
    first = {p: high for p, (_, high) in source.watermarks(isolated).items()}
    time.sleep(1.5)  # broker timestamps of the two groups are at least this far apart
    cut_ms = int(time.time() * 1000)
    time.sleep(0.2)
    send(isolated, 10_000)
    marks = source.watermarks(isolated)
    assert all(marks[p][1] > first[p] for p in marks), "both groups reach every partition"

    out = finpulse("replay", "--from-timestamp", str(cut_ms), "--dry-run", env=env).stdout
    spans = dry_run_spans(out)
    assert {p: a for p, (a, _) in spans.items()} == first
    assert {p: a for p, (a, _) in spans.items()} == source.offsets_for_time(isolated, list(marks), cut_ms)
    iso = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(cut_ms // 1000)) + f".{cut_ms % 1000:03d}Z"
    assert dry_run_spans(finpulse("replay", "--from-timestamp", iso, "--dry-run", env=env).stdout) == spans

    # Nothing ingested yet: the second group lies above every (absent) position, so replay must
    # leave it to ingest rather than let a position jump over the first group.
    out = finpulse("replay", "--from-timestamp", iso, env=env).stdout
    assert "postgres +0 rows, +0 rejects; delta +0 rows" in out
    assert out.count("left to `finpulse ingest`") == 2 * len(marks)
    assert pg_count(isolated) == 0

    finpulse("ingest", "--drain", env=env)
    landed = sorted(pg_rows(isolated))
    with psycopg.connect(isolated.postgres_conninfo(), autocommit=True) as conn:
        later = conn.execute(
            "DELETE FROM prices_raw r USING unnest(%s::int[], %s::bigint[]) AS f(p, o) "
            "WHERE r.kafka_partition = f.p AND r.kafka_offset >= f.o",
            (list(first), list(first.values())),
        ).rowcount
    assert later == 10_000
    out = finpulse("replay", "--from-timestamp", iso, "--sink", "postgres", env=env).stdout
    assert "replayed 10,000 messages" in out and "postgres +10,000 rows" in out
    assert sorted(pg_rows(isolated)) == landed


def test_replay_while_ingest_and_a_live_feed_run_ends_exact(isolated):
    env = env_for(isolated, FINPULSE_BATCH_SIZE="200")
    send(isolated, 40_000, BAD)
    finpulse("ingest", "--drain", env=env)
    with psycopg.connect(isolated.postgres_conninfo(), autocommit=True) as conn:
        conn.execute("SELECT setseed(0.42)")
        gone = conn.execute("DELETE FROM prices_raw WHERE random() < 0.1").rowcount
    removed = DeltaTable(isolated.delta_uri).delete("(kafka_offset * 7919 + kafka_partition) % 10 = 3")
    removed = removed["num_deleted_rows"]

    def background(*args: str) -> subprocess.Popen:
        return subprocess.Popen(
            [sys.executable, "-m", "finpulse", *args],
            env=env,
            cwd=ROOT,
            text=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    ingest = background("ingest", "--workers", "2")
    feed = background("produce", "--count", "30000", "--rate", "10000", "--seed", "8")
    try:
        deadline = time.monotonic() + 60
        while pg_count(isolated) <= 40_000 - gone and time.monotonic() < deadline:  # live rows arriving
            time.sleep(0.05)
        replayed = finpulse("replay", "--from-offset", "0", env=env).stdout
        added = re.search(r"postgres \+([\d,]+) rows, \+0 rejects; delta \+([\d,]+) rows", replayed)
        assert added, replayed
        assert int(added[1].replace(",", "")) >= gone and int(added[2].replace(",", "")) >= removed
        fed, _ = feed.communicate(timeout=60)
        assert feed.returncode == 0, fed
    finally:
        os.killpg(ingest.pid, signal.SIGTERM)
        out, _ = ingest.communicate(timeout=120)
    assert ingest.returncode == 0, out[-3000:]
    finpulse("ingest", "--drain", env=env)

    assert finpulse("verify", env=env).returncode == 0
    every = sorted(pg_rows(isolated))
    assert len(every) == 70_000 and every == sorted(delta_rows(isolated))
    assert len(rejects(isolated)) == len(BAD)


@pytest.mark.parametrize(
    "args, needle",
    [
        (["replay"], "say where to start: --from-offset"),
        (["replay", "--from-offset", "1", "--from-timestamp", "5"], "--from-offset or --from-timestamp, not both"),
        (["verify", "--to-offset", "3", "--to-timestamp", "5"], "--to-offset or --to-timestamp, not both"),
        (["replay", "--from-offset", "5", "--to-offset", "5"], "--to-offset 5 is exclusive"),
        (["verify", "--from-timestamp", "2024-02-01", "--to-timestamp", "2024-01-01"], "--to-timestamp is exclusive"),
        (["replay", "--from-timestamp", "yesterday"], "neither ISO-8601"),
        (["replay", "--from-offset", "0", "--format", "nope"], "unknown feed 'nope'"),
        (["replay", "--from-offset", "0", "--sink", "both"], "--sinks"),
    ],
)
def test_bad_flag_combinations_give_one_line(args, needle, tmp_path):
    proc = finpulse(
        *args, env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "COLUMNS": "200"}, check=False, timeout=60
    )
    assert proc.returncode == 2 and needle in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr


def test_unknown_partition_and_help(isolated):
    env = env_for(isolated)
    proc = finpulse("replay", "--from-offset", "0", "-p", "9", env=env, check=False)
    assert proc.returncode == 2 and f"--partition 9: topic {isolated.kafka_topic} has partitions 0-3" in proc.stderr
    for command in ("replay", "status", "verify"):
        help_text = finpulse(command, "--help", env={**env, "COLUMNS": "200"}).stdout
        assert "KAFKA_TOPIC" in help_text
    assert "(exclusive)" in finpulse("replay", "--help", env={**env, "COLUMNS": "200"}).stdout
