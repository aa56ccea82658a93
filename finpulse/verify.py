"""Verify: reconcile each sink with the topic, key by key, without holding the table in memory.

A key is (partition, offset, tick_index). The topic's keys come from decoding its messages with the
ingest Decoder, the same trade window (a re-sent trade is a duplicate, finpulse/dedup) and the same
admission (a tick some sink's own rules refuse is a reject): a sink that keeps rejects (PostgreSQL)
should hold each as a row or a reject, one that does not (Delta) each admitted tick as a row. And
no sink may hold one trade (exchange, symbol, trade_id) twice in a partition within the window. The keys come from each sink's own read side. Work goes partition by
partition in offset windows; within a window a key is one int64, `offset << 20 | tick_index + 1`, so a comparison is a few numpy set operations.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa

from finpulse import replay, sinks, source
from finpulse.admission import Admission
from finpulse.batch import TickBatch
from finpulse.config import Settings
from finpulse.decode import Decoder
from finpulse.decode import check as decoder_check
from finpulse.dedup.keeper import Keeper
from finpulse.replay import Meter, Report, Span

if TYPE_CHECKING:
    from rich.console import Console

# Offsets compared at once: 500k canonical messages are ~10 MB of keys per source, a few seconds.
WINDOW = 500_000
# tick_index + 1 lives in the low bits of a key (-1, a whole-message reject, becomes 0). A frame
# of a 1 MiB message cannot hold 2^20 trades, and offsets stay far below 2^43.
_INDEX_BITS = 20
# Missing offsets closer than this are repaired by one replay span: re-reading a few present
# messages costs less than another span (the replay skips what is there).
GAP_JOIN = 1_000
KINDS = ("missing", "duplicated", "unexpected")


def keys(offsets: np.ndarray, indexes: np.ndarray) -> np.ndarray:
    return (np.asarray(offsets, dtype=np.int64) << _INDEX_BITS) | (np.asarray(indexes, dtype=np.int64) + 1)


def unkey(partition: int, key: int) -> tuple[int, int, int]:
    return partition, int(key) >> _INDEX_BITS, (int(key) & ((1 << _INDEX_BITS) - 1)) - 1


@dataclass
class SinkCheck:
    """One sink over the whole verified range."""

    keeps_rejects: bool = False  # the sink keeps rejects: a reject's key counts as held
    rows: int = 0  # rows found (and rejects, for a sink that keeps them)
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(KINDS, 0))
    pending: int = 0  # missing keys at or above the sink's position: not ingested yet
    samples: dict[str, list[tuple[int, int, int]]] = field(default_factory=lambda: {k: [] for k in KINDS})
    gaps: list[Span] = field(default_factory=list)  # offset ranges holding every missing key
    doubled: list[Span] = field(default_factory=list)  # offset ranges holding every duplicated key
    trades_twice: int = 0  # trades (exchange, symbol, trade_id) held twice in a partition, within the window
    bars_differing: int = 0  # 1-minute bars that differ from the same bars computed from the raw rows
    horizon_us: int | None = None  # retention dropped the sink's rows of trades before this (not missing)

    @property
    def exact(self) -> bool:
        return not any(self.counts.values()) and not self.trades_twice and not self.bars_differing


@dataclass
class PartitionCount:
    partition: int
    start: int
    end: int
    messages: int = 0
    ticks: int = 0  # valid ticks the topic's messages decode to
    rejects: int = 0  # keys the decoder rejects
    rows: dict[str, int] = field(default_factory=dict)  # sink -> rows held in the range
    rejected: int = 0  # rejects PostgreSQL holds in the range


@dataclass
class Verdict:
    partitions: list[PartitionCount]
    sinks: dict[str, SinkCheck]
    gaps: list[tuple[int, int, int, str]] = field(default_factory=list)  # accepted data loss (PostgreSQL's record)

    @property
    def exact(self) -> bool:
        return all(check.exact for check in self.sinks.values())


def run(
    settings: Settings,
    spans: list[Span],
    feed: str | None = None,
    strict: bool = False,
    samples: int = 10,
    window: int = WINDOW,
    console: Console | None = None,
) -> Verdict:
    """Verify `spans` against the sinks `settings.sinks` names."""
    decoder_check(settings)
    decoder = Decoder.from_settings(settings, feed, strict)
    held = replay.positions(settings, [s.partition for s in spans])
    with Meter("verifying", sum(s.size for s in spans), console) as meter:
        return verify(settings, spans, sinks.chosen(settings), decoder, held, samples, window, meter)


def repair(
    settings: Settings, verdict: Verdict, feed: str | None = None, strict: bool = False, console: Console | None = None
) -> dict[str, Repair]:
    """Sink by sink: remove the duplicated rows `verdict` found (each key kept once, in one atomic
    rewrite), then replay only the offset ranges in which it found missing keys, each holding rows
    against every chosen sink's rules (as ingest does), not only its own."""
    admission = Admission(settings)
    done: dict[str, Repair] = {}
    try:
        for name, check in verdict.sinks.items():
            if not (check.gaps or check.doubled or check.bars_differing):
                continue
            removed = 0
            if check.doubled:
                sink = sinks.KINDS[name].from_settings(settings)
                try:
                    removed = sink.remove_duplicates([(s.partition, s.start, s.end) for s in check.doubled])
                finally:
                    sink.close()
            one = settings.model_copy(update={"sinks": name})
            replayed = replay.run(one, check.gaps, feed, strict, console, admission) if check.gaps else None
            rebuilt = 0
            if check.bars_differing:
                sink = sinks.KINDS[name].from_settings(settings)
                try:
                    rebuilt = sink.repair_bars()
                finally:
                    sink.close()
            done[name] = Repair(removed, replayed, rebuilt)
    finally:
        admission.close()
    return done


