"""Kafka message bytes -> canonical tick rows (an Arrow record batch) and rejects.

`Decoder.decode` never raises on input: every message ends up as one or more ticks, as a
reject with its reason and raw bytes, or as a skipped non-trade event.

Two paths, one result:
  * the fast path assumes the canonical FinPulse shape and builds whole columns at once; a batch
    in which anything is off (a missing key, a string where a number belongs) falls back to
  * the careful path, one message at a time, which knows every feed shape (finpulse/feeds/) and
    says precisely what is wrong with a message that yields no tick.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc

from finpulse import feeds
from finpulse.schema import TICKS

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
# A reject's reason is one line of at most this many characters, whatever it quotes.
MAX_REASON_CHARS = 500
# Control characters an ASCII string can hold: only through escapes (\n, \u0007) or a raw DEL.
_ASCII_CONTROL = r"[\x00-\x1f\x7f]"
_QUOTE = 0x22  # '"'
_SIDES = pa.array(["buy", "sell"])  # what the fast path passes; "B", "ask"... go the careful way
# Below this many messages a batch that fails the fast path is not split any further: the
# careful path on 256 messages costs about what two more fast attempts would.
MIN_FAST_SPAN = 256
# Messages joined per step of the byte scan: ~100 KB of typical ticks, small enough to stay in
# the CPU cache for the parse that follows and for the allocator to reuse one buffer.
_SCAN_CHUNK = 1024


@dataclass(frozen=True)
class Messages:
    """A batch of raw Kafka records, column by column (cheap to build from a consume() call)."""

    values: list[bytes | None]
    partitions: list[int]
    offsets: list[int]
    timestamps: list[int]  # Kafka record timestamp, epoch ms; -1 when the broker gave none

    def __len__(self) -> int:
        return len(self.values)

    def halves(self) -> tuple["Messages", "Messages"]:
        mid = len(self.values) // 2
        return (
            Messages(self.values[:mid], self.partitions[:mid], self.offsets[:mid], self.timestamps[:mid]),
            Messages(self.values[mid:], self.partitions[mid:], self.offsets[mid:], self.timestamps[mid:]),
        )

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
            return _merge(self._split(msgs))
        return self._careful(msgs, range(len(msgs)))

    def _split(self, msgs: Messages) -> list[Decoded]:
        """`msgs` failed the fast path: retry its halves, so one odd message in a large batch costs
        a few fast passes instead of sending every message the careful way. Where both halves fail
        too, odd messages are dense and the careful path takes the whole span."""
        if len(msgs) <= MIN_FAST_SPAN:
            return [self._careful(msgs, range(len(msgs)))]
        halves = msgs.halves()
        tried = [self._fast_canonical(h) for h in halves]
        if tried[0] is None and tried[1] is None:
            return [self._careful(msgs, range(len(msgs)))]
        out: list[Decoded] = []
        for half, fast in zip(halves, tried):
            out.extend([fast] if fast is not None else self._split(half))
        return out

    # ------------------------------------------------------------------ fast path
    def _fast_canonical(self, msgs: Messages) -> Decoded | None:
        """Whole columns at once; None when the batch is not all plain canonical ticks.

        It commits only to batches whose every row the careful path would turn into the same row:
        single canonical objects with exactly the canonical keys, JSON numbers for price, size and
        time, printable ASCII text. Anything else (rare) goes to the careful path, which says why.
        """
        values = msgs.values
        n = len(values)
        if not n:
            return None
        limit = self.max_message_bytes
        loads, join, count, as_octets = orjson.loads, b"".join, np.count_nonzero, np.frombuffer
        quotes = 0  # quote bytes in the whole batch
        may_hold_control = False  # whether a string may hold a control character
        symbols, prices, sizes, stamps, exchanges, sides = [], [], [], [], [], []
        try:
            # The raw bytes are scanned a chunk at a time just before that chunk is parsed: the scan
            # then costs next to nothing, as it brings the bytes into the cache for orjson.
            for chunk_start in range(0, n, _SCAN_CHUNK):
                chunk = values[chunk_start:chunk_start + _SCAN_CHUNK]
                raw = join(chunk)  # TypeError on a tombstone (None)
                if len(raw) > limit and max(map(len, chunk)) > limit:
                    return None
                if not raw.isascii():  # Unicode case mapping and printability: Python's rules, careful path
                    return None
                quotes += int(count(as_octets(raw, np.uint8) == _QUOTE))
                # ASCII inside a JSON string is printable, save a raw DEL; an escape may spell anything.
                may_hold_control = may_hold_control or b"\\" in raw or b"\x7f" in raw
                for value in chunk:
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
            stamp_ms = pa.array(stamps)  # inferred: int64 only if every time is a JSON integer
            exchange = pa.array(exchanges, pa.string())
            side = pa.array(sides, pa.string())
        except Exception:  # anything unusual: let the careful path say what it is
            return None
        if stamp_ms.type != pa.int64() or (symbol.null_count + price.null_count + size.null_count + stamp_ms.null_count):
            return None
        n_exchange, n_side = n - exchange.null_count, n - side.null_count
        # Each JSON string (key or value) is two quote bytes, plus one per \" inside it. Here the
        # strings are 4 keys + exchange and side keys where given, and the symbol, exchange and side
        # values: any other count means another key or string, an escaped quote, or a duplicate key
        # orjson silently dropped (it keeps the last). The careful path tells those apart.
        if quotes != 2 * (5 * n + 2 * n_exchange + 2 * n_side):
            return None

        p, s = price.to_numpy(), size.to_numpy()
        # A JSON true/false arrives as a bool, which Arrow reads as 1.0/0.0: look at those rows only.
        for column, bool_like in ((prices, p == 1.0), (sizes, (s == 1.0) | (s == 0.0))):
            if any(type(column[i]) is bool for i in np.flatnonzero(bool_like).tolist()):
                return None

        stamps_ms = stamp_ms.to_numpy()
        ok = (
            np.isfinite(p) & (p > 0) & np.isfinite(s) & (s >= 0)
            # compared in ms, before scaling, so a huge value cannot wrap around into range
            & (stamps_ms >= MIN_TIMESTAMP_US // 1000) & (stamps_ms <= _ceilings_us(msgs.timestamps) // 1000)
        )
        if may_hold_control and not all(pc.all(pc.string_is_ascii(col)).as_py() is not False
                                        for col in (symbol, exchange, side)):
            return None  # a \u escape spelled non-ASCII text: Unicode rules, the careful path
        symbol = pc.ascii_upper(pc.ascii_trim_whitespace(symbol))
        sym_len = pc.binary_length(symbol).to_numpy()  # ASCII: bytes are characters
        ok &= (sym_len > 0) & (sym_len <= MAX_SYMBOL_CHARS)
        if may_hold_control:
            ok &= ~pc.match_substring_regex(symbol, _ASCII_CONTROL).to_numpy(zero_copy_only=False)
        if not ok.all():
            return None  # rare: let the careful path name each problem

        if n_exchange:
            exchange = pc.ascii_upper(pc.ascii_trim_whitespace(exchange))
            lengths = pc.binary_length(exchange)
            if pc.min(lengths).as_py() == 0 or pc.max(lengths).as_py() > MAX_EXCHANGE_CHARS:
                return None  # blank (the careful path writes null) or too long (a reject)
            if may_hold_control and pc.any(pc.match_substring_regex(exchange, _ASCII_CONTROL)).as_py():
                return None
        if n_side:
            side = pc.ascii_lower(pc.ascii_trim_whitespace(side))
            if pc.sum(pc.is_in(side, value_set=_SIDES)).as_py() != n_side:
                return None  # spellings such as "B" or "ask": the careful path maps them

        batch = pa.RecordBatch.from_arrays(
            [
                symbol,
                price,
                size,
                stamp_ms,
                pa.array(stamps_ms * 1000, pa.timestamp("us", tz="UTC")),
                exchange,
                side,
                pa.array(np.zeros(n, dtype=bool)),
                _int_column(msgs.partitions, np.int32),
                _int_column(msgs.offsets, np.int64),
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
        for i in indexes:
            value, partition, offset, kts = msgs.values[i], msgs.partitions[i], msgs.offsets[i], msgs.timestamps[i]
            kafka_ms = kts if kts is not None and kts >= 0 else None
            mark = len(rows), len(rejects)
            try:
                skipped += self._one(value, partition, offset, kafka_ms, rows, rejects)
            except Exception as exc:  # a bug of ours must cost one message, never the worker
                del rows[mark[0]:], rejects[mark[1]:]
                rejects.append(_reject(partition, offset, -1, "unknown",
                                       f"internal error while decoding: {type(exc).__name__}: {exc}", value, kafka_ms))
        return Decoded(_rows_to_batch(rows, rejects, msgs), rejects, skipped)

    def _one(self, value: bytes | None, partition: int, offset: int, kafka_ms: int | None,
             rows: list[tuple], rejects: list[Reject]) -> int:
        """Decode one message into `rows` and `rejects`; return how many events it skipped."""
        strict = self.strict
        obj, feed_name, reason = self._read(value)
        if reason is None:
            try:
                result = feeds.parse(obj, self.feed)
            except feeds.Invalid as exc:
                feed_name, reason = exc.feed, str(exc)
        if reason is not None:
            rejects.append(_reject(partition, offset, -1, feed_name, reason, value, kafka_ms))
            return 0
        feed_name = result.feed
        if not result.trades:  # a non-trade event sharing the topic
            if not strict:
                return 1
            rejects.append(_reject(partition, offset, -1, feed_name,
                                   f"not a trade event ({result.note}) and --strict is set", value, kafka_ms))
            return 0
        ceiling_us = _ceiling_us(kafka_ms)
        skipped = 0
        for tick_index, trade in enumerate(result.trades):
            kind = type(trade)
            if kind is feeds.Trade:
                problem = _check(trade, ceiling_us)
                ts_us = trade.ts_us
                broker_time = ts_us is None
                if broker_time and problem is None:  # the Kafka record's time stands in
                    problem = _broker_time_problem(kafka_ms)
                    ts_us = None if problem else kafka_ms * 1000
                if problem is None:
                    rows.append((
                        trade.symbol, trade.price, trade.size, ts_us // 1000, ts_us,
                        trade.exchange or result.default_exchange, trade.side, broker_time,
                        partition, offset, tick_index,
                    ))
                    continue
            elif kind is feeds.Skip:  # a quote or status beside trades in one frame
                if not strict:
                    skipped += 1
                    continue
                problem = f"not a trade event ({trade.note}) and --strict is set"
            else:
                problem = str(trade)
            rejects.append(_reject(partition, offset, tick_index, feed_name, problem, value, kafka_ms))
        return skipped

    def _read(self, value: bytes | None) -> tuple[object, str, str | None]:
        """(decoded JSON, feed name, None), or (None, feed name, why the message is unusable)."""
        if value is None:
            return None, "unknown", "tombstone: the record has no value"
        if len(value) > self.max_message_bytes:
            return None, "unknown", (f"message is {len(value)} bytes, over the {self.max_message_bytes}-byte "
                                     "limit (FINPULSE_MAX_MESSAGE_BYTES)")
        try:
            obj = orjson.loads(value)
        except orjson.JSONDecodeError as exc:
            return None, "unknown", _json_reason(value, exc)
        duplicate = _duplicate_key(value, obj)
        if duplicate is not None:
            feed = self.feed or feeds.detect(obj)
            return None, feed.name if feed else "unknown", duplicate
        return obj, "unknown", None


def _merge(parts: list[Decoded]) -> Decoded:
    if len(parts) == 1:
        return parts[0]
    return Decoded(
        pa.concat_batches([p.ticks for p in parts]),
        [r for p in parts for r in p.rejects],
        sum(p.skipped for p in parts),
    )


def _check(trade: "feeds.Trade", ceiling_us: int) -> str | None:
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
        if trade.ts_us > ceiling_us:
            return f"trade time {_iso(trade.ts_us)} is more than a day after its Kafka record time"
    return None


def _ceiling_us(kafka_ms: int | None) -> int:
    """The latest trade time a record stamped `kafka_ms` may carry (see MAX_FUTURE_US)."""
    if kafka_ms is None or not MIN_TIMESTAMP_US // 1000 <= kafka_ms <= MAX_TIMESTAMP_US // 1000:
        return MAX_TIMESTAMP_US
    return min(kafka_ms * 1000 + MAX_FUTURE_US, MAX_TIMESTAMP_US)


def _ceilings_us(timestamps: list[int]) -> np.ndarray:
    """`_ceiling_us` of a whole batch of record times (epoch ms, -1 for none)."""
    ms = np.array(timestamps, dtype=np.float64)  # float: a wild record time cannot wrap around
    usable = (ms >= MIN_TIMESTAMP_US // 1000) & (ms <= MAX_TIMESTAMP_US // 1000)
    ceiling = np.minimum(np.where(usable, ms, 0).astype(np.int64) * 1000 + MAX_FUTURE_US, MAX_TIMESTAMP_US)
    return np.where(usable, ceiling, MAX_TIMESTAMP_US)


def _broker_time_problem(kafka_ms: int | None) -> str | None:
    if kafka_ms is None:
        return "the trade has no time and the Kafka record has no timestamp"
    if not MIN_TIMESTAMP_US <= kafka_ms * 1000 <= MAX_TIMESTAMP_US:
        return f"the trade has no time and the Kafka record time {_iso(kafka_ms * 1000)} is out of range"
    return None


def _reject(partition: int, offset: int, tick_index: int, feed: str, reason: str, raw: bytes | None,
            kafka_ms: int | None) -> Reject:
    return Reject(partition, offset, tick_index, feed, clean_reason(reason), raw, kafka_ms)


def clean_reason(reason: str) -> str:
    """A reason both sinks can store and a person can read: one line, no NUL or control characters
    (escaped, not dropped, so the reason still says what was there), at most MAX_REASON_CHARS."""
    if not reason.isprintable():
        reason = "".join(c if c.isprintable() else repr(c)[1:-1] for c in reason)
    if len(reason) > MAX_REASON_CHARS:
        reason = reason[:MAX_REASON_CHARS - 3] + "..."
    return reason


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


def _int_column(values: list[int], dtype) -> pa.Array:
    """A Kafka partition or offset column; a batch is mostly one partition."""
    n = len(values)
    if n and values.count(values[0]) == n:
        return pa.array(np.full(n, values[0], dtype))
    return pa.array(np.fromiter(values, dtype, n))


def _duplicate_key(value: bytes, obj: object) -> str | None:
    """Why `value` is rejected for a key repeated within one JSON object, or None. Exact.

    orjson keeps the last of repeated keys without a word. Cheap test first: re-encoding the
    parsed value writes each surviving string once, with a quote byte for each quote inside it;
    the message has as many quote bytes only if nothing was dropped, unless a \\u escape spelled
    a quote without one. Otherwise the stdlib parser walks it once more, key by key."""
    if not isinstance(obj, (dict, list)):
        return None
    if b"\\u" not in value:
        try:
            if orjson.dumps(obj).count(b'"') == value.count(b'"'):
                return None
        except orjson.JSONEncodeError:  # nesting deeper than orjson writes: the slow walk decides
            pass
    try:
        json.loads(value, object_pairs_hook=_no_repeats)
    except _RepeatedKey as exc:
        return f"duplicate key {exc.key!r} in a JSON object: which value is meant is ambiguous"
    except RecursionError:
        return "JSON nested too deeply to check for duplicate keys"
    except ValueError as exc:  # never seen: orjson is the stricter parser of the two
        return f"JSON the duplicate-key check cannot read: {exc}"
    return None


class _RepeatedKey(Exception):
    def __init__(self, key: str):
        self.key = key


def _no_repeats(pairs: list[tuple[str, object]]) -> None:
    seen = set()
    for key, _ in pairs:
        if key in seen:
            raise _RepeatedKey(key)
        seen.add(key)


def _rows_to_batch(rows: list[tuple], rejects: list[Reject] | None = None,
                   msgs: Messages | None = None) -> pa.RecordBatch:
    """Row tuples -> a record batch. A row Arrow cannot take (a value `_check` let through by
    mistake) becomes a reject of its own instead of failing the whole batch."""
    if not rows:
        return pa.RecordBatch.from_pylist([], schema=TICKS)
    try:
        # One conversion of the row tuples into a struct array: ~3x faster than transposing them in Python
        return pa.RecordBatch.from_struct_array(pa.array(rows, type=_TICK_ROW))
    except Exception:
        if rejects is None:
            raise
    good = []
    raw = {} if msgs is None else dict(zip(zip(msgs.partitions, msgs.offsets), zip(msgs.values, msgs.timestamps)))
    for row in rows:
        try:
            pa.array([row], type=_TICK_ROW)
            good.append(row)
        except Exception as exc:
            partition, offset, tick_index = row[-3:]
            value, kts = raw.get((partition, offset), (None, -1))
            rejects.append(_reject(partition, offset, tick_index, "unknown",
                                   f"internal error: the tick cannot be stored: {type(exc).__name__}: {exc}",
                                   value, kts if kts is not None and kts >= 0 else None))
    return _rows_to_batch(good)


_TICK_ROW = pa.struct(TICKS)
