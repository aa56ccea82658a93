"""Delta Lake sink: appends with delta-rs; the offsets are app transactions in the same commit."""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, ClassVar

import pyarrow as pa
import pyarrow.compute as pc
from deltalake import CommitProperties, DeltaTable, Transaction, write_deltalake
from deltalake.exceptions import CommitFailedError, DeltaError, SchemaMismatchError, TableNotFoundError

from finpulse.batch import FlushPolicy, Offsets, TickBatch
from finpulse.config import Settings
from finpulse.errors import RulesChanged, ServiceUnavailable, SinkRejected, first_line
from finpulse.schema import LAST_ORDER, LINEAGE
from finpulse.sinks.base import Filled, Rules, Summary, Written
from finpulse.sinks.delta import compaction, files, maintenance, trade_state
from finpulse.sinks.delta.azure import storage_options
from finpulse.sinks.delta.errors import unavailable
from finpulse.sinks.delta.log import TableLog
from finpulse.sinks.delta.table import (
    MAX_COMMIT_RETRIES,
    OWNER_APP_ID,
    PARTITION_BY,
    app_id,
    commit,
    create_table,
    position_txns,
    topic_app_id,
    with_partition_columns,
)

if TYPE_CHECKING:
    from finpulse.link import Links, WorkerLink
    from finpulse.sinks.base import Service
    from finpulse.sinks.delta.committer import CommitClient

log = logging.getLogger(__name__)

# With a committer: a write whose base positions went stale is rewritten this many times at once
# (another worker of the process took the partition over) before the lane's backoff takes over.
STALE_REWRITES = 3

# Replay's merge: a row matches on its lineage; the partition columns are functions of the row, so
# adding them to the condition changes no match, but lets delta-rs read only the partitions (and,
# from the source's min/max, only the files) that the source touches instead of the whole table.
_MERGE_ON = " AND ".join(f"t.{c} = s.{c}" for c in (*LINEAGE, *PARTITION_BY))


def _refuses_data(exc: Exception) -> bool:
    """delta-rs refused the rows themselves (a CHECK constraint or invariant failed). Its Python
    binding raises the generic DeltaError for this with no code to test, so its wording is the only
    signal. Admission (rules.py) keeps such rows out; one reaching the table means a constraint
    was added since the rules were read."""
    return "Invalid data found" in str(exc) or "failed validation check" in str(exc)


