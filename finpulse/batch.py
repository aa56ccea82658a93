"""Ticks gathered between flushes, with the offsets they cover.

`TickBatch.after(held)` is the one place that enforces "never write an offset a sink already
holds": every sink calls it with the positions it read inside its own transaction. What the trade
window (finpulse/dedup) found travels with the ticks and is trimmed the same way: the duplicates
it removed and the sequence gaps it saw, each tied to the message it came from.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from finpulse.records import Decoded, Reject, SequenceGap
from finpulse.schema import LINEAGE, TICKS

Offsets = dict[int, int]  # partition -> next offset to read (everything below it is held)


_NO_DUPLICATES = TICKS.empty_table()


@dataclass(frozen=True)
class TickBatch:
    ticks: pa.Table
    rejects: tuple[Reject, ...]
    next_offsets: Offsets  # per partition: one past the last message this batch covers
    duplicates: pa.Table = field(
        default_factory=TICKS.empty_table
    )  # re-sent trades the trade window removed (schema.TICKS)
    gaps: tuple[SequenceGap, ...] = ()  # sequence gaps found, and late trades that filled one

    @property
    def empty(self) -> bool:
        return not self.next_offsets

    @property
    def size(self) -> int:
        return self.ticks.num_rows + len(self.rejects) + self.duplicates.num_rows

    @cached_property
    def nbytes(self) -> int:
        """Estimated memory held: the Arrow rows plus each reject's raw bytes and reason."""
        return self.ticks.nbytes + self.duplicates.nbytes + sum(reject_nbytes(r) for r in self.rejects)

    def after(self, held: Offsets) -> TickBatch:
        """This batch without the messages a sink already holds (offset < held[partition]).
        The rows are copied only when some are held: every write and every merge asks, and a
        copy of each batch, usually for nothing, was a worker's largest use of Arrow memory."""
        if not any(held.get(p, -1) > 0 for p in self.next_offsets):
            return self
        todo = {p: n for p, n in self.next_offsets.items() if n > held.get(p, 0)}
        ticks, duplicates = self.ticks, self.duplicates
        if ticks.num_rows and (gone := _held_mask(ticks, held)).any():
            ticks = ticks.filter(pa.array(~gone))
        if duplicates.num_rows and (gone := _held_mask(duplicates, held)).any():
            duplicates = duplicates.filter(pa.array(~gone))
        rejects = tuple(r for r in self.rejects if r.offset >= held.get(r.partition, 0))
        gaps = tuple(g for g in self.gaps if g.offset >= held.get(g.partition, 0))
        return TickBatch(ticks, rejects, todo, duplicates, gaps)

    def below(self, held: Offsets) -> pa.Table:
        """The tick rows a sink has already gone past (offset < held[partition]): what a replay
        may add where they are missing, without touching the sink's position."""
        return self.ticks.filter(pa.array(_held_mask(self.ticks, held))) if self.ticks.num_rows else self.ticks

    @staticmethod
    def merge(batches: list[TickBatch]) -> TickBatch:
        """Batches in arrival order -> one batch (the group commit of a sink lane).

        Batches queued in a lane may overlap: after a rebalance whose grace ran out, or a lost
        assignment, the worker re-reads offsets that an earlier batch still waiting here covers.
        Each batch keeps only what lies past everything before it, so the merged batch never
        holds a key twice (concatenated, the copies would fail the write forever)."""
        if len(batches) == 1:
            return batches[0]
        offsets: Offsets = {}
        kept = []
        for b in batches:
            b = b.after(offsets)
            kept.append(b)
            for p, n in b.next_offsets.items():
                offsets[p] = max(n, offsets.get(p, 0))
        duplicates = [b.duplicates for b in kept if b.duplicates.num_rows]
        return TickBatch(
            pa.concat_tables([b.ticks for b in kept]),
            tuple(r for b in kept for r in b.rejects),
            offsets,
            pa.concat_tables(duplicates) if duplicates else _NO_DUPLICATES,
            tuple(g for b in kept for g in b.gaps),
        )


