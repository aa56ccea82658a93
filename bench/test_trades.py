"""Exactly once per trade, what it costs: the drain of a backlog whose ticks carry trade ids, with
the trade window on and off in one run (the report prints the ratio), the same drain over a day of
trade time (the window's memory does not grow with the trades), the fold alone, and what a text
id costs to hold.
"""

from __future__ import annotations

import time
import tracemalloc
import uuid

import orjson
import pytest
from conftest import BENCH_TICKS, PARTITIONS, drain

from finpulse import produce, source
from finpulse.config import Settings, load_settings
from finpulse.decode import Decoder
from finpulse.dedup import CHECKPOINT_OFFSETS, TradeWindow, dump
from finpulse.records import Messages

DAY_US = 86_400_000_000


def _backlog(interval_us: int, start_ms: int | None = None) -> Settings:
    s = load_settings(kafka_topic=f"bench-trades-{uuid.uuid4().hex[:8]}")
    source.create_topic(s, PARTITIONS)
    ticks = produce.ticks(BENCH_TICKS, trade_ids=True, interval_us=interval_us, start_ms=start_ms)
    produce.send(s, produce.encoded(ticks))
    return s


def _drop(s: Settings) -> None:
    client = source.admin(s)  # held while the future resolves: a collected client ends its futures with _DESTROY
    client.delete_topics([s.kafka_topic])[s.kafka_topic].result(timeout=30)


@pytest.fixture(scope="module")
def with_ids():
    """BENCH_TICKS canonical ticks with consecutive trade ids per symbol, 10 per millisecond."""
    s = _backlog(produce.INTERVAL_US)
    yield s
    _drop(s)


@pytest.fixture(scope="module")
def a_day():
    """The same number of ticks spread over 24 hours of trade time (2k ticks/s of 16 symbols for a
    day is 173M trades: the window holds per symbol and gap, so these fill it the same way)."""
    s = _backlog(DAY_US // BENCH_TICKS, int(time.time() * 1000) - DAY_US // 1000)  # the last 24 hours
    yield s
    _drop(s)


def _drain(benchmark, fresh_sinks, backlog: Settings, window: str, what: str) -> None:
    runs = []

    def setup():
        return (fresh_sinks(kafka_topic=backlog.kafka_topic, dedup_window_s=window),), {}

    benchmark.pedantic(lambda s: runs.append(drain(s, 2)), setup=setup, rounds=1, iterations=1)
    seconds, rss = runs[-1]
    benchmark.extra_info.update(
        ticks_per_s=round(BENCH_TICKS / seconds),
        ticks=BENCH_TICKS,
        batch_size=5,
        workers=2,
        sinks="all",
        design="finpulse",
        kind="trades",
        trades=what,
        peak_rss_mib=rss,
    )


@pytest.mark.parametrize("window", ["24h", "0"])
def test_drain_with_trade_ids(benchmark, fresh_sinks, with_ids, window):
    """Batch 5, 2 workers, both sinks: the trade window on (24h) and off (0)."""
    _drain(benchmark, fresh_sinks, with_ids, window, "window on" if window != "0" else "window off")


def test_drain_a_day_of_trade_time(benchmark, fresh_sinks, a_day):
    _drain(benchmark, fresh_sinks, a_day, "24h", "a day of trade time, window on")


def _decoded(count: int, first: int):
    ticks = produce.ticks(count, trade_ids=True, start_ms=1_700_000_000_000)
    values = [orjson.dumps(t) for t in ticks]
    offsets = list(range(first, first + count))
    msgs = Messages(values, [0] * count, offsets, [1_700_000_100_000] * count)
    return Decoder().decode(msgs), msgs


def test_stage_trade_window(benchmark):
    """The fold alone (TradeWindow.apply), over 100k decoded ticks in batches of 10k."""
    parts = [_decoded(10_000, i * 10_000) for i in range(10)]
    runs = []

    def run():
        w = TradeWindow(load_settings())
        started = time.perf_counter()
        for decoded, msgs in parts:
            w.apply(decoded, msgs)
        runs.append(time.perf_counter() - started)

    benchmark.pedantic(run, rounds=3, iterations=1)
    benchmark.extra_info.update(ticks_per_s=round(100_000 / min(runs)), kind="stage", stage="trade window")


def test_memory_per_million_text_ids(benchmark):
    """What a partition's window holds for 1M text ids (UUIDs, venues that do not number
    consecutively): the sorted hashes and times after a checkpoint merged them."""
    settings = load_settings(dedup_max_ids=1_000_000)
    w = TradeWindow(settings).fresh(0, 0)
    held = []

    def run():
        tracemalloc.start()
        for i in range(1_000_000):
            w.text_id("EX", "SYM", f"{i:x}-{i}", 1_700_000_000_000_000 + i)
            if i % CHECKPOINT_OFFSETS == CHECKPOINT_OFFSETS - 1:  # one id a message: a checkpoint per block
                w.run_checkpoint(i + 1, [])
        w.run_checkpoint(1_000_000 + CHECKPOINT_OFFSETS, [])
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        held.append((w.hashes.nbytes + w.times.nbytes, peak, len(dump(w))))

    benchmark.pedantic(run, rounds=1, iterations=1)
    kept, peak, snapshot = held[-1]
    benchmark.extra_info.update(
        kind="memory",
        ids=w.ids_held,
        held_mib=round(kept / 2**20, 1),
        peak_mib_while_adding=round(peak / 2**20, 1),
        snapshot_mib=round(snapshot / 2**20, 1),
    )
