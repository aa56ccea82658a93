"""PostgreSQL as the hot store, what it costs and what it buys, each in one run:

  * the write rate into the day-partitioned prices_raw with the bars updated, against the
    unpartitioned table of the last release without bars (the report prints the ratio);
  * dropping a day of rows (DETACH + DROP of its partition) against a DELETE of the same day;
  * two queries on HOT_DAYS days of ticks, before partitioning (one table, bars computed from the
    ticks) and after (day partitions, prices_1m): one symbol's bars for a day, one symbol's ticks
    for an hour.

HOT_ROWS_PER_DAY (default 1,000,000; `scripts/bench --quick` 100,000) sets the size of a day.
"""

from __future__ import annotations

import datetime as dt
import os
import time

import numpy as np
import psycopg
import pyarrow as pa
import pytest
from conftest import QUICK
from test_stages import _batches

from finpulse import produce
from finpulse.decode import Decoder, Messages
from finpulse.schema import TICKS
from finpulse.sinks.postgres import PostgresSink, pgcopy
from finpulse.sinks.postgres.days import today
from finpulse.sinks.postgres.tables import LEGACY_PRICES_DDL, OTHER_DDL, index_ddl

ROWS_PER_DAY = int(os.environ.get("HOT_ROWS_PER_DAY", "100000" if QUICK else "1000000"))
HOT_DAYS = 30
SYMBOLS = [f"S{i:02d}" for i in range(16)]
WRITE_TICKS = 100_000


@pytest.fixture(scope="module")
def ticks() -> pa.Table:
    """WRITE_TICKS canonical ticks with trade ids, decoded as a worker would."""
    values = [v for _, v in produce.encoded(produce.ticks(WRITE_TICKS, trade_ids=True))]
    n = len(values)
    return pa.Table.from_batches(
        [Decoder().decode(Messages(values, [i % 4 for i in range(n)], list(range(n)), [0] * n)).ticks]
    )


def _legacy(s) -> None:
    """The tables of the release before day partitions, in s's schema."""
    with psycopg.connect(s.postgres_conninfo(), autocommit=True) as conn:
        conn.execute(f"DROP SCHEMA {s.postgres_schema} CASCADE")
        conn.execute(f"CREATE SCHEMA {s.postgres_schema}")
        conn.execute(LEGACY_PRICES_DDL)
        conn.execute(index_ddl())
        for ddl in OTHER_DDL:
            conn.execute(ddl)


@pytest.mark.parametrize("table", ["unpartitioned, no bars", "day partitions + bars"])
def test_stage_postgres_hot_store_write(benchmark, ticks, fresh_sinks, table):
    """PostgresSink.write in 10k-tick writes into either table."""
    batches = _batches(ticks)
    runs = []

    def setup():
        s = fresh_sinks(sinks="postgres")
        before = table.startswith("unpartitioned")
        if before:
            _legacy(s)
        return (PostgresSink(s.postgres_conninfo(), s.kafka_topic, bars_on=not before),), {}

    def run(sink):
        started = time.perf_counter()
        for b in batches:
            sink.write(b)
        runs.append(time.perf_counter() - started)
        sink.close()

    benchmark.pedantic(run, setup=setup, rounds=3, iterations=1)
    benchmark.extra_info.update(
        ticks_per_s=round(ticks.num_rows / min(runs)), kind="stage", stage="postgres hot store", table=table
    )


