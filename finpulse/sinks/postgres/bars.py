"""Live 1-minute OHLCV bars in prices_1m, exactly once: the rows a write adds are summed into their
minute's bar in the same transaction (tables.py), so a replay, a retry or a re-read after a kill
never counts a trade twice, and a late tick lands in its own minute.

`summarise` (no database: Arrow only) turns tick rows into one partial bar per (symbol, exchange,
minute); `UPSERT` merges partial bars into what the table holds: open and close follow trade
time, ties broken by lineage (schema.LAST_ORDER), as `finpulse show` orders a symbol's last tick.
"""

from __future__ import annotations

import datetime as dt

import numpy as np
import psycopg
import pyarrow as pa
import pyarrow.compute as pc

from finpulse.sinks.postgres.tables import BARS_TABLE, PRICES_TABLE

MINUTE_US = 60_000_000
_GROUP = ["symbol", "exchange", "minute"]
_ORDER = ["trade_time", "kafka_partition", "kafka_offset", "tick_index"]

# (column, Arrow aggregation) of a partial bar, in the order UPSERT's unnest takes them
_AGGREGATES = [
    ("price", "first"),
    ("price", "max"),
    ("price", "min"),
    ("price", "last"),
    ("size", "sum"),
    ("price", "count"),
    ("notional", "sum"),
    ("trade_time", "first"),
    ("trade_time", "last"),
    ("kafka_partition", "first"),
    ("kafka_offset", "first"),
    ("tick_index", "first"),
    ("kafka_partition", "last"),
    ("kafka_offset", "last"),
    ("tick_index", "last"),
]


