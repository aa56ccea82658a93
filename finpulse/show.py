"""What landed: row counts and a per-symbol summary from each sink, side by side.

"Last" is the newest tick of a symbol in one total order, the same in both sinks: trade time,
then (kafka_partition, kafka_offset, tick_index), all descending (schema.LAST_ORDER). Ticks
sharing a trade time (a millisecond feed) would otherwise give each sink its own last price.
Each sink computes its own summary (Sink.summary); this module lists them and shapes the JSON.
"""

from __future__ import annotations

from datetime import UTC, datetime

from finpulse import sinks
from finpulse.config import Settings
from finpulse.schema import LAST_ORDER
from finpulse.sinks import Summary

SUMMARY_COLUMNS = ("symbol", "ticks", "low", "high", "last_price", "last_time")
BAR_COLUMNS = (
    "symbol",
    "exchange",
    "minute",
    "open",
    "high",
    "low",
    "close",
    "volume",
    "trades",
    "vwap",
    "first_trade_time",
    "last_trade_time",
)
# Symbols in the `finpulse show` table unless --limit says otherwise; a screenful.
TABLE_LIMIT = 10
__all__ = ["LAST_ORDER", "SUMMARY_COLUMNS", "TABLE_LIMIT", "Landed", "as_json", "landed"]

Landed = Summary  # what one sink holds, as `show` lists it


def landed(settings: Settings, limit: int | None = TABLE_LIMIT, bars_of: str | None = None) -> list[Landed]:
    """Each kind of sink's summary (finpulse.sinks.KINDS): `limit` busiest symbols, None for all;
    a sink that keeps bars adds `bars_of`'s latest `limit` (None: each symbol's latest bar)."""
    out = []
    for sink in sinks.open_sinks(settings, every=True):
        try:
            out.append(sink.summary(limit, bars_of))
        finally:
            sink.close()
    return out


def as_json(landed: list[Landed]) -> dict:
    """`finpulse show --json`: {sink: {"rows", "rejected" (PostgreSQL only), "symbols": [...]}}, each symbol
    an object keyed by SUMMARY_COLUMNS, last_time in ISO-8601 UTC."""
    doc: dict[str, dict] = {}
    for item in landed:
        entry: dict[str, object] = {"rows": item.rows}
        if item.rejected is not None:
            entry["rejected"] = item.rejected
        if item.duplicates is not None:
            entry["duplicates"] = item.duplicates
        if item.bars is not None:
            entry["bars"] = [
                {c: (_utc(v) if isinstance(v, datetime) else v) for c, v in zip(BAR_COLUMNS, bar)} for bar in item.bars
            ]
        entry["symbols"] = [
            dict(zip(SUMMARY_COLUMNS, (sym, n, low, high, last, _utc(when))))
            for sym, n, low, high, last, when in item.symbols
        ]
        doc[item.sink] = entry
    return doc


def _utc(when: datetime) -> str:
    return when.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")
