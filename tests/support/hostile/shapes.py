"""Valid messages of each feed shape, as the exchanges send them (plain dicts and lists)."""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from typing import Any

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
