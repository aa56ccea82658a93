"""Pools of hostile values (text, numbers, times, wrong types) and the draw of one for any field."""

from __future__ import annotations

import copy
import random
from typing import Any

from support.hostile.jsontext import Raw


def _long(rng: random.Random) -> str:
    char, width = rng.choice([("A", 1), ("1", 1), ("é", 6), ("\u0000", 6), ("📈", 12)])  # width: as \u escapes
    return char * int(65 * (100_000 / width / 65) ** rng.random())  # log-uniform, 65 chars .. ~100 KB


TEXT = [
    "",
    " ",
    "\t",
    "\u0000",
    "A\u0000B",
    "BTC\u0000",
    "\x01\x1f\x7f",
    "\x1b[31mred",
    "\n",
    "\u0085",
    "\u2028",
    "\u202eDSU-CTB",
    "\u200fAAPL",
    "\ufeffAAPL",
    "📈🚀",
    "Ä",
    "ß" * 40,
    "ﬁ",
    "İ",
    "\u00a0AAPL\u00a0",
    "\ud800",
    "a\udfff",
    "\ud83d",  # lone surrogates (escaped, or invalid UTF-8 when written raw)
    "buy",
    "SELL",
    "match",
    "trade",
    "t",
    "T",
    "market_trades",
    "snapshot",
]
RAW_TEXT = [Raw('"\\ud800"'), Raw('"x\\udc00y"'), Raw('"\\ud83d\\u0041"'), Raw('"\\u0000"'), Raw('"a\\u0000"')]
NUMBERS = [
    0,
    -0.0,
    -1,
    1,
    1e306,
    -1e308,
    1.7976931348623157e308,
    5e-324,
    1e-320,
    2**63,
    2**63 - 1,
    2**64,
    10**30,
    -(2**63) - 1,
    -(10**30),
    1e17,
    1e11,
    99_999_999_999,
    1e14,
    1700000000000.5,
    0.1,
]
RAW_NUMBERS = [
    Raw("1e400"),
    Raw("-1e400"),
    Raw("1E+999"),
    Raw("-0"),
    Raw("1" + "0" * 400),
    Raw("0.0000000000e-999"),
    Raw("NaN"),
    Raw("Infinity"),
    Raw("-Infinity"),
]
NUMBER_TEXT = [
    "1e306",
    "-1e308",
    "1e400",
    "-1e400",
    str(2**63),
    str(2**64),
    str(10**30),
    "-" + str(2**63),
    "0",
    "-0",
    "-5",
    "NaN",
    "nan",
    "Infinity",
    "-inf",
    "inf",
    "1_000",
    "0x10",
    " 42 ",
    "+7",
    "1e17",
    "1e-400",
    "١٢٣",
    "4\u0000",
]
TIMES = [
    "2024-02-30T00:00:00Z",
    "2023-13-01T00:00:00Z",
    "2024-01-01T25:61:61Z",
    "0001-01-01T00:00:00Z",
    "9999-12-31T23:59:59.999999999Z",
    "0000-00-00T00:00:00Z",
    "2024-01-01T00:00:00+99:99",
    "2024-01-01T00:00:00-23:59",
    "1969-12-31T23:59:59Z",
    "1989-12-31T23:59:59.999999Z",
    "2999-01-01T00:00:00Z",
    "2024-06-10T16:00:00.1234567890Z",
    "2024-06-10 16:00:00",
    "2024-06-10T16:00:00Z\u0000",
    "2024-06-10",
    "T",
    "1718035200",
    "1e306",
]
WRONG_TYPES = [
    True,
    False,
    None,
    {},
    {"a": 1},
    [],
    [1, "2"],
    [None],
    Raw("[" * 600 + "]" * 600),
    Raw('{"a":' * 300 + "1" + "}" * 300),
]


def hostile(rng: random.Random, now_ms: int) -> Any:
    """One hostile value for any field (a fresh copy: mutations may change it later)."""
    return copy.deepcopy(_hostile(rng, now_ms))


def _hostile(rng: random.Random, now_ms: int) -> Any:
    pick = rng.random()
    if pick < 0.02:
        return _long(rng)
    if pick < 0.25:
        return rng.choice(TEXT + RAW_TEXT)
    if pick < 0.45:
        return rng.choice(NUMBERS + RAW_NUMBERS)
    if pick < 0.60:
        return rng.choice(NUMBER_TEXT)
    if pick < 0.75:
        return rng.choice(TIMES)
    if pick < 0.85:  # times that overflow once scaled, or lie far out
        return rng.choice(
            [
                1e306,
                -1e306,
                1e17 * rng.choice([1, 1000]),
                now_ms + 2 * 86_400_000,
                now_ms * 1000 + 2 * 86_400_000_000,
                (now_ms + 86_400_000) * 1_000_000,
                -now_ms,
                631_151_999_999,
                now_ms // 1000,
                float(now_ms) * 1e6,
                str(now_ms * 10**9),
            ]
        )
    return rng.choice(WRONG_TYPES)


def hostile_key(rng: random.Random) -> Any:
    return rng.choice(
        [
            "",
            "\u0000",
            "x" * 5000,
            "📈",
            "p",
            "T",
            "symbol",
            "price",
            "__proto__",
            Raw('"\\ud800"'),
            "timestamp_ms",
            "events",
            "data",
        ]
    )
