"""Feed shapes: one JSON value -> trades, a non-trade event, or `Invalid` with the reason.

Each shape is a `Feed` with a cheap `matches` test and a `parse`; `parse(obj)` tries them in
order unless one is forced (`--format NAME`). The careful path of normalize.py calls this per
message; the fast path there handles the canonical shape for whole batches.
"""

from __future__ import annotations

import datetime as dt
import math
import re
from dataclasses import dataclass
from typing import Any, Callable


class Invalid(Exception):
    """What is wrong with a message or with one trade of it. Returned for a single bad trade of a
    multi-trade frame (the others still land), raised when the whole message is unusable."""

    def __init__(self, reason: str, feed: str = "unknown"):
        super().__init__(reason)
        self.feed = feed

    def __reduce__(self):
        return (type(self), (str(self), self.feed))


@dataclass(frozen=True, slots=True)
class Trade:
    symbol: str
    price: float
    size: float
    ts_us: int | None  # UTC epoch microseconds of the trade; None: the feed gave no time
    exchange: str | None = None
    side: str | None = None


@dataclass(frozen=True, slots=True)
class Parsed:
    feed: str
    trades: list[Trade | Invalid] | None  # None: a non-trade event, skipped and counted
    default_exchange: str | None = None
    note: str = ""


@dataclass(frozen=True)
class Feed:
    name: str
    default_exchange: str | None
    matches: Callable[[Any], bool]
    parse: Callable[[Any], Parsed]


# ---------------------------------------------------------------------------- value helpers
def number(obj: dict, key: str, feed: str) -> float:
    """A float from a JSON number or a numeric string, exact to its text."""
    if key not in obj:
        raise Invalid(f"missing {key}", feed)
    value = obj[key]
    if isinstance(value, bool) or value is None:
        raise Invalid(f"{key} is {_kind(value)}, not a number", feed)
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value.strip())
        except ValueError:
            raise Invalid(f"{key} {value[:40]!r} is not a number", feed) from None
    raise Invalid(f"{key} is {_kind(value)}, not a number", feed)


def text(obj: dict, key: str, feed: str, required: bool = True) -> str | None:
    value = obj.get(key)
    if value is None:
        if required:
            raise Invalid(f"missing {key}", feed)
        return None
    if not isinstance(value, str):
        raise Invalid(f"{key} is {_kind(value)}, not text", feed)
    return value.strip()


_ISO = re.compile(
    r"^(\d{4})-(\d{2})-(\d{2})[T ](\d{2}):(\d{2}):(\d{2})(?:[.,](\d{1,9}))?\s*(Z|[+-]\d{2}:?\d{2})?$", re.I
)


def epoch_us(value: Any, unit: str, feed: str, key: str) -> int:
    """UTC epoch microseconds from a number in `unit` ('s', 'ms', 'us', 'ns' or 'auto', which
    reads the unit off the magnitude) or from ISO-8601 text with up to nanosecond digits."""
    if isinstance(value, str):
        s = value.strip()
        m = _ISO.match(s)
        if m:
            return _iso_us(m, feed, key)
        try:
            value = float(s) if any(c in s for c in ".eE") else int(s)
        except ValueError:
            raise Invalid(f"{key} {value[:40]!r} is neither a number nor ISO-8601 time", feed) from None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise Invalid(f"{key} is {_kind(value)}, not a time", feed)
    if isinstance(value, float) and not math.isfinite(value):
        raise Invalid(f"{key} {value} is not a time", feed)
    if unit == "auto":
        a = abs(value)
        unit = "s" if a < 1e11 else "ms" if a < 1e14 else "us" if a < 1e17 else "ns"
    if isinstance(value, int):
        return {"s": value * 1_000_000, "ms": value * 1000, "us": value, "ns": value // 1000}[unit]
    return int(round(value * {"s": 1e6, "ms": 1e3, "us": 1.0, "ns": 1e-3}[unit]))


def _iso_us(m: re.Match, feed: str, key: str) -> int:
    year, month, day, hour, minute, second, frac, zone = m.groups()
    try:
        base = dt.datetime(int(year), int(month), int(day), int(hour), int(minute), int(second), tzinfo=dt.timezone.utc)
    except ValueError as exc:
        raise Invalid(f"{key} {m.group(0)!r} is not a valid time: {exc}", feed) from None
    us = int((base - _EPOCH).total_seconds()) * 1_000_000
    if frac:
        us += int(frac[:6].ljust(6, "0"))  # digits past the microsecond do not fit the schema
    if zone and zone.upper() != "Z":
        sign = 1 if zone[0] == "+" else -1
        digits = zone[1:].replace(":", "")
        us -= sign * (int(digits[:2]) * 3600 + int(digits[2:]) * 60) * 1_000_000
    return us


_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, str):
        return f"text {value[:40]!r}"
    return f"{type(value).__name__} {value!r}"


def _side(value: Any) -> str | None:
    if isinstance(value, str):
        v = value.strip().lower()
        if v in ("buy", "b", "bid"):
            return "buy"
        if v in ("sell", "s", "ask", "offer"):
            return "sell"
    return None


# ---------------------------------------------------------------------------- canonical
def _canonical_trade(obj: Any) -> Trade:
    feed = "canonical"
    if not isinstance(obj, dict):
        raise Invalid(f"a trade must be an object, got {_kind(obj)}", feed)
    symbol = text(obj, "symbol", feed)
    price = number(obj, "price", feed)
    size = number(obj, "size", feed)
    if "timestamp_ms" not in obj:
        raise Invalid("missing timestamp_ms", feed)
    ts = epoch_us(obj["timestamp_ms"], "ms", feed, "timestamp_ms")
    exchange = text(obj, "exchange", feed, required=False)
    return Trade((symbol or "").upper(), price, size, ts, exchange.upper() if exchange else None, _side(obj.get("side")))


def _canonical_parse(obj: Any) -> Parsed:
    items = obj if isinstance(obj, list) else [obj]
    trades: list[Trade | Invalid] = []
    for item in items:
        try:
            trades.append(_canonical_trade(item))
        except Invalid as exc:
            trades.append(exc)
    return Parsed("canonical", trades)


def _canonical_matches(obj: Any) -> bool:
    if isinstance(obj, list) and obj:  # a frame of several canonical ticks
        obj = obj[0]
    return isinstance(obj, dict) and "symbol" in obj and "timestamp_ms" in obj


CANONICAL = Feed("canonical", None, _canonical_matches, _canonical_parse)

FEEDS: list[Feed] = [CANONICAL]


def get(name: str) -> Feed:
    for feed in FEEDS:
        if feed.name == name:
            return feed
    raise KeyError(name)


def names() -> list[str]:
    return [f.name for f in FEEDS]


def parse(obj: Any, forced: Feed | None = None) -> Parsed:
    """Trades of one decoded JSON value. Raises Invalid when the message is unusable as a whole."""
    if forced is not None:
        return forced.parse(obj)
    for feed in FEEDS:
        if feed.matches(obj):
            return feed.parse(obj)
    raise Invalid(_unrecognised(obj))


def _unrecognised(obj: Any) -> str:
    if isinstance(obj, dict):
        if not obj:
            return "empty JSON object"
        keys = ", ".join(sorted(map(str, obj))[:8])
        return f"no known feed shape has these keys: {keys}"
    if isinstance(obj, list):
        return "JSON array of no known feed shape" if obj else "empty JSON array"
    return f"JSON is {_kind(obj)}, not a trade object"
