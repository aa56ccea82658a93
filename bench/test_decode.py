"""Decode throughput: 100,000 messages of each feed shape through `Decoder.decode`, and the bare
baseline the canonical fast path is held to.

    .venv/bin/python -m pytest bench/test_decode.py --benchmark-enable -q

Needs no services. extra_info carries feed, shape, ticks and ticks_per_s (from the median round);
the canonical run also carries vs_baseline: its best round over the baseline's best round (the
fast path is meant to stay within 1.15 of it). Nothing here asserts a timing.
"""

from __future__ import annotations

import time
from functools import lru_cache

import orjson
import pyarrow as pa
import pytest

from finpulse import feeds, produce
from finpulse.decode import Decoder, Messages

MESSAGES = 100_000
FAST_ROUNDS = 7  # ~0.1 s a round: enough rounds for a stable best
CAREFUL_ROUNDS = 3  # ~1 s a round on the per-message path
SYMBOLS = ("BTC-USD", "ETH-USD", "SOL-USD", "AAPL", "MSFT", "NVDA", "TSLA", "SPY")
_best: dict[str, float] = {}  # best round of the baseline, for the canonical run's ratio


# ------------------------------------------------------------------ message builders
def _iso(us: int, ns_digits: int = 0) -> str:
    """RFC-3339 UTC with µs digits, plus `ns_digits` extra sub-µs digits."""
    seconds, micros = divmod(us, 1_000_000)
    extra = f"{(us * 7) % 10**ns_digits:0{ns_digits}d}" if ns_digits else ""
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{micros:06d}{extra}Z"


def _trades(i: int, base_us: int):
    """1 to 3 trades for message i: (symbol, price, size, time µs, index across the run)."""
    for k in range(1 + i % 3):
        j = 3 * i + k
        yield (
            SYMBOLS[j % len(SYMBOLS)],
            round(100 + (j * 7919 % 100_003) / 100, 2),
            0.001 * (1 + j % 997),
            base_us + j * 1000 + j % 997,
            j,
        )


def _one(i: int, base_us: int):
    return next(_trades(i, base_us))


def _binance(i: int, base_us: int, event: str) -> dict:
    sym, price, size, us, j = _one(i, base_us)
    msg = {
        "e": event,
        "E": us // 1000 + 1,
        "s": sym.replace("-", "T"),
        "t": j,
        "p": f"{price:.8f}",
        "q": f"{size:.8f}",
        "T": us // 1000,
        "m": j % 2 == 0,
        "M": True,
    }
    if event == "aggTrade":
        msg = {"a": msg.pop("t"), **msg, "f": j, "l": j + 2}
    return msg


def _coinbase(i: int, base_us: int) -> dict:
    sym, price, size, us, j = _one(i, base_us)
    return {
        "type": "match",
        "trade_id": j,
        "maker_order_id": f"{j:08x}-2d7b-4c83-9e61-0f3b5a7d2c14",
        "taker_order_id": f"{j + 1:08x}-71f2-4a9c-b6d4-83c2e1f09a77",
        "side": "sell" if j % 2 else "buy",
        "size": f"{size:.8f}",
        "price": f"{price:.2f}",
        "product_id": sym,
        "sequence": 84_000_000_000 + j,
        "time": _iso(us),
    }


def _coinbase_advanced(i: int, base_us: int) -> dict:
    trades = [
        {
            "trade_id": str(j),
            "product_id": sym,
            "price": f"{price:.2f}",
            "size": f"{size:.8f}",
            "side": "BUY" if j % 2 else "SELL",
            "time": _iso(us, 2),
        }
        for sym, price, size, us, j in _trades(i, base_us)
    ]
    return {
        "channel": "market_trades",
        "client_id": "",
        "timestamp": _iso(base_us + 3000 * i + 500, 3),
        "sequence_num": i,
        "events": [{"type": "update", "trades": trades}],
    }


def _alpaca_stocks(i: int, base_us: int) -> list:
    return [
        {
            "T": "t",
            "i": 52_983_525_029_461 + j,
            "S": sym,
            "x": "VDQ"[j % 3],
            "p": price,
            "s": 1 + j % 300,
            "t": _iso(us, 3),
            "c": ["@"],
            "z": "C",
        }
        for sym, price, size, us, j in _trades(i, base_us)
    ]


def _alpaca_crypto(i: int, base_us: int) -> list:
    return [
        {
            "T": "t",
            "S": sym.replace("-", "/"),
            "p": price,
            "s": size,
            "t": _iso(us, 3),
            "i": 7_143_520_977_419_452_871 + j,
            "tks": "BS"[j % 2],
        }
        for sym, price, size, us, j in _trades(i, base_us)
    ]


def _polygon_stocks(i: int, base_us: int) -> list:
    return [
        {
            "ev": "T",
            "sym": sym,
            "i": str(52_983_525_033_527 + j),
            "x": 1 + j % 19,
            "p": price,
            "s": 1 + j % 300,
            "c": [12, 37],
            "t": us // 1000,
            "q": j,
            "z": 3,
        }
        for sym, price, size, us, j in _trades(i, base_us)
    ]


def _polygon_crypto(i: int, base_us: int) -> list:
    return [
        {
            "ev": "XT",
            "pair": sym,
            "p": price,
            "t": us // 1000,
            "s": size,
            "c": [2],
            "i": str(565_219_453 + j),
            "x": 1 + j % 6,
            "r": us // 1000 + 14,
        }
        for sym, price, size, us, j in _trades(i, base_us)
    ]


