"""The rules a PostgreSQL table adds to FinPulse's schema: CHECK constraints, domain-typed columns
and triggers on prices_raw. None of them can be evaluated outside PostgreSQL, so PostgreSQL is asked:
the rows are COPYed into a temporary copy of the table (same constraints and domains, the same
triggers re-created on it) inside a transaction that is always rolled back, halving what it refuses
down to single rows. A table with none of these costs nothing (`read_rules` returns None)."""

from __future__ import annotations

import re

import psycopg
import pyarrow as pa
from psycopg import errors as pgerr

from finpulse.errors import first_line
from finpulse.schema import TICKS
from finpulse.sinks.postgres import pgcopy
from finpulse.sinks.postgres.setup import classify
from finpulse.sinks.postgres.tables import PRICES_TABLE

PROBE = "finpulse_probe"

_RULES = f"""
SELECT
  array(SELECT conname || ': ' || pg_get_constraintdef(oid) FROM pg_constraint
        WHERE conrelid = '{PRICES_TABLE}'::regclass AND contype = 'c' ORDER BY conname),
  array(SELECT a.attname || ' is domain ' || format_type(a.atttypid, NULL) FROM pg_attribute a
        JOIN pg_type t ON t.oid = a.atttypid
        WHERE a.attrelid = '{PRICES_TABLE}'::regclass AND a.attnum > 0 AND t.typtype = 'd' ORDER BY a.attnum),
  array(SELECT pg_get_triggerdef(oid) FROM pg_trigger
        WHERE tgrelid = '{PRICES_TABLE}'::regclass AND NOT tgisinternal ORDER BY tgname)
"""
_COPY = f"COPY pg_temp.{PROBE} ({', '.join(pgcopy.copy_columns(TICKS))}) FROM STDIN (FORMAT BINARY)"
# What a rule says when it refuses a row: a data exception (22), an integrity rule (23: CHECK,
# NOT NULL) or a trigger's RAISE EXCEPTION (P0001).
_REFUSALS = (pgerr.DataError, pgerr.IntegrityError, pgerr.RaiseException)


def is_refusal(exc: BaseException) -> bool:
    """PostgreSQL refused the rows themselves, not the connection or the statement."""
    return isinstance(exc, _REFUSALS) and not isinstance(exc, pgerr.UniqueViolation)


def refusal_reason(exc: psycopg.Error) -> str:
    return f"PostgreSQL refused the tick ({exc.sqlstate}): {first_line(exc)}"


def copy_narrowing(conn: psycopg.Connection, cur: psycopg.Cursor, statement: str, ticks: pa.Table) -> dict[int, str]:
    """COPY `ticks` with `statement` in savepoints, halving any part PostgreSQL refuses for a
    data reason (is_refusal) down to single rows; index in `ticks` -> why, of each refused row.
    What was not refused stays copied (in the caller's transaction); any other error is raised."""
    found: dict[int, str] = {}

    def copy(part: pa.Table, base: int) -> None:
        try:
            with conn.transaction(), cur.copy(statement) as out:  # a savepoint: a refusal undoes only this part
                out.write(pgcopy.encode(part))
            return
        except psycopg.Error as exc:
            if not is_refusal(exc):
                raise
            if part.num_rows == 1:
                found[base] = refusal_reason(exc)
                return
        half = part.num_rows // 2
        copy(part.slice(0, half), base)
        copy(part.slice(half), base + half)

    copy(ticks, 0)
    return found


def read_rules(conninfo: str) -> PostgresRules | None:
    """The table's rules beyond FinPulse's schema, or None when it has none (or does not exist)."""
    try:
        with psycopg.connect(conninfo, autocommit=True) as conn:
            checks, domains, triggers = conn.execute(_RULES).fetchone() or ([], [], [])
    except pgerr.UndefinedTable:
        return None
    except psycopg.Error as exc:
        raise classify(exc, "reading the rules of prices_raw") from None
    if not (checks or domains or triggers):
        return None
    return PostgresRules(conninfo, checks + domains, triggers)


class PostgresRules:
    """Which rows prices_raw's rules refuse, asked of PostgreSQL on a temporary table."""

    sink = "postgres"

    def __init__(self, conninfo: str, checks: list[str], triggers: list[str]):
        self.conninfo, self.checks, self.triggers = conninfo, checks, triggers
        self.described = checks + [re.sub(r"^CREATE (CONSTRAINT )?TRIGGER ", "trigger ", t) for t in triggers]
        self._conn: psycopg.Connection | None = None

    def _connection(self) -> psycopg.Connection:
        if self._conn is None or self._conn.closed:
            conn = psycopg.connect(self.conninfo, autocommit=True)
            conn.execute(
                f"CREATE TEMPORARY TABLE {PROBE} (LIKE {PRICES_TABLE} INCLUDING DEFAULTS INCLUDING CONSTRAINTS)"
            )
            for trigger in self.triggers:  # "... ON <schema>.prices_raw ..." -> the same on the probe
                conn.execute(re.sub(r" ON \S+ ", f" ON pg_temp.{PROBE} ", trigger, count=1))
            self._conn = conn
        return self._conn

    def refused(self, ticks: pa.Table) -> dict[int, str]:
        """Index in `ticks` -> why, for every row the table's rules refuse."""
        if not ticks.num_rows:
            return {}
        try:
            conn = self._connection()
            with conn.transaction(force_rollback=True), conn.cursor() as cur:
                return copy_narrowing(conn, cur, _COPY, ticks)
        except psycopg.Error as exc:
            self.close()
            raise classify(exc, "checking rows against the rules of prices_raw") from None

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
