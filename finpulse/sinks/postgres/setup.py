"""PostgreSQL's preparation and its one error table: the tables FinPulse needs (created where absent,
checked where present) and SQLSTATE classes -> FinPulse's error classes, used by every command."""

from __future__ import annotations

import datetime as dt
import logging

import psycopg
from psycopg_pool import PoolTimeout

from finpulse.errors import AccessRefused, ServiceUnavailable, SinkRejected, first_line
from finpulse.schema import ADDED_COLUMNS, TICKS
from finpulse.sinks.postgres import days
from finpulse.sinks.postgres.tables import (
    BARS_TABLE,
    DEFAULT_PARTITION,
    DUPLICATE_COUNTS_TABLE,
    DUPLICATES_TABLE,
    GAPS_TABLE,
    MIGRATION_TABLE,
    OFFSETS_TABLE,
    OTHER_DDL,
    PRICES_TABLE,
    REJECTS_TABLE,
    RETENTION_TABLE,
    SEQUENCE_GAPS_TABLE,
    TRADE_STATE_TABLE,
    index_ddl,
    pg_type,
    prices_ddl,
)

log = logging.getLogger(__name__)

#: Every table FinPulse keeps in PostgreSQL (the GRANTs of docs/security.md name the same).
TABLES = (
    PRICES_TABLE,
    REJECTS_TABLE,
    OFFSETS_TABLE,
    GAPS_TABLE,
    DUPLICATE_COUNTS_TABLE,
    DUPLICATES_TABLE,
    SEQUENCE_GAPS_TABLE,
    TRADE_STATE_TABLE,
    BARS_TABLE,
    RETENTION_TABLE,
)

# SQLSTATE classes that heal by themselves: connection trouble (08), the server shutting down or
# starting (57P), too many connections / out of resources (53), conflicts with another writer (40:
# serialization/deadlock; 55P03: a lock not granted in time), and a server that is read-only for now
# (25006: a standby after a failover, a demoted primary, default_transaction_read_only) until the
# new primary takes writes. A unique violation (23505) is none of these: every write locks its
# partitions and skips what they hold, so a key already there means another writer of these tables
# (another topic, a hand-made row) and retrying would stall for ever.
_TRANSIENT_CLASSES = ("08", "53", "57", "40", "58")
_TRANSIENT_STATES = ("25006", "55P03")


# libpq's words when TLS refused the server's certificate (or the server refused TLS): no retry heals it.
_TLS_REFUSALS = ("certificate verify failed", "server does not support ssl", "does not match host name")


# libpq's words for a refused login, when the error carries no SQLSTATE (a failed connection attempt).
_LOGIN_REFUSALS = ("password authentication failed", "no pg_hba.conf entry", "does not exist", "password is required")


def classify(exc: Exception, what: str) -> Exception:
    state = getattr(exc, "sqlstate", None) or ""
    if not state and isinstance(exc, psycopg.OperationalError) and any(t in str(exc) for t in _LOGIN_REFUSALS):
        state = "28000"  # invalid authorization: no retry heals it
    if isinstance(exc, psycopg.OperationalError) and any(t in str(exc).lower() for t in _TLS_REFUSALS):
        return AccessRefused(
            f"PostgreSQL TLS failed while {what}: {first_line(exc)}; check POSTGRES_SSLMODE and that "
            "POSTGRES_SSLROOTCERT names the CA that signed the server's certificate"
        )
    if state in _TRANSIENT_STATES or (state.startswith(_TRANSIENT_CLASSES) and not state.startswith("08")):
        return ServiceUnavailable(f"PostgreSQL busy while {what} ({state}): {first_line(exc)}")
    if isinstance(exc, (PoolTimeout, psycopg.OperationalError)) and not state.startswith("28"):
        return ServiceUnavailable(
            f"PostgreSQL connection failed while {what}: {first_line(exc)} "
            "(check that it runs and the POSTGRES_* settings)"
        )
    if state.startswith(_TRANSIENT_CLASSES) or state in _TRANSIENT_STATES:
        return ServiceUnavailable(f"PostgreSQL busy while {what} ({state}): {first_line(exc)}")
    hints = {
        "28": "check POSTGRES_USER, POSTGRES_PASSWORD and POSTGRES_DB (or POSTGRES_URL)",
        "42501": "grant the role what docs/security.md lists for it (or run `finpulse init` as the owner)",
        "42": "run `finpulse init`, or fix the table so it has the columns of the canonical schema",
        "23505": "the table already holds a row with a key FinPulse writes (partition, offset, tick_index): "
        "only `finpulse ingest` and `replay` of one topic may write these tables; run `finpulse verify`",
    }
    hint = hints.get(state) or hints.get(state[:2], "see the PostgreSQL log")
    return SinkRejected(f"PostgreSQL refused {what} ({state or type(exc).__name__}): {first_line(exc)}; {hint}")