def summarise(ticks: pa.Table) -> pa.Table:
    """One partial bar per (symbol, exchange, minute) of `ticks` (schema.TICKS rows)."""
    times = ticks.column("trade_time").cast(pa.int64()).to_numpy()
    minute = pa.array((times // MINUTE_US) * MINUTE_US, pa.timestamp("us", tz="UTC"))
    price, size = ticks.column("price"), ticks.column("size")
    rows = pa.table(
        {
            "symbol": ticks.column("symbol"),
            "exchange": ticks.column("exchange"),
            "minute": minute,
            "price": price,
            "size": size,
            "notional": pc.multiply(price, size),
            **{c: ticks.column(c) for c in _ORDER},
        }
    ).sort_by([(c, "ascending") for c in _GROUP + _ORDER])
    # first/last on sorted rows need one thread to keep the order
    return rows.group_by(_GROUP, use_threads=False).aggregate(_AGGREGATES)


_FIRST = "(EXCLUDED.first_trade_time, EXCLUDED.first_partition, EXCLUDED.first_offset, EXCLUDED.first_tick) < (b.first_trade_time, b.first_partition, b.first_offset, b.first_tick)"
_LAST = "(EXCLUDED.last_trade_time, EXCLUDED.last_partition, EXCLUDED.last_offset, EXCLUDED.last_tick) > (b.last_trade_time, b.last_partition, b.last_offset, b.last_tick)"
_COLUMNS = (
    "symbol, exchange, minute, open, high, low, close, volume, trades, notional, first_trade_time, "
    "last_trade_time, first_partition, first_offset, first_tick, last_partition, last_offset, last_tick"
)
UPSERT = f"""INSERT INTO {BARS_TABLE} AS b ({_COLUMNS}, vwap)
SELECT t.*, t.notional / NULLIF(t.volume, 0) FROM unnest(
    %s::text[], %s::text[], %s::timestamptz[], %s::float8[], %s::float8[], %s::float8[], %s::float8[],
    %s::float8[], %s::bigint[], %s::float8[], %s::timestamptz[], %s::timestamptz[], %s::int[], %s::bigint[],
    %s::int[], %s::int[], %s::bigint[], %s::int[]
) AS t({_COLUMNS})
ON CONFLICT (symbol, exchange, minute) DO UPDATE SET
    open = CASE WHEN {_FIRST} THEN EXCLUDED.open ELSE b.open END,
    first_trade_time = CASE WHEN {_FIRST} THEN EXCLUDED.first_trade_time ELSE b.first_trade_time END,
    first_partition = CASE WHEN {_FIRST} THEN EXCLUDED.first_partition ELSE b.first_partition END,
    first_offset = CASE WHEN {_FIRST} THEN EXCLUDED.first_offset ELSE b.first_offset END,
    first_tick = CASE WHEN {_FIRST} THEN EXCLUDED.first_tick ELSE b.first_tick END,
    close = CASE WHEN {_LAST} THEN EXCLUDED.close ELSE b.close END,
    last_trade_time = CASE WHEN {_LAST} THEN EXCLUDED.last_trade_time ELSE b.last_trade_time END,
    last_partition = CASE WHEN {_LAST} THEN EXCLUDED.last_partition ELSE b.last_partition END,
    last_offset = CASE WHEN {_LAST} THEN EXCLUDED.last_offset ELSE b.last_offset END,
    last_tick = CASE WHEN {_LAST} THEN EXCLUDED.last_tick ELSE b.last_tick END,
    high = GREATEST(b.high, EXCLUDED.high),
    low = LEAST(b.low, EXCLUDED.low),
    volume = b.volume + EXCLUDED.volume,
    trades = b.trades + EXCLUDED.trades,
    notional = b.notional + EXCLUDED.notional,
    vwap = (b.notional + EXCLUDED.notional) / NULLIF(b.volume + EXCLUDED.volume, 0)"""


def update(cur: psycopg.Cursor, ticks: pa.Table) -> None:
    """Sum the rows `ticks` (just written, in this transaction) into their bars."""
    if not ticks.num_rows:
        return
    bars = summarise(ticks)
    cur.execute(UPSERT, [_pylist(bars.column(i)) for i in range(bars.num_columns)])


def _pylist(column: pa.ChunkedArray) -> list:
    if pa.types.is_timestamp(column.type):
        return column.to_pylist()  # datetimes, for timestamptz[]
    if pa.types.is_integer(column.type) or pa.types.is_floating(column.type):
        return np.asarray(column).tolist()
    return column.to_pylist()


# Bars computed afresh from the raw rows of their minutes, replacing what the table holds: a replay
# that put rows back (they may have been counted once already, before someone deleted them) and
# `verify --repair` rebuild the minutes they touch this way. %(s)s, %(e)s, %(m)s: arrays of the
# (symbol, exchange, minute) to rebuild; %(lo)s, %(hi)s: the trade times they span (for the index).
_FIRST_ORDER = "trade_time, kafka_partition, kafka_offset, tick_index"
_LAST_ORDER = "trade_time DESC, kafka_partition DESC, kafka_offset DESC, tick_index DESC"
REBUILD = f"""INSERT INTO {BARS_TABLE} AS b ({_COLUMNS}, vwap)
SELECT r.symbol, r.exchange, date_trunc('minute', r.trade_time) AS minute,
    (array_agg(r.price ORDER BY {_FIRST_ORDER}))[1], max(r.price), min(r.price),
    (array_agg(r.price ORDER BY {_LAST_ORDER}))[1], sum(r.size), count(*), sum(r.price * r.size),
    min(r.trade_time), max(r.trade_time),
    (array_agg(r.kafka_partition ORDER BY {_FIRST_ORDER}))[1], (array_agg(r.kafka_offset ORDER BY {_FIRST_ORDER}))[1],
    (array_agg(r.tick_index ORDER BY {_FIRST_ORDER}))[1],
    (array_agg(r.kafka_partition ORDER BY {_LAST_ORDER}))[1], (array_agg(r.kafka_offset ORDER BY {_LAST_ORDER}))[1],
    (array_agg(r.tick_index ORDER BY {_LAST_ORDER}))[1],
    sum(r.price * r.size) / NULLIF(sum(r.size), 0)
FROM {PRICES_TABLE} r
JOIN unnest(%(s)s::text[], %(e)s::text[], %(m)s::timestamptz[]) AS t(symbol, exchange, minute)
    ON r.symbol = t.symbol AND r.exchange IS NOT DISTINCT FROM t.exchange AND date_trunc('minute', r.trade_time) = t.minute
WHERE r.trade_time >= %(lo)s AND r.trade_time < %(hi)s
GROUP BY 1, 2, 3
ON CONFLICT (symbol, exchange, minute) DO UPDATE SET
    open = EXCLUDED.open, high = EXCLUDED.high, low = EXCLUDED.low, close = EXCLUDED.close,
    volume = EXCLUDED.volume, trades = EXCLUDED.trades, notional = EXCLUDED.notional, vwap = EXCLUDED.vwap,
    first_trade_time = EXCLUDED.first_trade_time, last_trade_time = EXCLUDED.last_trade_time,
    first_partition = EXCLUDED.first_partition, first_offset = EXCLUDED.first_offset,
    first_tick = EXCLUDED.first_tick, last_partition = EXCLUDED.last_partition,
    last_offset = EXCLUDED.last_offset, last_tick = EXCLUDED.last_tick"""


def minutes_of(ticks: pa.Table) -> pa.Table:
    """The (symbol, exchange, minute) that tick rows fall in, each once."""
    return summarise(ticks).select(_GROUP)


def rebuild(cur: psycopg.Cursor, minutes: pa.Table) -> int:
    """Replace the bars of `minutes` (symbol, exchange, minute columns) by the same bars computed from
    the raw rows; how many bars were written. A minute with no raw row left keeps its bar."""
    if not minutes.num_rows:
        return 0
    times = minutes.column("minute")
    cur.execute(
        REBUILD,
        {
            "s": minutes.column("symbol").to_pylist(),
            "e": minutes.column("exchange").to_pylist(),
            "m": times.to_pylist(),
            "lo": pc.min(times).as_py(),
            "hi": pc.max(times).as_py() + _ONE_MINUTE,
        },
    )
    return cur.rowcount


_ONE_MINUTE = dt.timedelta(minutes=1)


# The bars' reference: the same bars computed by SQL from the raw ticks, minute by minute.
REFERENCE = f"""SELECT symbol, exchange, date_trunc('minute', trade_time) AS minute,
    (array_agg(price ORDER BY trade_time, kafka_partition, kafka_offset, tick_index))[1] AS open,
    max(price) AS high, min(price) AS low,
    (array_agg(price ORDER BY trade_time DESC, kafka_partition DESC, kafka_offset DESC, tick_index DESC))[1] AS close,
    sum(size) AS volume, count(*) AS trades, sum(price * size) / NULLIF(sum(size), 0) AS vwap,
    min(trade_time) AS first_trade_time, max(trade_time) AS last_trade_time
FROM {PRICES_TABLE} WHERE trade_time >= %(since)s GROUP BY 1, 2, 3"""

# Bars that differ from the reference (sums compared to 1e-9 relative: their order of addition differs)
DIFFERING_MINUTES = f"""WITH ref AS ({REFERENCE})
SELECT coalesce(ref.symbol, b.symbol), CASE WHEN ref.symbol IS NULL THEN b.exchange ELSE ref.exchange END,
    coalesce(ref.minute, b.minute) FROM ref FULL JOIN (SELECT * FROM {BARS_TABLE} WHERE minute >= %(since)s) b
    ON b.symbol = ref.symbol AND b.exchange IS NOT DISTINCT FROM ref.exchange AND b.minute = ref.minute
WHERE ref.symbol IS NULL OR b.symbol IS NULL OR b.open <> ref.open OR b.close <> ref.close
    OR b.high <> ref.high OR b.low <> ref.low OR b.trades <> ref.trades
    OR b.first_trade_time <> ref.first_trade_time OR b.last_trade_time <> ref.last_trade_time
    OR abs(b.volume - ref.volume) > 1e-9 * greatest(abs(ref.volume), 1)
    OR abs(coalesce(b.vwap, 0) - coalesce(ref.vwap, 0)) > 1e-9 * greatest(abs(coalesce(ref.vwap, 0)), 1)"""
DIFFERING = f"SELECT count(*) FROM ({DIFFERING_MINUTES}) d"