@dataclass
class Repair:
    """What `verify --repair` did to one sink: duplicated rows removed, and the replay of missing keys."""

    duplicates_removed: int
    replayed: Report | None
    bars_rebuilt: int = 0


def verify(
    settings: Settings,
    spans: list[Span],
    sink_names: tuple[str, ...],
    decoder: Decoder,
    positions: dict[str, dict[int, int]],
    samples: int = 10,
    window: int = WINDOW,
    meter: Meter | None = None,
) -> Verdict:
    """Compare every key of `spans` in the topic with each named sink. `positions` (sink -> partition
    -> next offset) tells a gap from what ingest has not reached yet."""
    checks = {name: SinkCheck(sinks.KINDS[name].keeps_rejects) for name in sink_names}
    counts = []
    chosen = [sinks.KINDS[name].from_settings(settings) for name in sink_names]
    admission = Admission(settings, sink_names)
    trades = Keeper(settings, decoder, chosen)
    for sink in chosen:
        checks[sink.name].horizon_us = sink.horizon()
    try:
        with source.RangeReader(settings) as reader:
            for span in spans:
                count = PartitionCount(span.partition, span.start, span.end, rows=dict.fromkeys(sink_names, 0))
                counts.append(count)
                replay.retrying(trades.start_span, span)
                for lo in range(span.start, span.end, window):
                    hi = min(lo + window, span.end)
                    ticks, times, rejects = _topic_keys(
                        reader, decoder, admission, span.partition, lo, hi, count, meter, trades
                    )
                    for sink in chosen:
                        held = {
                            what: keys(t.column("kafka_offset").to_numpy(), t.column("tick_index").to_numpy())
                            for what, t in sink.keys(span.partition, lo, hi).items()
                        }
                        count.rows[sink.name] += len(held["rows"])
                        if sink.keeps_rejects:
                            count.rejected += len(held["rejects"])
                        since = checks[sink.name].horizon_us
                        kept = ticks if since is None else ticks[times >= since]  # days retention dropped
                        expected = np.union1d(kept, rejects) if sink.keeps_rejects else kept
                        _compare(
                            checks[sink.name],
                            span,
                            expected,
                            np.concatenate(list(held.values())),
                            positions[sink.name].get(span.partition),
                            samples,
                        )
        _trades_twice(trades, chosen, checks, [s.partition for s in spans])
        for sink in chosen:
            checks[sink.name].bars_differing = sink.bars_differing(None)
        gaps = sorted({g for sink in chosen for g in sink.gaps()})
    finally:
        admission.close()
        for sink in chosen:
            sink.close()
    return Verdict(counts, checks, gaps)


