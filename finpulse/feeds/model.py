"""What a feed parser returns: trades, non-trade markers, reasons, and the Feed record itself."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple


class Invalid(Exception):
    """What is wrong with a message or with one trade of it. Returned for a single bad trade of a
    multi-trade frame (the others still land), raised when the whole message is unusable."""

    def __init__(self, reason: str, feed: str = "unknown"):
        super().__init__(reason)
        self.feed = feed

    def __reduce__(self):
        return (type(self), (str(self), self.feed))


class Trade(NamedTuple):  # a tuple: built per trade, and a frozen dataclass costs twice as much
    symbol: str
    price: float
    size: float
    ts_us: int | None  # UTC epoch microseconds of the trade; None: the feed gave no time
    exchange: str | None = None
    side: str | None = None  # the taker's side, 'buy' / 'sell', when the feed says so
    trade_id: str | None = None  # the venue's id of the trade, as text; None: the feed sends none


@dataclass(frozen=True, slots=True)
class Skip:
    """A non-trade element inside a frame that also carries trades (an Alpaca quote beside a
    trade, say). It keeps its position, so later trades keep theirs, and yields no row."""

    note: str


@dataclass(frozen=True, slots=True)
class Parsed:
    feed: str
    trades: list[Trade | Invalid | Skip] | None  # None: a non-trade event, skipped and counted
    default_exchange: str | None = None
    note: str = ""


@dataclass(frozen=True)
class Feed:
    name: str
    default_exchange: str | None
    matches: Callable[[Any], bool]  # cheap: a few key look-ups, no parsing
    parse: Callable[[Any], Parsed]  # raises Invalid when the value is not this feed's shape at all


def frame(feed: Feed, items: list, one: Callable[[Any], Trade | Skip], what: str) -> Parsed:
    """Parse each element of a multi-trade frame; a bad element becomes Invalid in its slot.

    A frame without a single trade in it is one non-trade event (`what` names it in the note)."""
    out: list[Trade | Invalid | Skip] = []
    for item in items:
        try:
            out.append(one(item))
        except Invalid as exc:
            out.append(exc)
    if all(type(x) is Skip for x in out):
        notes = sorted({x.note for x in out if isinstance(x, Skip)})
        return Parsed(feed.name, None, feed.default_exchange, "; ".join(notes) if notes else f"{what} with no trades")
    return Parsed(feed.name, out, feed.default_exchange)
