"""Hostile-but-plausible Kafka message values, for fuzzing the whole pipeline (issue #9).

`messages(seed, count)` yields (label, value) pairs: `value` is the raw bytes of a Kafka record
(None: a tombstone) and `label` says how it was made (`valid:kraken`, `mutated:alpaca`,
`broken:deep_arrays`), for reports. Three kinds, from one `random.Random(seed)`:

  * valid   - a message of one feed shape (SHAPES), as the exchange sends it; ~30%
  * mutated - such a message with 1-3 MUTATIONS: a field (at any depth, envelope keys included)
              replaced by a hostile value, dropped, repeated, an extra key, a frame element of
              the wrong type...
  * broken  - frames no parser can take whole (BROKEN): bad UTF-8, truncated JSON, deep nesting,
              scalars, tombstones, over 1 MiB...

The first messages cover every shape valid, every (shape, mutation) pair, every broken kind and
every hostile text in each text field of a canonical tick once; the rest are drawn at random. JSON is written by hand (`dumps`), as orjson/json cannot write
duplicate keys, lone surrogate escapes or 1e400: `Raw` text goes in verbatim and `Obj` is an
object as a list of (key, value) pairs, so a key may repeat.
"""

from __future__ import annotations

import copy
import json
import random
import time
from collections.abc import Callable, Iterator
from typing import Any

MIB = 1 << 20


class Raw(str):
    """JSON text written as is (a number orjson cannot write, a lone surrogate escape...)."""


class Obj(list):
    """A JSON object as (key, value) pairs: keys may repeat, keys may be Raw."""


def dumps(value: Any, ascii_only: bool = True, sep: str = ",") -> str:
    if isinstance(value, Raw):
        return str(value)
    if value is None:
        return "null"
    if value is True or value is False:
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value)  # only finite floats reach here; NaN and 1e400 are Raw
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=ascii_only)
    if isinstance(value, dict):
        value = Obj(value.items())
    if isinstance(value, Obj):
        return "{" + sep.join(f"{dumps(k, ascii_only)}:{dumps(v, ascii_only, sep)}" for k, v in value) + "}"
    if isinstance(value, list):
        return "[" + sep.join(dumps(v, ascii_only, sep) for v in value) + "]"
    raise TypeError(type(value))


def encode(value: Any, rng: random.Random) -> bytes:
    """Bytes of `value`; non-ASCII text written as UTF-8 half the time, so a lone surrogate is then
    written as its (invalid) UTF-8 bytes rather than as a \\ud800 escape."""
    return dumps(value, rng.random() < 0.5, rng.choice([",", ", ", ",\n  "])).encode("utf-8", "surrogatepass")


# ------------------------------------------------------------------------- valid shapes
SYMBOLS = ["AAPL", "msft ", "BTC-USD", "eth-usd", "BTC/USD", "BTCUSDT", "BINANCE:BTCUSDT", "SOL/EUR", "V"]


def _ms(rng: random.Random, now_ms: int) -> int:
    return now_ms - rng.randrange(0, 3 * 86_400_000)


def _iso(rng: random.Random, now_ms: int, digits: int) -> str:
    ms = _ms(rng, now_ms)
    base = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ms // 1000))
    frac = f"{ms % 1000:03d}" + "".join(str(rng.randrange(10)) for _ in range(digits - 3))
    return f"{base}.{frac[:digits]}Z"


def _price(rng: random.Random) -> float:
    return round(rng.uniform(0.01, 70_000), rng.choice([2, 4, 8]))


def _text(x: float) -> str:
    return f"{x:.8f}"


def canonical(rng, now_ms):
    tick = {
        "symbol": rng.choice(SYMBOLS),
        "price": _price(rng),
        "size": float(rng.randint(0, 500)),
        "timestamp_ms": _ms(rng, now_ms),
    }
    if rng.random() < 0.7:
        tick["exchange"] = rng.choice(["NASDAQ", "nyse", "COINBASE"])
    if rng.random() < 0.3:
        tick["side"] = rng.choice(["buy", "sell", "B", "ask"])
    return tick


def canonical_frame(rng, now_ms):
    return [canonical(rng, now_ms) for _ in range(rng.randint(1, 5))]


