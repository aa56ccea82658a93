"""Kraken spot websocket v2: the `trade` channel.

{"channel": "trade", "type": "snapshot" | "update", "data": [{"symbol", "side", "price", "qty",
"ord_type", "trade_id", "timestamp"}, ...]}: symbol as BTC/USD, side is the taker's, price and
qty are JSON numbers, timestamp is RFC-3339 with µs digits, trade_id an integer, consecutive per pair. A snapshot re-sends recent trades
when a subscription starts.
Other channels (book, ticker, ohlc, instrument, status, heartbeat, executions, balances, level3)
and method responses ({"method": "subscribe", "success": true, ...}, pong) are non-trade events.
"""

from __future__ import annotations

from typing import Any

from finpulse.feeds.fields import kind, not_this, number, side_word, symbol, trade_ident, trade_time
from finpulse.feeds.model import Feed, Invalid, Parsed, Trade, frame

NAME = "kraken"
EXCHANGE = "KRAKEN"
TRADE_CHANNEL = "trade"
# Keys that mark a reply to a request: every v2 method response carries at least one of them.
_REPLY_KEYS = ("success", "result", "error", "time_in")


def _trade(obj: Any) -> Trade:
    if not isinstance(obj, dict):
        raise Invalid(f"a trade must be an object, got {kind(obj)}", NAME)
    return Trade(
        symbol(obj, "symbol", NAME),
        number(obj, "price", NAME),
        number(obj, "qty", NAME),
        trade_time(obj, "timestamp", "auto", NAME),
        None,
        side_word(obj.get("side")),
        trade_ident(obj, "trade_id", NAME),
    )


def parse(obj: Any) -> Parsed:
    if not matches(obj):
        raise not_this(NAME, obj, "a v2 object with channel and data, or a method response")
    if not isinstance(obj.get("channel"), str):
        return Parsed(NAME, None, EXCHANGE, f"kraken {obj['method']} response")
    if obj["channel"] != TRADE_CHANNEL:
        return Parsed(NAME, None, EXCHANGE, f"kraken {obj['channel']} message")
    data = obj.get("data")
    if not isinstance(data, list):
        raise Invalid(f"kraken trade message: data is {kind(data)}, not an array", NAME)
    return frame(FEED, data, _trade, "kraken trade message")


def matches(obj: Any) -> bool:
    if not isinstance(obj, dict):
        return False
    if isinstance(obj.get("channel"), str):
        return "events" not in obj and ("data" in obj or obj["channel"] in ("heartbeat", "status"))
    return isinstance(obj.get("method"), str) and any(k in obj for k in _REPLY_KEYS)


FEED = Feed(NAME, EXCHANGE, matches, parse)
