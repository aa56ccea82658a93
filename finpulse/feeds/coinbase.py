"""Coinbase Exchange websocket feed: `match` and `last_match` messages (the matches channel;
`last_match` is the latest match, re-sent when a subscription starts).

Keys: type, product_id, price and size (decimal text), time (ISO-8601, µs digits), side, trade_id
(an integer, consecutive per product). `side`
is the MAKER's side (a sell maker means the taker bought: an up-tick), so the row's side, which
is always the taker's, is the opposite.
"""

from __future__ import annotations

from typing import Any

from finpulse.feeds.fields import OPPOSITE, not_this, number, side_word, symbol, trade_ident, trade_time
from finpulse.feeds.model import Feed, Parsed, Trade, frame

NAME = "coinbase"
EXCHANGE = "COINBASE"
TRADE_TYPES = frozenset({"match", "last_match"})
# Messages of the feed that carry no product_id, and the key that tells each apart.
_CONTROL = {"subscriptions": "channels", "error": "message", "status": "products"}


def _trade(msg: dict) -> Trade:
    return Trade(
        symbol(msg, "product_id", NAME),
        number(msg, "price", NAME),
        number(msg, "size", NAME),
        trade_time(msg, "time", "auto", NAME),
        None,
        OPPOSITE[side_word(msg.get("side"))],
        trade_ident(msg, "trade_id", NAME),
    )


def parse(obj: Any) -> Parsed:
    if not matches(obj):
        raise not_this(NAME, obj, "an object with type and product_id")
    kind = obj["type"]
    if kind not in TRADE_TYPES:
        return Parsed(NAME, None, EXCHANGE, f"coinbase {kind} message")
    return frame(FEED, [obj], _trade, "coinbase trade message")


def matches(obj: Any) -> bool:
    if not isinstance(obj, dict) or "channel" in obj:  # a channel key is Advanced Trade or Kraken
        return False
    kind = obj.get("type")
    if not isinstance(kind, str):
        return False
    if "product_id" in obj:
        return True
    key = _CONTROL.get(kind)
    return key is not None and key in obj


FEED = Feed(NAME, EXCHANGE, matches, parse)