def _day_rows(day: dt.date, n: int, first_offset: int) -> pa.Table:
    """`n` ticks of one UTC day over 16 symbols, spread evenly over it."""
    rng = np.random.default_rng(first_offset)
    start_us = int(dt.datetime.combine(day, dt.time(), dt.UTC).timestamp() * 1_000_000)
    times = start_us + np.sort(rng.integers(0, 86_400_000_000, n))
    return pa.table(
        {
            "symbol": pa.array(np.array(SYMBOLS)[rng.integers(0, len(SYMBOLS), n)]),
            "price": pa.array(100 + rng.random(n)),
            "size": pa.array(rng.integers(1, 500, n).astype(np.float64)),
            "timestamp_ms": pa.array(times // 1000),
            "trade_time": pa.array(times, pa.timestamp("us", tz="UTC")),
            "exchange": pa.array(["NASDAQ"] * n),
            "side": pa.array([None] * n, pa.string()),
            "trade_id": pa.array([None] * n, pa.string()),
            "kafka_time": pa.array(times, pa.timestamp("us", tz="UTC")),
            "broker_time": pa.array(np.zeros(n, dtype=bool)),
            "kafka_partition": pa.array(np.zeros(n, dtype=np.int32)),
            "kafka_offset": pa.array(first_offset + np.arange(n, dtype=np.int64)),
            "tick_index": pa.array(np.zeros(n, dtype=np.int32)),
        },
        schema=TICKS,
    )


def _load(conn: psycopg.Connection, days: list[dt.date]) -> None:
    columns = ", ".join(pgcopy.copy_columns(TICKS))
    with conn.cursor() as cur:
        for i, day in enumerate(days):
            with cur.copy(f"COPY prices_raw ({columns}) FROM STDIN (FORMAT BINARY)") as copy:
                for chunk in pgcopy.chunks(_day_rows(day, ROWS_PER_DAY, i * ROWS_PER_DAY)):
                    copy.write(chunk)


def _bars_from_raw(conn: psycopg.Connection) -> None:
    """prices_1m as the sink would have built it, computed once by SQL from the loaded rows."""
    from finpulse.sinks.postgres import bars

    minutes = conn.execute(
        "SELECT DISTINCT symbol, exchange, date_trunc('minute', trade_time) FROM prices_raw"
    ).fetchall()
    s, e, m = (list(c) for c in zip(*minutes))
    cur = conn.cursor()
    cur.execute(bars.REBUILD, {"s": s, "e": e, "m": m, "lo": min(m), "hi": max(m) + dt.timedelta(minutes=1)})


@pytest.mark.parametrize("layout", ["one table", "day partitions"])
def test_hot_store_drop_a_day_and_query_a_month(benchmark, fresh_sinks, layout):
    s = fresh_sinks(sinks="postgres")
    days = [today() - dt.timedelta(days=HOT_DAYS - i) for i in range(HOT_DAYS)]
    with psycopg.connect(s.postgres_conninfo(), autocommit=True) as conn:
        if layout == "one table":
            _legacy(s)
        else:
            PostgresSink.prepare(s)  # today's partitions; the month's, made as maintain would
            from finpulse.sinks.postgres import days as day_partitions

            day_partitions.ensure(conn, days[0], days[-1])
        _load(conn, days)
        if layout == "day partitions":
            _bars_from_raw(conn)
        conn.execute("ANALYZE")
        probe = days[HOT_DAYS // 2]
        lo = dt.datetime.combine(probe, dt.time(), dt.UTC)
        bars_query = (
            "SELECT date_trunc('minute', trade_time) m, (array_agg(price ORDER BY trade_time))[1], max(price), "
            "min(price), (array_agg(price ORDER BY trade_time DESC))[1], sum(size) FROM prices_raw "
            "WHERE symbol = 'S03' AND trade_time >= %(lo)s AND trade_time < %(hi)s GROUP BY 1"
            if layout == "one table"
            else "SELECT minute, open, high, low, close, volume FROM prices_1m "
            "WHERE symbol = 'S03' AND minute >= %(lo)s AND minute < %(hi)s"
        )
        ticks_query = (
            "SELECT price, size, trade_time FROM prices_raw WHERE symbol = 'S03' "
            "AND trade_time >= %(lo)s AND trade_time < %(hi)s"
        )
        timings = {}

        def timed(what: str, sql: str, params: dict, repeat: int = 5) -> None:
            best = float("inf")
            for _ in range(repeat):
                started = time.perf_counter()
                conn.execute(sql, params).fetchall()
                best = min(best, time.perf_counter() - started)
            timings[what] = round(best * 1000, 2)

        timed("bars_of_a_day_ms", bars_query, {"lo": lo, "hi": lo + dt.timedelta(days=1)})
        timed("ticks_of_an_hour_ms", ticks_query, {"lo": lo, "hi": lo + dt.timedelta(hours=1)})

        def drop():
            started = time.perf_counter()
            if layout == "one table":
                conn.execute(
                    "DELETE FROM prices_raw WHERE trade_time >= %s AND trade_time < %s",
                    (dt.datetime.combine(days[0], dt.time(), dt.UTC), dt.datetime.combine(days[1], dt.time(), dt.UTC)),
                )
            else:
                name = f"prices_raw_p{days[0]:%Y%m%d}"
                conn.execute(f"ALTER TABLE prices_raw DETACH PARTITION {name}")
                conn.execute(f"DROP TABLE {name}")
            timings["drop_a_day_ms"] = round((time.perf_counter() - started) * 1000, 1)

        benchmark.pedantic(drop, rounds=1, iterations=1)
    benchmark.extra_info.update(kind="hot store", layout=layout, rows_per_day=ROWS_PER_DAY, days=HOT_DAYS, **timings)
