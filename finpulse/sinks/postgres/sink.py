"""PostgreSQL sink: binary COPY into prices_raw, rejects and offsets in the same transaction.
Its tables and its error table (SQLSTATE -> our errors) are in setup.py."""

from __future__ import annotations

import datetime as dt
import logging
import os
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, ClassVar

import numpy as np
import psycopg
import pyarrow as pa
import pyarrow.compute as pc
from psycopg import sql
from psycopg_pool import ConnectionPool, PoolTimeout

from finpulse.batch import FlushPolicy, Offsets, TickBatch
from finpulse.checks import refused_rows
from finpulse.config import Settings
from finpulse.errors import SinkRejected, first_line
from finpulse.records import Reject, SequenceGap
from finpulse.schema import LAST_ORDER, TICKS
from finpulse.sinks.base import Filled, Rules, Summary, Written
from finpulse.sinks.postgres import bars, days, pgcopy
from finpulse.sinks.postgres.rules import copy_narrowing, is_refusal, read_rules
from finpulse.sinks.postgres.setup import TABLES, classify, create_tables
from finpulse.sinks.postgres.tables import (
    BARS_TABLE,
    DEFAULT_PARTITION,
    DUPLICATE_COUNTS_TABLE,
    DUPLICATES_TABLE,
    GAPS_TABLE,
    OFFSETS_TABLE,
    PRICES_TABLE,
    REJECTS_TABLE,
    SEQUENCE_GAPS_TABLE,
    TRADE_STATE_TABLE,
    day_bounds,
)

if TYPE_CHECKING:
    from finpulse.link import Links, WorkerLink
    from finpulse.sinks.base import Service

log = logging.getLogger(__name__)

# A writer waits this long for its pooled connection: longer means PostgreSQL is down or gone, which
# the caller's backoff rides out (ServiceUnavailable), instead of hanging on the pool.
POOL_WAIT_S = 10

_COPY_TICKS = f"COPY {PRICES_TABLE} ({', '.join(pgcopy.copy_columns(TICKS))}) FROM STDIN (FORMAT BINARY)"
_COPY_REJECTS = (
    f"COPY {REJECTS_TABLE} (kafka_partition, kafka_offset, tick_index, feed, reason, raw, kafka_timestamp_ms) "
    "FROM STDIN"
)
_HELD = f"SELECT kafka_partition, next_offset FROM {OFFSETS_TABLE} WHERE topic = %s AND kafka_partition = ANY(%s)"
# Every write and replay of a partition takes this lock first, in partition order (no deadlock).
# A row lock (FOR UPDATE) cannot serialise a partition's first write, when there is no row yet to
# lock; a transaction-scoped advisory lock on (topic, partition) can, and is released at commit.
_LOCK = "SELECT pg_advisory_xact_lock(hashtext(%s), p) FROM unnest(%s::int[]) AS t(p) ORDER BY p"
# A writer waits this long at a time for its partitions' locks (55P03 after three such waits).
LOCK_WAIT_S = 1
# Fencing: a session holding those locks whose transaction began more than FENCE_AFTER_S ago and
# now waits for its own client, which sends nothing (a worker frozen by SIGSTOP, a paused VM: idle
# in its transaction, or half-way through a COPY), is ended, so its partitions' new owner goes on
# instead of waiting for the statement timeout. A live writer's transaction takes a second or two.
# The frozen one's transaction rolls back; were its worker to resume, its write fails and is
# retried, and the guard skips what the new owner wrote. A holder that is working is left alone.
FENCE_AFTER_S = 5
_FENCE = (
    "SELECT a.pid, pg_terminate_backend(a.pid) FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
    "WHERE l.locktype = 'advisory' AND l.granted AND l.classid = hashtext(%s)::oid "
    "AND l.objid = ANY(%s::int[]::oid[]) AND l.objsubid = 2 AND a.pid <> pg_backend_pid() "
    "AND a.wait_event_type = 'Client' AND a.wait_event = 'ClientRead' "
    f"AND a.xact_start < now() - interval '{FENCE_AFTER_S} seconds'"
)
# GREATEST: whatever a caller passes, a position can only move forward.
_ADVANCE = (
    f"INSERT INTO {OFFSETS_TABLE} AS o (topic, kafka_partition, next_offset, topic_id) "
    "SELECT %s, p, n, %s FROM unnest(%s::int[], %s::bigint[]) AS t(p, n) "
    "ON CONFLICT (topic, kafka_partition) DO UPDATE "
    "SET next_offset = GREATEST(o.next_offset, EXCLUDED.next_offset), "
    "topic_id = COALESCE(EXCLUDED.topic_id, o.topic_id), updated_at = now()"
)
# Accepting a gap: positions move to the gaps' targets (still GREATEST) and the topic id is replaced.
_REBASE = _ADVANCE.replace("COALESCE(EXCLUDED.topic_id, o.topic_id)", "EXCLUDED.topic_id")
_OTHER_TOPIC = f"SELECT topic FROM {OFFSETS_TABLE} WHERE topic <> %s ORDER BY updated_at DESC LIMIT 1"
_TOPIC_IDS = (
    f"SELECT kafka_partition, topic_id FROM {OFFSETS_TABLE} "
    "WHERE topic = %s AND kafka_partition = ANY(%s) AND topic_id IS NOT NULL"
)
_RECORD_GAP = (
    f"INSERT INTO {GAPS_TABLE} (topic, kafka_partition, from_offset, to_offset, reason, topic_id) "
    "VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING"
)
_SUMMARY = (
    f"SELECT symbol, count(*), min(price), max(price), "
    f"(array_agg(price ORDER BY {', '.join(f'{c} DESC' for c in LAST_ORDER)}))[1], max(trade_time) "
    f"FROM {PRICES_TABLE} GROUP BY symbol ORDER BY count(*) DESC, symbol LIMIT %s"
)
_GAPS = f"SELECT kafka_partition, from_offset, to_offset, reason FROM {GAPS_TABLE} WHERE topic = %s ORDER BY 1, 2"