def binance_trade(rng, now_ms):
    t = _ms(rng, now_ms)
    if rng.random() < 0.5:
        return {
            "e": "trade",
            "E": t + 1,
            "s": "BTCUSDT",
            "t": rng.randrange(10**10),
            "p": _text(_price(rng)),
            "q": _text(rng.uniform(0, 5)),
            "T": t,
            "m": rng.random() < 0.5,
            "M": True,
        }
    return {
        "e": "aggTrade",
        "E": t + 1,
        "s": "ETHUSDT",
        "a": rng.randrange(10**10),
        "p": _text(_price(rng)),
        "q": _text(rng.uniform(0, 5)),
        "f": 1,
        "l": 3,
        "T": t * rng.choice([1, 1000]),
        "m": False,
        "M": True,
    }


def binance_combined(rng, now_ms):
    event = binance_trade(rng, now_ms)
    return {"stream": f"{event['s'].lower()}@{event['e']}", "data": event}


def coinbase_match(rng, now_ms):
    return {
        "type": rng.choice(["match", "last_match"]),
        "trade_id": rng.randrange(10**9),
        "maker_order_id": "9a1c5f0e-2d7b-4c83-9e61-0f3b5a7d2c14",
        "taker_order_id": "5e0b8d3a-71f2",
        "side": rng.choice(["buy", "sell"]),
        "size": _text(rng.uniform(0, 2)),
        "price": str(_price(rng)),
        "product_id": "BTC-USD",
        "sequence": rng.randrange(10**11),
        "time": _iso(rng, now_ms, 6),
    }


def coinbase_advanced(rng, now_ms):
    def trade():
        return {
            "trade_id": str(rng.randrange(10**9)),
            "product_id": "ETH-USD",
            "price": str(_price(rng)),
            "size": str(rng.uniform(0, 3)),
            "side": rng.choice(["BUY", "SELL"]),
            "time": _iso(rng, now_ms, 9),
        }

    return {
        "channel": "market_trades",
        "client_id": "",
        "timestamp": _iso(rng, now_ms, 9),
        "sequence_num": rng.randrange(1000),
        "events": [
            {"type": rng.choice(["snapshot", "update"]), "trades": [trade() for _ in range(rng.randint(1, 3))]}
            for _ in range(rng.randint(1, 2))
        ],
    }


def alpaca(rng, now_ms):
    def stock():
        return {
            "T": "t",
            "i": rng.randrange(10**14),
            "S": "AAPL",
            "x": "V",
            "p": _price(rng),
            "s": rng.randint(1, 500),
            "t": _iso(rng, now_ms, 9),
            "c": ["@"],
            "z": "C",
        }

    def crypto():
        return {
            "T": "t",
            "S": "BTC/USD",
            "p": _price(rng),
            "s": rng.uniform(0, 1),
            "t": _iso(rng, now_ms, 9),
            "i": rng.randrange(2**63),
            "tks": rng.choice(["B", "S"]),
        }

    return [rng.choice([stock, crypto])() for _ in range(rng.randint(1, 3))]


def polygon(rng, now_ms):
    def stock():
        return {
            "ev": "T",
            "sym": "MSFT",
            "i": str(rng.randrange(10**14)),
            "x": 4,
            "p": _price(rng),
            "s": rng.randint(0, 500),
            "c": [12, 37],
            "t": _ms(rng, now_ms),
            "q": 1276435,
            "z": 3,
        }

    def crypto():
        t = _ms(rng, now_ms)
        return {
            "ev": "XT",
            "pair": "BTC-USD",
            "p": _price(rng),
            "t": t,
            "s": rng.uniform(0, 1),
            "c": [2],
            "i": "565219453",
            "x": 1,
            "r": t + 14,
        }

    return [rng.choice([stock, crypto])() for _ in range(rng.randint(1, 3))]


def finnhub(rng, now_ms):
    return {
        "type": "trade",
        "data": [
            {
                "c": None,
                "p": _price(rng),
                "s": rng.choice(["AAPL", "BINANCE:BTCUSDT"]),
                "t": _ms(rng, now_ms),
                "v": rng.uniform(0, 100),
            }
            for _ in range(rng.randint(1, 3))
        ],
    }


def kraken(rng, now_ms):
    return {
        "channel": "trade",
        "type": rng.choice(["snapshot", "update"]),
        "data": [
            {
                "symbol": "BTC/USD",
                "side": rng.choice(["buy", "sell"]),
                "price": _price(rng),
                "qty": rng.uniform(0, 1),
                "ord_type": "market",
                "trade_id": rng.randrange(10**8),
                "timestamp": _iso(rng, now_ms, 6),
            }
            for _ in range(rng.randint(1, 3))
        ],
    }


# name -> builder(rng, now_ms) of a valid message (plain dicts and lists)
SHAPES: dict[str, Callable[[random.Random, int], Any]] = {
    f.__name__: f
    for f in (
        canonical,
        canonical_frame,
        binance_trade,
        binance_combined,
        coinbase_match,
        coinbase_advanced,
        alpaca,
        polygon,
        finnhub,
        kraken,
    )
}


