"""Alpaca market data streams (stocks v2 and crypto v1beta3): every frame is an array of
messages told apart by "T"; trades are "T": "t".

Trade keys: S symbol, p price, s size (JSON numbers), t time (RFC-3339, up to ns digits),
x venue code (stocks only, kept as text), tks taker side "B" / "S" (crypto only), i trade id (an
integer, unique per venue, not consecutive per symbol).
Control messages (success, subscription, error) and quotes, bars, statuses, corrections,
cancels, LULD bands, order books and news are non-trade events.
"""

from __future__ import annotations

from typing import Any

from finpulse.feeds.fields import keys_seen, not_this, number, side_word, symbol, trade_ident, trade_time, venue
from finpulse.feeds.model import Feed, Invalid, Parsed, Skip, Trade, frame

NAME = "alpaca"
EXCHANGE = "ALPACA"
# Every "T" the stock and crypto streams document; unknown ones do not identify Alpaca.
_TYPES = frozenset({"t", "q", "b", "d", "u", "s", "c", "x", "l", "o", "n", "i", "success", "subscription", "error"})


def _element(obj: Any) -> Trade | Skip:
    if not isinstance(obj, dict) or not isinstance(obj.get("T"), str):
        raise Invalid(f"an alpaca message needs a type T, got {keys_seen(obj)}", NAME)
    if obj["T"] != "t":
        return Skip(f"alpaca {obj['T']} message")
    return Trade(
        symbol(obj, "S", NAME),
        number(obj, "p", NAME),
        number(obj, "s", NAME),
        trade_time(obj, "t", "auto", NAME),
        venue(obj, "x", NAME),
        side_word(obj.get("tks")),
        trade_ident(obj, "i", NAME),
    )


def parse(obj: Any) -> Parsed:
    if not matches(obj):
        raise not_this(NAME, obj, 'an array of messages with a known type "T"')
    if isinstance(obj, dict):
        obj = [obj]  # one message re-published on its own
    return frame(FEED, obj, _element, "alpaca frame")


def _is_element(obj: Any) -> bool:
    return isinstance(obj, dict) and isinstance(obj.get("T"), str) and obj["T"] in _TYPES


def matches(obj: Any) -> bool:
    if isinstance(obj, list) and obj:
        obj = obj[0]
    return _is_element(obj)


FEED = Feed(NAME, EXCHANGE, matches, parse)