# --------------------------------------------------------------------- trades (finpulse/dedup)
_COPY_DUPLICATES = f"COPY {DUPLICATES_TABLE} ({', '.join(pgcopy.copy_columns(TICKS))}) FROM STDIN (FORMAT BINARY)"
_COUNT_DUPLICATES = (
    f"INSERT INTO {DUPLICATE_COUNTS_TABLE} AS d (topic, kafka_partition, exchange, duplicates) "
    "SELECT %s, p, e, n FROM unnest(%s::int[], %s::text[], %s::bigint[]) AS t(p, e, n) "
    "ON CONFLICT (topic, kafka_partition, exchange) DO UPDATE "
    "SET duplicates = d.duplicates + EXCLUDED.duplicates, updated_at = now()"
)
# A gap found twice (a replay, a re-read after a restart) is one row: its key is where it starts.
_FOUND_GAP = (
    f"INSERT INTO {SEQUENCE_GAPS_TABLE} (topic, kafka_partition, exchange, symbol, id_prefix, from_id, to_id, "
    "missing, first_seen_at, kafka_offset) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING"
)
_FILLED_GAP = (
    f"UPDATE {SEQUENCE_GAPS_TABLE} SET missing = missing - 1, "
    "filled_at = CASE WHEN missing = 1 THEN now() ELSE filled_at END "
    "WHERE topic = %s AND kafka_partition = %s AND exchange = %s AND symbol = %s AND id_prefix = %s "
    "AND from_id = %s AND missing > 0"
)
_RECENT_GAPS = (
    f"SELECT kafka_partition, exchange, symbol, id_prefix, from_id, to_id, missing, first_seen_at, filled_at "
    f"FROM {SEQUENCE_GAPS_TABLE} WHERE topic = %s ORDER BY first_seen_at DESC, from_id DESC LIMIT %s"
)
_SAVE_STATE = (
    f"INSERT INTO {TRADE_STATE_TABLE} (topic, kafka_partition, next_offset, state) VALUES (%s, %s, %s, %s) "
    "ON CONFLICT (topic, kafka_partition, next_offset) DO UPDATE SET state = EXCLUDED.state, saved_at = now()"
)
# Kept: the newest KEEP_STATES snapshots, and one an hour for the last day (replay and verify of
# older ranges start from those); the rest are deleted as each new one is saved.
KEEP_STATES = 3
_PRUNE_STATES = (
    f"DELETE FROM {TRADE_STATE_TABLE} s WHERE topic = %(t)s AND kafka_partition = %(p)s AND next_offset NOT IN ("
    f"SELECT next_offset FROM {TRADE_STATE_TABLE} WHERE topic = %(t)s AND kafka_partition = %(p)s "
    f"ORDER BY next_offset DESC LIMIT {KEEP_STATES}) AND (saved_at < now() - interval '1 day' OR EXISTS ("
    f"SELECT 1 FROM {TRADE_STATE_TABLE} n WHERE n.topic = s.topic AND n.kafka_partition = s.kafka_partition "
    "AND date_trunc('hour', n.saved_at) = date_trunc('hour', s.saved_at) AND n.next_offset > s.next_offset))"
)
_LOAD_STATE = (
    f"SELECT next_offset, state FROM {TRADE_STATE_TABLE} WHERE topic = %s AND kafka_partition = %s "
    "AND next_offset <= %s ORDER BY next_offset DESC LIMIT 1"
)

# One row of a binary COPY of (bigint, integer): field count, then length + value per field.
_PG_KEY = np.dtype([("n", ">i2"), ("len0", ">i4"), ("offset", ">i8"), ("len1", ">i4"), ("index", ">i4")])


# --------------------------------------------------------------------- replay: insert what is missing
_REJECT_COLUMNS = "kafka_partition, kafka_offset, tick_index, feed, reason, raw, kafka_timestamp_ms"
_TICK_COLUMNS = ", ".join(pgcopy.copy_columns(TICKS))
# Session-private staging tables, emptied by every commit; created once per connection.
_STAGE_TICKS, _STAGE_REJECTS = "finpulse_stage_ticks", "finpulse_stage_rejects"
_CREATE_STAGES = (
    f"CREATE TEMP TABLE IF NOT EXISTS {_STAGE_TICKS} ON COMMIT DELETE ROWS AS "
    f"SELECT {_TICK_COLUMNS} FROM {PRICES_TABLE} WITH NO DATA",
    f"CREATE TEMP TABLE IF NOT EXISTS {_STAGE_REJECTS} ON COMMIT DELETE ROWS AS "
    f"SELECT {_REJECT_COLUMNS} FROM {REJECTS_TABLE} WITH NO DATA",
)


_BAR_COLUMNS = ("symbol", "exchange", "trade_time", "price", "size", "kafka_partition", "kafka_offset", "tick_index")