# ------------------------------------------------------------------------- hostile values
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


# ------------------------------------------------------------------------- mutations
def _objects(tree: Any) -> Iterator[Obj]:
    if isinstance(tree, Obj):
        yield tree
    if isinstance(tree, list):  # Obj is a list of pairs: this walks into its values too
        for item in tree:
            yield from _objects(item[1] if isinstance(tree, Obj) else item)


def _arrays(tree: Any) -> Iterator[list]:
    for container in _containers(tree):
        if not isinstance(container, Obj) and container:
            yield container


def _containers(tree: Any) -> Iterator[list]:
    if isinstance(tree, list):
        yield tree
        for item in tree:
            yield from _containers(item[1] if isinstance(tree, Obj) else item)


def _slots(tree: Any) -> list[tuple[list, int]]:
    return [(c, i) for c in _containers(tree) for i in range(len(c))]


def replace(tree, rng, now_ms):
    slots = _slots(tree)
    if not slots:
        return
    container, i = rng.choice(slots)
    value = hostile(rng, now_ms)
    container[i] = (container[i][0], value) if isinstance(container, Obj) else value


def drop(tree, rng, now_ms):
    slots = _slots(tree)
    if not slots:
        return
    container, i = rng.choice(slots)
    del container[i]


def extra_key(tree, rng, now_ms):
    objects = list(_objects(tree))
    if objects:
        rng.choice(objects).append((hostile_key(rng), hostile(rng, now_ms)))


def duplicate_key(tree, rng, now_ms):
    objects = [o for o in _objects(tree) if o] or list(_objects(tree))
    if not objects:
        return
    obj = rng.choice(objects)
    if not obj:
        obj.extend([("p", 1), ("p", 2)])
        return
    key, value = rng.choice(obj)
    if rng.random() < 0.3 and isinstance(key, str) and key and not isinstance(key, Raw):
        key = Raw('"' + "".join(f"\\u{ord(c):04x}" for c in key[:1]) + json.dumps(key[1:])[1:])  # same key, escaped
    obj.insert(rng.randrange(len(obj) + 1), (key, value if rng.random() < 0.4 else hostile(rng, now_ms)))


def wrong_element(tree, rng, now_ms):
    arrays = list(_arrays(tree))
    if not arrays:
        return replace(tree, rng, now_ms)
    array = rng.choice(arrays)
    array[rng.randrange(len(array))] = copy.deepcopy(rng.choice(WRONG_TYPES + ["t", 0, Obj()]))


def many_trades(tree, rng, now_ms):
    arrays = list(_arrays(tree))
    if not arrays:
        return replace(tree, rng, now_ms)
    array = rng.choice(arrays)
    room = 60_000 // (len(dumps(array[0])) + 1)  # a frame of many trades, but not of megabytes
    array.extend(copy.deepcopy(array[0]) for _ in range(min(rng.randint(50, 400), room)))


# name -> mutate(tree, rng, now_ms), in place on a tree of Obj and lists
MUTATIONS: dict[str, Callable[[list, random.Random, int], None]] = {
    f.__name__: f for f in (replace, drop, extra_key, duplicate_key, wrong_element, many_trades)
}


def _tree(value: Any) -> Any:
    """dicts -> Obj (mutable, repeatable keys), lists copied, recursively."""
    if isinstance(value, dict):
        return Obj((k, _tree(v)) for k, v in value.items())
    if isinstance(value, list):
        return [_tree(v) for v in value]
    return value


def mutated(shape: str, rng: random.Random, now_ms: int, first: str | None = None) -> bytes:
    tree = _tree(SHAPES[shape](rng, now_ms))
    names = [first] if first else []
    names += rng.choices(list(MUTATIONS), weights=[6, 2, 2, 1, 1, 0.3], k=rng.randint(1 - len(names), 3 - len(names)))
    for name in names:
        MUTATIONS[name](tree, rng, now_ms)
    return encode(tree, rng)


# ------------------------------------------------------------------------- broken frames
def _valid(rng: random.Random, now_ms: int) -> bytes:
    return encode(SHAPES[rng.choice(list(SHAPES))](rng, now_ms), rng)


def _cut(data: bytes, rng: random.Random) -> bytes:
    return data[: rng.randrange(1, len(data))]


