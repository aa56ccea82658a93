"""Reading one field of a trade: numbers (JSON numbers or numeric text), text, times, sides.

Every reader names the feed and the key in its reason, so a reject says what was seen where.
"""

from __future__ import annotations

import datetime as dt
import math
import re
from decimal import Decimal
from functools import lru_cache
from typing import Any

from finpulse.feeds.model import Invalid


def number(obj: dict, key: str, feed: str) -> float:
    """A float from a JSON number or a numeric string, exact to its text (correctly rounded)."""
    value: Any = obj.get(key)  # any JSON value; the exact type decides below
    kind_ = type(value)  # exact types: a bool is no number here, though it is an int to Python
    if kind_ is float:
        return value
    if kind_ is str:
        s = value.strip()
        if "_" not in s:  # float() accepts Python's digit separators; no feed writes them
            try:
                return float(s)
            except ValueError:
                pass
        raise Invalid(f"{key} {quote(value)} is not a number", feed)
    if kind_ is int:
        return float(value)
    if kind_ is Decimal:  # an Avro decimal, as fastavro reads it
        return float(value)
    if value is None and key not in obj:
        raise Invalid(f"missing {key}", feed)
    raise Invalid(f"{key} is {kind(value)}, not a number", feed)


def text(obj: dict, key: str, feed: str, required: bool = True) -> str | None:
    value = obj.get(key)
    if value is None:
        if required:
            raise Invalid(f"missing {key}", feed)
        return None
    if not isinstance(value, str):
        raise Invalid(f"{key} is {kind(value)}, not text", feed)
    return value.strip()


def symbol(obj: dict, key: str, feed: str) -> str:
    """The instrument as the feed spells it, trimmed and upper-cased (BTC-USD, BTCUSDT, BTC/USD)."""
    return (text(obj, key, feed) or "").upper()  # required=True: never None


def venue(obj: dict, key: str, feed: str) -> str | None:
    """A venue code kept as text: Alpaca sends letters ("V"), Polygon numeric ids (4 -> "4")."""
    value = obj.get(key)
    if value is None:
        return None
    if isinstance(value, str):
        return value.strip().upper() or None
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    raise Invalid(f"{key} is {kind(value)}, not a venue code", feed)


def trade_ident(obj: dict, key: str, feed: str, prefix: str = "") -> str | None:
    """The trade's id as text: a JSON integer or text as sent (trimmed), `prefix` in front (Binance
    aggregate trades keep theirs apart from trade ids); None when absent, null or blank. Any other
    JSON value is Invalid: an id read wrongly would make two trades one (checks.py bounds the text)."""
    value = obj.get(key)
    if value is None:
        return None
    if type(value) is int:  # exact type: a boolean is no id
        return f"{prefix}{value}"
    if isinstance(value, str):
        value = value.strip()
        return f"{prefix}{value}" if value else None
    raise Invalid(f"{key} is {kind(value)}, not a trade id", feed)


def side_word(value: Any) -> str | None:
    """'buy' / 'sell' from the spellings feeds use; anything else is no side."""
    if isinstance(value, str):
        return _SIDES.get(value.strip().lower())
    return None


_SIDES = {"buy": "buy", "b": "buy", "bid": "buy", "sell": "sell", "s": "sell", "ask": "sell", "offer": "sell"}
OPPOSITE = {"buy": "sell", "sell": "buy", None: None}


def trade_time(obj: dict, key: str, unit: str, feed: str) -> int | None:
    """The trade's time in UTC epoch µs, or None when the feed sent none (Kafka's time stands in)."""
    value = obj.get(key)
    if value is None:
        return None
    return epoch_us(value, unit, feed, key)


# Date, time, up to nine fraction digits (ns feeds), then Z, ±hh, ±hhmm or ±hh:mm; no zone = UTC.
_ISO = re.compile(
    r"^(\d{4})-(\d{2})-(\d{2})[T ](\d{2}):(\d{2}):(\d{2})(?:[.,](\d{1,9}))?\s*(Z|[+-]\d{2}(?::?\d{2})?)?$", re.I
)
# Magnitude bounds for unit='auto': past 1990 in any unit these ranges do not overlap
# (1e11 s is the year 5138; 1e11 ms is 1973, before the 1990 floor checks.py enforces).
_S_BELOW, _MS_BELOW, _US_BELOW = 1e11, 1e14, 1e17
_PER_US = {"s": 1_000_000, "ms": 1000, "us": 1}
# Beyond this many µs from the epoch (~year 294,000) a time no longer fits an int64 column in
# either sink; checks.py's narrower window (1990 to a day past the record) rejects far less.
_FAR_US = 1 << 63


