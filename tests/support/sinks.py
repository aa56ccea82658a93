"""Reading the sinks (and the dead-letter topic) back and comparing them with what was sent."""

from __future__ import annotations

import time
import uuid

import psycopg
from confluent_kafka import Consumer

from finpulse.config import Settings
from finpulse.sinks.delta.azure import storage_options

VALUE_COLUMNS = ("symbol", "price", "size", "timestamp_ms", "exchange")
KEY_COLUMNS = ("kafka_partition", "kafka_offset", "tick_index")


def pg_rows(s: Settings, columns=VALUE_COLUMNS + KEY_COLUMNS) -> list[tuple]:
    with psycopg.connect(s.postgres_conninfo()) as conn:
        return conn.execute(f"SELECT {', '.join(columns)} FROM prices_raw").fetchall()


def pg_count(s: Settings, table: str = "prices_raw") -> int:
    with psycopg.connect(s.postgres_conninfo()) as conn:
        return conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]


def delta_rows(s: Settings, columns=VALUE_COLUMNS + KEY_COLUMNS) -> list[tuple]:
    from deltalake import DeltaTable

    table = DeltaTable(s.delta_uri, storage_options=storage_options(s)).to_pyarrow_table(columns=list(columns))
    return list(zip(*(table.column(c).to_pylist() for c in columns)))


def produced(count: int, seed: int = 7) -> list[tuple]:
    """What `finpulse produce --count N --seed S` sent, as value tuples (order-free comparison)."""
    from finpulse.produce import ticks

    return [tuple(t[c] for c in VALUE_COLUMNS) for t in ticks(count, seed=seed, start_ms=0)]


def assert_exactly_once(rows: list[tuple], expected_values: list[tuple], where: str) -> None:
    keys = [r[len(VALUE_COLUMNS) :] for r in rows]
    assert len(set(keys)) == len(keys), f"{where}: duplicate (partition, offset, tick_index) keys"
    assert len(rows) == len(expected_values), f"{where}: {len(rows)} rows, expected {len(expected_values)}"
    # produce stamps ticks from the wall clock; compare times relative to the first tick
    t = VALUE_COLUMNS.index("timestamp_ms")
    start = min(r[t] for r in rows)
    got = sorted(r[:t] + (r[t] - start,) + r[t + 1 : len(VALUE_COLUMNS)] for r in rows)
    assert got == sorted(expected_values), f"{where}: values differ from what was produced"


def read_topic(s: Settings, topic: str, count: int, timeout: float = 60) -> list[tuple[int, bytes, dict]]:
    """(partition, value, headers) of the first `count` messages of `topic`, read by a new group;
    fewer if they do not arrive within `timeout` seconds."""
    consumer = Consumer(
        {
            "bootstrap.servers": s.kafka_bootstrap_servers,
            "group.id": f"check-{uuid.uuid4()}",
            "auto.offset.reset": "earliest",
        }
    )
    consumer.subscribe([topic])
    seen: list[tuple[int, bytes, dict]] = []
    deadline = time.monotonic() + timeout
    try:
        while len(seen) < count and time.monotonic() < deadline:
            m = consumer.poll(1.0)
            if m is not None and m.error() is None:
                seen.append((m.partition(), m.value(), dict(m.headers())))
    finally:
        consumer.close()
    return seen
