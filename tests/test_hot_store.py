"""PostgreSQL as the hot store, against the real server: day partitions made ahead, a tick of a day
without one caught and moved later, retention that drops only the days Delta holds, an old table
migrated through a kill, and 1-minute bars equal to the raw ticks through kills, replays and late
ticks (sinks/postgres/tables.py, days.py, bars.py, migrate.py; finpulse/retention.py)."""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import subprocess
import sys
import time

import orjson
import psycopg
import pytest
from confluent_kafka import Producer
from deltalake import DeltaTable
from support import ROOT
from support.cli import env_for, finish, finpulse, start_ingest
from support.sinks import delta_rows, pg_count, pg_rows

from finpulse.checks import MAX_FUTURE_US
from finpulse.sinks.postgres import bars
from finpulse.sinks.postgres.tables import LEGACY_PRICES_DDL, OTHER_DDL

pytestmark = [pytest.mark.kafka, pytest.mark.postgres, pytest.mark.slow]


def query(s, sql: str, params=None) -> list[tuple]:
    with psycopg.connect(s.postgres_conninfo(), autocommit=True) as conn:
        return conn.execute(sql, params).fetchall()


def days_held(env) -> dict:
    return json.loads(finpulse("status", "--json", env=env).stdout)["postgres"]["days"]


def bars_differing(s) -> int:
    return query(s, bars.DIFFERING, {"since": dt.datetime(1970, 1, 1, tzinfo=dt.UTC)})[0][0]


def send_at(s, ticks: list[dict], record_ms: int | None = None) -> None:
    """Canonical ticks, each Kafka record stamped `record_ms` (a producer whose clock is off)."""
    p = Producer({"bootstrap.servers": s.kafka_bootstrap_servers})
    for t in ticks:
        p.produce(
            s.kafka_topic, orjson.dumps(t), t["symbol"].encode(), **({"timestamp": record_ms} if record_ms else {})
        )
    assert p.flush(30) == 0


INGEST_ROLE = "finpulse_ingest"  # scripts/services up makes it, with no rights; docs/security.md's GRANTs


def grant_ingest_role(s) -> None:
    with psycopg.connect(s.postgres_conninfo(), autocommit=True) as conn:
        conn.execute(f"GRANT USAGE ON SCHEMA {s.postgres_schema} TO {INGEST_ROLE}")
        conn.execute(
            "GRANT SELECT, INSERT, UPDATE ON prices_raw, prices_rejected, finpulse_offsets, finpulse_gaps, "
            f"finpulse_duplicates, prices_duplicates, finpulse_sequence_gaps, prices_1m, finpulse_retention TO {INGEST_ROLE}"
        )
        conn.execute(f"GRANT SELECT, INSERT, UPDATE, DELETE ON finpulse_trade_windows TO {INGEST_ROLE}")