def _fill_sql(table: str, stage: str, columns: str) -> str:
    """Staged rows below their partition's (locked) position that the table lacks; the join with
    the offsets is the guard: nothing at or above a position is ever inserted here."""
    picked = ", ".join(f"s.{c.strip()}" for c in columns.split(","))
    return (
        f"INSERT INTO {table} ({columns}) SELECT {picked} FROM {stage} s "
        f"JOIN {OFFSETS_TABLE} o ON o.topic = %s AND o.kafka_partition = s.kafka_partition "
        "WHERE s.kafka_offset < o.next_offset ON CONFLICT DO NOTHING"
    )


# Rows of days retention dropped are not put back (tables.py); the rows added are returned: their bars
_FILL_TICKS = (
    _fill_sql(PRICES_TABLE, _STAGE_TICKS, _TICK_COLUMNS).replace(" ON CONFLICT", " AND s.trade_time >= %s ON CONFLICT")
    + f" RETURNING {', '.join(_BAR_COLUMNS)}"
)
_FILL_REJECTS = _fill_sql(REJECTS_TABLE, _STAGE_REJECTS, _REJECT_COLUMNS)


# Hosts a connection to which never leaves this machine.
_LOCAL_HOSTS = ("localhost", "127.0.0.1", "::1", "")
# libpq's modes that require TLS; the others (prefer, libpq's default; allow; disable) take plain
# text from a server, or a man in the middle, that does not offer TLS.
_TLS_REQUIRED = ("require", "verify-ca", "verify-full")
_warned: set[str] = set()


def plaintext_risk(conninfo: str) -> str | None:
    """Why this connection may travel in plain text (None when it cannot, or stays on this host)."""
    from psycopg.conninfo import conninfo_to_dict

    info = conninfo_to_dict(conninfo)
    hosts = [h for h in str(info.get("host") or "").split(",") if not h.startswith("/")]
    remote = [h for h in hosts if h.strip().lower() not in _LOCAL_HOSTS]
    mode = str(info.get("sslmode") or os.environ.get("PGSSLMODE") or "prefer")
    if not remote or mode in _TLS_REQUIRED:
        return None
    return (
        f"PostgreSQL at {', '.join(remote)} is reached with sslmode={mode}, which accepts plain text when the "
        "server (or anyone in between) does not offer TLS: set POSTGRES_SSLMODE=verify-full (with "
        "POSTGRES_SSLROOTCERT) or require for a server across a network"
    )


def warn_plaintext(conninfo: str) -> None:
    """Log plaintext_risk once per process and server."""
    why = plaintext_risk(conninfo)
    if why is not None and why not in _warned:
        _warned.add(why)
        log.warning("%s", why)


