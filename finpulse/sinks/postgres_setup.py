"""PostgreSQL's preparation and its one error table: the tables FinPulse needs (created where absent,
checked where present) and SQLSTATE classes -> FinPulse's error classes, used by every command."""

from __future__ import annotations

import psycopg
from psycopg import errors as pgerr
from psycopg_pool import PoolTimeout

from finpulse.errors import ServiceUnavailable, SinkRejected, first_line
from finpulse.schema import OFFSETS_TABLE, PG_DDL, PG_INDEXES, PRICES_TABLE, REJECTS_TABLE, TICKS, pg_type

# SQLSTATE classes that heal by themselves: connection trouble (08), the server shutting down or
# starting (57P), too many connections / out of resources (53), and conflicts with another writer
# (40: serialization/deadlock; 23505: a concurrent first write of the same partition).
_TRANSIENT_CLASSES = ("08", "53", "57", "40", "58")


def classify(exc: Exception, what: str) -> Exception:
    state = getattr(exc, "sqlstate", None) or ""
    if isinstance(exc, (PoolTimeout, psycopg.OperationalError)) and not state.startswith("28"):
        return ServiceUnavailable(
            f"PostgreSQL connection failed while {what}: {first_line(exc)} "
            "(check that it runs and the POSTGRES_* settings)"
        )
    if state.startswith(_TRANSIENT_CLASSES) or isinstance(exc, pgerr.UniqueViolation):
        return ServiceUnavailable(f"PostgreSQL busy while {what} ({state}): {first_line(exc)}")
    hint = {
        "28": "check POSTGRES_USER and POSTGRES_PASSWORD",
        "42": "run `finpulse init`, or fix the table so it has the columns of the canonical schema",
    }.get(state[:2], "see the PostgreSQL log")
    return SinkRejected(f"PostgreSQL refused {what} ({state or type(exc).__name__}): {first_line(exc)}; {hint}")


def create_tables(conninfo: str, schema: str) -> list[str]:
    """Create the schema and tables if absent; return the names of those that were created."""
    try:
        with psycopg.connect(conninfo, autocommit=True) as conn:
            conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')
            existing = {
                r[0]
                for r in conn.execute(
                    "SELECT table_name FROM information_schema.tables WHERE table_schema = %s", (schema,)
                )
            }
            for ddl in PG_DDL:
                conn.execute(ddl)
            columns: dict[str, str] = dict(
                conn.execute(
                    "SELECT column_name, format_type(atttypid, atttypmod) FROM information_schema.columns c "
                    "JOIN pg_attribute a ON a.attrelid = (quote_ident(c.table_schema) || '.' || quote_ident(c.table_name))::regclass "
                    "AND a.attname = c.column_name WHERE c.table_schema = %s AND c.table_name = %s",
                    (schema, PRICES_TABLE),
                ).fetchall()
            )
            _check_columns(columns, f"{schema}.{PRICES_TABLE}")
            for ddl in PG_INDEXES:
                conn.execute(ddl)
    except psycopg.Error as exc:
        raise classify(exc, "creating tables") from None
    return [t for t in (PRICES_TABLE, REJECTS_TABLE, OFFSETS_TABLE) if t not in existing]


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
