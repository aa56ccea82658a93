"""The day partitions of prices_raw (tables.py): which exist, making the coming days' ahead of
time, moving what the default partition caught into its day, and dropping whole days.

Everything here is DDL, for the tables' owner: `finpulse init` and `finpulse maintain` (the
ingest role creates and drops nothing; a tick whose day has no partition lands in the default
one). Each step is one transaction: a kill at any point leaves every row in exactly one place.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass

import psycopg

from finpulse.sinks.postgres.tables import (
    DEFAULT_PARTITION,
    PRICES_TABLE,
    RETENTION_TABLE,
    day_bounds,
    day_name,
)

log = logging.getLogger(__name__)

# DDL waits at most this long for a lock (a long read, a writer's transaction), then the step is
# retried by the next maintenance run: maintenance never queues ingest's writes behind it for long.
DDL_LOCK_TIMEOUT = "5s"

_KIND = "SELECT c.relkind FROM pg_class c WHERE c.oid = to_regclass(%s)"
_CHILDREN = (
    "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid WHERE i.inhparent = to_regclass(%s)"
)


def kind(conn: psycopg.Connection, table: str = PRICES_TABLE) -> str | None:
    """'partitioned', 'table' (unpartitioned: an earlier release's), or None (absent)."""
    row = conn.execute(_KIND, (table,)).fetchone()
    return None if row is None else {"p": "partitioned", "r": "table"}.get(row[0], row[0])


def owned(conn: psycopg.Connection, table: str = PRICES_TABLE) -> bool:
    """May this role run DDL on `table` (it owns it, or is a member of its owner)?"""
    row = conn.execute(
        "SELECT pg_has_role(c.relowner, 'USAGE') FROM pg_class c WHERE c.oid = to_regclass(%s)", (table,)
    ).fetchone()
    return bool(row and row[0])


def partitions(conn: psycopg.Connection) -> dict[dt.date, str]:
    """Day -> partition name, for every day partition of prices_raw."""
    out = {}
    for (name,) in conn.execute(_CHILDREN, (PRICES_TABLE,)).fetchall():
        suffix = name[len(PRICES_TABLE) + 2 :]
        if name.startswith(f"{PRICES_TABLE}_p") and len(suffix) == 8 and suffix.isdigit():
            out[dt.date(int(suffix[:4]), int(suffix[4:6]), int(suffix[6:]))] = name
    return out


def create_default(conn: psycopg.Connection) -> None:
    conn.execute(f"CREATE TABLE IF NOT EXISTS {DEFAULT_PARTITION} PARTITION OF {PRICES_TABLE} DEFAULT")


def today() -> dt.date:
    return dt.datetime.now(dt.UTC).date()


def ensure(conn: psycopg.Connection, first: dt.date, last: dt.date) -> list[dt.date]:
    """Make the partitions of the days first..last that do not exist; the days made."""
    have = partitions(conn)
    made = []
    day = first
    while day <= last:
        if day not in have:
            add(conn, day)
            made.append(day)
        day += dt.timedelta(days=1)
    return made


def add(conn: psycopg.Connection, day: dt.date) -> int:
    """The partition of `day`, with the rows of that day the default partition holds moved into it,
    in one transaction; how many rows moved. A new table attached (ATTACH takes a weaker lock on
    prices_raw than CREATE ... PARTITION OF, so ingest's writes go on while it is made)."""
    name, (lo, hi) = day_name(day), day_bounds(day)
    with conn.transaction():
        conn.execute(f"SET LOCAL lock_timeout = '{DDL_LOCK_TIMEOUT}'")
        conn.execute(f"CREATE TABLE {name} (LIKE {PRICES_TABLE} INCLUDING DEFAULTS INCLUDING CONSTRAINTS)")
        # the bound as a CHECK first: ATTACH then needs no scan of the new table to prove it
        conn.execute(
            f"ALTER TABLE {name} ADD CONSTRAINT {name}_day CHECK (trade_time >= '{lo}' AND trade_time < '{hi}')"
        )
        moved = 0
        if kind(conn, DEFAULT_PARTITION) is not None:
            # the default partition is locked (ingest's rows of this day wait a moment) and emptied of the day
            conn.execute(f"LOCK TABLE {DEFAULT_PARTITION} IN SHARE ROW EXCLUSIVE MODE")
            cur = conn.execute(
                f"WITH gone AS (DELETE FROM {DEFAULT_PARTITION} WHERE trade_time >= %s AND trade_time < %s "
                f"RETURNING *) INSERT INTO {name} SELECT * FROM gone",
                (lo, hi),
            )
            moved = cur.rowcount
        conn.execute(f"ALTER TABLE {PRICES_TABLE} ATTACH PARTITION {name} FOR VALUES FROM ('{lo}') TO ('{hi}')")
        conn.execute(f"ALTER TABLE {name} DROP CONSTRAINT {name}_day")
    if moved:
        log.info("prices_raw: %d rows of %s moved from the default partition into %s", moved, day, name)
    return moved


def stray_days(conn: psycopg.Connection) -> dict[dt.date, int]:
    """Days the default partition holds rows of, and how many."""
    if kind(conn, DEFAULT_PARTITION) is None:
        return {}
    rows = conn.execute(
        f"SELECT (trade_time AT TIME ZONE 'UTC')::date AS day, count(*) FROM {DEFAULT_PARTITION} GROUP BY 1 ORDER BY 1"
    ).fetchall()
    return dict(rows)


def move_strays(conn: psycopg.Connection) -> dict[dt.date, int]:
    """Every row the default partition caught into a partition of its day; rows moved per day."""
    moved = {}
    for day in stray_days(conn):
        moved[day] = add(conn, day)
    return moved


@dataclass(frozen=True)
class Day:
    """One day partition as retention weighs it: its rows, and per Kafka partition the highest
    offset among them (the store of record must hold every offset up to it)."""

    day: dt.date
    name: str
    rows: int
    last_offsets: dict[int, int]


def older_than(conn: psycopg.Connection, cutoff: dt.date) -> list[Day]:
    """The day partitions of days before `cutoff`, oldest first."""
    out = []
    for day, name in sorted(partitions(conn).items()):
        if day >= cutoff:
            continue
        per = conn.execute(f"SELECT kafka_partition, max(kafka_offset), count(*) FROM {name} GROUP BY 1").fetchall()
        out.append(Day(day, name, sum(n for _, _, n in per), {p: o for p, o, _ in per}))
    return out


def drop(conn: psycopg.Connection, day: Day) -> None:
    """Detach and drop a day partition, and record the day as dropped (verify and status then know
    prices_raw holds nothing before it), in one transaction."""
    with conn.transaction():
        conn.execute(f"SET LOCAL lock_timeout = '{DDL_LOCK_TIMEOUT}'")
        conn.execute(f"ALTER TABLE {PRICES_TABLE} DETACH PARTITION {day.name}")
        conn.execute(f"DROP TABLE {day.name}")
        conn.execute(
            f"INSERT INTO {RETENTION_TABLE} (day, rows) VALUES (%s, %s) "
            "ON CONFLICT (day) DO UPDATE SET rows = EXCLUDED.rows, dropped_at = now()",
            (day.day, day.rows),
        )


def horizon(conn: psycopg.Connection) -> dt.date | None:
    """The first day after the newest dropped one: prices_raw holds no day before it (None: none dropped)."""
    if kind(conn, RETENTION_TABLE) is None:
        return None
    row = conn.execute(f"SELECT max(day) FROM {RETENTION_TABLE}").fetchone()
    return None if row is None or row[0] is None else row[0] + dt.timedelta(days=1)
