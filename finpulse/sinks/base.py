"""What every sink promises. A sink is the source of truth for how far it got."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, NamedTuple, Protocol

import pyarrow as pa

from finpulse.batch import FlushPolicy, Offsets, TickBatch

if TYPE_CHECKING:
    from finpulse.config import Settings
    from finpulse.link import Links, WorkerLink


class Service(Protocol):
    """A background job a sink kind runs in each `finpulse ingest` process (Delta: its committer and
    compactor). The supervisor starts them before the workers and stops them after."""

    name: str

    def start(self) -> None: ...

    def stop(self) -> None: ...


class Filled(NamedTuple):
    """What `insert_missing` added, and the positions it saw: it only ever writes below them."""

    rows: int
    rejects: int
    held: Offsets


class Summary(NamedTuple):
    """What landed in one sink: its rows, its rejects (None: it keeps none) and per symbol, busiest
    first, (symbol, ticks, low, high, last price, last trade time) with "last" by schema.LAST_ORDER."""

    sink: str
    rows: int
    rejected: int | None
    symbols: list[tuple]
    where: str = ""  # where the rows are, for a person (no secrets)
    duplicates: int | None = None  # re-sent trades removed before they landed (None: it keeps no count)
    # recent 1-minute bars (symbol, exchange, minute, open, high, low, close, volume, trades, vwap,
    # first_trade_time, last_trade_time), newest first (None: it keeps no bars)
    bars: list[tuple] | None = None


class Written(NamedTuple):
    """What one `write` did: the positions afterwards, and the rows and rejects it added (what the
    sink already held is skipped, and not counted)."""

    held: Offsets
    rows: int
    rejects: int


class Rules(Protocol):
    """The rules one sink's table adds to FinPulse's schema."""

    sink: str
    described: list[str]  # each rule, for a person

    def refused(self, ticks: pa.Table) -> dict[int, str]:
        """Row index in `ticks` -> why, for every row the rules refuse."""

    def close(self) -> None: ...


class SinkKind(Protocol):
    """A kind of sink, as the registry (finpulse.sinks.KINDS) knows it."""

    name: str
    keeps_rejects: bool  # verify: a reject's key counts as held; status and metrics count its rejects
    # What `describe` reports, each null in `status` when the sink cannot be read.
    describes: tuple[str, ...]

    def from_settings(self, settings: Settings, topic_id: str | None = None, link: WorkerLink | None = None) -> Sink:
        """A sink of this kind; `link`: the worker's pipe, for a sink a supervisor service helps write."""

    def location(self, settings: Settings) -> dict[str, object]:
        """Where its rows are, for `status` (no I/O, no secrets)."""

    def headline(self, section: dict[str, object]) -> str:
        """`status`'s line for a person about what `location` and `describe` said ("": nothing to add)."""

    def services(self, settings: Settings, links: Links, workers: int) -> list[Service]:
        """Background services an ingest process runs for this kind ([] for none)."""

    def rules(self, settings: Settings) -> Rules | None:
        """A checker of the rules the sink's table adds to FinPulse's schema (constraints,
        triggers), or None when it adds none; finpulse.admission applies them before any write."""

    def migrate(self, settings: Settings, keep_old: bool, chunk: int, say: Callable[[str], None]) -> list[str]:
        """`finpulse migrate`: bring tables an earlier release made to this release's layout (idempotent,
        resumable after a kill), copying `chunk` offsets of a Kafka partition per step; what was done,
        for a person. `say`: progress lines on long work."""

    def prepare(self, settings: Settings) -> list[tuple[str, bool]]:
        """Create what the sink needs where absent (idempotent); SinkRejected when what exists cannot
        take our rows. Returns each thing it ensures, described for a person, and whether this call
        created it."""