def _bad_utf8(rng, now_ms):
    data = _valid(rng, now_ms)
    i = rng.randrange(len(data) + 1)
    return (
        data[:i]
        + rng.choice(
            [b"\xff", b"\xfe\xff", b"\xc3\x28", b"\xc0\xaf", b"\xed\xa0\x80", b"\xe2\x82", b"\xf4\x90\x80\x80", b"\x80"]
        )
        + data[i:]
    )


def _over_limit(rng, now_ms):
    head = encode(_tree(canonical(rng, now_ms)), rng)[:-1]
    filler = MIB + rng.randrange(1, 4096) - len(head)
    return head + b',"pad":"' + b"x" * filler + b'"}'


# name -> (weight among broken frames, builder(rng, now_ms) -> bytes | None)
BROKEN: dict[str, tuple[float, Callable[[random.Random, int], bytes | None]]] = {
    "invalid_utf8": (10, _bad_utf8),
    "truncated": (10, lambda rng, now: _cut(_valid(rng, now), rng)),
    "empty": (2, lambda rng, now: b""),
    "whitespace": (2, lambda rng, now: rng.choice([b" ", b"\n", b" \t\r\n "])),
    "tombstone": (3, lambda rng, now: None),
    "scalar": (
        5,
        lambda rng, now: rng.choice(
            [
                b"1",
                b"-0",
                b"1e400",
                b'"AAPL"',
                b"true",
                b"null",
                b"NaN",
                b"[]",
                b"{}",
                b"[[]]",
                b"[{}]",
                b'"\\ud800"',
                b'"\x00"',
            ]
        ),
    ),
    "deep_arrays": (1, lambda rng, now: b"[" * rng.choice([1025, 100_000]) + b"]" * rng.choice([0, 1025])),
    "deep_objects": (1, lambda rng, now: b'{"a":' * 5000 + b"1" + b"}" * 5000),
    "raw_control_in_string": (3, lambda rng, now: _valid(rng, now).replace(b'"', b'"\x00', 1)),
    "bom": (2, lambda rng, now: b"\xef\xbb\xbf" + _valid(rng, now)),
    "trailing_garbage": (3, lambda rng, now: _valid(rng, now) + rng.choice([b"x", b"\x00", b"}", b" {}"])),
    "two_documents": (2, lambda rng, now: _valid(rng, now) + b"\n" + _valid(rng, now)),
    "latin1": (2, lambda rng, now: dumps(canonical(rng, now) | {"exchange": "B\u00f6rse"}, False).encode("latin-1")),
    "over_1mib": (0.02, _over_limit),
}


def _canonical_with(rng: random.Random, now_ms: int, key: str, value: Any) -> bytes:
    tick = _tree(canonical(rng, now_ms))
    tick[:] = [(k, v) for k, v in tick if k != key] + [(key, value)]
    return dumps(tick).encode()  # ASCII only: what the canonical fast path reads


# ------------------------------------------------------------------------- the stream
def messages(seed: int, count: int, now_ms: int | None = None) -> Iterator[tuple[str, bytes | None]]:
    """`count` (label, value) pairs; equal seeds (and `now_ms`) give equal messages."""
    rng = random.Random(seed)
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    coverage: list[Callable[[], tuple[str, bytes | None]]] = []
    for shape in SHAPES:
        coverage.append(lambda s=shape: (f"valid:{s}", encode(SHAPES[s](rng, now_ms), rng)))
        for mutation in MUTATIONS:
            coverage.append(lambda s=shape, m=mutation: (f"mutated:{s}:{m}", mutated(s, rng, now_ms, m)))
    for name, (_, build) in BROKEN.items():
        coverage.append(lambda n=name, b=build: (f"broken:{n}", b(rng, now_ms)))
    for text in TEXT + RAW_TEXT:  # each hostile text in each text field of a canonical tick, \u-escaped
        for key in ("symbol", "exchange", "side"):
            coverage.append(lambda t=text, k=key: (f"mutated:canonical:{k}", _canonical_with(rng, now_ms, k, t)))
    rng.shuffle(coverage)
    broken_names = list(BROKEN)
    broken_weights = [w for w, _ in BROKEN.values()]
    for i in range(count):
        if i < len(coverage):
            yield coverage[i]()
            continue
        pick = rng.random()
        if pick < 0.30:
            shape = rng.choice(list(SHAPES))
            yield f"valid:{shape}", encode(SHAPES[shape](rng, now_ms), rng)
        elif pick < 0.90:
            shape = rng.choice(list(SHAPES))
            yield f"mutated:{shape}", mutated(shape, rng, now_ms)
        else:
            name = rng.choices(broken_names, broken_weights)[0]
            yield f"broken:{name}", BROKEN[name][1](rng, now_ms)
