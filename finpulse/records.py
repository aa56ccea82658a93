"""The records that cross stages: raw Kafka messages in, decoded ticks and rejects out, and what
the trade window (finpulse/dedup) finds in the ticks: duplicates and sequence gaps."""

from __future__ import annotations

from dataclasses import dataclass, field

import pyarrow as pa


@dataclass(frozen=True)
class Messages:
    """A batch of raw Kafka records, column by column (cheap to build from a consume() call)."""

    values: list[bytes | None]
    partitions: list[int]
    offsets: list[int]
    timestamps: list[int]  # Kafka record timestamp, epoch ms; -1 when the broker gave none
    # per message its headers [(key, value)], or None; None for the batch: no message had any
    headers: list | None = None

    def __len__(self) -> int:
        return len(self.values)

    def _pick(self, rows) -> Messages:
        return Messages(
            [self.values[i] for i in rows],
            [self.partitions[i] for i in rows],
            [self.offsets[i] for i in rows],
            [self.timestamps[i] for i in rows],
            None if self.headers is None else [self.headers[i] for i in rows],
        )

    def halves(self) -> tuple[Messages, Messages]:
        mid = len(self.values) // 2
        return self._pick(range(mid)), self._pick(range(mid, len(self.values)))

    @classmethod
    def concat(cls, parts: list[Messages]) -> Messages:
        headers = None
        if any(m.headers is not None for m in parts):
            headers = [h for m in parts for h in (m.headers if m.headers is not None else [None] * len(m))]
        return cls(
            [v for m in parts for v in m.values],
            [p for m in parts for p in m.partitions],
            [o for m in parts for o in m.offsets],
            [t for m in parts for t in m.timestamps],
            headers,
        )

    def without(self, partitions: set[int]) -> Messages:
        """These messages but those of `partitions`."""
        return self._pick([i for i, p in enumerate(self.partitions) if p not in partitions])

    @classmethod
    def from_kafka(cls, records) -> Messages:
        headers = [m.headers() for m in records]
        return cls(
            [m.value() for m in records],
            [m.partition() for m in records],
            [m.offset() for m in records],
            [m.timestamp()[1] for m in records],
            headers if any(h is not None for h in headers) else None,
        )


@dataclass(frozen=True)
class Reject:
    partition: int
    offset: int
    tick_index: int  # -1: the whole message; otherwise the bad trade's position in its frame
    feed: str  # the shape that was tried
    reason: str
    raw: bytes | None
    kafka_timestamp_ms: int | None


@dataclass(frozen=True)
class SequenceGap:
    """Trade ids missing from a symbol's consecutive numbering (`filled` None), or one of them that
    arrived late (`filled`: that id). It belongs to the message where it was found: its lineage."""

    partition: int
    offset: int
    tick_index: int  # -1: found between trades (the window's checkpoint), not at one
    exchange: str
    symbol: str
    prefix: str  # the ids' text before their number ("" for plain integers; Binance aggTrade: "a")
    from_id: int  # the gap, as first found: ids from_id..to_id were missing
    to_id: int
    seen_us: int  # trade time of the trade that showed the gap
    filled: int | None = None


@dataclass
class Decoded:
    ticks: pa.RecordBatch
    rejects: list[Reject] = field(default_factory=list)
    skipped: int = 0  # non-trade events (acks, heartbeats, quotes, book updates)
    # per tick row, the feed shape it was read with (None: every row is canonical, the fast path)
    feeds: pa.Array | None = None