class Sink(Protocol):
    name: str
    where: str  # where it is, for messages (no secrets)
    keeps_rejects: bool
    flush: FlushPolicy  # when its lane writes what is queued
    topic_id: str | None  # Kafka's id of the topic; stored with every position this sink writes

    def topic_keys(self, partitions: Iterable[int]) -> dict[int, int]:
        """Fingerprint (resume.fingerprint) of the topic id stored with each partition's position."""

    def accept_gaps(self, gaps: list, topic_id: str | None) -> None:
        """Record `gaps` (resume.Gap) and move each partition's position to its gap's target,
        never lower, in one atomic step, storing `topic_id` with the positions."""

    def own_topic(self, partitions: Iterable[int]) -> None:
        """SinkRejected when the tables hold another topic's ticks: a key (partition, offset,
        tick_index) names no topic, so two topics' keys collide. Records the sink's topic where it
        keeps no other record of it."""

    def positions(self, partitions: Iterable[int]) -> Offsets:
        """Next offset to read for each partition the sink holds anything of (absent: nothing)."""

    def write(self, batch: TickBatch) -> Written:
        """Write the rows and advance the positions atomically, skipping what the sink already
        holds; return the positions afterwards and what was added. Raises ServiceUnavailable (retry later) or
        SinkRejected (give up)."""

    def insert_missing(self, batch: TickBatch) -> Filled:
        """Replay: add the rows of `batch` below the sink's positions that it lacks, never
        touching the positions (rows at or above them are left to `write`)."""

    def remove_duplicates(self, spans: list[tuple[int, int, int]]) -> int:
        """`verify --repair`: keep each key of the (partition, start, end) offset ranges once, in one
        atomic step; how many rows were removed."""

    def keys(self, partition: int, start: int, end: int) -> dict[str, pa.Table]:
        """(kafka_offset, tick_index) held for offsets [start, end) of a partition: "rows", and
        "rejects" for a sink that keeps them."""

    def describe(self, partitions: Iterable[int]) -> dict[str, object]:
        """What `status` shows of the sink beyond positions (JSON-able; the kind's `describes`
        keys), and "rejected": {partition: count} for a sink that keeps rejects."""

    def summary(self, limit: int | None, bars_of: str | None = None) -> Summary:
        """Rows, rejects and the `limit` busiest symbols (None: all) for `finpulse show`; a sink that
        keeps bars adds `bars_of`'s recent ones (None: each symbol's latest)."""

    def maintain(self, target_bytes: int, retention_hours: int) -> dict[str, object]:
        """`finpulse maintain`: keep the sink fast (Delta: compact toward `target_bytes`, checkpoint,
        clean the log, vacuum files older than `retention_hours`); what it did."""

    def gaps(self) -> list[tuple[int, int, int, str]]:
        """(partition, from_offset, to_offset, reason) of the gaps accepted with --allow-data-loss."""

    def save_trade_state(self, partition: int, next_offset: int, state: bytes) -> None:
        """Keep a snapshot of a partition's trade window (finpulse/dedup) taken before `next_offset`."""

    def load_trade_state(self, partition: int, at_most: int) -> tuple[int, bytes] | None:
        """(next_offset, state) of the newest snapshot at or below `at_most`, or None."""

    # ------------------------------------------------------------------ retention (finpulse/retention.py)
    keeps_days: bool  # True: retention may drop whole days of its rows once the other sinks hold them

    def horizon(self) -> int | None:
        """Trade time (epoch µs) before which retention dropped the sink's rows (None: it drops none):
        verify and status do not call what lies before it missing."""

    def rows_on_day(self, day: dt.date) -> int:
        """How many rows of trades of that UTC day the sink holds."""

    def expired_days(self, before: dt.date) -> list:
        """A sink that keeps days: its days before `before`, oldest first (days.Day)."""

    def drop_day(self, day) -> None:
        """A sink that keeps days: drop one of the days `expired_days` gave, for good."""

    def repair_bars(self) -> int:
        """`verify --repair`: rebuild the bars `bars_differing` finds from the sink's rows; how many."""

    def bars_differing(self, since_us: int | None) -> int:
        """`verify`: bars the sink keeps that differ from the same bars computed from its rows (0: it
        keeps none)."""

    def duplicate_trades(self, partitions: Iterable[int], since_us: int) -> dict[int, int]:
        """`verify`: per partition, how many trades (exchange, symbol, trade_id) the sink holds more
        than once among rows with a trade time at or after `since_us`."""

    def close(self) -> None: ...
