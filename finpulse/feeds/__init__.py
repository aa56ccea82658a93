"""Feed shapes: one JSON value -> trades, a non-trade event, or `Invalid` with the reason.

Each shape is a `Feed` (one module per source) with a cheap `matches` test and a `parse`;
`parse(obj)` picks the one shape that matches unless one is forced (`--format NAME`). The
careful path of finpulse/decode calls this per message; its fast path handles batches of
plain canonical ticks. docs/feeds.md lists the shapes and the fields each one reads.
"""

from __future__ import annotations

from typing import Any

from finpulse.feeds import alpaca, binance, canonical, coinbase, coinbase_advanced, finnhub, kraken, polygon
from finpulse.feeds.fields import epoch_us, kind, number, quote, text
from finpulse.feeds.model import Feed, Invalid, Parsed, Skip, Trade

__all__ = [
    "CANONICAL",
    "FEEDS",
    "Feed",
    "Invalid",
    "Parsed",
    "Skip",
    "Trade",
    "detect",
    "epoch_us",
    "get",
    "names",
    "number",
    "parse",
    "quote",
    "text",
]

CANONICAL = canonical.FEED

# Detection order: the shapes' tests do not overlap, canonical (the common case) goes first.
FEEDS: list[Feed] = [
    CANONICAL,
    binance.FEED,
    coinbase.FEED,
    coinbase_advanced.FEED,
    alpaca.FEED,
    polygon.FEED,
    finnhub.FEED,
    kraken.FEED,
]
_BY_NAME = {f.name: f for f in FEEDS}


def get(name: str) -> Feed:
    return _BY_NAME[name]


def names() -> list[str]:
    return [f.name for f in FEEDS]


def detect(obj: Any, extra: tuple[Feed, ...] = ()) -> Feed | None:
    """The shape a decoded message has, or None. `extra`: shapes tried after the known ones (a
    field mapping, feeds/mapped.py)."""
    for feed in (*FEEDS, *extra) if extra else FEEDS:
        if feed.matches(obj):
            return feed
    return None


def parse(obj: Any, forced: Feed | None = None, extra: tuple[Feed, ...] = ()) -> Parsed:
    """Trades of one decoded JSON value. Raises Invalid when the message is unusable as a whole."""
    feed = forced or detect(obj, extra)
    if feed is None:
        raise Invalid(_unrecognised(obj))
    return feed.parse(obj)


def _unrecognised(obj: Any) -> str:
    if isinstance(obj, dict):
        if not obj:
            return "empty JSON object"
        keys = ", ".join(quote(k) for k in sorted(obj)[:8])
        return f"no known feed shape has these keys: {keys}"
    if isinstance(obj, list):
        if not obj:
            return "empty JSON array"
        first = obj[0]
        seen = ("keys " + ", ".join(quote(k) for k in sorted(first)[:8])) if isinstance(first, dict) else kind(first)
        return f"JSON array of no known feed shape (first element: {seen})"
    return f"JSON is {kind(obj)}, not a trade object"
