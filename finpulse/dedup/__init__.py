"""Exactly once per trade: re-sent trades removed, missing ones reported, before any sink writes.

Between decode and batch: `TradeWindow.apply` folds each decoded tick that carries a trade id into
its partition's window (window.py) and splits the ticks into the ones that land and the
duplicates, with the sequence gaps found on the way. The decision is made once, here, for every
sink alike (like admission), and it depends only on the partition's messages in offset order.

What a window knows at an offset is rebuilt the same way by every reader: the newest snapshot the
sinks hold at or below that offset (state.py; the worker saves one every SNAPSHOT_EVERY_S or
SNAPSHOT_EVERY_MESSAGES), then the messages from the snapshot to the offset read again from Kafka
and folded in (`rebuild`). A snapshot is a pure function of the messages below its offset, so any
of them is right; a newer one only means less to read again.

Scope: one partition. Collectors that key messages by symbol (as ordering needs anyway) send
every copy of a trade to the same partition; `verify` reports duplicates that are not.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from finpulse.config import Settings
from finpulse.dedup.state import BadSnapshot, dump, load
from finpulse.dedup.window import CHECKPOINT_OFFSETS, PartitionWindow
from finpulse.records import Decoded, Messages, SequenceGap

__all__ = ["CHECKPOINT_OFFSETS", "Deduped", "PartitionWindow", "TradeWindow", "dump", "load"]

log = logging.getLogger(__name__)

# A window with no snapshot to start from (a table written by an earlier release, or a snapshot
# lost) is rebuilt from at most this many messages back: a few seconds of reading. Older trades
# re-sent later are then not recognised once (verify reports any).
REBUILD_MAX_MESSAGES = 2_000_000
# The worker saves a snapshot of a window this often, or after this many messages: what a restart
# or a new owner reads again is bounded by it.
SNAPSHOT_EVERY_S = 30.0
SNAPSHOT_EVERY_MESSAGES = 200_000

# text prefix, then the number: "123", "a123" (Binance aggTrade); UUIDs and the like do not match
_NUMBERED = r"^(?P<prefix>[^0-9]*)(?P<n>[0-9]{1,18})$"


@dataclass
class Deduped:
    """What `apply` made of a decoded batch."""

    decoded: Decoded  # its ticks without the duplicates
    duplicates: pa.Table  # the ticks removed (schema.TICKS)
    gaps: list[SequenceGap] = field(default_factory=list)
    duplicates_by_exchange: dict[str, int] = field(default_factory=dict)


class TradeWindow:
    """The windows of the partitions one reader handles (a worker's, a replay's)."""

    def __init__(self, settings: Settings):
        self.window_us = int(settings.dedup_window_s * 1_000_000)
        self.reorder_us = settings.sequence_reorder_ms * 1000
        self.max_ids = settings.dedup_max_ids
        self.sequenced = pa.array(sorted(settings.sequence_feed_names()), pa.string())
        self.canonical_sequenced = "canonical" in settings.sequence_feed_names()
        self.enabled = self.window_us > 0
        self.partitions: dict[int, PartitionWindow] = {}

    def fresh(self, partition: int, next_offset: int) -> PartitionWindow:
        return PartitionWindow(partition, self.window_us, self.reorder_us, self.max_ids, next_offset)

    def restore(self, partition: int, blob: bytes) -> PartitionWindow:
        return load(blob, self.window_us, self.reorder_us, self.max_ids)

    def forget(self, partitions: Iterable[int]) -> None:
        for p in partitions:
            self.partitions.pop(p, None)

    def snapshot(self, partition: int) -> tuple[int, bytes]:
        w = self.partitions[partition]
        return w.next_offset, dump(w)

    def rebuild(
        self,
        partition: int,
        at: int,
        low: int,
        snapshots: Callable[[int, int], tuple[int, bytes] | None],
        read: Callable[[int, int, int], Iterable[tuple[Decoded, Messages]]],
    ) -> None:
        """The window of `partition` as it stands before offset `at`: from the newest snapshot at or
        below `at` (`snapshots(partition, at)`), folding in the messages from there read again
        (`read(partition, start, end)` yields them, decoded). `low`: the partition's low watermark."""
        if not self.enabled:
            return
        found = snapshots(partition, at)
        window = None
        if found is not None:
            try:
                window = self.restore(partition, found[1])
            except BadSnapshot as exc:
                log.warning("partition %d: %s; rebuilding its trade window from Kafka", partition, exc)
        if window is None:
            start = max(low, at - REBUILD_MAX_MESSAGES, 0)
            if start > low:
                log.warning(
                    "partition %d: no trade window snapshot at or below offset %d; rebuilding it from offset "
                    "%d (trades re-sent from before it are not recognised as duplicates this once)",
                    partition,
                    at,
                    start,
                )
            window = self.fresh(partition, start)
        self.partitions[partition] = window
        if window.next_offset < at:
            for decoded, msgs in read(partition, window.next_offset, at):
                self.apply(decoded, msgs)
        window.next_offset = max(window.next_offset, at)

    # ------------------------------------------------------------------ the fold
    def apply(self, decoded: Decoded, msgs: Messages) -> Deduped:
        """Split `decoded` (the ticks of `msgs`) into the ticks that land and the duplicates, and
        move each partition's window past `msgs`. Per partition, in offset order: the checkpoint of
        each block of offsets runs at its first message, then that block's ticks are folded in."""
        ticks = decoded.ticks
        if not self.enabled:
            return Deduped(decoded, _empty())
        events: list[SequenceGap] = []
        keep = np.ones(ticks.num_rows, dtype=bool)
        cols = _Columns(ticks, self._sequenced(decoded)) if ticks.num_rows else None
        msg_parts, msg_offsets = np.asarray(msgs.partitions, dtype=np.int64), np.asarray(msgs.offsets, dtype=np.int64)
        for p in np.unique(msg_parts).tolist():
            mine = np.sort(msg_offsets[msg_parts == p])
            window = self.partitions.get(p)
            if window is None:
                window = self.partitions[p] = self.fresh(p, int(mine[0]))
            fresh = mine[mine >= window.next_offset]
            if len(fresh) < len(mine):
                log.warning(
                    "partition %d: %d messages below the trade window's position read again; their "
                    "ticks are left to the sinks' guard",
                    p,
                    len(mine) - len(fresh),
                )
            if not len(fresh):
                continue
            rows = np.flatnonzero(cols.parts == p) if cols is not None else np.empty(0, dtype=np.int64)
            if cols is not None and len(rows):
                rows = rows[cols.offsets[rows] >= fresh[0]]
            for block in np.unique(fresh // CHECKPOINT_OFFSETS).tolist():
                first = int(fresh[np.searchsorted(fresh // CHECKPOINT_OFFSETS, block)])
                if window.checkpoint_due(first):
                    window.run_checkpoint(first, events)
                if cols is not None and len(rows):
                    in_block = rows[cols.offsets[rows] // CHECKPOINT_OFFSETS == block]
                    if len(in_block):
                        self._fold(window, cols, in_block, keep, events)
            window.next_offset = max(window.next_offset, int(fresh[-1]) + 1)
        if keep.all():
            return Deduped(decoded, _empty(), events)
        mask = pa.array(keep)
        gone = ticks.filter(pc.invert(mask))
        kept = Decoded(
            ticks.filter(mask),
            decoded.rejects,
            decoded.skipped,
            decoded.feeds.filter(mask) if decoded.feeds is not None else None,
        )
        by_exchange: dict[str, int] = {}
        for venue in pc.fill_null(gone.column("exchange"), "").to_pylist():
            by_exchange[venue] = by_exchange.get(venue, 0) + 1
        return Deduped(
            kept, pa.Table.from_batches([gone]) if isinstance(gone, pa.RecordBatch) else gone, events, by_exchange
        )

    def _fold(self, window: PartitionWindow, c: _Columns, rows: np.ndarray, keep: np.ndarray, events) -> None:
        """The ticks `rows` (one checkpoint block of one partition, in order) into `window`: numbered
        ids per key, in one step when they simply continue (window.consecutive), else id by id; text
        ids one by one."""
        rows = rows[c.with_id[rows]]
        if not len(rows):
            return
        numbered = rows[c.numbered[rows]]
        groups: dict[tuple, list[int]] = {}
        for i in numbered.tolist():
            groups.setdefault((c.exchange[i], c.symbol[i], c.prefix[i]), []).append(i)
        for key, members in groups.items():
            idx = np.array(members)
            n = c.number[idx]
            if (len(n) == 1 or bool((np.diff(n) == 1).all())) and window.consecutive(
                key, int(n[0]), int(n[-1]), int(c.times[idx].max())
            ):
                continue
            for i, ni in zip(members, n.tolist()):
                keep[i] = window.numbered_id(key, ni, int(c.times[i]), int(c.offsets[i]), int(c.tick_index[i]), events)
        for i in rows[~c.numbered[rows]].tolist():
            keep[i] = window.text_id(c.exchange[i], c.symbol[i], c.text[i], int(c.times[i]))

    def _sequenced(self, decoded: Decoded) -> np.ndarray:
        """Per tick: does its feed number trades consecutively per symbol (FINPULSE_SEQUENCE_FEEDS)?"""
        n = decoded.ticks.num_rows
        if decoded.feeds is None:
            return np.full(n, self.canonical_sequenced)
        return pc.is_in(decoded.feeds, value_set=self.sequenced).to_numpy(zero_copy_only=False)


class _Columns:
    """The columns of a decoded batch the fold reads, converted once."""

    def __init__(self, ticks, sequenced: np.ndarray):
        self.parts = ticks.column("kafka_partition").to_numpy()
        self.offsets = ticks.column("kafka_offset").to_numpy()
        ids = ticks.column("trade_id")
        self.with_id = ~ids.is_null().to_numpy(zero_copy_only=False)
        if not self.with_id.any():
            return
        found = pc.extract_regex(ids, _NUMBERED)
        matched = found.is_valid()
        self.numbered = matched.to_numpy(zero_copy_only=False) & sequenced & self.with_id
        # a row that did not match may hold "" in the struct's children: only matches are numbers
        self.number = pc.cast(pc.if_else(matched, found.field("n"), "0"), pa.int64()).to_numpy()
        self.prefix = found.field("prefix").to_pylist()
        self.exchange = pc.fill_null(ticks.column("exchange"), "").to_pylist()
        self.symbol = ticks.column("symbol").to_pylist()
        self.times = ticks.column("trade_time").cast(pa.int64()).to_numpy()
        self.tick_index = ticks.column("tick_index").to_numpy()
        self.text = ids.to_pylist()


def _empty() -> pa.Table:
    from finpulse.schema import TICKS

    return TICKS.empty_table()
