"""What makes a decoded trade a row both sinks can store: the rules, and the words of a reject.

Nothing here reads the wall clock: a trade is judged against its Kafka record's time, so every
process decodes the same bytes the same way.
"""

from __future__ import annotations

import datetime as dt
import math

import numpy as np
import orjson
import pyarrow as pa

from finpulse import feeds
from finpulse.records import Reject

# Trades before 1990 are certainly a unit mistake (seconds read as ms, say); so is anything more
# than a day ahead of the Kafka record that carried it. The record's time, not this machine's
# clock, is the reference: live ingest, replay, verify and a new owner after a rebalance then
# decode the same bytes the same way, whenever they run.
MIN_TIMESTAMP_US = 631_152_000_000_000  # 1990-01-01T00:00:00Z
MAX_FUTURE_US = 86_400_000_000
# A record without a usable time of its own (none, or before 1990) is judged against the end of
# year 9999: every sink's timestamp type holds it, and the rule still does not move with the clock.
MAX_TIMESTAMP_US = 253_402_300_799_999_999  # 9999-12-31T23:59:59.999999Z
# Free text. The symbol is required; exchange is optional (blank = none). Both must be printable
# (str.isprintable: no NUL, control, format or separator characters but the space), which also
# keeps them storable in PostgreSQL text, which cannot hold NUL.
MAX_SYMBOL_CHARS = 64
MAX_EXCHANGE_CHARS = 64
# A trade id is an identity: never cut (two ids that share a prefix would become one trade). Venues'
# ids are integers or UUIDs (36 characters); longer text is a mistake upstream.
MAX_TRADE_ID_CHARS = 64
# No market trades a unit above 1e15 or a quantity above 1e15 (a price in satoshis or a size in
# a token's smallest unit stays far below): past them a value is a unit or parsing mistake. The
# bound also keeps every sum of price * size (the 1-minute bars' notional) far from overflowing.
MAX_PRICE = 1e15
MAX_SIZE = 1e15
# A reject's reason is one line of at most this many characters, whatever it quotes.
MAX_REASON_CHARS = 500


def check(trade: feeds.Trade, ceiling_us: int) -> str | None:
    """Why a parsed trade cannot be a row, or None. `ceiling_us`: the latest acceptable trade time."""
    sym = trade.symbol
    if not sym:
        return "symbol is empty"
    if len(sym) > MAX_SYMBOL_CHARS:
        return f"symbol is {len(sym):,} characters, over {MAX_SYMBOL_CHARS}"
    if not sym.isprintable():
        return f"symbol {feeds.quote(sym)} contains control or other non-printable characters"
    venue = trade.exchange
    if venue is not None:
        if len(venue) > MAX_EXCHANGE_CHARS:
            return f"exchange is {len(venue):,} characters, over {MAX_EXCHANGE_CHARS}"
        if not venue.isprintable():
            return f"exchange {feeds.quote(venue)} contains control or other non-printable characters"
    tid = trade.trade_id
    if tid is not None:
        if len(tid) > MAX_TRADE_ID_CHARS:
            return f"trade id is {len(tid):,} characters, over {MAX_TRADE_ID_CHARS}"
        if not tid.isprintable():
            return f"trade id {feeds.quote(tid)} contains control or other non-printable characters"
    if not math.isfinite(trade.price):
        return f"price {trade.price} is not finite"
    if trade.price <= 0:
        return f"price {trade.price} is not positive"
    if trade.price > MAX_PRICE:
        return f"price {trade.price:g} is above {MAX_PRICE:g}: a unit or parsing mistake?"
    if not math.isfinite(trade.size):
        return f"size {trade.size} is not finite"
    if trade.size < 0:
        return f"size {trade.size} is negative"
    if trade.size > MAX_SIZE:
        return f"size {trade.size:g} is above {MAX_SIZE:g}: a unit or parsing mistake?"
    if trade.ts_us is not None:
        if trade.ts_us < MIN_TIMESTAMP_US:
            return f"trade time {_iso(trade.ts_us)} is before 1990: wrong unit?"
        if trade.ts_us > ceiling_us:
            return f"trade time {_iso(trade.ts_us)} is more than a day after its Kafka record time"
    return None