class PostgresSink:
    name = "postgres"
    keeps_rejects = True  # a key is held as a row of prices_raw or as a reject
    # positions and rejects per partition go in status's partition rows; this in its section
    describes: ClassVar[tuple[str, ...]] = ("days",)

    @classmethod
    def from_settings(
        cls, settings: Settings, topic_id: str | None = None, link: WorkerLink | None = None
    ) -> PostgresSink:
        warn_plaintext(settings.postgres_conninfo())
        return cls(
            settings.postgres_conninfo(),
            settings.kafka_topic,
            topic_id,
            where=f"{settings.postgres_display()} ({settings.postgres_schema}.{PRICES_TABLE})",
            keep_duplicates=settings.keep_duplicates,
            days_ahead=settings.pg_days_ahead,
            bars_retention_days=settings.bars_retention_days,
        )

    @staticmethod
    def location(settings: Settings) -> dict[str, object]:
        return {"server": settings.postgres_display(), "schema": settings.postgres_schema}

    @staticmethod
    def headline(section: dict[str, object]) -> str:
        return ""  # where it is goes in the JSON; its numbers are in the partition rows

    @staticmethod
    def services(settings: Settings, links: Links, workers: int) -> list[Service]:
        return []

    @staticmethod
    def rules(settings: Settings) -> Rules | None:
        """prices_raw's CHECK constraints, domains and triggers, asked of PostgreSQL (postgres_rules)."""
        return read_rules(settings.postgres_conninfo())

    @staticmethod
    def migrate(settings: Settings, keep_old: bool, chunk: int, say) -> list[str]:
        """An unpartitioned prices_raw becomes day-partitioned (migrate.py), then what init makes."""
        from finpulse.sinks.postgres.migrate import migrate

        conninfo, schema = settings.postgres_conninfo(), settings.postgres_schema
        try:
            done = migrate(conninfo, schema, settings.pg_days_ahead, keep_old, chunk, say)
        except psycopg.Error as exc:
            raise classify(exc, "migrating prices_raw") from None
        made = create_tables(settings.postgres_conninfo(), settings.postgres_schema, settings.pg_days_ahead)
        return done + ([f"made {', '.join(made)}"] if made else [])

    @staticmethod
    def prepare(settings: Settings) -> list[tuple[str, bool]]:
        """Create the schema and tables if absent; each table, and whether this call created it."""
        made = create_tables(settings.postgres_conninfo(), settings.postgres_schema, settings.pg_days_ahead)
        return [
            (f"PostgreSQL table {settings.postgres_schema}.{t} at {settings.postgres_display()}", t in made)
            for t in TABLES
        ]

    def __init__(
        self,
        conninfo: str,
        topic: str,
        topic_id: str | None = None,
        where: str = "PostgreSQL",
        keep_duplicates: bool = False,
        days_ahead: int = 7,
        bars_retention_days: int = 0,
        bars_on: bool = True,
    ):
        self.topic, self.topic_id, self.where = topic, topic_id, where
        self.keep_duplicates = keep_duplicates  # each duplicate as a row of prices_duplicates
        self.days_ahead, self.bars_retention_days = days_ahead, bars_retention_days  # maintain's
        self.bars_on = bars_on  # False: rows only (the benchmarks' "before" of the bars)
        self.conninfo = conninfo
        self.flush = FlushPolicy()  # at once: the worker's batch size and linger are the trigger
        # One connection per worker is all a sequential writer needs; the pool gives us
        # reconnection after an outage and a health check before each use.
        self.pool = ConnectionPool(
            conninfo,
            min_size=1,
            max_size=1,
            open=False,
            check=ConnectionPool.check_connection,
            reconnect_timeout=0,  # retrying is the worker loop's job, with its own backoff
        )
        self.pool.open(wait=False)

    def _lock(self, conn: psycopg.Connection, parts: list[int]) -> None:
        """Take the partitions' locks for this transaction, fencing off a frozen holder (_FENCE).
        Only a batch that shares a partition with a frozen holder waits, and a few seconds at most."""
        conn.execute(f"SET LOCAL lock_timeout = '{LOCK_WAIT_S}s'")
        for attempt in range(3):
            try:
                with conn.transaction():  # a savepoint: a lock not granted leaves the transaction usable
                    conn.execute(_LOCK, (self.topic, parts))
                break
            except psycopg.errors.LockNotAvailable:
                if attempt == 2:
                    raise  # a working holder still has them: 55P03, an outage the lane retries
                fenced = [pid for pid, _ in conn.execute(_FENCE, (self.topic, parts)).fetchall()]
                if fenced:
                    log.warning(
                        "partitions %s: ended PostgreSQL sessions %s, which held their locks in a transaction "
                        "older than %ds while their client sent nothing (a frozen writer)",
                        parts,
                        fenced,
                        FENCE_AFTER_S,
                    )
        conn.execute("SET LOCAL lock_timeout TO DEFAULT")

    @contextmanager
    def _connection(self, what: str) -> Iterator[psycopg.Connection]:
        """A pooled connection; a driver error leaves it as FinPulse's error (setup.classify)."""
        try:
            with self.pool.connection(timeout=POOL_WAIT_S) as conn:
                yield conn
        except PoolTimeout as exc:
            raise classify(self._why_no_connection() or exc, what) from None
        except psycopg.Error as exc:
            raise classify(exc, what) from None

    def _why_no_connection(self) -> psycopg.Error | None:
        """The pool only says it timed out; one direct attempt tells a refused password or an
        untrusted certificate (no retry heals them) from a server that is down."""
        try:
            psycopg.connect(self.conninfo).close()
        except psycopg.Error as exc:
            return exc
        return None

    def own_topic(self, partitions: Iterable[int]) -> None:
        """finpulse_offsets names the topic of every position: one of another topic refuses."""
        with self._connection("reading offsets") as conn:
            other = conn.execute(_OTHER_TOPIC, (self.topic,)).fetchone()
        if other is not None:
            raise SinkRejected(
                f"{self.where} holds the ticks of topic {other[0]!r}, and ingesting {self.topic!r} into it would "
                "mix two topics whose keys (partition, offset, tick_index) collide: point POSTGRES_SCHEMA "
                f"and DELTA_TABLE_URI at new tables for {self.topic!r}, or set KAFKA_TOPIC back"
            )

    def positions(self, partitions: Iterable[int]) -> Offsets:
        with self._connection("reading offsets") as conn:
            rows = conn.execute(_HELD, (self.topic, list(partitions))).fetchall()
        return {p: n for p, n in rows}

    def topic_keys(self, partitions: Iterable[int]) -> dict[int, int]:
        from finpulse.resume import fingerprint

        with self._connection("reading topic ids") as conn:
            rows = conn.execute(_TOPIC_IDS, (self.topic, list(partitions))).fetchall()
        return {p: fingerprint(t) for p, t in rows}

    def accept_gaps(self, gaps: list, topic_id: str | None) -> None:
        parts = sorted({g.partition for g in gaps})
        with self._connection("recording a gap") as conn, conn.transaction():
            self._lock(conn, parts)
            with conn.cursor() as cur:
                for g in gaps:
                    cur.execute(_RECORD_GAP, (self.topic, g.partition, g.start, g.end, g.reason, topic_id))
                # Positions go to the targets (GREATEST: never lower); the stored id is replaced.
                cur.execute(_REBASE, (self.topic, topic_id, [g.partition for g in gaps], [g.target for g in gaps]))

    def gaps(self) -> list[tuple[int, int, int, str]]:
        """(partition, from_offset, to_offset, reason) of every gap accepted on this topic."""
        with self._connection("reading gaps") as conn:
            return [tuple(r) for r in conn.execute(_GAPS, (self.topic,)).fetchall()]

    def write(self, batch: TickBatch) -> Written:
        try:
            return self._write(batch, narrow=False)
        except (psycopg.Error, PoolTimeout) as exc:
            if not is_refusal(exc):
                raise classify(exc, f"writing {batch.ticks.num_rows} rows") from None
            # Admission (postgres_rules) keeps out what the table's rules refuse; this is a rule
            # added since they were read, or a value decoding did not foresee. The last line of
            # defence: land the rest, and make the refused rows rejects in PostgreSQL only.
            log.warning(
                "PostgreSQL refused a batch of %d rows that admission let through (%s: %s); finding "
                "the rows it refuses. Delta may hold them: run `finpulse verify`",
                batch.ticks.num_rows,
                getattr(exc, "sqlstate", None),
                first_line(exc),
            )
        try:
            return self._write(batch, narrow=True)
        except (psycopg.Error, PoolTimeout) as exc:
            raise classify(exc, f"writing {batch.ticks.num_rows} rows") from None

    def _write(self, batch: TickBatch, narrow: bool) -> Written:
        """One transaction: lock the partitions, skip what is held, COPY rows and rejects, advance.
        `narrow`: COPY the rows in savepoints, halving on a data error down to single rows, each
        of which becomes a reject; the rest of the batch lands."""
        parts = sorted(batch.next_offsets)
        with self.pool.connection(timeout=POOL_WAIT_S) as conn, conn.transaction():
            self._lock(conn, parts)
            held = {p: n for p, n in conn.execute(_HELD, (self.topic, parts)).fetchall()}
            todo = batch.after(held)
            if todo.empty:
                return Written(held, 0, 0)
            rejects = list(todo.rejects)
            refused: tuple[Reject, ...] = ()
            with conn.cursor() as cur:
                if todo.ticks.num_rows and not narrow:
                    with cur.copy(_COPY_TICKS) as copy:
                        for chunk in pgcopy.chunks(todo.ticks):
                            copy.write(chunk)
                    if self.bars_on:
                        bars.update(cur, todo.ticks)
                elif todo.ticks.num_rows:
                    found = copy_narrowing(conn, cur, _COPY_TICKS, todo.ticks)
                    refused = refused_rows(todo.ticks, {i: ("postgres", why) for i, why in found.items()})
                    for r in refused:
                        log.warning("tick (%d, %d, %d): %s", r.partition, r.offset, r.tick_index, r.reason)
                    rejects += refused
                    landed = np.ones(todo.ticks.num_rows, dtype=bool)
                    landed[list(found)] = False
                    bars.update(cur, todo.ticks.filter(pa.array(landed)))
                if rejects:
                    _copy_rejects(cur, _COPY_REJECTS, rejects)
                self._record_trades(cur, todo)
                cur.execute(
                    _ADVANCE, (self.topic, self.topic_id, list(todo.next_offsets), list(todo.next_offsets.values()))
                )
            held.update(todo.next_offsets)
            return Written(held, todo.ticks.num_rows - len(refused), len(rejects))

    def _record_trades(self, cur: psycopg.Cursor, batch: TickBatch) -> None:
        """What the trade window found, in the transaction of the rows: duplicates counted (and kept
        as rows with --keep-duplicates), sequence gaps recorded, late trades that filled one."""
        dups = batch.duplicates
        if dups.num_rows:
            counts = (
                pa.table({"p": dups.column("kafka_partition"), "e": pc.fill_null(dups.column("exchange"), "")})
                .group_by(["p", "e"], use_threads=False)
                .aggregate([([], "count_all")])
            )
            cur.execute(
                _COUNT_DUPLICATES,
                (
                    self.topic,
                    counts.column("p").to_pylist(),
                    counts.column("e").to_pylist(),
                    counts.column("count_all").to_pylist(),
                ),
            )
            if self.keep_duplicates:
                with cur.copy(_COPY_DUPLICATES) as copy:
                    for chunk in pgcopy.chunks(dups.cast(TICKS)):
                        copy.write(chunk)
        found = [g for g in batch.gaps if g.filled is None]
        if found:
            cur.executemany(_FOUND_GAP, [self._gap_row(g) for g in found])
        filled = [g for g in batch.gaps if g.filled is not None]
        if filled:
            cur.executemany(
                _FILLED_GAP,
                [(self.topic, g.partition, g.exchange, g.symbol, g.prefix, g.from_id) for g in filled],
            )

    def _gap_row(self, g: SequenceGap) -> tuple:
        seen = _utc_us(g.seen_us)
        return (
            self.topic,
            g.partition,
            g.exchange,
            g.symbol,
            g.prefix,
            g.from_id,
            g.to_id,
            g.to_id - g.from_id + 1,
            seen,
            g.offset,
        )

    # ------------------------------------------------------------------ trade windows (finpulse/dedup)
    def save_trade_state(self, partition: int, next_offset: int, state: bytes) -> None:
        """Keep a snapshot of a partition's trade window (and prune the old ones)."""
        with self._connection("saving a trade window") as conn, conn.transaction():
            conn.execute(_SAVE_STATE, (self.topic, partition, next_offset, state))
            conn.execute(_PRUNE_STATES, {"t": self.topic, "p": partition})

    def load_trade_state(self, partition: int, at_most: int) -> tuple[int, bytes] | None:
        """The newest snapshot of a partition's trade window at or below offset `at_most`."""
        with self._connection("reading a trade window") as conn:
            row = conn.execute(_LOAD_STATE, (self.topic, partition, at_most)).fetchone()
        return None if row is None else (row[0], bytes(row[1]))

    def duplicate_trades(self, partitions: Iterable[int], since_us: int) -> dict[int, int]:
        """Per partition: trades (exchange, symbol, trade_id) held more than once as rows with a
        trade time at or after `since_us` (verify: there should be none)."""
        query = (
            f"SELECT kafka_partition, count(*) FROM (SELECT kafka_partition FROM {PRICES_TABLE} "
            "WHERE trade_id IS NOT NULL AND kafka_partition = ANY(%s) AND trade_time >= %s "
            "GROUP BY kafka_partition, exchange, symbol, trade_id HAVING count(*) > 1) d GROUP BY 1"
        )
        with self._connection("looking for duplicated trades") as conn:
            return dict(conn.execute(query, (list(partitions), _utc_us(since_us))).fetchall())

    def close(self) -> None:
        self.pool.close()

    # ------------------------------------------------------------------ read side
    def keys(self, partition: int, start: int, end: int) -> dict[str, pa.Table]:
        """(kafka_offset, tick_index) of the rows and of the rejects held for offsets [start, end)."""
        with self._connection("reading the retention horizon") as conn:
            since = self._horizon(conn)
        return {
            "rows": self._keys(PRICES_TABLE, partition, start, end, since),
            "rejects": self._keys(REJECTS_TABLE, partition, start, end),
        }

    def _keys(self, table: str, partition: int, start: int, end: int, since=None) -> pa.Table:
        """Keys of `table` for offsets [start, end) of a partition (rows of trades at or after `since`)."""
        query = sql.SQL(
            "COPY (SELECT kafka_offset, tick_index FROM {} WHERE kafka_partition = {} "
            "AND kafka_offset >= {} AND kafka_offset < {}{}) TO STDOUT (FORMAT BINARY)"
        ).format(
            sql.Identifier(table),
            sql.Literal(partition),
            sql.Literal(start),
            sql.Literal(end),
            sql.SQL(" AND trade_time >= {}").format(sql.Literal(since)) if since is not None else sql.SQL(""),
        )
        with self._connection(f"reading {table}") as conn, conn.cursor().copy(query) as copy:
            data = b"".join(bytes(chunk) for chunk in copy)
        if len(data) <= len(pgcopy.HEADER):
            data = pgcopy.HEADER + pgcopy.TRAILER
        rows = np.frombuffer(
            data,
            dtype=_PG_KEY,
            offset=len(pgcopy.HEADER),
            count=max(0, len(data) - len(pgcopy.HEADER) - len(pgcopy.TRAILER)) // _PG_KEY.itemsize,
        )
        return pa.table({"kafka_offset": rows["offset"].astype(np.int64), "tick_index": rows["index"].astype(np.int32)})

    def summary(self, limit: int | None, bars_of: str | None = None) -> Summary:
        """What landed; `bars_of`: a symbol whose recent 1-minute bars to include (None: each
        symbol's latest bar)."""
        with self._connection("summarising what landed") as conn:
            recent = conn.execute(
                _BARS_OF if bars_of else _LATEST_BARS, (bars_of.upper() if bars_of else None, limit or 10)
            ).fetchall()
            rows = conn.execute(f"SELECT count(*) FROM {PRICES_TABLE}").fetchone()
            rejected = conn.execute(f"SELECT count(*) FROM {REJECTS_TABLE}").fetchone()
            duplicates = conn.execute(
                f"SELECT coalesce(sum(duplicates), 0)::bigint FROM {DUPLICATE_COUNTS_TABLE} WHERE topic = %s",
                (self.topic,),
            ).fetchone()
            symbols = conn.execute(_SUMMARY, (limit,)).fetchall()
        return Summary(
            self.name,
            rows[0] if rows else 0,
            rejected[0] if rejected else 0,
            [tuple(r) for r in symbols],
            self.where,
            duplicates[0] if duplicates else 0,
            [tuple(r) for r in recent],
        )

    def remove_duplicates(self, spans: list[tuple[int, int, int]]) -> int:
        """Nothing to do: the primary keys of prices_raw and prices_rejected hold each key once."""
        return 0

    def maintain(self, target_bytes: int, retention_hours: int) -> dict[str, object]:
        """As the tables' owner: the day partitions of the coming FINPULSE_PG_DAYS_AHEAD days made,
        what the default partition caught moved into its day, bars past FINPULSE_BARS_RETENTION_DAYS
        deleted; then the planner's statistics refreshed (autovacuum does the rest). Retention of
        raw days is finpulse.retention's (it asks Delta first)."""
        done: dict[str, object] = {}
        with self._owner_connection("maintaining the day partitions") as conn:
            if days.kind(conn) == "partitioned":
                if not days.owned(conn):
                    raise SinkRejected(
                        f"{self.where}: this role does not own prices_raw, so it cannot make or move its day "
                        "partitions: run `finpulse maintain` as the tables' owner (docs/security.md)"
                    )
                moved = days.move_strays(conn)
                today = days.today()
                made = days.ensure(conn, today - dt.timedelta(days=1), today + dt.timedelta(days=self.days_ahead))
                done["partitions_made"] = [str(d) for d in made]
                done["rows_moved_from_default"] = sum(moved.values())
            else:
                done["partitions"] = "none: prices_raw is one table (run `finpulse migrate`)"
            if self.bars_retention_days:
                cur = conn.execute(
                    f"DELETE FROM {BARS_TABLE} WHERE minute < now() - make_interval(days => %s)",
                    (self.bars_retention_days,),
                )
                done["bars_deleted"] = cur.rowcount
            conn.execute(f"ANALYZE {PRICES_TABLE}, {REJECTS_TABLE}, {OFFSETS_TABLE}, {BARS_TABLE}")
        done["analyzed"] = [PRICES_TABLE, REJECTS_TABLE, OFFSETS_TABLE, BARS_TABLE]
        return done

    @contextmanager
    def _owner_connection(self, what: str) -> Iterator[psycopg.Connection]:
        """A connection of its own in autocommit mode, for DDL: each step of days.py is a
        transaction of its own. A driver error leaves it as FinPulse's error (setup.classify)."""
        try:
            with psycopg.connect(self.conninfo, autocommit=True) as conn:
                yield conn
        except psycopg.errors.InsufficientPrivilege as exc:
            raise SinkRejected(
                f"{self.where} refused {what} ({first_line(exc)}): run it as the tables' owner (docs/security.md)"
            ) from None
        except psycopg.Error as exc:
            raise classify(exc, what) from None

    # ------------------------------------------------------------------ the hot store (tables.py, retention.py)
    keeps_days = True  # retention may drop whole days of it, once the other sinks hold them

    def _horizon(self, conn: psycopg.Connection) -> dt.datetime:
        """The first instant prices_raw still holds every day from (before it: dropped by retention)."""
        day = days.horizon(conn)
        return _DAWN if day is None else dt.datetime(day.year, day.month, day.day, tzinfo=dt.UTC)

    def horizon(self) -> int | None:
        """Trade time (epoch µs) before which retention dropped prices_raw's days; None: nothing dropped."""
        with self._connection("reading the retention horizon") as conn:
            since = self._horizon(conn)
        return None if since == _DAWN else int(since.timestamp()) * 1_000_000

    def expired_days(self, before: dt.date) -> list[days.Day]:
        """prices_raw's day partitions of days before `before`, oldest first, with their rows and the
        highest offset of each Kafka partition among them."""
        with self._connection("reading the day partitions") as conn:
            if days.kind(conn) != "partitioned":
                raise SinkRejected(
                    f"{self.where}: prices_raw is one unpartitioned table (an earlier release made it), so it has "
                    "no days to drop: run `finpulse migrate` first (docs/operations.md#migrating-prices_raw)"
                )
            return days.older_than(conn, before)

    def drop_day(self, day: days.Day) -> None:
        with self._owner_connection(f"dropping the day {day.day}") as conn:
            days.drop(conn, day)

    def rows_on_day(self, day: dt.date) -> int:
        lo, hi = day_bounds(day)
        with self._connection(f"counting the rows of {day}") as conn:
            row = conn.execute(
                f"SELECT count(*) FROM {PRICES_TABLE} WHERE trade_time >= %s AND trade_time < %s", (lo, hi)
            ).fetchone()
        return row[0] if row else 0

    def repair_bars(self) -> int:
        """`verify --repair`: every bar that differs from its raw rows computed afresh from them (a
        bar whose rows are all gone, deleted); how many bars changed."""
        with self._connection("rebuilding 1-minute bars") as conn, conn.cursor() as cur:
            since = self._horizon(conn)
            rows = cur.execute(bars.DIFFERING_MINUTES, {"since": since}).fetchall()
            if not rows:
                return 0
            symbols, venues, minutes = (list(c) for c in zip(*rows))
            table = pa.table(
                {
                    "symbol": pa.array(symbols, pa.string()),
                    "exchange": pa.array(venues, pa.string()),
                    "minute": pa.array(minutes, pa.timestamp("us", tz="UTC")),
                }
            )
            bars.rebuild(cur, table)
            cur.execute(
                f"DELETE FROM {BARS_TABLE} b USING unnest(%s::text[], %s::text[], %s::timestamptz[]) AS t(s, e, m) "
                "WHERE b.symbol = t.s AND b.exchange IS NOT DISTINCT FROM t.e AND b.minute = t.m AND NOT EXISTS ("
                f"SELECT 1 FROM {PRICES_TABLE} r WHERE r.symbol = t.s AND r.exchange IS NOT DISTINCT FROM t.e "
                "AND r.trade_time >= t.m AND r.trade_time < t.m + interval '1 minute')",
                (symbols, venues, minutes),
            )
        return len(rows)

    def bars_differing(self, since_us: int | None) -> int:
        """Bars of prices_1m that differ from the same bars computed from the raw ticks (verify)."""
        with self._connection("checking the 1-minute bars") as conn:
            since = self._horizon(conn)
            if since_us is not None:
                since = max(since, _utc_us(since_us))
            row = conn.execute(bars.DIFFERING, {"since": since}).fetchone()
        return row[0] if row else 0

    def describe(self, partitions: Iterable[int]) -> dict[str, object]:
        """What `status` shows of this sink beyond positions: rejects and duplicates per partition,
        and the most recent sequence gaps."""
        parts = list(partitions)
        with self._connection("counting rejects") as conn:
            counts: dict[int, int] = dict(
                conn.execute(
                    f"SELECT kafka_partition, count(*) FROM {REJECTS_TABLE} WHERE kafka_partition = ANY(%s) GROUP BY 1",
                    (parts,),
                ).fetchall()
            )
            dups: dict[int, int] = dict(
                conn.execute(
                    f"SELECT kafka_partition, sum(duplicates)::bigint FROM {DUPLICATE_COUNTS_TABLE} "
                    "WHERE topic = %s AND kafka_partition = ANY(%s) GROUP BY 1",
                    (self.topic, parts),
                ).fetchall()
            )
            gaps = conn.execute(_RECENT_GAPS, (self.topic, RECENT_GAPS)).fetchall()
            held = self._days(conn)
        return {
            "days": held,
            "rejected": {p: counts.get(p, 0) for p in parts},
            "duplicates": {p: dups.get(p, 0) for p in parts},
            "sequence_gaps": [
                {
                    "partition": p,
                    "exchange": e,
                    "symbol": s,
                    "from_id": f"{prefix}{a}",
                    "to_id": f"{prefix}{b}",
                    "missing": missing,
                    "first_seen_at": _iso(seen),
                    "filled_at": _iso(filled) if filled is not None else None,
                }
                for p, e, s, prefix, a, b, missing, seen, filled in gaps
            ],
        }

    @staticmethod
    def _days(conn: psycopg.Connection) -> dict[str, object]:
        """prices_raw as the hot store, for `status`: its layout, the days it has partitions for, the
        rows waiting in the default partition, and where retention left it."""
        shape = days.kind(conn)
        if shape != "partitioned":
            return {"partitioned": False}
        have = sorted(days.partitions(conn))
        # exact where this role may read the partition itself; else the planner's estimate (grants
        # on prices_raw cover reads through it, not of one partition)
        readable = conn.execute("SELECT has_table_privilege(%s, 'SELECT')", (DEFAULT_PARTITION,)).fetchone()
        strays = conn.execute(
            f"SELECT count(*) FROM {DEFAULT_PARTITION}"
            if readable and readable[0]
            else "SELECT greatest(reltuples, 0)::bigint FROM pg_class WHERE oid = to_regclass(%s)",
            () if readable and readable[0] else (DEFAULT_PARTITION,),
        ).fetchone()
        since = days.horizon(conn)
        return {
            "partitioned": True,
            "partitions": len(have),
            "first_day": str(have[0]) if have else None,
            "last_day": str(have[-1]) if have else None,
            "default_rows": strays[0] if strays else 0,
            "held_from": str(since) if since else None,  # retention dropped every day before it
        }

    def insert_missing(self, batch: TickBatch) -> Filled:
        """Insert the rows and rejects of `batch` that lie below this sink's positions and are absent
        (same partition, offset, tick_index); positions stay as they are. The partitions stay locked
        (_LOCK) until commit, so a live ingest of the same partitions waits for this transaction.
        Rows at or above a position are left out: they belong to `write`, which advances it."""
        parts = sorted(batch.next_offsets)
        with self._connection(f"inserting missing rows of {batch.ticks.num_rows}") as conn, conn.transaction():
            self._lock(conn, parts)
            held = {p: n for p, n in conn.execute(_HELD, (self.topic, parts)).fetchall()}
            if batch.after(held).size == batch.size:  # nothing below any position
                return Filled(0, 0, held)
            with conn.cursor() as cur:
                for ddl in _CREATE_STAGES:
                    cur.execute(ddl)
                rows = rejects = 0
                if batch.ticks.num_rows:
                    with cur.copy(f"COPY {_STAGE_TICKS} ({_TICK_COLUMNS}) FROM STDIN (FORMAT BINARY)") as copy:
                        for chunk in pgcopy.chunks(batch.ticks):
                            copy.write(chunk)
                    cur.execute(_FILL_TICKS, (self.topic, self._horizon(conn)))
                    added = cur.fetchall()
                    rows = len(added)
                    if added:  # rows put back may have been counted before they went: their minutes afresh
                        bars.rebuild(cur, bars.minutes_of(_bar_rows(added)))
                if batch.rejects:
                    _copy_rejects(cur, f"COPY {_STAGE_REJECTS} ({_REJECT_COLUMNS}) FROM STDIN", batch.rejects)
                    cur.execute(_FILL_REJECTS, (self.topic,))
                    rejects = cur.rowcount
            return Filled(rows, rejects, held)


