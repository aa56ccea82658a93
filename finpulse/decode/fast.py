"""The fast path: a batch of plain canonical ticks decoded column by column.

It commits only to batches whose every row the careful path (decode.careful.py) would turn into
the same row; anything else returns None and goes the careful way, which says what is wrong.
"""

from __future__ import annotations

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc

from finpulse.checks import (
    MAX_EXCHANGE_CHARS,
    MAX_PRICE,
    MAX_SIZE,
    MAX_SYMBOL_CHARS,
    MAX_TRADE_ID_CHARS,
    MIN_TIMESTAMP_US,
    ceilings_us,
    kafka_times_us,
)
from finpulse.records import Decoded, Messages
from finpulse.schema import TICKS

# Control characters an ASCII string can hold: only through escapes (\n, \u0007) or a raw DEL.
_ASCII_CONTROL = r"[\x00-\x1f\x7f]"
_QUOTE = 0x22  # '"'
_SIDES = pa.array(["buy", "sell"])  # what the fast path passes; "B", "ask"... go the careful way
# Messages joined per step of the byte scan: ~100 KB of typical ticks, small enough to stay in
# the CPU cache for the parse that follows and for the allocator to reuse one buffer.
_SCAN_CHUNK = 1024


def fast_canonical(msgs: Messages, max_message_bytes: int) -> Decoded | None:
    """Whole columns at once; None when the batch is not all plain canonical ticks.

    It commits only to batches whose every row the careful path would turn into the same row:
    single canonical objects with exactly the canonical keys, JSON numbers for price, size and
    time, printable ASCII text, trade ids all integers or all text. Anything else (rare) goes to the
    careful path, which says why.
    """
    values: list = msgs.values  # may hold None (a tombstone): join() then fails and the careful path says so
    n = len(values)
    if not n:
        return None
    limit = max_message_bytes
    loads, join, count, as_octets = orjson.loads, b"".join, np.count_nonzero, np.frombuffer
    quotes = 0  # quote bytes in the whole batch
    may_hold_control = False  # whether a string may hold a control character
    symbols, prices, sizes, stamps, exchanges, sides, tids = [], [], [], [], [], [], []
    try:
        # The raw bytes are scanned a chunk at a time just before that chunk is parsed: the scan
        # then costs next to nothing, as it brings the bytes into the cache for orjson.
        for chunk_start in range(0, n, _SCAN_CHUNK):
            chunk = values[chunk_start : chunk_start + _SCAN_CHUNK]
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
                tids.append(tick.get("trade_id"))
        cols = _arrays(symbols, prices, sizes, stamps, exchanges, sides, tids)
    except Exception:  # anything unusual: let the careful path say what it is
        return None
    if cols is None:
        return None
    symbol, price, size, stamp_ms, exchange, side, trade_id = cols
    n_exchange, n_side, n_tid = n - exchange.null_count, n - side.null_count, n - trade_id.null_count
    n_tid_text = n_tid if trade_id.type == pa.string() else 0
    # Each JSON string (key or value) is two quote bytes, plus one per \" inside it. Here the
    # strings are 4 keys + exchange, side and trade_id keys where given, and the symbol, exchange,
    # side and text trade_id values: any other count means another key or string, an escaped quote,
    # or a duplicate key orjson silently dropped (it keeps the last). The careful path tells those apart.
    if quotes != 2 * (5 * n + 2 * n_exchange + 2 * n_side + n_tid + n_tid_text):
        return None
    p, s = price.to_numpy(), size.to_numpy()
    # A JSON true/false arrives as a bool, which Arrow reads as 1.0/0.0: look at those rows only.
    for column, bool_like in ((prices, p == 1.0), (sizes, (s == 1.0) | (s == 0.0))):
        if any(type(column[i]) is bool for i in np.flatnonzero(bool_like).tolist()):
            return None
    return _checked(msgs, cols, may_hold_control)


CANONICAL_KEYS = frozenset(("symbol", "price", "size", "timestamp_ms", "exchange", "side", "trade_id"))


def fast_records(msgs: Messages, records: list | dict) -> Decoded | None:
    """Whole columns from records a typed schema gave (Avro, Protobuf: registry.py), one per message
    or already as columns by field name, with the canonical tick's fields; None when any is not such
    a record, or a row would not be what the careful path makes of it. Their types are the
    schema's, so what JSON's bytes must prove (no duplicate key, no boolean for a number) holds
    already; their text may be any Unicode."""
    keys = CANONICAL_KEYS
    if isinstance(records, dict):
        return _from_columns(msgs, records)
    try:
        if not all(type(r) is dict and r.keys() <= keys for r in records):
            return None
        get = dict.get
        cols = _arrays(
            [r["symbol"] for r in records],
            [r["price"] for r in records],
            [r["size"] for r in records],
            [get(r, "timestamp_ms") for r in records],
            [get(r, "exchange") for r in records],
            [get(r, "side") for r in records],
            [get(r, "trade_id") for r in records],
        )
    except Exception:
        return None
    if cols is None:
        return None
    return _checked(msgs, cols, may_hold_control=True)


