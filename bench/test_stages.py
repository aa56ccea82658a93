"""Each stage alone on the same 100,000 canonical ticks (decoding is in test_decode.py)."""

from __future__ import annotations

import time

import orjson
import psycopg
import pyarrow as pa
import pytest
from conftest import STAGE_TICKS

from finpulse import produce, source
from finpulse.batch import TickBatch
from finpulse.decode import Decoder, Messages
from finpulse.sinks.delta import DeltaSink
from finpulse.sinks.postgres import PostgresSink
from finpulse.sinks.postgres.tables import PRICES_TABLE

WRITE_BATCH = 10_000  # ticks per sink write in the stage runs: a typical group-commit size


@pytest.fixture(scope="module")
def ticks() -> pa.Table:
    values = [orjson.dumps(t) for t in produce.ticks(STAGE_TICKS)]
    n = len(values)
    decoded = Decoder().decode(Messages(values, [i % 4 for i in range(n)], list(range(n)), [0] * n))
    return pa.Table.from_batches([decoded.ticks])


def _batches(table: pa.Table) -> list[TickBatch]:
    out = []
    for start in range(0, table.num_rows, WRITE_BATCH):
        part = table.slice(start, WRITE_BATCH)
        offsets = {p: int(part.column("kafka_offset").to_numpy().max()) + 1 for p in range(4)}
        out.append(TickBatch(part, (), offsets))
    return out


# What each index costs the ingest rate: the same COPYs into prices_raw with fewer indexes.
INDEX_SETS = {
    "pk+symbol_time": None,
    "pk only": "DROP INDEX {t}_symbol_time",
    "no indexes": "DROP INDEX {t}_symbol_time; ALTER TABLE {t} DROP CONSTRAINT {t}_pkey",
}


@pytest.mark.parametrize("indexes", INDEX_SETS)
def test_stage_postgres_copy(benchmark, ticks, fresh_sinks, indexes):
    """Encode + binary COPY + offsets, through PostgresSink.write, in 10k-tick writes."""
    batches = _batches(ticks)
    runs = []

    def setup():
        s = fresh_sinks(sinks="postgres")
        if INDEX_SETS[indexes]:
            with psycopg.connect(s.postgres_conninfo(), autocommit=True) as conn:
                conn.execute(INDEX_SETS[indexes].format(t=PRICES_TABLE))
        return (PostgresSink(s.postgres_conninfo(), s.kafka_topic),), {}

    def run(sink):
        started = time.perf_counter()
        for b in batches:
            sink.write(b)
        runs.append(time.perf_counter() - started)
        sink.close()

    benchmark.pedantic(run, setup=setup, rounds=3, iterations=1)
    benchmark.extra_info.update(
        ticks_per_s=round(ticks.num_rows / min(runs)),
        ticks=ticks.num_rows,
        batch_size=WRITE_BATCH,
        design="finpulse",
        kind="stage",
        stage="postgres",
        indexes=indexes,
    )


def test_stage_delta_append(benchmark, ticks, fresh_sinks):
    """Appends with txn offsets through DeltaSink.write on a local path, in 10k-tick writes."""
    batches = _batches(ticks)
    runs = []

    def setup():
        s = fresh_sinks(sinks="delta")
        return (DeltaSink(s.delta_uri, {}, s.kafka_topic),), {}

    def run(sink):
        started = time.perf_counter()
        for b in batches:
            sink.write(b)
        runs.append(time.perf_counter() - started)

    benchmark.pedantic(run, setup=setup, rounds=3, iterations=1)
    benchmark.extra_info.update(
        ticks_per_s=round(ticks.num_rows / min(runs)),
        ticks=ticks.num_rows,
        batch_size=WRITE_BATCH,
        design="finpulse",
        kind="stage",
        stage="delta",
    )


def test_stage_kafka_consume(benchmark, backlog):
    """FinPulse's consume loop (consumer settings, batch take, message columns), no decoding."""
    from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

    from finpulse.source import MAX_TAKE

    s = backlog.settings
    want = min(backlog.ticks, 10 * STAGE_TICKS)
    runs = []

    def run():
        c = Consumer(
            {
                "bootstrap.servers": s.kafka_bootstrap_servers,
                "group.id": "bench-consume",
                "enable.auto.commit": False,
                **source.PREFETCH,
            }
        )
        c.assign([TopicPartition(s.kafka_topic, p, OFFSET_BEGINNING) for p in source.partitions(s)])
        got = len(Messages.from_kafka(c.consume(1, 10.0)))  # the clock starts at the first message
        started = time.perf_counter()
        while got < want:
            records = c.consume(MAX_TAKE, 1.0)
            got += len(Messages.from_kafka(records))
        runs.append((got, time.perf_counter() - started))
        c.close()

    benchmark.pedantic(run, rounds=2, iterations=1)
    got, seconds = min(runs, key=lambda r: r[1])
    benchmark.extra_info.update(
        ticks_per_s=round(got / seconds), ticks=got, design="finpulse", kind="stage", stage="kafka"
    )
