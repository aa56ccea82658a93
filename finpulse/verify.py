"""Verify: reconcile each sink with the topic, key by key, without holding the table in memory.

A key is (partition, offset, tick_index). The topic's keys come from decoding its messages with the
ingest Decoder: PostgreSQL should hold each as a row or a reject, Delta (which keeps no rejects)
each valid tick as a row. Work goes partition by partition in offset windows; within a window a
key is one int64, `offset << 20 | tick_index + 1`, so a comparison is a few numpy set operations.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import psycopg
import pyarrow.compute as pc
from psycopg import sql

from finpulse import source
from finpulse.config import Settings
from finpulse.errors import ServiceUnavailable, SinkRejected, first_line
from finpulse.normalize import Decoder
from finpulse import replay
from finpulse.replay import Meter, Report, Span
from finpulse.schema import PRICES_TABLE, REJECTS_TABLE
from finpulse.sinks import pgcopy

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

# One row of a binary COPY of (bigint, integer): field count, then length + value per field.
_PG_KEY = np.dtype([("n", ">i2"), ("len0", ">i4"), ("offset", ">i8"), ("len1", ">i4"), ("index", ">i4")])


def keys(offsets: np.ndarray, indexes: np.ndarray) -> np.ndarray:
    return (np.asarray(offsets, dtype=np.int64) << _INDEX_BITS) | (np.asarray(indexes, dtype=np.int64) + 1)


def unkey(partition: int, key: int) -> tuple[int, int, int]:
    return partition, int(key) >> _INDEX_BITS, (int(key) & ((1 << _INDEX_BITS) - 1)) - 1


@dataclass
class SinkCheck:
    """One sink over the whole verified range."""

    rows: int = 0  # rows found (and rejects, for PostgreSQL)
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(KINDS, 0))
    pending: int = 0  # missing keys at or above the sink's position: not ingested yet
    samples: dict[str, list[tuple[int, int, int]]] = field(default_factory=lambda: {k: [] for k in KINDS})
    gaps: list[Span] = field(default_factory=list)  # offset ranges holding every missing key

    @property
    def exact(self) -> bool:
        return not any(self.counts.values())


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



class _Postgres:
    def __init__(self, settings: Settings):
        try:
            self.conn = psycopg.connect(settings.postgres_conninfo(), autocommit=True)
        except psycopg.OperationalError as exc:
            raise ServiceUnavailable(f"PostgreSQL at {settings.postgres_display()}: {first_line(exc)}") from None

    def keys(self, table: str, partition: int, start: int, end: int) -> np.ndarray:
        query = sql.SQL("COPY (SELECT kafka_offset, tick_index FROM {} WHERE kafka_partition = {} "
                        "AND kafka_offset >= {} AND kafka_offset < {}) TO STDOUT (FORMAT BINARY)").format(
            sql.Identifier(table), sql.Literal(partition), sql.Literal(start), sql.Literal(end))
        try:
            with self.conn.cursor().copy(query) as copy:
                data = b"".join(bytes(chunk) for chunk in copy)
        except psycopg.OperationalError as exc:
            raise ServiceUnavailable(f"PostgreSQL while reading {table}: {first_line(exc)}") from None
        except psycopg.Error as exc:
            raise SinkRejected(f"PostgreSQL refused reading {table}: {first_line(exc)}; run `finpulse init`") from None
        if not data:
            return np.empty(0, dtype=np.int64)
        body = len(data) - len(pgcopy.HEADER) - len(pgcopy.TRAILER)
        rows = np.frombuffer(data, dtype=_PG_KEY, offset=len(pgcopy.HEADER), count=body // _PG_KEY.itemsize)
        return keys(rows["offset"], rows["index"])

    def close(self) -> None:
        self.conn.close()


class _Delta:
    def __init__(self, settings: Settings):
        from deltalake import DeltaTable
        from deltalake.exceptions import DeltaError, TableNotFoundError

        try:
            self.table = DeltaTable(settings.delta_uri, storage_options=settings.delta_storage_options)
        except TableNotFoundError:
            raise SinkRejected(f"no Delta table at {settings.delta_uri}: run `finpulse init`") from None
        except (DeltaError, OSError) as exc:
            raise ServiceUnavailable(f"Delta table {settings.delta_uri} unavailable: {first_line(exc)}") from None

    def keys(self, partition: int, start: int, end: int) -> np.ndarray:
        where = f"kafka_partition = {partition} AND kafka_offset >= {start} AND kafka_offset < {end}"
        dataset = self.table.to_pyarrow_dataset(file_pruning_predicate=where)  # files by their min/max
        rows = dataset.to_table(columns=["kafka_offset", "tick_index"], filter=(
            (pc.field("kafka_partition") == partition) & (pc.field("kafka_offset") >= start)
            & (pc.field("kafka_offset") < end)))
        return keys(rows.column("kafka_offset").to_numpy(), rows.column("tick_index").to_numpy())


def run(settings: Settings, spans: list[Span], feed: str | None = None, strict: bool = False,
        samples: int = 10, window: int = WINDOW, console: Console | None = None) -> Verdict:
    """Verify `spans` against the sinks `settings.sinks` names."""
    decoder = Decoder(settings.max_message_bytes, feed=feed, strict=strict)
    held = replay.positions(settings, [s.partition for s in spans])
    with Meter("verifying", sum(s.size for s in spans), console) as meter:
        return verify(settings, spans, settings.sink_names, decoder, held, samples, window, meter)


def repair(settings: Settings, verdict: Verdict, feed: str | None = None, strict: bool = False,
           console: Console | None = None) -> dict[str, Report]:
    """Replay, sink by sink, only the offset ranges in which `verdict` found missing keys."""
    return {name: replay.run(settings.model_copy(update={"sinks": name}), check.gaps, feed, strict, console)
            for name, check in verdict.sinks.items() if check.gaps}


def verify(settings: Settings, spans: list[Span], sink_names: tuple[str, ...], decoder: Decoder,
           positions: dict[str, dict[int, int]], samples: int = 10, window: int = WINDOW,
           meter: Meter | None = None) -> Verdict:
    """Compare every key of `spans` in the topic with each named sink. `positions` (sink -> partition
    -> next offset) tells a gap from what ingest has not reached yet."""
    checks = {name: SinkCheck() for name in sink_names}
    counts = []
    pg = _Postgres(settings) if "postgres" in sink_names else None
    try:
        delta = _Delta(settings) if "delta" in sink_names else None
        with source.RangeReader(settings) as reader:
            for span in spans:
                count = PartitionCount(span.partition, span.start, span.end, rows=dict.fromkeys(sink_names, 0))
                counts.append(count)
                for lo in range(span.start, span.end, window):
                    hi = min(lo + window, span.end)
                    ticks, rejects = _topic_keys(reader, decoder, span.partition, lo, hi, count, meter)
                    expected_pg = np.union1d(ticks, rejects)
                    if pg is not None:
                        rows = pg.keys(PRICES_TABLE, span.partition, lo, hi)
                        rejected = pg.keys(REJECTS_TABLE, span.partition, lo, hi)
                        count.rows["postgres"] += len(rows)
                        count.rejected += len(rejected)
                        _compare(checks["postgres"], span, expected_pg, np.concatenate([rows, rejected]),
                                 positions["postgres"].get(span.partition), samples)
                    if delta is not None:
                        rows = delta.keys(span.partition, lo, hi)
                        count.rows["delta"] += len(rows)
                        _compare(checks["delta"], span, ticks, rows, positions["delta"].get(span.partition), samples)
    finally:
        if pg is not None:
            pg.close()
    return Verdict(counts, checks, _gaps(settings) if "postgres" in sink_names else [])


def _gaps(settings: Settings) -> list[tuple[int, int, int, str]]:
    from finpulse.sinks.postgres import PostgresSink

    sink = PostgresSink(settings.postgres_conninfo(), settings.kafka_topic)
    try:
        return sink.gaps()
    finally:
        sink.close()


def _topic_keys(reader: source.RangeReader, decoder: Decoder, partition: int, lo: int, hi: int,
                count: PartitionCount, meter: Meter | None) -> tuple[np.ndarray, np.ndarray]:
    """Sorted keys of the valid ticks and of the rejects that messages [lo, hi) decode to."""
    ticks, rejects = [], []
    for msgs in reader.read(partition, lo, hi):
        decoded = decoder.decode(msgs)
        rows = decoded.ticks
        ticks.append(keys(rows.column("kafka_offset").to_numpy(), rows.column("tick_index").to_numpy()))
        rejects.append(keys(np.array([r.offset for r in decoded.rejects], dtype=np.int64),
                            np.array([r.tick_index for r in decoded.rejects], dtype=np.int64)))
        count.messages += len(msgs)
        count.ticks += decoded.ticks.num_rows
        count.rejects += len(decoded.rejects)
        if meter is not None:
            meter.advance(len(msgs))
    empty = np.empty(0, dtype=np.int64)
    return np.unique(np.concatenate(ticks or [empty])), np.unique(np.concatenate(rejects or [empty]))


def _compare(check: SinkCheck, span: Span, expected: np.ndarray, present: np.ndarray, position: int | None,
             samples: int) -> None:
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
        check.samples[kind].extend(unkey(span.partition, k) for k in which[:max(room, 0)])
    missing = found["missing"]
    if not len(missing):
        return
    offsets = missing >> _INDEX_BITS
    check.pending += int(np.count_nonzero(offsets >= (position if position is not None else span.low)))
    offsets = np.unique(offsets)
    breaks = np.flatnonzero(np.diff(offsets) > GAP_JOIN)
    starts = np.concatenate([offsets[:1], offsets[breaks + 1]])
    ends = np.concatenate([offsets[breaks], offsets[-1:]]) + 1
    for a, b in zip(starts.tolist(), ends.tolist()):
        last = check.gaps[-1] if check.gaps else None
        if last is not None and last.partition == span.partition and a - last.end <= GAP_JOIN:
            check.gaps[-1] = Span(span.partition, last.start, b, span.low)
        else:
            check.gaps.append(Span(span.partition, a, b, span.low))
