"""Finnhub websocket trades: {"type": "trade", "data": [{"s", "p", "v", "t", "c"}, ...]}.

s symbol as subscribed (a stock ticker, or EXCHANGE:PAIR for crypto, kept whole), p price,
v volume, t time in ms, c trade conditions (not used). No side and no venue: exchange is FINNHUB.
Pings ({"type": "ping"}), news and error messages are non-trade events.
"""

from __future__ import annotations

from typing import Any

from finpulse.feeds.fields import kind, not_this, number, symbol, trade_time
from finpulse.feeds.model import Feed, Invalid, Parsed, Trade, frame

NAME = "finnhub"
EXCHANGE = "FINNHUB"
# The message types besides "trade", each with the key it always carries (None: nothing else).
_OTHER = {"ping": None, "news": "data", "error": "msg"}


def _trade(obj: Any) -> Trade:
    if not isinstance(obj, dict):
        raise Invalid(f"a trade must be an object, got {kind(obj)}", NAME)
    return Trade(
        symbol(obj, "s", NAME),
        number(obj, "p", NAME),
        number(obj, "v", NAME),
        trade_time(obj, "t", "auto", NAME),
        None,
        None,
    )


def parse(obj: Any) -> Parsed:
    if not matches(obj):
        raise not_this(NAME, obj, 'an object with type "trade" and a data array, or a ping')
    if obj["type"] != "trade":
        return Parsed(NAME, None, EXCHANGE, f"finnhub {obj['type']} message")
    data = obj.get("data")
    if not isinstance(data, list):
        raise Invalid(f"finnhub trade message: data is {kind(data)}, not an array", NAME)
    return frame(FEED, data, _trade, "finnhub trade message")


def matches(obj: Any) -> bool:
    if not isinstance(obj, dict) or "channel" in obj or "product_id" in obj:
        return False
    kind_ = obj.get("type")
    if kind_ == "trade":
        return "data" in obj
    if isinstance(kind_, str) and kind_ in _OTHER:
        key = _OTHER[kind_]
        return len(obj) == 1 if key is None else key in obj
    return False


FEED = Feed(NAME, EXCHANGE, matches, parse)
