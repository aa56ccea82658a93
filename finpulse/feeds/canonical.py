"""The canonical FinPulse tick: {"symbol", "price", "size", "timestamp_ms"?, "exchange"?, "side"?,
"trade_id"?}, alone or as an array of ticks in one message. `trade_id` is an integer or text.

finpulse/decode (fast.py) decodes whole batches of single canonical ticks column by column; this per-message
reader is its reference (the careful path must give the same rows) and handles the rest.
"""

from __future__ import annotations

from typing import Any

from finpulse.feeds.fields import keys_seen, kind, number, side_word, symbol, text, trade_ident, trade_time
from finpulse.feeds.model import Feed, Invalid, Parsed, Trade, frame

NAME = "canonical"


def _trade(obj: Any) -> Trade:
    if not isinstance(obj, dict):
        raise Invalid(f"a trade must be an object, got {kind(obj)}", NAME)
    sym = symbol(obj, "symbol", NAME)
    price = number(obj, "price", NAME)
    size = number(obj, "size", NAME)
    ts = trade_time(obj, "timestamp_ms", "ms", NAME)  # absent or null: Kafka's record time stands in
    exchange = text(obj, "exchange", NAME, required=False)
    return Trade(
        sym,
        price,
        size,
        ts,
        exchange.upper() if exchange else None,
        side_word(obj.get("side")),
        trade_ident(obj, "trade_id", NAME),
    )


def parse(obj: Any) -> Parsed:
    if isinstance(obj, list):
        if not obj:
            raise Invalid("not a canonical message: an empty array", NAME)
        items = obj
    elif isinstance(obj, dict):
        items = [obj]
    else:
        raise Invalid(f"not a canonical message: {keys_seen(obj)}", NAME)
    return frame(FEED, items, _trade, "canonical frame")


def matches(obj: Any) -> bool:
    if isinstance(obj, list) and obj:  # a frame of several canonical ticks
        obj = obj[0]
    # A tick may lack its time (Kafka's record time stands in), so the price marks it as well.
    return isinstance(obj, dict) and "symbol" in obj and ("timestamp_ms" in obj or "price" in obj)


FEED = Feed(NAME, None, matches, parse)