# `status` lists this many of the latest sequence gaps.
RECENT_GAPS = 10
_DAWN = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)  # the horizon while no day was dropped

_BAR_FIELDS = (
    "symbol, exchange, minute, open, high, low, close, volume, trades, vwap, first_trade_time, last_trade_time"
)
# `show --bars SYMBOL`: its latest bars, newest first; `show`: each symbol's latest bar
_BARS_OF = f"SELECT {_BAR_FIELDS} FROM {BARS_TABLE} WHERE symbol = %s ORDER BY minute DESC, exchange LIMIT %s"
_LATEST_BARS = (
    f"SELECT DISTINCT ON (symbol, exchange) {_BAR_FIELDS} FROM {BARS_TABLE} WHERE %s::text IS NULL "
    "ORDER BY symbol, exchange, minute DESC LIMIT %s"
)


def _utc_us(us: int) -> dt.datetime:
    return dt.datetime(1970, 1, 1, tzinfo=dt.UTC) + dt.timedelta(microseconds=us)


def _iso(when) -> str:
    return when.astimezone(dt.UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def _bar_rows(rows: list[tuple]) -> pa.Table:
    """Rows RETURNING _BAR_COLUMNS as the Arrow columns bars.summarise reads."""
    columns = list(zip(*rows))
    return pa.table({name: pa.array(values, TICKS.field(name).type) for name, values in zip(_BAR_COLUMNS, columns)})


def _copy_rejects(cur: psycopg.Cursor, statement: str, rejects) -> None:
    """Rejects are few and carry raw bytes: a text COPY, row by row, is all they need."""
    with cur.copy(statement) as copy:
        for r in rejects:
            copy.write_row((r.partition, r.offset, r.tick_index, r.feed, r.reason, r.raw, r.kafka_timestamp_ms))
