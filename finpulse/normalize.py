"""Kafka message bytes -> canonical tick rows (an Arrow record batch) and rejects.

`Decoder.decode` never raises on input: every message ends up as one or more ticks, as a
reject with its reason and raw bytes, or as a skipped non-trade event.

Two paths, one result:
  * the fast path assumes the canonical FinPulse shape and builds whole columns at once; a batch
    in which anything is off (a missing key, a string where a number belongs) falls back to
  * the careful path, one message at a time, which knows every feed shape (feeds.py) and says
    precisely what is wrong with a message that yields no tick.
"""

from __future__ import annotations

import math
import time
from itertools import repeat
from dataclasses import dataclass, field

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc

from finpulse import feeds
from finpulse.schema import TICKS

# Trades before 1990 are certainly a unit mistake (seconds read as ms, say); so is anything more
# than a day ahead of this machine's clock.
MIN_TIMESTAMP_US = 631_152_000_000_000  # 1990-01-01T00:00:00Z
MAX_FUTURE_US = 86_400_000_000
MAX_SYMBOL_CHARS = 64
_CONTROL_CHARS = r"[\x00-\x1f\x7f-\x9f]"


@dataclass(frozen=True)
class Messages:
    """A batch of raw Kafka records, column by column (cheap to build from a consume() call)."""

    values: list[bytes | None]
    partitions: list[int]
    offsets: list[int]
    timestamps: list[int]  # Kafka record timestamp, epoch ms; -1 when the broker gave none

    def __len__(self) -> int:
        return len(self.values)

    @classmethod
    def from_kafka(cls, records) -> "Messages":
        return cls(
            [m.value() for m in records],
            [m.partition() for m in records],
            [m.offset() for m in records],
            [m.timestamp()[1] for m in records],
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


@dataclass
class Decoded:
    ticks: pa.RecordBatch
    rejects: list[Reject] = field(default_factory=list)
    skipped: int = 0  # non-trade events (acks, heartbeats, quotes, book updates)


class Decoder:
    def __init__(self, max_message_bytes: int = 1 << 20, feed: str | None = None, strict: bool = False):
        self.max_message_bytes = max_message_bytes
        self.feed = feeds.get(feed) if feed else None
        self.strict = strict

    def decode(self, msgs: Messages) -> Decoded:
        if self.feed is None or self.feed is feeds.CANONICAL:
            fast = self._fast_canonical(msgs)
            if fast is not None:
                return fast
        return self._careful(msgs, range(len(msgs)))

    # ------------------------------------------------------------------ fast path
    def _fast_canonical(self, msgs: Messages) -> Decoded | None:
        """Whole columns at once; None when the batch is not all plain canonical ticks."""
        loads = orjson.loads
        limit = self.max_message_bytes
        symbols, prices, sizes, stamps, exchanges, sides = [], [], [], [], [], []
        try:
            for value in msgs.values:
                if len(value) > limit:  # None (a tombstone) raises TypeError here
                    return None
                tick = loads(value)
                symbols.append(tick["symbol"])
                prices.append(tick["price"])
                sizes.append(tick["size"])
                stamps.append(tick["timestamp_ms"])
                exchanges.append(tick.get("exchange"))
                sides.append(tick.get("side"))
            symbol = pa.array(symbols, pa.string())
            price = pa.array(prices, pa.float64())
            size = pa.array(sizes, pa.float64())
            stamp_ms = pa.array(stamps, pa.int64())
            exchange = pa.array(exchanges, pa.string())
            side = pa.array(sides, pa.string())
        except Exception:  # anything unusual: let the careful path say what it is
            return None
        # Arrow reads JSON true as 1.0; a bool is never a price, size or time
        if any(map(isinstance, prices, repeat(bool))) or any(map(isinstance, sizes, repeat(bool))):
            return None
        if symbol.null_count or price.null_count or size.null_count or stamp_ms.null_count:
            return None

        symbol = pc.utf8_upper(pc.utf8_trim_whitespace(symbol))
        ts_us = stamp_ms.to_numpy() * 1000
        p, s = price.to_numpy(), size.to_numpy()
        now_us = time.time_ns() // 1000
        ok = (
            np.isfinite(p) & (p > 0) & np.isfinite(s) & (s >= 0)
            & (ts_us >= MIN_TIMESTAMP_US) & (ts_us <= now_us + MAX_FUTURE_US)
        )
        sym_len = pc.utf8_length(symbol).to_numpy()
        ok &= (sym_len > 0) & (sym_len <= MAX_SYMBOL_CHARS)
        ok &= ~pc.match_substring_regex(symbol, _CONTROL_CHARS).to_numpy(zero_copy_only=False)
        if not ok.all():
            return None  # rare: let the careful path name each problem

        n = len(msgs)
        batch = pa.RecordBatch.from_arrays(
            [
                symbol,
                price,
                size,
                stamp_ms,
                pa.array(ts_us, pa.timestamp("us", tz="UTC")),
                pc.utf8_upper(pc.utf8_trim_whitespace(exchange)),
                pc.utf8_lower(side),
                pa.array(np.zeros(n, dtype=bool)),
                pa.array(msgs.partitions, pa.int32()),
                pa.array(msgs.offsets, pa.int64()),
                pa.array(np.zeros(n, dtype=np.int32)),
            ],
            schema=TICKS,
        )
        return Decoded(batch)

    # ------------------------------------------------------------------ careful path
    def _careful(self, msgs: Messages, indexes) -> Decoded:
        rows: list[tuple] = []
        rejects: list[Reject] = []
        skipped = 0
        now_us = time.time_ns() // 1000
        for i in indexes:
            value, partition, offset, kts = msgs.values[i], msgs.partitions[i], msgs.offsets[i], msgs.timestamps[i]
            kafka_ms = kts if kts is not None and kts >= 0 else None

            def reject(reason: str, feed: str = "unknown", tick_index: int = -1) -> None:
                rejects.append(Reject(partition, offset, tick_index, feed, reason, value, kafka_ms))

            if value is None:
                reject("tombstone: the record has no value")
                continue
            if len(value) > self.max_message_bytes:
                reject(f"message is {len(value)} bytes, over the {self.max_message_bytes}-byte limit "
                       "(FINPULSE_MAX_MESSAGE_BYTES)")
                continue
            try:
                obj = orjson.loads(value)
            except orjson.JSONDecodeError as exc:
                reject(_json_reason(value, exc))
                continue
            try:
                result = feeds.parse(obj, self.feed)
            except feeds.Invalid as exc:
                reject(str(exc), exc.feed)
                continue
            if result.trades is None:  # a non-trade event sharing the topic
                if self.strict:
                    reject(f"not a trade event ({result.note}) and --strict is set", result.feed)
                else:
                    skipped += 1
                continue
            for tick_index, trade in enumerate(result.trades):
                if isinstance(trade, feeds.Invalid):
                    reject(str(trade), result.feed, tick_index)
                    continue
                problem = _check(trade, now_us)
                if problem:
                    reject(problem, result.feed, tick_index)
                    continue
                broker_time = trade.ts_us is None
                if broker_time:
                    if kafka_ms is None:
                        reject("the trade has no time and the Kafka record has no timestamp", result.feed, tick_index)
                        continue
                    ts_us = kafka_ms * 1000
                else:
                    ts_us = trade.ts_us
                rows.append((
                    trade.symbol, trade.price, trade.size, ts_us // 1000, ts_us,
                    trade.exchange or result.default_exchange, trade.side, broker_time,
                    partition, offset, tick_index,
                ))
        return Decoded(_rows_to_batch(rows), rejects, skipped)


def _check(trade: "feeds.Trade", now_us: int) -> str | None:
    """Why a parsed trade cannot be a row, or None."""
    sym = trade.symbol
    if not sym:
        return "symbol is empty"
    if len(sym) > MAX_SYMBOL_CHARS:
        return f"symbol is {len(sym)} characters, over {MAX_SYMBOL_CHARS}"
    if not sym.isprintable():
        return f"symbol {sym!r} contains control characters"
    if not math.isfinite(trade.price):
        return f"price {trade.price} is not finite"
    if trade.price <= 0:
        return f"price {trade.price} is not positive"
    if not math.isfinite(trade.size):
        return f"size {trade.size} is not finite"
    if trade.size < 0:
        return f"size {trade.size} is negative"
    if trade.ts_us is not None:
        if trade.ts_us < MIN_TIMESTAMP_US:
            return f"trade time {_iso(trade.ts_us)} is before 1990: wrong unit?"
        if trade.ts_us > now_us + MAX_FUTURE_US:
            return f"trade time {_iso(trade.ts_us)} is more than a day in the future"
    return None


def _iso(ts_us: int) -> str:
    import datetime as dt

    try:
        return (dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc) + dt.timedelta(microseconds=ts_us)).isoformat()
    except OverflowError:
        return f"{ts_us} µs since the epoch"


def _json_reason(value: bytes, exc: Exception) -> str:
    try:
        value.decode("utf-8")
    except UnicodeDecodeError as err:
        return f"not UTF-8: invalid byte at position {err.start}"
    if not value.strip():
        return "empty message"
    return f"not valid JSON: {exc}"


def _rows_to_batch(rows: list[tuple]) -> pa.RecordBatch:
    if not rows:
        return pa.RecordBatch.from_pylist([], schema=TICKS)
    cols = list(zip(*rows))
    return pa.RecordBatch.from_arrays(
        [pa.array(c, type=f.type) for c, f in zip(cols, TICKS)], schema=TICKS
    )