def test_partitions_ahead_and_a_tick_of_a_day_without_one_is_caught_then_moved(isolated):
    env = env_for(isolated)
    held = days_held(env)
    today = dt.datetime.now(dt.UTC).date()
    assert held["partitioned"] and held["first_day"] == str(today - dt.timedelta(days=1))
    assert held["last_day"] == str(today + dt.timedelta(days=isolated.pg_days_ahead))
    # maintain has not run for a while: tomorrow has no partition yet
    tomorrow = today + dt.timedelta(days=1)
    with psycopg.connect(isolated.postgres_conninfo(), autocommit=True) as conn:
        conn.execute(f"ALTER TABLE prices_raw DETACH PARTITION prices_raw_p{tomorrow:%Y%m%d}")
        conn.execute(f"DROP TABLE prices_raw_p{tomorrow:%Y%m%d}")
    now_ms = int(time.time() * 1000)
    # a clock ahead upstream: in tomorrow, yet within the 24 h a trade time may run ahead of its
    # Kafka timestamp (tomorrow 00:30 is further ahead than that in a day's first half hour)
    midnight_ms = int(dt.datetime.combine(tomorrow, dt.time(0, 0), dt.UTC).timestamp() * 1000)
    soon_ms = max(midnight_ms, min(midnight_ms + 1_800_000, now_ms + MAX_FUTURE_US // 1000 - 10_000))
    ticks = [
        {"symbol": "OLD", "price": 1.0, "size": 1.0, "timestamp_ms": 978_307_200_000},  # 2001-01-01
        {"symbol": "NOW", "price": 2.0, "size": 1.0, "timestamp_ms": now_ms},
        {"symbol": "SOON", "price": 3.0, "size": 1.0, "timestamp_ms": soon_ms},
    ]
    send_at(isolated, ticks)
    # ingest as the least-privilege role, which makes no partition: a day without one is no refusal
    limited = env_for(isolated, POSTGRES_USER=INGEST_ROLE, POSTGRES_PASSWORD=INGEST_ROLE)
    grant_ingest_role(isolated)
    finish(start_ingest(limited, "--drain"))
    assert pg_count(isolated) == 3 and pg_count(isolated, "prices_raw_default") == 2
    refused = finpulse("maintain", env=limited, check=False)  # DDL is the owner's
    assert refused.returncode == 4 and "run `finpulse maintain` as the tables' owner" in refused.stderr
    finpulse("maintain", env=env)
    assert pg_count(isolated, "prices_raw_default") == 0 and pg_count(isolated) == 3
    names = {n for (n,) in query(isolated, "SELECT tableoid::regclass::text FROM prices_raw")}
    assert names == {"prices_raw_p20010101", f"prices_raw_p{today:%Y%m%d}", f"prices_raw_p{tomorrow:%Y%m%d}"}
    assert finpulse("verify", env=env).returncode == 0


def test_retention_drops_only_the_days_delta_holds_and_verify_knows(isolated):
    env = env_for(isolated)
    start = dt.datetime.combine(dt.datetime.now(dt.UTC).date() - dt.timedelta(days=10), dt.time(), dt.UTC)
    # 10 days of ticks, one every 30 s: 2,880 a day
    finpulse("produce", "--count", "28800", "--start", start.isoformat(), "--interval-us", "30000000", env=env)
    finish(start_ingest(env, "--drain"))
    days = [start.date() + dt.timedelta(days=i) for i in range(10)]
    # Delta loses the rows of the fourth day (a wrongly vacuumed file, say): that day must stay
    DeltaTable(isolated.delta_uri).delete(f"trade_date = '{days[3]}'")
    proc = finpulse("maintain", "--pg-retention-days", "5", env=env, check=False)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert (
        f"kept the day {days[3]} and the days after it: delta holds 0 of its 2,880 rows (2,880 missing)" in proc.stdout
    )
    dropped = [d for (d,) in query(isolated, "SELECT day FROM finpulse_retention ORDER BY day")]
    assert dropped == days[:3]  # the safe days before it, and no later day
    assert pg_count(isolated) == 28_800 - 3 * 2_880
    assert days_held(env)["held_from"] == str(days[3])
    assert finpulse("verify", "--sink", "postgres", env=env).returncode == 0  # the dropped days are not missing

    finpulse("verify", "--repair", "--sink", "delta", env=env)  # Delta gets the day back
    proc = finpulse("maintain", "--pg-retention-days", "5", env=env)
    kept_from = dt.datetime.now(dt.UTC).date() - dt.timedelta(days=5)
    assert [d for (d,) in query(isolated, "SELECT day FROM finpulse_retention ORDER BY day")] == [
        d for d in days if d < kept_from
    ]
    assert finpulse("verify", env=env).returncode == 0


def test_an_old_table_migrates_through_a_kill_and_ingest_refuses_until_it_is_done(isolated):
    env = env_for(isolated)
    schema = isolated.postgres_schema
    with psycopg.connect(isolated.postgres_conninfo(), autocommit=True) as conn:  # what an earlier release made
        conn.execute(f"DROP SCHEMA {schema} CASCADE")
        conn.execute(f"CREATE SCHEMA {schema}")
        conn.execute(LEGACY_PRICES_DDL)
        for ddl in OTHER_DDL:
            conn.execute(ddl)
    start = dt.datetime.now(dt.UTC) - dt.timedelta(days=3)
    finpulse("produce", "--count", "40000", "--start", start.isoformat(), "--interval-us", "6000000", env=env)
    finish(start_ingest(env, "--drain"))  # into the unpartitioned table: it still works
    assert query(isolated, "SELECT relkind FROM pg_class WHERE oid = 'prices_raw'::regclass") == [("r",)]

    migrate = subprocess.Popen(
        [sys.executable, "-m", "finpulse", "migrate", "--chunk-offsets", "500"],
        env=env,
        cwd=ROOT,
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
        start_new_session=True,
    )
    lines = [migrate.stderr.readline() for _ in range(3)]  # three chunks copied, then a kill
    os.killpg(migrate.pid, signal.SIGKILL)
    migrate.wait(10)
    migrate.stderr.close()
    assert all("offsets" in line for line in lines), lines
    refused = finpulse("ingest", "--drain", env=env, check=False)
    assert refused.returncode == 4 and "half-way through `finpulse migrate`" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1

    finpulse("produce", "--count", "2000", "--seed", "8", env=env)  # more arrives meanwhile
    done = finpulse("migrate", "--chunk-offsets", "500", env=env).stdout
    assert "swapped" in done and "dropped the old table" in done
    assert query(isolated, "SELECT relkind FROM pg_class WHERE oid = 'prices_raw'::regclass") == [("p",)]
    finish(start_ingest(env, "--drain"))
    rows = pg_rows(isolated)
    assert len(rows) == len({r[-3:] for r in rows}) == 42_000
    assert sorted(r[-3:] for r in rows) == sorted(r[-3:] for r in delta_rows(isolated))
    assert finpulse("verify", env=env).returncode == 0
    assert "already partitioned" in finpulse("migrate", env=env).stdout


def test_bars_equal_the_raw_ticks_through_a_kill_a_replay_and_late_ticks(isolated):
    env = env_for(isolated, FINPULSE_BATCH_SIZE="50")
    total = 60_000
    finpulse("produce", "--count", str(total), "--trade-ids", "--duplicate-rate", "0.03", env=env)
    proc = start_ingest(env, "--workers", "2")
    deadline = time.monotonic() + 60
    while pg_count(isolated) < 15_000 and time.monotonic() < deadline:
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=10)
    # late ticks: trade times of minutes already barred, arriving now
    first_ms = query(isolated, "SELECT min(timestamp_ms) FROM prices_raw")[0][0]
    late = [
        {"symbol": "AAPL", "price": 10.0 + i, "size": 3.0, "timestamp_ms": first_ms - 1 + i, "exchange": "NASDAQ"}
        for i in range(5)
    ]
    send_at(isolated, late)
    finish(start_ingest(env, "--drain"))
    with psycopg.connect(isolated.postgres_conninfo(), autocommit=True) as conn:
        conn.execute("DELETE FROM prices_raw WHERE kafka_partition = 2 AND kafka_offset % 7 = 0")
    assert bars_differing(isolated) > 0  # the bars still count the deleted rows
    # the deleted rows come back through replay, and their minutes' bars are computed afresh: counted once
    finpulse("replay", "--from-offset", "0", "--sink", "postgres", env=env)
    finpulse("replay", "--from-offset", "0", env=env)  # a second replay counts nothing twice
    assert bars_differing(isolated) == 0
    [(o, h, low, c, n, v)] = query(
        isolated,
        "SELECT open, high, low, close, trades, volume FROM prices_1m WHERE symbol = 'AAPL' AND minute = "
        "date_trunc('minute', to_timestamp(%s / 1000.0)) AND exchange = 'NASDAQ'",
        (first_ms - 1,),
    ) or [(None,) * 6]
    raw = query(
        isolated,
        "SELECT price, size FROM prices_raw WHERE symbol = 'AAPL' AND exchange = 'NASDAQ' AND date_trunc('minute', "
        "trade_time) = date_trunc('minute', to_timestamp(%s / 1000.0)) ORDER BY trade_time, kafka_partition, "
        "kafka_offset, tick_index",
        (first_ms - 1,),
    )
    assert (
        (o, c, n) == (raw[0][0], raw[-1][0], len(raw)) and h == max(p for p, _ in raw) and low == min(p for p, _ in raw)
    )
    assert abs(v - sum(q for _, q in raw)) < 1e-6
    assert finpulse("verify", env=env).returncode == 0
    shown = json.loads(finpulse("show", "--json", "--bars", "AAPL", env=env).stdout)["postgres"]["bars"]
    assert shown and all(b["symbol"] == "AAPL" for b in shown)