def ceiling_us(kafka_ms: int | None) -> int:
    """The latest trade time a record stamped `kafka_ms` may carry (see MAX_FUTURE_US)."""
    if kafka_ms is None or not MIN_TIMESTAMP_US // 1000 <= kafka_ms <= MAX_TIMESTAMP_US // 1000:
        return MAX_TIMESTAMP_US
    return min(kafka_ms * 1000 + MAX_FUTURE_US, MAX_TIMESTAMP_US)


def kafka_time_us(kafka_ms: int | None) -> int | None:
    """The `kafka_time` column of a record stamped `kafka_ms`: None when it has none, or one no
    sink's timestamp type holds."""
    if kafka_ms is None or not 0 <= kafka_ms <= MAX_TIMESTAMP_US // 1000:
        return None
    return kafka_ms * 1000


def kafka_times_us(timestamps: list[int]) -> pa.Array:
    """`kafka_time_us` of a whole batch of record times (epoch ms, -1 for none), as a column."""
    ms = np.array(timestamps, dtype=np.int64)
    bad = (ms < 0) | (ms > MAX_TIMESTAMP_US // 1000)
    return pa.array(np.where(bad, 0, ms) * 1000, pa.timestamp("us", tz="UTC"), mask=bad if bad.any() else None)


def ceilings_us(timestamps: list[int]) -> np.ndarray:
    """`_ceiling_us` of a whole batch of record times (epoch ms, -1 for none)."""
    ms = np.array(timestamps, dtype=np.float64)  # float: a wild record time cannot wrap around
    usable = (ms >= MIN_TIMESTAMP_US // 1000) & (ms <= MAX_TIMESTAMP_US // 1000)
    ceiling = np.minimum(np.where(usable, ms, 0).astype(np.int64) * 1000 + MAX_FUTURE_US, MAX_TIMESTAMP_US)
    return np.where(usable, ceiling, MAX_TIMESTAMP_US)


def broker_time_problem(kafka_ms: int | None) -> str | None:
    if kafka_ms is None:
        return "the trade has no time and the Kafka record has no timestamp"
    if not MIN_TIMESTAMP_US <= kafka_ms * 1000 <= MAX_TIMESTAMP_US:
        return f"the trade has no time and the Kafka record time {_iso(kafka_ms * 1000)} is out of range"
    return None


def reject(
    partition: int, offset: int, tick_index: int, feed: str, reason: str, raw: bytes | None, kafka_ms: int | None
) -> Reject:
    return Reject(partition, offset, tick_index, feed, clean_reason(reason), raw, kafka_ms)


def refused_rows(ticks: pa.Table, refused: dict[int, tuple[str, str]]) -> tuple[Reject, ...]:
    """Rows of `ticks` a sink's rules refused (index -> (feed, reason)) as rejects, in row order;
    their raw bytes are the row as JSON."""
    order = sorted(refused)
    return tuple(
        reject(
            row["kafka_partition"],
            row["kafka_offset"],
            row["tick_index"],
            *refused[i],
            orjson.dumps(row, default=str),
            None,
        )
        for i, row in zip(order, ticks.take(order).to_pylist())
    )


def clean_reason(reason: str) -> str:
    """A reason both sinks can store and a person can read: one line, no NUL or control characters
    (escaped, not dropped, so the reason still says what was there), at most MAX_REASON_CHARS."""
    if not reason.isprintable():
        reason = "".join(c if c.isprintable() else repr(c)[1:-1] for c in reason)
    if len(reason) > MAX_REASON_CHARS:
        reason = reason[: MAX_REASON_CHARS - 3] + "..."
    return reason


def _iso(ts_us: int) -> str:
    try:
        return (dt.datetime(1970, 1, 1, tzinfo=dt.UTC) + dt.timedelta(microseconds=ts_us)).isoformat()
    except OverflowError:
        return f"{ts_us} µs since the epoch"
