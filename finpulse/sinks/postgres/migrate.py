"""`finpulse migrate`: an unpartitioned prices_raw (every release before day partitions) becomes the
day-partitioned one (tables.py), without losing or duplicating a row, while ingest goes on.

  1. A partitioned prices_raw_migrating is made beside it, LIKE it (its columns, defaults and
     CHECKs; its triggers are made again on it), with a partition per day from its oldest trade to
     FINPULSE_PG_DAYS_AHEAD days ahead, and a default partition.
  2. The rows are copied in chunks of --chunk-offsets offsets of one Kafka partition (a range scan
     of the primary key), one transaction each, recorded in finpulse_migration. A kill loses at
     most the chunk under way; running migrate again goes on from there. A running ingest keeps
     writing the old table meanwhile; ingest started now refuses, with a line saying why.
  3. One last transaction holds the old table still against writes (reads go on): copies the rows
     ingest added since their chunk was copied, checks both tables hold the same number of rows,
     then swaps the names and drops the old table (--keep-old keeps it, renamed). Ingest's writes
     wait only for this step, and then go to the new table.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
from collections.abc import Callable

import psycopg

from finpulse.errors import SinkRejected
from finpulse.sinks.postgres import days
from finpulse.sinks.postgres.tables import (
    DEFAULT_PARTITION,
    MIGRATING_TABLE,
    MIGRATION_TABLE,
    PRICES_KEY,
    PRICES_TABLE,
    day_bounds,
    day_name,
)

log = logging.getLogger(__name__)

# Offsets of one Kafka partition copied per transaction by default: ~1M rows, a few seconds each.
CHUNK_OFFSETS = 1_000_000
OLD_NAME = f"{PRICES_TABLE}_unpartitioned"
# The last step waits at most this long for ingest's current transaction, then gives up (run again).
FINAL_LOCK_TIMEOUT = "30s"

_MARKER = f"""CREATE TABLE IF NOT EXISTS {MIGRATION_TABLE} (
    kafka_partition integer NOT NULL,
    from_offset bigint NOT NULL,
    to_offset bigint NOT NULL,
    rows bigint NOT NULL,
    copied_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (kafka_partition, from_offset)
)"""
# The Kafka partitions prices_raw holds, by a skip scan of its primary key (no full scan).
_PARTITIONS = f"""WITH RECURSIVE p AS (
    (SELECT kafka_partition FROM {PRICES_TABLE} ORDER BY kafka_partition LIMIT 1)
    UNION ALL
    SELECT (SELECT kafka_partition FROM {PRICES_TABLE} WHERE kafka_partition > p.kafka_partition
            ORDER BY kafka_partition LIMIT 1) FROM p WHERE p.kafka_partition IS NOT NULL
) SELECT kafka_partition FROM p WHERE kafka_partition IS NOT NULL"""


def migrate(
    conninfo: str, schema: str, days_ahead: int, keep_old: bool, chunk: int, say: Callable[[str], None]
) -> list[str]:
    """Run (or finish) the migration of `schema`.prices_raw; what was done, for a person."""
    with psycopg.connect(conninfo, autocommit=True) as conn:
        shape = days.kind(conn)
        if shape is None:
            return [f"{schema}.{PRICES_TABLE} does not exist: `finpulse init` makes it partitioned"]
        if shape == "partitioned" and days.kind(conn, MIGRATION_TABLE) is None:
            return [f"{schema}.{PRICES_TABLE} is already partitioned by day: nothing to do"]
        if not days.owned(conn):
            raise SinkRejected(f"only the owner of {schema}.{PRICES_TABLE} may migrate it: run migrate as that role")
        if shape == "partitioned":  # the swap was committed; only the marker is left
            conn.execute(f"DROP TABLE IF EXISTS {MIGRATION_TABLE}")
            return [f"{schema}.{PRICES_TABLE} is partitioned by day"]
        conn.execute(_MARKER)  # from now on, ingest started on this schema refuses
        made = _new_table(conn, days_ahead)
        copied = _copy(conn, chunk, say)
        done = _swap(conn, keep_old)
    return [*made, f"copied {copied:,} rows in chunks", *done]


def _new_table(conn: psycopg.Connection, days_ahead: int) -> list[str]:
    if days.kind(conn, MIGRATING_TABLE) is not None:
        return [f"{MIGRATING_TABLE} exists: going on with it"]
    key = ", ".join(PRICES_KEY)
    conn.execute(
        f"CREATE TABLE {MIGRATING_TABLE} (LIKE {PRICES_TABLE} INCLUDING DEFAULTS INCLUDING CONSTRAINTS, "
        f"PRIMARY KEY ({key})) PARTITION BY RANGE (trade_time)"
    )
    conn.execute(f"CREATE INDEX {MIGRATING_TABLE}_symbol_time ON {MIGRATING_TABLE} (symbol, trade_time)")
    for (definition,) in conn.execute(
        "SELECT pg_get_triggerdef(oid) FROM pg_trigger WHERE tgrelid = to_regclass(%s) AND NOT tgisinternal",
        (PRICES_TABLE,),
    ).fetchall():
        conn.execute(re.sub(r" ON \S+ ", f" ON {MIGRATING_TABLE} ", definition, count=1))
    oldest = conn.execute(f"SELECT min(trade_time) FROM {PRICES_TABLE}").fetchone()
    today = days.today()
    first = (oldest[0].astimezone(dt.UTC).date() if oldest and oldest[0] else today) - dt.timedelta(days=1)
    day, count = first, 0
    while day <= today + dt.timedelta(days=days_ahead):
        lo, hi = day_bounds(day)
        conn.execute(
            f"CREATE TABLE {day_name(day)} PARTITION OF {MIGRATING_TABLE} FOR VALUES FROM ('{lo}') TO ('{hi}')"
        )
        day, count = day + dt.timedelta(days=1), count + 1
    conn.execute(f"CREATE TABLE {DEFAULT_PARTITION} PARTITION OF {MIGRATING_TABLE} DEFAULT")
    return [f"made {MIGRATING_TABLE} with {count} day partitions from {first}"]


def _copy(conn: psycopg.Connection, chunk: int, say: Callable[[str], None]) -> int:
    """Every chunk not copied yet, one transaction each; rows copied by this call."""
    done = {(p, a) for p, a in conn.execute(f"SELECT kafka_partition, from_offset FROM {MIGRATION_TABLE}").fetchall()}
    copied = 0
    for (p,) in conn.execute(_PARTITIONS).fetchall():
        bounds = conn.execute(
            f"SELECT min(kafka_offset), max(kafka_offset) FROM {PRICES_TABLE} WHERE kafka_partition = %s", (p,)
        ).fetchone()
        if bounds is None or bounds[0] is None:
            continue
        lo, hi = bounds
        start = (lo // chunk) * chunk
        for a in range(start, hi + 1, chunk):
            if (p, a) in done:
                continue
            with conn.transaction():
                cur = conn.execute(
                    f"INSERT INTO {MIGRATING_TABLE} SELECT * FROM {PRICES_TABLE} WHERE kafka_partition = %s "
                    "AND kafka_offset >= %s AND kafka_offset < %s ON CONFLICT DO NOTHING",
                    (p, a, a + chunk),
                )
                conn.execute(
                    f"INSERT INTO {MIGRATION_TABLE} (kafka_partition, from_offset, to_offset, rows) VALUES (%s, %s, %s, %s)",
                    (p, a, a + chunk, cur.rowcount),
                )
            copied += cur.rowcount
            say(f"partition {p}: offsets {a:,} up to {a + chunk:,}: {cur.rowcount:,} rows")
    return copied


def _swap(conn: psycopg.Connection, keep_old: bool) -> list[str]:
    with conn.transaction():
        conn.execute(f"SET LOCAL lock_timeout = '{FINAL_LOCK_TIMEOUT}'")
        # writes wait from here (ingest's next COPY); reads go on
        conn.execute(f"LOCK TABLE {PRICES_TABLE} IN SHARE ROW EXCLUSIVE MODE")
        # what ingest wrote since: from the last chunk copied of each Kafka partition on (its rows
        # grew while it was copied), and the whole of a partition whose first rows came after the copy
        last: dict[int, int] = dict(
            conn.execute(f"SELECT kafka_partition, max(from_offset) FROM {MIGRATION_TABLE} GROUP BY 1").fetchall()
        )
        caught_up = 0
        for (p,) in conn.execute(_PARTITIONS).fetchall():
            caught_up += conn.execute(
                f"INSERT INTO {MIGRATING_TABLE} SELECT * FROM {PRICES_TABLE} WHERE kafka_partition = %s "
                "AND kafka_offset >= %s ON CONFLICT DO NOTHING",
                (p, last.get(p, -1)),
            ).rowcount
        old, new = _count(conn, PRICES_TABLE), _count(conn, MIGRATING_TABLE)
        if new != old:  # rows written below the copied chunks meanwhile (a replay): copy them all again
            conn.execute(f"INSERT INTO {MIGRATING_TABLE} SELECT * FROM {PRICES_TABLE} ON CONFLICT DO NOTHING")
            new = _count(conn, MIGRATING_TABLE)
        if new != old:
            raise SinkRejected(
                f"{MIGRATING_TABLE} holds {new:,} rows and {PRICES_TABLE} {old:,}: nothing was swapped; "
                "the new table keeps every key once, so the old one must hold a key twice (run `finpulse verify`)"
            )
        conn.execute(f"ALTER TABLE {PRICES_TABLE} RENAME TO {OLD_NAME}")
        conn.execute(f"ALTER INDEX IF EXISTS {PRICES_TABLE}_pkey RENAME TO {OLD_NAME}_pkey")
        conn.execute(f"ALTER INDEX IF EXISTS {PRICES_TABLE}_symbol_time RENAME TO {OLD_NAME}_symbol_time")
        conn.execute(f"ALTER TABLE {MIGRATING_TABLE} RENAME TO {PRICES_TABLE}")
        conn.execute(f"ALTER INDEX {MIGRATING_TABLE}_pkey RENAME TO {PRICES_TABLE}_pkey")
        conn.execute(f"ALTER INDEX {MIGRATING_TABLE}_symbol_time RENAME TO {PRICES_TABLE}_symbol_time")
        if not keep_old:
            conn.execute(f"DROP TABLE {OLD_NAME}")
        conn.execute(f"DROP TABLE {MIGRATION_TABLE}")
    done = [f"{caught_up:,} rows written meanwhile copied under a short lock", f"{new:,} rows in both: swapped"]
    done.append(f"kept the old table as {OLD_NAME}" if keep_old else "dropped the old table")
    return done


def _count(conn: psycopg.Connection, table: str) -> int:
    row = conn.execute(f"SELECT count(*) FROM {table}").fetchone()
    return int(row[0]) if row else 0