def _from_columns(msgs: Messages, columns: dict[str, pa.Array]) -> Decoded | None:
    """fast_records for columns (avro_batch.py): the canonical fields in their canonical types."""
    if not columns.keys() <= CANONICAL_KEYS or not {"symbol", "price", "size", "timestamp_ms"} <= columns.keys():
        return None
    n = len(msgs)
    for k in ("price", "size"):  # a schema's long price: a float, as the careful path makes it
        if columns[k].type == pa.int64():
            columns = {**columns, k: columns[k].cast(pa.float64(), safe=False)}
    want = {"symbol": pa.string(), "price": pa.float64(), "size": pa.float64(), "timestamp_ms": pa.int64()}
    if any(columns[k].type != t or columns[k].null_count for k, t in want.items()):
        return None
    text = [columns.get(k, pa.nulls(n, pa.string())) for k in ("exchange", "side")]
    if any(c.type != pa.string() for c in text):
        return None
    trade_id = columns.get("trade_id", pa.nulls(n))
    if trade_id.null_count == n:
        trade_id = pa.nulls(n)  # as pa.array infers a column of no ids
    elif trade_id.type not in (pa.int64(), pa.string()):
        return None
    cols = (columns["symbol"], columns["price"], columns["size"], columns["timestamp_ms"], *text, trade_id)
    return _checked(msgs, cols, may_hold_control=True)


def _arrays(symbols, prices, sizes, stamps, exchanges, sides, tids) -> tuple | None:
    """The seven value columns, or None when their types are not all the canonical tick's."""
    symbol = pa.array(symbols, pa.string())
    price = pa.array(prices, pa.float64())
    size = pa.array(sizes, pa.float64())
    stamp_ms = pa.array(stamps)  # inferred: int64 only if every time is an integer
    exchange = pa.array(exchanges, pa.string())
    side = pa.array(sides, pa.string())
    trade_id = pa.array(tids)  # inferred: null, int64 or string; mixed (or a boolean) fails
    if stamp_ms.type != pa.int64() or (symbol.null_count + price.null_count + size.null_count + stamp_ms.null_count):
        return None
    if trade_id.type not in (pa.null(), pa.int64(), pa.string()):
        return None
    return symbol, price, size, stamp_ms, exchange, side, trade_id


def _checked(msgs: Messages, cols: tuple, may_hold_control: bool) -> Decoded | None:
    """The batch of the value columns, held to the careful path's rules (checks.py); None when a row
    breaks one (the careful path names it) or would be spelled differently there."""
    symbol, price, size, stamp_ms, exchange, side, trade_id = cols
    n = len(symbol)
    n_exchange, n_side, n_tid = n - exchange.null_count, n - side.null_count, n - trade_id.null_count
    n_tid_text = n_tid if trade_id.type == pa.string() else 0
    p, s = price.to_numpy(), size.to_numpy()
    stamps_ms = stamp_ms.to_numpy()
    ok = (
        np.isfinite(p)
        & (p > 0)
        & (p <= MAX_PRICE)
        & np.isfinite(s)
        & (s >= 0)
        & (s <= MAX_SIZE)
        # compared in ms, before scaling, so a huge value cannot wrap around into range
        & (stamps_ms >= MIN_TIMESTAMP_US // 1000)
        & (stamps_ms <= ceilings_us(msgs.timestamps) // 1000)
    )
    if may_hold_control and not all(
        pc.all(pc.string_is_ascii(col)).as_py() is not False for col in (symbol, exchange, side)
    ):
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
    if n_tid_text:
        trade_id = pc.ascii_trim_whitespace(trade_id)
        lengths = pc.binary_length(trade_id)
        if pc.min(lengths).as_py() == 0 or pc.max(lengths).as_py() > MAX_TRADE_ID_CHARS:
            return None  # blank (the careful path writes null) or too long (a reject)
        if may_hold_control and pc.any(pc.match_substring_regex(trade_id, _ASCII_CONTROL)).as_py():
            return None
    trade_id = trade_id.cast(pa.string())  # an integer id as the careful path spells it: str(int)

    batch = pa.RecordBatch.from_arrays(
        [
            symbol,
            price,
            size,
            stamp_ms,
            pa.array(stamps_ms * 1000, pa.timestamp("us", tz="UTC")),
            exchange,
            side,
            trade_id,
            kafka_times_us(msgs.timestamps),
            pa.array(np.zeros(n, dtype=bool)),
            int_column(msgs.partitions, np.int32),
            int_column(msgs.offsets, np.int64),
            pa.array(np.zeros(n, dtype=np.int32)),
        ],
        schema=TICKS,
    )
    return Decoded(batch)


def int_column(values: list[int], dtype) -> pa.Array:
    """A Kafka partition or offset column; a batch is mostly one partition."""
    n = len(values)
    if n and values.count(values[0]) == n:
        return pa.array(np.full(n, values[0], dtype))
    return pa.array(np.fromiter(values, dtype, n))
