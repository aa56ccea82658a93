"""`finpulse status` against the real broker, PostgreSQL and a local Delta table."""

from __future__ import annotations

import json

import pytest
from support.cli import env_for, finpulse

from finpulse import source

pytestmark = [pytest.mark.kafka, pytest.mark.postgres]

PARTITION_KEYS = {
    "partition",
    "low",
    "high",
    "committed",
    "committed_lag",
    "postgres_position",
    "postgres_lag",
    "delta_position",
    "delta_lag",
    "rejected",
    "duplicates",
}
TOTAL_KEYS = {"messages", "committed_lag", "postgres_lag", "delta_lag", "rejected", "duplicates"}


def status(env, check: bool = True):
    proc = finpulse("status", "--json", env=env, check=check)
    return proc, json.loads(proc.stdout)


def test_status_json_before_and_after_a_drain(isolated):
    env = env_for(isolated)
    finpulse("produce", "--count", "20000", env=env)
    marks = source.watermarks(isolated)

    _, before = status(env)
    assert set(before) == {
        "topic",
        "group_id",
        "partitions",
        "totals",
        "delta",
        "postgres",
        "errors",
        "gaps",
        "rules",
        "sequence_gaps",
        "schema_registry",
    }
    assert before["gaps"] == [] and before["sequence_gaps"] == []
    # the stack's registry (.env): the newest message of every partition is plain JSON here
    assert set(before["schema_registry"]["in_use"].values()) == {"plain JSON"}
    assert before["topic"] == isolated.kafka_topic and before["group_id"] == isolated.kafka_group_id
    assert before["errors"] == {}
    assert [p["partition"] for p in before["partitions"]] == sorted(marks)
    for p in before["partitions"]:
        assert set(p) == PARTITION_KEYS
        low, high = marks[p["partition"]]
        assert (p["low"], p["high"]) == (low, high)
        # nothing ingested: no positions, and every retained message counts as lag
        assert p["committed"] is p["postgres_position"] is p["delta_position"] is None
        assert p["postgres_lag"] == p["delta_lag"] == p["committed_lag"] == high - low
        assert p["rejected"] == p["duplicates"] == 0
    assert set(before["totals"]) == TOTAL_KEYS
    assert before["totals"]["messages"] == before["totals"]["postgres_lag"] == 20_000
    assert before["delta"] == {
        "uri": isolated.delta_uri,
        "version": 0,
        "files": 0,
        "bytes": 0,
        "small_files": 0,
        "last_compaction": None,
        "last_checkpoint": None,
    }

    finpulse("produce", "--count", "3", env=env)  # then three malformed messages
    from finpulse import produce

    produce.send(isolated, iter([(b"k", b"not json"), (b"k", b"{}"), (b"k", b"null")]))
    finpulse("ingest", "--drain", env=env)
    marks = source.watermarks(isolated)
    proc, after = status(env)
    for p in after["partitions"]:
        high = marks[p["partition"]][1]
        assert p["postgres_position"] == p["delta_position"] == p["committed"] == high
        assert p["postgres_lag"] == p["delta_lag"] == p["committed_lag"] == 0
    assert after["totals"] == {
        "messages": 20_006,
        "committed_lag": 0,
        "postgres_lag": 0,
        "delta_lag": 0,
        "rejected": 3,
        "duplicates": 0,
    }
    assert after["delta"]["version"] >= 1 and after["delta"]["files"] >= 1 and after["delta"]["bytes"] > 0
    days = after["postgres"].pop("days")
    assert after["postgres"] == {"server": isolated.postgres_display(), "schema": isolated.postgres_schema}
    assert days["partitioned"] and days["default_rows"] == 0 and days["held_from"] is None
    assert days["partitions"] == isolated.pg_days_ahead + 2  # yesterday, today and the days ahead

    table = finpulse("status", env=env).stdout  # the table for people: same numbers
    assert f"Delta version {after['delta']['version']}" in table and "rejected" in table


def test_status_reports_an_unreadable_sink_and_still_shows_the_rest(isolated, tmp_path):
    env = env_for(isolated, DELTA_TABLE_URI=str(tmp_path / "nowhere" / "prices"))
    finpulse("produce", "--count", "1000", env=env)
    proc, data = status(env, check=False)
    assert proc.returncode == 4  # SinkRejected: there is no Delta table there
    assert "no Delta table" in data["errors"]["delta"] and "no Delta table" in proc.stderr
    assert list(data["errors"]) == ["delta"]
    assert data["delta"]["version"] is None and data["totals"]["delta_lag"] is None
    assert all(p["delta_lag"] is None and p["postgres_lag"] == p["high"] for p in data["partitions"])
    assert "Traceback" not in proc.stderr