# Everything the DDL makes, as one look-up: all present means no DDL is needed.
_PRESENT = (
    "SELECT "
    + ", ".join(f"to_regclass(%(s)s || '.{t}') IS NOT NULL" for t in TABLES)
    + f""",
    EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = to_regclass(%(s)s || '.{OFFSETS_TABLE}')
            AND attname = 'topic_id' AND NOT attisdropped),
    to_regclass(%(s)s || '.{PRICES_TABLE}_symbol_time') IS NOT NULL"""
)


def create_tables(conninfo: str, schema: str, days_ahead: int = 7) -> list[str]:
    """Create the schema and tables if absent, and the columns a release added (ADDED_COLUMNS) to
    an existing prices_raw; return the names of the tables that were created. As the tables' owner,
    also make prices_raw's partitions for yesterday to `days_ahead` days ahead (days.py).

    When every table, column and index is already in place nothing but reads run, so `ingest`,
    `replay` and `verify` work as a role that may only read and write FinPulse's tables (the
    GRANTs of docs/security.md); `init` as the owner creates them."""
    try:
        with psycopg.connect(conninfo, autocommit=True) as conn:
            if days.kind(conn, MIGRATION_TABLE) is not None:
                raise SinkRejected(
                    f"{schema}.{PRICES_TABLE} is half-way through `finpulse migrate` (to day partitions): run "
                    "`finpulse migrate` again to finish it, then start this again"
                )
            present = conn.execute(_PRESENT, {"s": f'"{schema}"'}).fetchone()
            existing = {t for t, here in zip(TABLES, present or ()) if here}
            columns = _columns(conn, schema)
            lacking = [c for c in ADDED_COLUMNS if PRICES_TABLE in existing and c not in columns]
            shape = days.kind(conn)
            if shape == "table":
                _legacy_note(schema)
            partitioned_ok = shape != "partitioned" or days.kind(conn, DEFAULT_PARTITION) is not None
            if present is not None and all(present) and not lacking and partitioned_ok:
                _check_columns(columns, f"{schema}.{PRICES_TABLE}")
                _days_ahead(conn, days_ahead)
                return []
            try:
                conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')
                if shape is None:
                    conn.execute(prices_ddl())
                if shape in (None, "partitioned"):
                    days.create_default(conn)
                for ddl in OTHER_DDL:
                    conn.execute(ddl)
                for name in lacking:
                    conn.execute(
                        f"ALTER TABLE {PRICES_TABLE} ADD COLUMN IF NOT EXISTS {name} {pg_type(TICKS.field(name).type)}"
                    )
            except psycopg.errors.InsufficientPrivilege:
                missing = [f"table {t}" for t in TABLES if t not in existing] + [f"column {c}" for c in lacking]
                raise SinkRejected(
                    f"{schema} lacks what this release of FinPulse keeps there ({', '.join(missing) or 'partitions'}), "
                    "and this role may not create it: run `finpulse init` once as the tables' owner"
                ) from None
            _check_columns(_columns(conn, schema), f"{schema}.{PRICES_TABLE}")
            conn.execute(index_ddl())
            _days_ahead(conn, days_ahead)
    except psycopg.Error as exc:
        raise classify(exc, "creating tables") from None
    return [t for t in TABLES if t not in existing]


def _days_ahead(conn: psycopg.Connection, days_ahead: int) -> None:
    """As the owner of a partitioned prices_raw: partitions from yesterday to `days_ahead` days
    ahead. Another role makes none (its rows of days without one wait in the default partition)."""
    if days.kind(conn) != "partitioned" or not days.owned(conn):
        return
    today = days.today()
    try:
        days.ensure(conn, today - dt.timedelta(days=1), today + dt.timedelta(days=days_ahead))
    except psycopg.errors.LockNotAvailable:
        log.info("prices_raw is busy; its coming days' partitions are made by the next init or maintain")


_noted: set[str] = set()


def _legacy_note(schema: str) -> None:
    if schema not in _noted:
        _noted.add(schema)
        log.warning(
            "%s.%s is one unpartitioned table (an earlier release made it): `finpulse migrate` turns it into day "
            "partitions, which retention (maintain --pg-retention-days) needs",
            schema,
            PRICES_TABLE,
        )


def _columns(conn: psycopg.Connection, schema: str) -> dict[str, str]:
    """prices_raw's columns and their types, as format_type() spells them."""
    rows = conn.execute(
        "SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute "
        "WHERE attrelid = to_regclass(%s) AND attnum > 0 AND NOT attisdropped",
        (f'"{schema}".{PRICES_TABLE}',),
    ).fetchall()
    return dict(rows)


def _check_columns(have: dict[str, str], table: str) -> None:
    """SinkRejected when an existing prices_raw cannot take our rows."""
    problems = []
    for f in TICKS:
        want = pg_type(f.type)
        if f.name not in have:
            problems.append(f"no column {f.name} ({want})")
        elif have[f.name] != want:
            problems.append(f"{f.name} is {have[f.name]}, not {want}")
    if problems:
        raise SinkRejected(
            f"{table} cannot take FinPulse rows: {'; '.join(problems)}; "
            "migrate it or set POSTGRES_SCHEMA to a new schema"
        )
