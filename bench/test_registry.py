"""Schema-registry formats, what they cost: the decode stage on Avro and Protobuf ticks against the
canonical JSON decode, per process, and the drain of a backlog of Avro ticks against the same drain
on JSON (both sinks, default settings), each pair in one run; the report prints the ratios.

    scripts/bench -k registry
"""

from __future__ import annotations

import time
import uuid

import pytest
from conftest import BENCH_TICKS, PARTITIONS, STAGE_TICKS, drain

from finpulse import encode, produce, source
from finpulse.config import Settings, load_settings
from finpulse.decode import Decoder
from finpulse.records import Messages

BATCH = 10_000  # messages per decode call: a drain's batches are this size and more
ROUNDS = 5


def _framed(s: Settings, fmt: str, ticks: list[dict]) -> list[bytes]:
    if fmt == "json":
        return [v for _, v in produce.encoded(iter(ticks))]
    encode_one = encode.serializer(s, fmt, subject_name=f"{s.kafka_topic}-{fmt}")
    return [encode_one(t) for t in ticks]  # type: ignore[misc]


@pytest.mark.parametrize("fmt", ["json", "avro", "protobuf"])
def test_stage_decode_format(benchmark, fmt):
    """Decoder.decode over STAGE_TICKS framed ticks in batches of BATCH (the registry's schema is
    fetched before the first round, as a worker does once)."""
    s = load_settings(kafka_topic=f"bench-decode-{uuid.uuid4().hex[:8]}")
    ticks = list(produce.ticks(STAGE_TICKS, trade_ids=True, start_ms=1_700_000_000_000))
    values = _framed(s, fmt, ticks)
    batches = [
        Messages(values[i : i + BATCH], [0] * BATCH, list(range(i, i + BATCH)), [1_700_000_100_000] * BATCH)
        for i in range(0, STAGE_TICKS, BATCH)
    ]
    decoder = Decoder.from_settings(s)
    assert decoder.decode(batches[0]).ticks.num_rows == BATCH  # and the schema is read
    runs = []

    def run():
        started = time.perf_counter()
        rows = sum(decoder.decode(b).ticks.num_rows for b in batches)
        runs.append(time.perf_counter() - started)
        assert rows == STAGE_TICKS

    benchmark.pedantic(run, rounds=ROUNDS, iterations=1)
    median = sorted(runs)[len(runs) // 2]
    benchmark.extra_info.update(
        ticks_per_s=round(STAGE_TICKS / median), kind="stage", stage=f"decode {fmt}", format=fmt
    )


@pytest.fixture(scope="module")
def backlogs():
    """BENCH_TICKS ticks as canonical JSON and the same ticks as registry-framed Avro, a topic each."""
    made = {}
    ticks = list(produce.ticks(BENCH_TICKS))
    for fmt in ("json", "avro"):
        s = load_settings(kafka_topic=f"bench-{fmt}-{uuid.uuid4().hex[:8]}")
        source.create_topic(s, PARTITIONS)
        produce.send(s, iter([(t["symbol"].encode(), v) for t, v in zip(ticks, _framed(s, fmt, ticks))]))
        made[fmt] = s
    yield made
    for s in made.values():
        client = source.admin(s)  # held while the future resolves
        client.delete_topics([s.kafka_topic])[s.kafka_topic].result(timeout=30)


@pytest.mark.parametrize("fmt", ["json", "avro"])
def test_drain_format(benchmark, fresh_sinks, backlogs, fmt):
    """`ingest --drain`, 2 workers, batch 5 (the default), both sinks."""
    runs = []

    def setup():
        return (fresh_sinks(kafka_topic=backlogs[fmt].kafka_topic),), {}

    benchmark.pedantic(lambda s: runs.append(drain(s, 2)), setup=setup, rounds=1, iterations=1)
    seconds, rss = runs[-1]
    benchmark.extra_info.update(
        ticks_per_s=round(BENCH_TICKS / seconds),
        ticks=BENCH_TICKS,
        batch_size=5,
        workers=2,
        sinks="all",
        design="finpulse",
        kind="format",
        format=fmt,
        peak_rss_mib=rss,
    )
