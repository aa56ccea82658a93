"""`finpulse ingest` against the real broker, PostgreSQL, Delta (local and Azurite)."""

from __future__ import annotations

import os
import random
import re
import signal
import time
import uuid

import pytest
from support.cli import env_for, finish, finpulse, start_ingest
from support.sinks import assert_exactly_once, delta_rows, pg_count, pg_rows, produced, read_topic

from finpulse import source

pytestmark = [pytest.mark.kafka, pytest.mark.postgres, pytest.mark.slow]


def test_drain_lands_every_tick_once_in_both_sinks(isolated):
    env = env_for(isolated)
    finpulse("produce", "--count", "200000", env=env)
    highs = source.watermarks(isolated)
    assert sum(h for _, h in highs.values()) == 200_000 and all(h > 0 for _, h in highs.values())

    out = finpulse("ingest", "--workers", "4", "--drain", env=env).stdout
    assert "ingested 200,000 ticks" in out

    expected = produced(200_000)
    assert_exactly_once(pg_rows(isolated), expected, "postgres")
    assert_exactly_once(delta_rows(isolated), expected, "delta")
    # the Kafka group offsets follow the sinks (for lag tools)
    assert pg_count(isolated, "prices_rejected") == 0

    # a second drain finds nothing to do and changes nothing
    again = finpulse("ingest", "--drain", env=env).stdout
    assert "ingested 0 ticks" in again
    assert len(pg_rows(isolated)) == 200_000 and len(delta_rows(isolated)) == 200_000


def test_sigkill_of_the_whole_process_group_loses_and_duplicates_nothing(isolated):
    env = env_for(isolated, FINPULSE_BATCH_SIZE="500")
    total = 300_000
    finpulse("produce", "--count", str(total), env=env)
    rng = random.Random(1234)
    partial_kills = 0
    for _ in range(3):
        # Kill on progress, not after a delay: a fast machine drains 300k ticks in about two
        # seconds, so a timed kill can land after the end and prove nothing.
        before = pg_count(isolated)
        target = before + int(rng.uniform(0.05, 0.4) * (total - before))
        proc = start_ingest(env, "--workers", "2")
        deadline = time.monotonic() + 60
        while pg_count(isolated) < target and time.monotonic() < deadline:
            time.sleep(0.01)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate(timeout=10)
        landed = pg_count(isolated)
        partial_kills += 0 < landed < total
    assert partial_kills >= 1, "no kill landed mid-run; the test proved nothing"

    finish(start_ingest(env, "--drain"))
    expected = produced(total)
    assert_exactly_once(pg_rows(isolated), expected, "postgres")
    assert_exactly_once(delta_rows(isolated), expected, "delta")


def test_two_runs_with_one_group_split_the_partitions(isolated):
    # a small in-flight cap slows each run enough that neither drains everything before the
    # other has joined the group
    env = env_for(isolated, FINPULSE_MAX_INFLIGHT_TICKS="2000")
    total = 300_000
    finpulse("produce", "--count", str(total), env=env)
    runs = [start_ingest(env, "--workers", "2", "--drain") for _ in range(2)]
    outs = [finish(p) for p in runs]
    ticks = [int(re.search(r"ingested ([\d,]+) ticks", o).group(1).replace(",", "")) for o in outs]
    assert sum(ticks) == total and all(t > 0 for t in ticks), ticks
    expected = produced(total)
    assert_exactly_once(pg_rows(isolated), expected, "postgres")
    assert_exactly_once(delta_rows(isolated), expected, "delta")


@pytest.mark.azurite
def test_delta_on_azurite_holds_the_same_rows_as_a_local_table(isolated, azurite, tmp_path):
    total = 20_000
    env = env_for(isolated)
    finpulse("produce", "--count", str(total), env=env)
    azure_uri = f"abfss://delta-lake@devstoreaccount1.dfs.core.windows.net/test-{uuid.uuid4().hex[:8]}/prices"
    finpulse("ingest", "--drain", env=env_for(isolated, DELTA_TABLE_URI=azure_uri, **azurite))

    from finpulse.config import load_settings

    on_azure = load_settings(
        delta_table_uri=azure_uri,
        azure_storage_account_name=azurite["AZURE_STORAGE_ACCOUNT_NAME"],
        azure_storage_account_key=azurite["AZURE_STORAGE_ACCOUNT_KEY"],
        azure_storage_use_emulator=True,
    )
    expected = produced(total)
    azure = delta_rows(on_azure)
    assert_exactly_once(azure, expected, "delta on azurite")
    assert sorted(azure) == sorted(pg_rows(isolated))


