"""The machine's raw limits for the same rows: what no ingester on this box can beat."""

from __future__ import annotations

import time

import orjson
import psycopg
import pyarrow as pa
import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition
from conftest import BENCH_TICKS
from deltalake import write_deltalake

from finpulse import produce, source
from finpulse.decode import Decoder, Messages
from finpulse.sinks.delta.table import PARTITION_BY, with_partition_columns
from finpulse.sinks.postgres import pgcopy
from finpulse.sinks.postgres.tables import PRICES_TABLE

LIMIT_ROWS = min(BENCH_TICKS, 500_000)  # one large batch, as large as memory comfortably allows


@pytest.fixture(scope="module")
def rows() -> pa.Table:
    values = [orjson.dumps(t) for t in produce.ticks(LIMIT_ROWS)]
    n = len(values)
    return pa.Table.from_batches([Decoder().decode(Messages(values, [0] * n, list(range(n)), [0] * n)).ticks])


def test_limit_kafka_consume(benchmark, backlog):
    """librdkafka alone: one consumer, all partitions, messages counted and dropped."""
    s = backlog.settings
    runs = []

    def run():
        c = Consumer(
            {
                "bootstrap.servers": s.kafka_bootstrap_servers,
                "group.id": "bench-limit",
                "enable.auto.commit": False,
                "fetch.max.bytes": 64 << 20,
            }
        )
        c.assign([TopicPartition(s.kafka_topic, p, OFFSET_BEGINNING) for p in source.partitions(s)])
        got = len(c.consume(1, 10.0))  # the clock starts at the first message
        started = time.perf_counter()
        while got < backlog.ticks:
            got += len(c.consume(50_000, 1.0))
        runs.append(time.perf_counter() - started)
        c.close()

    benchmark.pedantic(run, rounds=2, iterations=1)
    benchmark.extra_info.update(
        ticks_per_s=round(backlog.ticks / min(runs)), ticks=backlog.ticks, design="limit", kind="limit", stage="kafka"
    )


def test_limit_postgres_copy(benchmark, rows, fresh_sinks):
    """PostgreSQL's own binary COPY of the same rows into the same table, bytes prepared beforehand."""
    data = pgcopy.encode(rows)
    statement = f"COPY {PRICES_TABLE} ({', '.join(pgcopy.copy_columns(rows.schema))}) FROM STDIN (FORMAT BINARY)"
    runs = []

    def setup():
        return (fresh_sinks(sinks="postgres"),), {}

    def run(s):
        with psycopg.connect(s.postgres_conninfo()) as conn:
            started = time.perf_counter()
            with conn.cursor().copy(statement) as copy:
                copy.write(data)
            conn.commit()
            runs.append(time.perf_counter() - started)

    benchmark.pedantic(run, setup=setup, rounds=2, iterations=1)
    benchmark.extra_info.update(
        ticks_per_s=round(rows.num_rows / min(runs)),
        ticks=rows.num_rows,
        design="limit",
        kind="limit",
        stage="postgres",
    )


def test_limit_delta_write(benchmark, rows, fresh_sinks):
    """delta-rs writing the rows as one large batch to a new local table."""
    table = with_partition_columns(rows)
    runs = []

    def setup():
        return (str(fresh_sinks.root / f"limit-{time.monotonic_ns()}"),), {}

    def run(path):
        started = time.perf_counter()
        write_deltalake(path, table, mode="append", partition_by=PARTITION_BY)
        runs.append(time.perf_counter() - started)

    benchmark.pedantic(run, setup=setup, rounds=2, iterations=1)
    benchmark.extra_info.update(
        ticks_per_s=round(rows.num_rows / min(runs)), ticks=rows.num_rows, design="limit", kind="limit", stage="delta"
    )