class DeltaSink:
    name = "delta"
    keeps_rejects = False  # rejects live in PostgreSQL only; Delta holds each valid tick as a row
    describes: ClassVar[tuple[str, ...]] = maintenance.HEALTH

    @classmethod
    def from_settings(
        cls, settings: Settings, topic_id: str | None = None, link: WorkerLink | None = None
    ) -> DeltaSink:
        sink = cls(settings.delta_uri, storage_options(settings), settings.kafka_topic, topic_id)
        # aligned: every worker writes at the same moments, so the committer commits them together
        sink.flush = FlushPolicy(settings.delta_flush_ms / 1000, settings.delta_flush_ticks, aligned=True)
        if link is not None and settings.delta_committer == "process":
            from finpulse.sinks.delta.committer import CommitClient

            sink.stage_commits(CommitClient(link))
        return sink

    @staticmethod
    def location(settings: Settings) -> dict[str, object]:
        return {"uri": settings.delta_uri}

    @staticmethod
    def headline(section: dict[str, object]) -> str:
        def num(v: object) -> str:
            return "-" if v is None else f"{v:,}"

        checkpoint = section.get("last_checkpoint")
        return (
            f"Delta version {num(section['version'])}, {num(section['files'])} files "
            f"({num(section.get('small_files'))} small), {num(section['bytes'])} bytes, "
            f"last compaction {section.get('last_compaction') or 'never'}, "
            f"last checkpoint {'-' if checkpoint is None else f'v{checkpoint}'}"
        )

    @staticmethod
    def services(settings: Settings, links: Links, workers: int) -> list[Service]:
        """The process's committer (unless FINPULSE_DELTA_COMMITTER=worker) and background compactor
        (unless FINPULSE_AUTO_COMPACT_FILES=0)."""
        from finpulse.sinks.delta.committer import Committer
        from finpulse.sinks.delta.compactor import Compactor

        found: list[Service] = []
        if settings.delta_committer == "process":
            found.append(Committer(settings, links, workers))
        if settings.auto_compact_files > 0:
            found.append(Compactor(settings))
        return found

    @staticmethod
    def rules(settings: Settings) -> Rules | None:
        """The table's CHECK constraints, evaluated by delta-rs on a scratch table (rules.py)."""
        from finpulse.sinks.delta.rules import DeltaRules, constraints

        checks = constraints(settings.delta_uri, storage_options(settings))
        return DeltaRules(checks) if checks else None

    @staticmethod
    def migrate(settings: Settings, keep_old: bool, chunk: int, say) -> list[str]:
        """The columns a release added, added to the table (schema evolution: old rows read null)."""
        created = create_table(settings.delta_uri, storage_options(settings))
        return [f"Delta table {settings.delta_uri}: {'created' if created else 'has every column of this release'}"]

    @staticmethod
    def prepare(settings: Settings) -> list[tuple[str, bool]]:
        """Create the table if absent (check an existing one), and say whether this call created it."""
        return [(f"Delta table {settings.delta_uri}", create_table(settings.delta_uri, storage_options(settings)))]

    def __init__(self, uri: str, storage_options: dict[str, str], topic: str, topic_id: str | None = None):
        self.uri, self.storage_options, self.topic, self.topic_id = uri, storage_options, topic, topic_id
        self.where = uri
        self.flush = FlushPolicy()  # from_settings sets Delta's interval and size trigger
        self.log = TableLog(uri, storage_options)  # the table, and its txn versions as of its version
        self.committer: CommitClient | None = None  # stage_commits: a CommitClient of the process's committer
        self._fs = None  # the table's location as a filesystem, once a write or a trade window needs it
        self._seen: dict[int, int | None] = {}  # with a committer: positions as last known

    def stage_commits(self, client: CommitClient) -> None:
        """From now on `write` writes the data files and leaves the commit to the process's
        committer (committer.py), which commits every worker's files together."""
        self.committer = client
        self._fs = files.filesystem(self.uri, self.storage_options)

    def _latest(self) -> DeltaTable:
        try:
            return self.log.table()
        except TableNotFoundError:
            raise SinkRejected(f"no Delta table at {self.uri}: run `finpulse init`") from None
        except (DeltaError, OSError) as exc:
            self.log.reset()
            raise unavailable(self.uri, "reading its log", exc) from None

    @contextmanager
    def _io(self, what: str) -> Iterator[None]:
        """The one mapping of delta-rs errors for every operation but `_latest` and `write`: a lost
        commit race or an unreachable store is ServiceUnavailable (retry later), and the cached
        table is dropped so the next operation reads the log afresh."""
        try:
            yield
        except CommitFailedError as exc:
            self.log.reset()
            raise ServiceUnavailable(f"Delta commit conflict while {what} at {self.uri}: {first_line(exc)}") from None
        except (DeltaError, OSError) as exc:
            self.log.reset()
            raise unavailable(self.uri, what, exc) from None

    def own_topic(self, partitions: Iterable[int]) -> None:
        """The table records the name of its topic in a `txn` of its own (OWNER_APP_ID). A table
        without one (written by an earlier release, or new) gets it, unless it holds rows but no
        position of this topic: those rows are another topic's."""
        from finpulse.resume import fingerprint

        ours = fingerprint(self.topic)
        for _ in range(2):  # a second ingest host may record it at the same moment: read it again
            table = self._latest()
            owner = self.log.txn(OWNER_APP_ID)
            if owner == ours:
                return
            if owner is not None or (bool(table.file_uris()) and not self._held(partitions)):
                raise SinkRejected(
                    f"the Delta table at {self.uri} holds the ticks of another topic than {self.topic!r}, and "
                    "ingesting it there would mix two topics whose keys (partition, offset, tick_index) collide: "
                    f"point DELTA_TABLE_URI and POSTGRES_SCHEMA at new tables for {self.topic!r}, or set "
                    "KAFKA_TOPIC back"
                )
            try:
                commit(table, txns={OWNER_APP_ID: ours}, metadata={"finpulse.topic": self.topic})
                return
            except CommitFailedError:
                self.log.reset()
            except (DeltaError, OSError) as exc:
                self.log.reset()
                raise unavailable(self.uri, "recording its topic", exc) from None
        raise ServiceUnavailable(f"the Delta table at {self.uri}: its topic could not be recorded; retrying")

    def positions(self, partitions: Iterable[int]) -> Offsets:
        self._latest()
        return self._held(partitions)

    def _held(self, partitions: Iterable[int]) -> Offsets:
        """Positions as of the table's last refresh (TableLog: no log read per partition)."""
        held = {}
        for p in partitions:
            version = self.log.txn(app_id(self.topic, p))
            self._seen[p] = version
            if version is not None:
                held[p] = version
        return held

    def topic_keys(self, partitions: Iterable[int]) -> dict[int, int]:
        self._latest()
        stored = self.log.txn(topic_app_id(self.topic))
        return {} if stored is None else {p: stored for p in partitions}

    @property
    def _topic_key(self) -> int | None:
        from finpulse.resume import fingerprint

        return fingerprint(self.topic_id) if self.topic_id else None

    def accept_gaps(self, gaps: list, topic_id: str | None) -> None:
        import json

        from finpulse.resume import fingerprint

        table = self._latest()
        held = self._held({g.partition for g in gaps})
        positions = {g.partition: max(g.target, held.get(g.partition, 0)) for g in gaps}
        # the topic's id is stored afresh (a recreated topic's gap): always in this commit
        txns = position_txns(self.topic, positions, fingerprint(topic_id) if topic_id else None)
        record = [{"partition": g.partition, "from": g.start, "to": g.end, "reason": g.reason} for g in gaps]
        with self._io("committing a gap record"):
            commit(table, txns=txns, metadata={"finpulse.gaps": json.dumps(record)})

    def write(self, batch: TickBatch) -> Written:
        if self.committer is not None:
            return self._write_staged(batch)
        table = self._latest()  # one log refresh serves the guard and the commit's read version
        held = self._held(batch.next_offsets)
        todo = batch.after(held)
        if todo.empty:
            return Written(held, 0, 0)
        txns = position_txns(self.topic, todo.next_offsets, self._topic_key, self.log.txn(topic_app_id(self.topic)))
        try:
            if todo.ticks.num_rows:
                write_deltalake(
                    table,
                    with_partition_columns(todo.ticks),
                    mode="append",
                    partition_by=PARTITION_BY,
                    schema_mode="merge",
                    commit_properties=CommitProperties(
                        app_transactions=[Transaction(a, v) for a, v in txns.items()],
                        max_commit_retries=MAX_COMMIT_RETRIES,
                    ),
                )
            else:  # only rejects or skipped events: still record that these offsets are done
                commit(table, txns=txns)
        except SchemaMismatchError as exc:
            raise SinkRejected(f"the Delta table at {self.uri} cannot take our rows: {exc}") from None
        except CommitFailedError as exc:
            self.log.reset()  # another writer won; re-read before trying again
            raise ServiceUnavailable(f"Delta commit conflict: {exc}") from None
        except (DeltaError, OSError) as exc:
            self.log.reset()
            if _refuses_data(exc):
                raise RulesChanged(
                    f"the Delta table at {self.uri} refuses rows its constraints, as last read, "
                    f"admitted: {first_line(exc)}; if this persists, check its constraints and invariants "
                    "(`finpulse status` lists the ones FinPulse applies)"
                ) from None
            raise unavailable(self.uri, "writing", exc) from None
        held.update(todo.next_offsets)
        return Written(held, todo.ticks.num_rows, len(todo.rejects))

    def _write_staged(self, batch: TickBatch) -> Written:
        """Write the data files, then have the committer commit them with the positions. The
        positions come from the committer's answers (read from the log only for a partition not
        seen yet): the write path does not read the Delta log."""
        client = self.committer
        assert client is not None
        unseen = [p for p in batch.next_offsets if p not in self._seen]
        if unseen:
            self._latest()
            self._held(unseen)
        topic_key = self._topic_key
        for _ in range(STALE_REWRITES):
            held = {p: v for p in batch.next_offsets if (v := self._seen.get(p)) is not None}
            todo = batch.after(held)
            if todo.empty:
                return Written(held, 0, 0)
            with self._io("writing data files"):
                rows = todo.ticks
                adds = files.write_files(self._fs, with_partition_columns(rows)) if rows.num_rows else []
            base = {p: self._seen.get(p) for p in todo.next_offsets}
            answer = client.commit(adds, base, todo.next_offsets, topic_key)
            self._seen.update(answer.positions)
            if answer.status == "ok":
                return Written({**held, **todo.next_offsets}, rows.num_rows, len(todo.rejects))
            if answer.status == "retry":
                raise ServiceUnavailable(f"Delta commit failed at {self.uri}: {answer.reason}")
            log.info("Delta positions moved under this worker (%s); rewriting from them", answer.positions)
        raise ServiceUnavailable(f"Delta positions at {self.uri} kept moving during {STALE_REWRITES} rewrites")

    def close(self) -> None:
        self.log.reset()

    # ------------------------------------------------------------------ read side
    def keys(self, partition: int, start: int, end: int) -> dict[str, pa.Table]:
        """(kafka_offset, tick_index) of the rows held for offsets [start, end) of a partition."""
        table = self._latest()
        where = f"kafka_partition = {int(partition)} AND kafka_offset >= {int(start)} AND kafka_offset < {int(end)}"
        with self._io("reading the table"):
            dataset = table.to_pyarrow_dataset(file_pruning_predicate=where)  # files by their min/max
            rows = dataset.to_table(
                columns=["kafka_offset", "tick_index"],
                filter=(
                    (pc.field("kafka_partition") == partition)
                    & (pc.field("kafka_offset") >= start)
                    & (pc.field("kafka_offset") < end)
                ),
            )
        return {"rows": rows}

    def summary(self, limit: int | None, bars_of: str | None = None) -> Summary:
        table = self._latest()
        with self._io("reading the table"):
            rows = table.to_pyarrow_dataset().to_table(columns=["symbol", "price", *LAST_ORDER])
        if rows.num_rows == 0:
            return Summary(self.name, 0, None, [], self.where)
        grouped = rows.group_by("symbol").aggregate(
            [("price", "count"), ("price", "min"), ("price", "max"), ("trade_time", "max")]
        )
        latest = rows.sort_by([(c, "descending") for c in LAST_ORDER])
        last = latest.group_by("symbol", use_threads=False).aggregate([("price", "first")])
        merged = grouped.join(last, "symbol").sort_by([("price_count", "descending"), ("symbol", "ascending")])
        merged = merged.slice(0, limit)
        symbols = list(
            zip(
                *(
                    merged.column(c).to_pylist()
                    for c in ("symbol", "price_count", "price_min", "price_max", "price_first", "trade_time_max")
                )
            )
        )
        return Summary(self.name, rows.num_rows, None, symbols, self.where)

    def describe(self, partitions: Iterable[int]) -> dict[str, object]:
        """What `status` shows of the table: its health (delta_maintenance.health)."""
        table = self._latest()
        with self._io("reading the table"):
            return maintenance.health(table)

    def maintain(self, target_bytes: int, retention_hours: int) -> dict[str, object]:
        """Compact small files per date partition (waiting while another process compacts the
        table), checkpoint, clean the log, vacuum; what was done."""
        table = self._latest()
        with self._io("maintenance"):
            before = maintenance.health(table)
            compacted = compaction.compact_exclusively(
                table, self.uri, self.storage_options, target_bytes, wait_s=compaction.LEASE_S
            )
            if compacted is None:
                raise ServiceUnavailable(
                    f"another process kept compacting {self.uri} for {compaction.LEASE_S / 60:.0f} minutes; "
                    "run `finpulse maintain` again later"
                )
            vacuumed = maintenance.vacuum(table, retention_hours)  # its own commits come before the checkpoint
            checkpoint = maintenance.checkpoint_and_clean(table)
            after = maintenance.health(table)
        return {**compacted, "checkpoint": checkpoint, "vacuumed": vacuumed, "before": before, "after": after}

    def compact_if_needed(self, small_files: int, target_bytes: int) -> dict[str, int] | None:
        """Background compaction (compaction.compact_if_needed); None when nothing was done."""
        table = self._latest()
        with self._io("background compaction"):
            return compaction.compact_if_needed(table, self.uri, self.storage_options, small_files, target_bytes)

    def remove_duplicates(self, spans: list[tuple[int, int, int]]) -> int:
        """Rewrite the rows of those offset ranges with every key once (delta_compaction)."""
        table = self._latest()
        with self._io("removing duplicated rows"):
            return compaction.remove_duplicates(table, spans)

    def gaps(self) -> list[tuple[int, int, int, str]]:
        return []  # recorded in commit metadata; PostgreSQL's finpulse_gaps is the one that is read

    # ------------------------------------------------------------------ retention (finpulse/retention.py)
    keeps_days = False  # the store of record: every day, for good

    def horizon(self) -> int | None:
        return None

    def rows_on_day(self, day: dt.date) -> int:
        """Rows of the date partition `day`, from the log's per-file statistics (no data file read)."""
        table = self._latest()
        with self._io("counting a day's rows"):
            actions = pa.table(table.get_add_actions(flatten=True))
        column = f"partition.{PARTITION_BY[0]}"
        if not actions.num_rows or column not in actions.column_names:
            return 0
        values = actions.column(column)
        wanted = pa.scalar(day, values.type) if pa.types.is_date(values.type) else pa.scalar(str(day), values.type)
        return int(pc.sum(actions.filter(pc.equal(values, wanted)).column("num_records")).as_py() or 0)

    def expired_days(self, before: dt.date) -> list:
        return []

    def repair_bars(self) -> int:
        return 0

    def bars_differing(self, since_us: int | None) -> int:
        return 0  # Delta keeps no bars

    def drop_day(self, day) -> None:
        raise SinkRejected("the Delta table is the store of record: retention never drops its days")

    # ------------------------------------------------------------------ trade windows (finpulse/dedup)
    def save_trade_state(self, partition: int, next_offset: int, state: bytes) -> None:
        """A snapshot of a partition's trade window, as a file beside the table (trade_state.py)."""
        with self._io("saving a trade window"):
            trade_state.save(self._state_fs(), partition, next_offset, state)

    def load_trade_state(self, partition: int, at_most: int) -> tuple[int, bytes] | None:
        with self._io("reading a trade window"):
            return trade_state.load(self._state_fs(), partition, at_most)

    def _state_fs(self):
        if getattr(self, "_fs", None) is None:
            self._fs = files.filesystem(self.uri, self.storage_options)
        return self._fs

    def duplicate_trades(self, partitions: Iterable[int], since_us: int) -> dict[int, int]:
        """Per partition: trades (exchange, symbol, trade_id) held more than once as rows with a
        trade time at or after `since_us`."""
        parts = sorted(set(partitions))
        table = self._latest()
        if "trade_id" not in {f.name for f in table.schema().fields} or not parts:
            return {}
        since = pa.scalar(since_us, pa.timestamp("us", tz="UTC"))
        with self._io("looking for duplicated trades"):
            rows = table.to_pyarrow_dataset().to_table(
                columns=["kafka_partition", "exchange", "symbol", "trade_id"],
                filter=(
                    pc.field("trade_id").is_valid()
                    & pc.field("kafka_partition").isin(parts)
                    & (pc.field("trade_time") >= since)
                ),
            )
        if not rows.num_rows:
            return {}
        keys = ["kafka_partition", "exchange", "symbol", "trade_id"]
        grouped = rows.group_by(keys, use_threads=False).aggregate([([], "count_all")])
        twice = grouped.filter(pc.greater(grouped.column("count_all"), 1))
        per = twice.group_by("kafka_partition", use_threads=False).aggregate([([], "count_all")])
        return dict(zip(per.column("kafka_partition").to_pylist(), per.column("count_all").to_pylist()))

    def insert_missing(self, batch: TickBatch) -> Filled:
        """Merge in the rows of `batch` that lie below this sink's positions and that the table lacks
        (same partition, offset, tick_index). The app transactions (positions) are not touched, and
        rows at or above a position are left out: they belong to `write`, which advances it. Delta
        keeps no rejects, so none are counted."""
        table = self._latest()
        held = self._held(batch.next_offsets)
        ticks = batch.below(held)
        if not ticks.num_rows:
            return Filled(0, 0, held)
        with self._io("merging missing rows"):
            merged = (
                table.merge(
                    with_partition_columns(ticks),
                    _MERGE_ON,
                    source_alias="s",
                    target_alias="t",
                    streamed_exec=False,  # a materialised source lets delta-rs prune target files
                    commit_properties=CommitProperties(max_commit_retries=MAX_COMMIT_RETRIES),
                )
                .when_not_matched_insert_all()
                .execute()
            )
        return Filled(int(merged["num_target_rows_inserted"]), 0, held)