def _finnhub(i: int, base_us: int) -> dict:
    return {
        "data": [
            {"c": None, "p": price, "s": f"BINANCE:{sym.replace('-', '')}T", "t": us // 1000, "v": size}
            for sym, price, size, us, j in _trades(i, base_us)
        ],
        "type": "trade",
    }


def _kraken(i: int, base_us: int) -> dict:
    return {
        "channel": "trade",
        "type": "update",
        "data": [
            {
                "symbol": sym.replace("-", "/"),
                "side": "buy" if j % 2 else "sell",
                "price": price,
                "qty": size,
                "ord_type": "market" if j % 3 else "limit",
                "trade_id": j,
                "timestamp": _iso(us),
            }
            for sym, price, size, us, j in _trades(i, base_us)
        ],
    }


SHAPES = {  # shape -> (feed it is, message i -> JSON value)
    "binance-trade": ("binance", lambda i, b: _binance(i, b, "trade")),
    "binance-aggTrade": ("binance", lambda i, b: _binance(i, b, "aggTrade")),
    "binance-combined": ("binance", lambda i, b: {"stream": "btcusdt@trade", "data": _binance(i, b, "trade")}),
    "coinbase-match": ("coinbase", _coinbase),
    "coinbase-advanced": ("coinbase-advanced", _coinbase_advanced),
    "alpaca-stocks": ("alpaca", _alpaca_stocks),
    "alpaca-crypto": ("alpaca", _alpaca_crypto),
    "polygon-stocks": ("polygon", _polygon_stocks),
    "polygon-crypto": ("polygon", _polygon_crypto),
    "finnhub": ("finnhub", _finnhub),
    "kraken": ("kraken", _kraken),
}


@lru_cache(maxsize=1)  # one shape in memory at a time
def _messages(shape: str) -> Messages:
    if shape == "canonical":  # what `finpulse produce` writes
        values = [value for _, value in produce.encoded(produce.ticks(MESSAGES))]
    else:
        base_us = (time.time_ns() // 1000) - 3_600_000_000  # an hour ago: every time is valid
        build = SHAPES[shape][1]
        values = [orjson.dumps(build(i, base_us)) for i in range(MESSAGES)]
    return Messages(values, [0] * MESSAGES, list(range(MESSAGES)), [int(time.time() * 1000)] * MESSAGES)


def _record(benchmark, feed: str, shape: str, ticks: int) -> None:
    benchmark.extra_info.update(feed=feed, shape=shape, messages=MESSAGES, ticks=ticks)
    if benchmark.stats:  # None under --benchmark-disable (the default): the function ran once
        stats = benchmark.stats.stats
        benchmark.extra_info["ticks_per_s"] = round(ticks / stats.median)
        _best[shape] = stats.min


# ------------------------------------------------------------------ the benchmarks
def bare_baseline(values: list[bytes]) -> pa.RecordBatch:
    """orjson.loads each message, six column lists, one record batch: no validation, no lineage."""
    loads = orjson.loads
    symbols, prices, sizes, stamps, exchanges, sides = [], [], [], [], [], []
    for value in values:
        tick = loads(value)
        symbols.append(tick["symbol"])
        prices.append(tick["price"])
        sizes.append(tick["size"])
        stamps.append(tick["timestamp_ms"])
        exchanges.append(tick.get("exchange"))
        sides.append(tick.get("side"))
    return pa.RecordBatch.from_arrays(
        [
            pa.array(symbols, pa.string()),
            pa.array(prices, pa.float64()),
            pa.array(sizes, pa.float64()),
            pa.array(stamps, pa.int64()),
            pa.array(exchanges, pa.string()),
            pa.array(sides, pa.string()),
        ],
        names=["symbol", "price", "size", "timestamp_ms", "exchange", "side"],
    )


def test_bare_baseline(benchmark):
    values = _messages("canonical").values
    batch = benchmark.pedantic(bare_baseline, args=(values,), rounds=FAST_ROUNDS, iterations=1, warmup_rounds=1)
    _record(benchmark, "canonical", "baseline", batch.num_rows)


def test_decode_canonical(benchmark):
    msgs = _messages("canonical")
    decoder = Decoder()
    assert decoder.fast(msgs) is not None, "the canonical batch must take the fast path"
    out = benchmark.pedantic(decoder.decode, args=(msgs,), rounds=FAST_ROUNDS, iterations=1, warmup_rounds=1)
    assert out.rejects == [] and out.ticks.num_rows == MESSAGES
    _record(benchmark, "canonical", "canonical", out.ticks.num_rows)
    if "baseline" in _best and "canonical" in _best:
        benchmark.extra_info["vs_baseline"] = round(_best["canonical"] / _best["baseline"], 3)


@pytest.mark.parametrize("shape", SHAPES)
def test_decode_feed(benchmark, shape):
    feed, _ = SHAPES[shape]
    msgs = _messages(shape)
    assert feeds.detect(orjson.loads(msgs.values[0])).name == feed
    decoder = Decoder()
    out = benchmark.pedantic(decoder.decode, args=(msgs,), rounds=CAREFUL_ROUNDS, iterations=1, warmup_rounds=0)
    assert out.rejects == [] and out.skipped == 0 and out.ticks.num_rows >= MESSAGES
    _record(benchmark, feed, shape, out.ticks.num_rows)
