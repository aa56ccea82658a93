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

from finpulse.schema import PRICES_TABLE, TICKS
from finpulse.sinks import pgcopy
from finpulse.sinks.postgres_setup import classify

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
        found: dict[int, str] = {}
        try:
            conn = self._connection()
            with conn.transaction(force_rollback=True), conn.cursor() as cur:
                self._narrow(conn, cur, ticks, 0, found)
        except psycopg.Error as exc:
            self.close()
            raise classify(exc, "checking rows against the rules of prices_raw") from None
        return found

    def _narrow(self, conn, cur, ticks: pa.Table, base: int, found: dict[int, str]) -> None:
        try:
            with conn.transaction(), cur.copy(_COPY) as copy:  # a savepoint: a refusal undoes only this part
                copy.write(pgcopy.encode(ticks))
            return
        except psycopg.Error as exc:
            if not is_refusal(exc):
                raise
            if ticks.num_rows == 1:
                found[base] = f"PostgreSQL refused the tick ({exc.sqlstate}): {str(exc).strip().splitlines()[0]}"
                return
        half = ticks.num_rows // 2
        self._narrow(conn, cur, ticks.slice(0, half), base, found)
        self._narrow(conn, cur, ticks.slice(half), base + half, found)

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