def _held_mask(rows: pa.Table, held: Offsets) -> np.ndarray:
    """Per row: is its offset below what the sink holds for its partition?"""
    parts = rows.column("kafka_partition").to_numpy()
    floor = np.zeros(int(parts.max()) + 1, dtype=np.int64)  # absent position: nothing held
    for p, h in held.items():
        if p < len(floor):
            floor[p] = h
    return rows.column("kafka_offset").to_numpy() < floor[parts]


@dataclass
class Accumulator:
    """Decoded pieces waiting for the next flush; `take()` turns them into one TickBatch."""

    pieces: list[pa.RecordBatch] = field(default_factory=list)
    rejects: list[Reject] = field(default_factory=list)
    duplicates: list[pa.Table] = field(default_factory=list)
    gaps: list[SequenceGap] = field(default_factory=list)
    next_offsets: Offsets = field(default_factory=dict)
    ticks: int = 0
    nbytes: int = 0  # estimated, as TickBatch.nbytes: Arrow rows + raw bytes and reasons of rejects
    skipped: int = 0
    since: float | None = None  # monotonic time of the oldest waiting message
    # A message came again, below what was already added (a seek back while a batch was being read):
    # take() then keeps each key once, so no batch ever holds a key twice.
    repeated: bool = False

    def add(
        self,
        decoded: Decoded,
        partitions: list[int],
        offsets: list[int],
        duplicates: pa.Table | None = None,
        gaps: list[SequenceGap] | None = None,
    ) -> None:
        """The ticks and rejects of messages (`partitions`, `offsets`), and what the trade window
        made of them: the `duplicates` it removed and the sequence `gaps` it found."""
        if decoded.ticks.num_rows:
            self.pieces.append(decoded.ticks)
            self.ticks += decoded.ticks.num_rows
            self.nbytes += decoded.ticks.nbytes
        if duplicates is not None and duplicates.num_rows:
            self.duplicates.append(duplicates)
            self.ticks += duplicates.num_rows
            self.nbytes += duplicates.nbytes
        if gaps:
            self.gaps.extend(gaps)
        self.rejects.extend(decoded.rejects)
        self.nbytes += sum(reject_nbytes(r) for r in decoded.rejects)
        self.skipped += decoded.skipped
        nxt = self.next_offsets
        for p, o in zip(partitions, offsets):  # per message: cheap, and covers skipped ones too
            if o >= nxt.get(p, 0):
                nxt[p] = o + 1
            else:
                self.repeated = True
        if self.since is None and partitions:
            self.since = time.monotonic()

    def advance(self, partition: int, next_offset: int) -> None:
        """Offsets below `next_offset` that carried no message (transaction markers, aborted records)
        are covered too: the next batch moves the sinks' positions past them."""
        if next_offset > self.next_offsets.get(partition, 0):
            self.next_offsets[partition] = next_offset
            if self.since is None:
                self.since = time.monotonic()

    @property
    def size(self) -> int:
        return self.ticks + len(self.rejects)

    def waited(self) -> float:
        return 0.0 if self.since is None else time.monotonic() - self.since

    def due(self, batch_size: int, linger_s: float) -> bool:
        """The flush rule: `batch_size` ticks and rejects are waiting, or the oldest message has
        waited `linger_s` (a partial batch on a trickle; also offsets that carried no message)."""
        return self.size >= batch_size or (bool(self.next_offsets) and self.waited() >= linger_s)

    def wait_left(self, linger_s: float, idle_s: float) -> float:
        """How long the worker may wait for more messages before the flush rule fires by time."""
        return max(0.0, linger_s - self.waited()) if self.next_offsets else idle_s

    def take(self) -> TickBatch:
        table = pa.Table.from_batches(self.pieces, schema=TICKS) if self.pieces else TICKS.empty_table()
        rejects, gaps = tuple(self.rejects), tuple(self.gaps)
        duplicates = pa.concat_tables(self.duplicates) if self.duplicates else _NO_DUPLICATES
        if self.repeated:
            table, rejects = _first_of_each_key(table, rejects)
            duplicates, _ = _first_of_each_key(duplicates, ())
            gaps = tuple(dict.fromkeys(gaps))  # a message read twice finds the same gaps twice
        batch = TickBatch(table, rejects, dict(self.next_offsets), duplicates, gaps)
        self.pieces, self.rejects, self.next_offsets, self.duplicates, self.gaps = [], [], {}, [], []
        self.ticks, self.nbytes, self.since, self.repeated = 0, 0, None, False
        return batch

    def drop(self, partitions) -> None:
        """Forget what was buffered for revoked partitions (the new owner re-reads it)."""
        gone = set(partitions)
        if not gone & set(self.next_offsets):
            return
        batch = self.take()
        keep = {p: n for p, n in batch.next_offsets.items() if p not in gone}
        moved = pa.array(sorted(gone), pa.int32())
        table = batch.ticks.filter(pc.invert(pc.is_in(batch.ticks.column("kafka_partition"), moved)))
        duplicates = batch.duplicates.filter(pc.invert(pc.is_in(batch.duplicates.column("kafka_partition"), moved)))
        self.pieces = table.to_batches()
        self.duplicates = [duplicates] if duplicates.num_rows else []
        self.gaps = [g for g in batch.gaps if g.partition not in gone]
        self.ticks = table.num_rows + duplicates.num_rows
        self.rejects = [r for r in batch.rejects if r.partition not in gone]
        self.nbytes = table.nbytes + duplicates.nbytes + sum(reject_nbytes(r) for r in self.rejects)
        self.next_offsets = keep
        if keep:
            self.since = time.monotonic()