def test_errors_that_cannot_heal_stop_with_one_clear_line(isolated, tmp_path):
    import psycopg
    import pyarrow as pa
    from deltalake import write_deltalake

    env = env_for(isolated)
    finpulse("produce", "--count", "10", env=env)

    wrong_password = finpulse(
        "ingest", "--drain", env={**env, "POSTGRES_PASSWORD": "not-the-password"}, check=False, timeout=120
    )
    assert wrong_password.returncode != 0 and "POSTGRES_" in wrong_password.stderr
    assert "Traceback" not in wrong_password.stderr and "not-the-password" not in wrong_password.stderr

    unpartitioned = tmp_path / "other"
    write_deltalake(str(unpartitioned), pa.table({"symbol": ["A"], "price": ["text"]}))
    bad_delta = finpulse(
        "ingest", "--drain", env={**env, "DELTA_TABLE_URI": str(unpartitioned)}, check=False, timeout=120
    )
    assert bad_delta.returncode == 4 and "partitioned by nothing" in bad_delta.stderr

    with psycopg.connect(isolated.postgres_conninfo(), autocommit=True) as conn:
        conn.execute("CREATE SCHEMA legacy")
        conn.execute("CREATE TABLE legacy.prices_raw (symbol text, price text, size float8)")
    try:
        bad_pg = finpulse("ingest", "--drain", env={**env, "POSTGRES_SCHEMA": "legacy"}, check=False, timeout=120)
    finally:
        with psycopg.connect(isolated.postgres_conninfo(), autocommit=True) as conn:
            conn.execute("DROP SCHEMA legacy CASCADE")
    assert bad_pg.returncode == 4 and "price is text, not double precision" in bad_pg.stderr
    assert "Traceback" not in bad_pg.stderr + bad_delta.stderr


def test_rejects_land_once_with_reason_and_bytes_and_go_to_the_dead_letter_topic(isolated):
    import orjson

    from finpulse import produce

    good = [orjson.dumps(t) for t in produce.ticks(1000)]
    bad = [
        b"\xff\xfe not utf-8",
        b'{"symbol": "A", "price"',
        b"null",
        b"{}",
        b'{"symbol":"A","price":-1,"size":1,"timestamp_ms":1700000000000}',
    ]
    values = good[:500] + bad + good[500:]
    produce.send(isolated, iter([(b"k%d" % (i % 7), v) for i, v in enumerate(values)]))
    dlq = f"{isolated.kafka_topic}-dlq"
    env = env_for(isolated, FINPULSE_BATCH_SIZE="50")
    finpulse("ingest", "--drain", "--dlq-topic", dlq, env=env)
    finpulse("ingest", "--drain", "--dlq-topic", dlq, env=env)  # nothing new: no second reject

    import psycopg

    with psycopg.connect(isolated.postgres_conninfo()) as conn:
        rows = conn.execute("SELECT raw, reason, feed, tick_index FROM prices_rejected").fetchall()
    assert sorted(bytes(r[0]) for r in rows) == sorted(bad)
    assert all(r[1] for r in rows)
    assert len(pg_rows(isolated)) == 1000 and len(delta_rows(isolated)) == 1000

    seen = [(value, headers) for _, value, headers in read_topic(isolated, dlq, len(bad), timeout=30)]
    assert sorted(v for v, _ in seen) == sorted(bad)
    assert all(h["finpulse.reason"] and h["finpulse.source"].startswith(isolated.kafka_topic.encode()) for _, h in seen)
    dlq_highs = source.watermarks(isolated.model_copy(update={"kafka_topic": dlq}))
    assert sum(high - low for low, high in dlq_highs.values()) == len(bad), "each reject sent once"
    client = source.admin(isolated)
    client.delete_topics([dlq])[dlq].result(timeout=30)