def epoch_us(value: Any, unit: str, feed: str, key: str) -> int:
    """UTC epoch microseconds from a number in `unit` ('s', 'ms', 'us', 'ns' or 'auto', which
    reads the unit off the magnitude) or from ISO-8601 text with up to nanosecond digits.
    Digits below the microsecond are dropped (truncated, as the clock had not reached the next µs).
    A datetime (an Avro timestamp, as fastavro reads it) is taken as it is; naive means UTC."""
    if isinstance(value, dt.datetime):
        moment = value if value.tzinfo else value.replace(tzinfo=dt.UTC)
        delta = moment - _EPOCH
        return delta.days * 86_400_000_000 + delta.seconds * 1_000_000 + delta.microseconds
    if isinstance(value, Decimal):
        value = float(value)
    if isinstance(value, str):
        s = value.strip()
        m = _ISO.match(s)
        if m:
            return _iso_us(m, feed, key)
        try:
            value = float(s) if any(c in s for c in ".eE") else int(s)
        except ValueError:
            raise Invalid(f"{key} {quote(value)} is neither a number nor ISO-8601 time", feed) from None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise Invalid(f"{key} is {kind(value)}, not a time", feed)
    if isinstance(value, float) and not math.isfinite(value):
        raise Invalid(f"{key} {value} is not a time", feed)
    if unit == "auto":
        a = abs(value)
        unit = "s" if a < _S_BELOW else "ms" if a < _MS_BELOW else "us" if a < _US_BELOW else "ns"
    if isinstance(value, int):
        us = value // 1000 if unit == "ns" else value * _PER_US[unit]
    else:
        scaled = value / 1000 if unit == "ns" else value * _PER_US[unit]
        if not math.isfinite(scaled) or abs(scaled) >= _FAR_US:  # 1e306 ms overflows once scaled
            raise Invalid(f"{key} {value!r} is out of range for a time", feed)
        us = int(round(scaled))
    if abs(us) >= _FAR_US:  # a Python int can be any size; int64 columns cannot
        raise Invalid(f"{key} {quote(str(value))} is out of range for a time", feed)
    return us


def _iso_us(m: re.Match, feed: str, key: str) -> int:
    frac, zone = m.group(7, 8)
    try:
        us = _utc_seconds(m.string[:19]) * 1_000_000  # the pattern fixes where each field sits
    except ValueError as exc:
        raise Invalid(f"{key} {quote(m.group(0))} is not a valid time: {exc}", feed) from None
    if frac:
        us += int(frac[:6].ljust(6, "0"))  # digits past the microsecond do not fit the schema
    if zone and zone.upper() != "Z":
        sign = 1 if zone[0] == "+" else -1
        digits = zone[1:].replace(":", "")
        minutes = int(digits[:2]) * 60 + (int(digits[2:]) if len(digits) > 2 else 0)
        us -= sign * minutes * 60_000_000
    return us


# Trades arrive in time order, so one second's text repeats message after message: a cache the
# size of a few hours of distinct seconds saves building a datetime for each of them.
@lru_cache(maxsize=1 << 14)
def _utc_seconds(text: str) -> int:
    """Epoch seconds of 'YYYY-MM-DDTHH:MM:SS' read as UTC (any separator between date and time)."""
    moment = dt.datetime(
        int(text[0:4]),
        int(text[5:7]),
        int(text[8:10]),
        int(text[11:13]),
        int(text[14:16]),
        int(text[17:19]),
        tzinfo=dt.UTC,
    )
    return (moment - _EPOCH) // _ONE_SECOND


_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_ONE_SECOND = dt.timedelta(seconds=1)


# A reason quotes at most this much of a value: enough to recognise it, never a megabyte.
QUOTE_CHARS = 40


def quote(value: str, limit: int = QUOTE_CHARS) -> str:
    """`value` as an escaped Python literal (NUL and control characters spelled out), cut to `limit`
    characters with a marker, so a reason can quote any input and stay one short, storable line."""
    if len(value) <= limit:
        return repr(value)
    return repr(value[:limit]) + f"... ({len(value):,} characters)"


def kind(value: Any) -> str:
    """How a reason names a value of the wrong type."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, str):
        return f"text {quote(value)}"
    return f"{type(value).__name__} {quote(repr(value))[1:-1]}"


def keys_seen(obj: Any) -> str:
    """A short description of a value for 'not this shape' reasons (one level deep, never more)."""
    if isinstance(obj, dict):
        return _object(obj)
    if isinstance(obj, list):
        if not obj:
            return "an empty array"
        first = obj[0]
        return f"an array of {len(obj)} starting with " + (_object(first) if isinstance(first, dict) else kind(first))
    return kind(obj)


def _object(obj: dict) -> str:
    return "an object with keys " + ", ".join(quote(k) for k in sorted(obj)[:8]) if obj else "an empty object"


def not_this(feed: str, obj: Any, expected: str) -> Invalid:
    """The reason a value forced through the wrong feed (--format) cannot be read."""
    return Invalid(f"not the {feed} shape: got {keys_seen(obj)}; expected {expected}", feed)
