"""Synthetic ticks for demos, tests and benchmarks: a seeded random walk per symbol, keyed by
symbol so each symbol stays in one partition."""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Iterator

import orjson
from confluent_kafka import KafkaException, Producer

from finpulse.config import Settings
from finpulse.errors import ServiceUnavailable
from finpulse.kafka_config import client_config

DEFAULT_SYMBOLS = (
    "AAPL",
    "MSFT",
    "NVDA",
    "AMZN",
    "GOOGL",
    "META",
    "TSLA",
    "JPM",
    "V",
    "XOM",
    "BTC-USD",
    "ETH-USD",
    "SOL-USD",
    "EURUSD",
    "GBPUSD",
    "USDJPY",
)
EXCHANGES = ("NASDAQ", "NYSE", "ARCA", "BATS", "COINBASE", "BINANCE")
# Per-tick volatility of the walk: 5 basis points, so a few thousand ticks move a price ~1-3%.
STEP_SIGMA = 0.0005
# Where each known symbol's walk starts, so demo data looks like a market: rough 2024 levels, not
# quotes (stocks in USD, crypto in USD, FX as the pair's rate). Each run starts within START_SPREAD
# of these, seeded. A symbol not listed here (--symbols) starts at a seeded random 20-500.
REFERENCE_PRICES = {
    "AAPL": 190.0,
    "MSFT": 420.0,
    "NVDA": 120.0,
    "AMZN": 185.0,
    "GOOGL": 170.0,
    "META": 500.0,
    "TSLA": 200.0,
    "JPM": 200.0,
    "V": 275.0,
    "XOM": 115.0,
    "BTC-USD": 60_000.0,
    "ETH-USD": 3_000.0,
    "SOL-USD": 150.0,
    "EURUSD": 1.10,
    "GBPUSD": 1.27,
    "USDJPY": 150.0,
}
START_SPREAD = 0.02  # +-2%: runs with different seeds start apart, all of them plausible
# Prices keep this many significant digits, whatever their size: 1.10234 (FX), 190.123, 60123.4.
PRICE_DIGITS = 6


def significant(price: float, digits: int = PRICE_DIGITS) -> float:
    """`price` rounded to `digits` significant digits (a fixed number of decimals would flatten FX)."""
    return float(f"{price:.{digits}g}")


def start_price(symbol: str, rng: random.Random) -> float:
    """A seeded start near REFERENCE_PRICES[symbol], or a seeded random one for an unknown symbol."""
    reference = REFERENCE_PRICES.get(symbol.upper())
    if reference is None:
        return round(rng.uniform(20, 500), 2)
    return significant(reference * rng.uniform(1 - START_SPREAD, 1 + START_SPREAD))


# Trade time between consecutive ticks unless told otherwise: 10 ticks per millisecond.
INTERVAL_US = 100
# A re-sent trade (duplicate_rate) is one of this many sent last, picked at random.
RESEND_FROM = 1000


def ticks(
    count: int,
    symbols: tuple[str, ...] = DEFAULT_SYMBOLS,
    seed: int = 7,
    start_ms: int | None = None,
    trade_ids: bool = False,
    first_trade_id: int = 1,
    duplicate_rate: float = 0.0,
    drop_rate: float = 0.0,
    interval_us: int = INTERVAL_US,
) -> Iterator[dict]:
    """`count` trades in time order; equal seeds (and options) give equal ticks.

    `trade_ids`: each tick carries a trade_id, consecutive per symbol from `first_trade_id`.
    `drop_rate`: that fraction of the trades is not sent (their ids are skipped: sequence gaps).
    `duplicate_rate`: after that fraction of the sent trades, one of the RESEND_FROM trades sent last
    goes again, unchanged (same trade id and time: a collector's re-send), as one more message.
    Both imply trade ids, and draw from a generator of their own: the walk is the same without them."""
    rng = random.Random(seed)
    faults = random.Random(seed + 1_000_003)
    prices = {s: start_price(s, rng) for s in symbols}
    venue = {s: EXCHANGES[i % len(EXCHANGES)] for i, s in enumerate(symbols)}
    next_id = dict.fromkeys(symbols, first_trade_id)
    with_ids = trade_ids or duplicate_rate > 0 or drop_rate > 0
    recent: list[dict] = []
    now = int(time.time() * 1000) if start_ms is None else start_ms
    for i in range(count):
        sym = symbols[rng.randrange(len(symbols))]
        prices[sym] = significant(prices[sym] * math.exp(rng.gauss(0.0, STEP_SIGMA)))
        tick: dict = {
            "symbol": sym,
            "price": prices[sym],
            "size": float(rng.randint(1, 500)),
            "timestamp_ms": now + i * interval_us // 1000,
            "exchange": venue[sym],
        }
        if not with_ids:
            yield tick
            continue
        tick["trade_id"] = next_id[sym]
        next_id[sym] += 1
        if drop_rate and faults.random() < drop_rate:
            continue
        yield tick
        if duplicate_rate:
            recent.append(tick)
            if len(recent) > RESEND_FROM:
                del recent[0]
            if faults.random() < duplicate_rate:
                yield dict(recent[faults.randrange(len(recent))])


def producer(settings: Settings) -> Producer:
    return Producer(
        {
            **client_config(settings),
            "linger.ms": 20,  # batch messages into large produce requests
            "compression.type": "lz4",
            "queue.buffering.max.messages": 1_000_000,
            "enable.idempotence": True,  # no duplicates from producer retries
        }
    )


def send(
    settings: Settings,
    messages: Iterator[tuple],
    rate: float | None = None,
    on_progress: Callable[[int], None] | None = None,
    using: Producer | None = None,
) -> int:
    """Produce (key, value[, headers]) to KAFKA_TOPIC at up to `rate` messages/s; returns how many.
    `using`: an already connected producer (a new one is made otherwise)."""
    p = using if using is not None else producer(settings)
    errors: list[str] = []

    def delivered(err, _msg) -> None:
        if err is not None:
            errors.append(err.str())

    topic = settings.kafka_topic
    sent = 0
    started = time.monotonic()
    for message in messages:
        key, value = message[0], message[1]
        headers = message[2] if len(message) > 2 else None
        while True:
            try:
                p.produce(topic, value=value, key=key, headers=headers, on_delivery=delivered)
                break
            except BufferError:  # local queue full: let librdkafka send some
                p.poll(0.05)
            except KafkaException as exc:
                raise ServiceUnavailable(f"cannot produce to {topic}: {exc.args[0].str()}") from None
        sent += 1
        if sent % 1000 == 0:
            p.poll(0)
            if on_progress:
                on_progress(1000)
            if rate:
                ahead = sent / rate - (time.monotonic() - started)
                if ahead > 0:
                    time.sleep(ahead)
        elif rate and rate < 1000:
            ahead = sent / rate - (time.monotonic() - started)
            if ahead > 0:
                time.sleep(ahead)
    left = p.flush(60)
    if on_progress:
        on_progress(sent % 1000)
    if left or errors:
        raise ServiceUnavailable(
            f"{left + len(errors)} of {sent} messages were not delivered to {topic}"
            + (f": {errors[0]}" if errors else "; is Kafka running?")
        )
    return sent


def encoded(ticks_: Iterator[dict]) -> Iterator[tuple[bytes, bytes]]:
    """(key, value) of each tick as canonical JSON (encode.py: the registry's formats)."""
    for t in ticks_:
        yield t["symbol"].encode(), orjson.dumps(t)
