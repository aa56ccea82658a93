"""Polygon.io (now Massive) websocket clusters: stock trades "ev": "T" and crypto trades
"ev": "XT", in arrays of events.

Stock trade keys: sym symbol, p price, s size (whole shares) or ds (size with fractional shares,
decimal text; preferred when present), t SIP time in ms, x exchange id (kept as text), i trade id
(text, unique per exchange and ticker; q, the sequence number, is not consecutive per symbol).
Crypto trade keys: pair, p, s, t (ms), x exchange id, i trade id. No side is published.
Status events ("ev": "status": connected, auth_success, ...), quotes, aggregates and the rest are
non-trade events.
"""

from __future__ import annotations

from typing import Any

from finpulse.feeds.fields import keys_seen, not_this, number, symbol, trade_ident, trade_time, venue
from finpulse.feeds.model import Feed, Invalid, Parsed, Skip, Trade, frame

NAME = "polygon"
EXCHANGE = "POLYGON"
_SYMBOL_KEY = {"T": "sym", "XT": "pair"}  # the event types that are trades, and where each keeps its symbol


def _element(obj: Any) -> Trade | Skip:
    if not isinstance(obj, dict) or not isinstance(obj.get("ev"), str):
        raise Invalid(f"a polygon event needs a type ev, got {keys_seen(obj)}", NAME)
    key = _SYMBOL_KEY.get(obj["ev"])
    if key is None:
        return Skip(f"polygon {obj['ev']} event")
    size = number(obj, "ds" if obj.get("ds") is not None else "s", NAME)
    return Trade(
        symbol(obj, key, NAME),
        number(obj, "p", NAME),
        size,
        trade_time(obj, "t", "auto", NAME),
        venue(obj, "x", NAME),
        None,
        trade_ident(obj, "i", NAME),
    )


def parse(obj: Any) -> Parsed:
    if not matches(obj):
        raise not_this(NAME, obj, 'an array of events with a type "ev"')
    if isinstance(obj, dict):
        obj = [obj]  # one event re-published on its own
    return frame(FEED, obj, _element, "polygon frame")


def matches(obj: Any) -> bool:
    if isinstance(obj, list) and obj:
        obj = obj[0]
    return isinstance(obj, dict) and isinstance(obj.get("ev"), str)


FEED = Feed(NAME, EXCHANGE, matches, parse)