def _first_of_each_key(ticks: pa.Table, rejects: tuple[Reject, ...]) -> tuple[pa.Table, tuple[Reject, ...]]:
    """The rows and rejects with each (partition, offset, tick_index) once: the first of its copies
    (a message read twice decodes the same way twice)."""
    if ticks.num_rows:
        numbered = ticks.append_column("__row", pa.array(np.arange(ticks.num_rows, dtype=np.int64)))
        first = numbered.group_by(list(LINEAGE), use_threads=False).aggregate([("__row", "min")])
        if first.num_rows < ticks.num_rows:
            ticks = ticks.take(pa.array(np.sort(first.column("__row_min").to_numpy())))
    seen: set[tuple[int, int, int]] = set()
    kept = []
    for r in rejects:
        key = (r.partition, r.offset, r.tick_index)
        if key not in seen:
            seen.add(key)
            kept.append(r)
    return ticks, tuple(kept)


def reject_nbytes(r: Reject) -> int:
    """What a reject keeps in memory, roughly: its raw message and its reason."""
    return len(r.raw or b"") + len(r.reason)


@dataclass(frozen=True)
class FlushPolicy:
    """When a lane writes what is queued: at once (interval 0: PostgreSQL, the low-latency store),
    or `interval_s` after its last write unless `max_ticks` pile up first (Delta: one commit, one
    file per date, per interval on a trickle; large writes on a backlog). A read (`call`), a
    rebalance or a stop (`wait_idle`) writes at once. `aligned`: the interval's boundaries are
    multiples of it on the wall clock, so every worker of a process (and of a host) writes at the
    same moments and the Delta committer finds all their files together."""

    interval_s: float = 0.0
    max_ticks: int = 0
    aligned: bool = False

    def next_due(self, mono: float, wall: float) -> float:
        """When the write after one that starts now is due, on the monotonic clock (`mono`:
        time.monotonic()). The wall clock (`wall`: time.time()) only picks the phase of an aligned
        interval: a step of it (NTP, a VM resumed) moves no deadline already set."""
        if self.interval_s <= 0:
            return mono
        if self.aligned:
            return mono + (wall // self.interval_s + 1) * self.interval_s - wall
        return mono + self.interval_s

    def due(self, queued: int, next_due: float, mono: float) -> bool:
        return self.interval_s <= 0 or mono >= next_due or queued >= self.max_ticks
