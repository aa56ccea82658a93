"""Binance spot market streams: `trade` and `aggTrade` events, raw or in the combined-stream
wrapper {"stream": "btcusdt@trade", "data": {...}}.

Keys: e event type, E event time (not used: the frame's time), s symbol, p price and q quantity
(decimal text), T trade time, m "buyer is the maker", t trade id (aggTrade: a, the aggregate trade
id, kept as "a<id>" so the two numberings never meet). Both are consecutive per symbol. Times are
ms, or µs on connections opened with timeUnit=MICROSECOND, so the unit is read off the magnitude.
"""

from __future__ import annotations

from typing import Any

from finpulse.feeds.fields import keys_seen, not_this, number, symbol, trade_ident, trade_time
from finpulse.feeds.model import Feed, Invalid, Parsed, Trade, frame

NAME = "binance"
EXCHANGE = "BINANCE"
TRADE_EVENTS = frozenset({"trade", "aggTrade"})
# Replies to SUBSCRIBE / LIST_SUBSCRIPTIONS requests: {"result": null, "id": 1}, or an error.
_REPLY_KEYS = frozenset({"result", "id", "error"})
# The bookTicker stream is the one market stream whose events carry no "e".
_BOOK_TICKER_KEYS = frozenset({"u", "s", "b", "B", "a", "A"})


def _trade(event: dict) -> Trade:
    maker = event.get("m")
    # The buyer resting on the book means the aggressor sold; a non-boolean says nothing.
    side = ("sell" if maker else "buy") if isinstance(maker, bool) else None
    return Trade(
        symbol(event, "s", NAME),
        number(event, "p", NAME),
        number(event, "q", NAME),
        trade_time(event, "T", "auto", NAME),
        None,
        side,
        trade_ident(event, "a", NAME, "a") if event.get("e") == "aggTrade" else trade_ident(event, "t", NAME),
    )


def _event(event: Any, where: str) -> Parsed:
    if not isinstance(event, dict) or not isinstance(event.get("e"), str):  # inside a wrapper
        if isinstance(event, dict) and _BOOK_TICKER_KEYS <= event.keys():
            return Parsed(NAME, None, EXCHANGE, "binance bookTicker event")
        raise Invalid(f"not a binance event{where}: {keys_seen(event)} (no event type 'e')", NAME)
    kind = event["e"]
    if kind not in TRADE_EVENTS:
        return Parsed(NAME, None, EXCHANGE, f"binance {kind} event")
    return frame(FEED, [event], _trade, "binance trade event")


def parse(obj: Any) -> Parsed:
    if not matches(obj):
        raise not_this(NAME, obj, "an event with e and E, a combined-stream wrapper or a request reply")
    if isinstance(obj, dict):
        if "stream" in obj and "data" in obj:
            data = obj["data"]
            if isinstance(data, list):  # all-market streams (!ticker@arr and the like)
                return Parsed(NAME, None, EXCHANGE, f"binance {obj['stream']} stream")
            return _event(data, f" in stream {str(obj['stream'])[:40]!r}")
        if "id" in obj and obj.keys() <= _REPLY_KEYS:
            return Parsed(NAME, None, EXCHANGE, "binance request reply")
    return _event(obj, "")


def matches(obj: Any) -> bool:
    if not isinstance(obj, dict):
        return False
    if isinstance(obj.get("e"), str):
        return "E" in obj
    if "stream" in obj:
        return isinstance(obj["stream"], str) and isinstance(obj.get("data"), (dict, list))
    return ("id" in obj and obj.keys() <= _REPLY_KEYS and len(obj) == 2) or obj.keys() == _BOOK_TICKER_KEYS


FEED = Feed(NAME, EXCHANGE, matches, parse)