def _topic_keys(
    reader: source.RangeReader,
    decoder: Decoder,
    admission: Admission,
    partition: int,
    lo: int,
    hi: int,
    count: PartitionCount,
    meter: Meter | None,
    trades: Keeper,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sorted keys of the admitted ticks (with each one's trade time, epoch µs) and of the rejects that
    messages [lo, hi) decode to (the trade window's duplicates are neither: no sink holds them)."""
    ticks, times, rejects = [], [], []
    for msgs in reader.read(partition, lo, hi):
        decoded = trades.apply(replay.retrying(decoder.decode, msgs), msgs).decoded  # a decoder may say "not now"
        batch = admission.admit(TickBatch(pa.Table.from_batches([decoded.ticks]), tuple(decoded.rejects), {}))
        rows = batch.ticks
        ticks.append(keys(rows.column("kafka_offset").to_numpy(), rows.column("tick_index").to_numpy()))
        times.append(rows.column("trade_time").cast(pa.int64()).to_numpy())
        rejects.append(
            keys(
                np.array([r.offset for r in batch.rejects], dtype=np.int64),
                np.array([r.tick_index for r in batch.rejects], dtype=np.int64),
            )
        )
        count.messages += len(msgs)
        count.ticks += rows.num_rows
        count.rejects += len(batch.rejects)
        if meter is not None:
            meter.advance(len(msgs))
    empty = np.empty(0, dtype=np.int64)
    tick_keys, first = np.unique(np.concatenate(ticks or [empty]), return_index=True)
    return tick_keys, np.concatenate(times or [empty])[first], np.unique(np.concatenate(rejects or [empty]))


def _trades_twice(trades: Keeper, chosen: list, checks: dict[str, SinkCheck], partitions: list[int]) -> None:
    """Each sink's trades held twice in a partition, within the window of the newest trade time seen."""
    windows = [w for p, w in trades.windows.partitions.items() if p in partitions]
    if not trades.enabled or not windows:
        return
    since = max(w.max_us for w in windows) - trades.windows.window_us
    for sink in chosen:
        checks[sink.name].trades_twice = sum(sink.duplicate_trades(partitions, since).values())


def _compare(
    check: SinkCheck, span: Span, expected: np.ndarray, present: np.ndarray, position: int | None, samples: int
) -> None:
    held, times = np.unique(present, return_counts=True)
    found = {
        "missing": np.setdiff1d(expected, held, assume_unique=True),
        "duplicated": held[times > 1],
        "unexpected": np.setdiff1d(held, expected, assume_unique=True),
    }
    check.rows += len(present)
    for kind, which in found.items():
        check.counts[kind] += len(which)
        room = samples - len(check.samples[kind])
        check.samples[kind].extend(unkey(span.partition, k) for k in which[: max(room, 0)])
    missing = found["missing"]
    if len(missing):
        check.pending += int(
            np.count_nonzero((missing >> _INDEX_BITS) >= (position if position is not None else span.low))
        )
    _join(check.gaps, span, missing)
    _join(check.doubled, span, found["duplicated"])


def _join(spans: list[Span], span: Span, found: np.ndarray) -> None:
    """Add the offsets of the keys `found` in `span` to `spans` as few offset ranges: keys closer
    than GAP_JOIN share one (re-reading a few good messages costs less than another range)."""
    if not len(found):
        return
    offsets = np.unique(found >> _INDEX_BITS)
    breaks = np.flatnonzero(np.diff(offsets) > GAP_JOIN)
    starts = np.concatenate([offsets[:1], offsets[breaks + 1]])
    ends = np.concatenate([offsets[breaks], offsets[-1:]]) + 1
    for a, b in zip(starts.tolist(), ends.tolist()):
        last = spans[-1] if spans else None
        if last is not None and last.partition == span.partition and a - last.end <= GAP_JOIN:
            spans[-1] = Span(span.partition, last.start, b, span.low)
        else:
            spans.append(Span(span.partition, a, b, span.low))
