"""Reading the sinks back and comparing them with what `finpulse produce` sent."""

from __future__ import annotations

import psycopg

from finpulse.config import Settings

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

    table = DeltaTable(s.delta_uri, storage_options=s.delta_storage_options).to_pyarrow_table(columns=list(columns))
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
