import struct

import numpy as np
import psycopg
import pyarrow as pa
import pytest

from finpulse.schema import TICKS
from finpulse.sinks.postgres import pgcopy


def ticks(n: int, **over) -> pa.Table:
    cols = {
        "symbol": pa.array([f"S{i % 7}" for i in range(n)]),
        "price": pa.array(np.linspace(1.5, 99.25, n)),
        "size": pa.array(np.arange(n, dtype=np.float64)),
        "timestamp_ms": pa.array(1_700_000_000_000 + np.arange(n, dtype=np.int64)),
        "trade_time": pa.array(
            (1_700_000_000_000 + np.arange(n, dtype=np.int64)) * 1000 + 123, pa.timestamp("us", tz="UTC")
        ),
        "exchange": pa.array([None if i % 3 == 0 else "NYSE" for i in range(n)], pa.string()),
        "side": pa.array(["buy" if i % 2 else "sell" for i in range(n)]),
        "trade_id": pa.array([None if i % 4 == 1 else str(1000 + i) for i in range(n)], pa.string()),
        "kafka_time": pa.array(
            [None if i % 6 == 2 else (1_700_000_000_500 + i) * 1000 for i in range(n)], pa.timestamp("us", tz="UTC")
        ),
        "broker_time": pa.array([i % 5 == 0 for i in range(n)]),
        "kafka_partition": pa.array(np.full(n, 2, dtype=np.int32)),
        "kafka_offset": pa.array(np.arange(n, dtype=np.int64)),
        "tick_index": pa.array(np.zeros(n, dtype=np.int32)),
    }
    cols.update(over)
    return pa.table(cols, schema=TICKS)


def test_one_row_matches_the_binary_copy_format_by_hand():
    t = ticks(1, symbol=pa.array(["ÄB"]), exchange=pa.array([None], pa.string()), side=pa.array([""]))
    body = pgcopy.encode(t, with_header=False)
    pg_us = (1_700_000_000_000 * 1000 + 123) - 946_684_800_000_000
    kafka_us = 1_700_000_000_500 * 1000 - 946_684_800_000_000
    expected = (
        struct.pack(">h", 13)
        + struct.pack(">id", 8, 1.5)
        + struct.pack(">id", 8, 0.0)
        + struct.pack(">iq", 8, 1_700_000_000_000)
        + struct.pack(">iq", 8, pg_us)
        + struct.pack(">iB", 1, 1)
        + struct.pack(">ii", 4, 2)
        + struct.pack(">iq", 8, 0)
        + struct.pack(">ii", 4, 0)
        + struct.pack(">i", 3)
        + "ÄB".encode()
        + struct.pack(">i", -1)
        + struct.pack(">i", 0)
        + struct.pack(">i", 4)
        + b"1000"
        + struct.pack(">iq", 8, kafka_us)
    )
    assert body == expected


def test_columns_put_fixed_width_not_null_first():
    cols = pgcopy.copy_columns(TICKS)
    assert cols[-5:] == ["symbol", "exchange", "side", "trade_id", "kafka_time"]
    assert sorted(cols) == sorted(TICKS.names)


def test_sliced_arrays_encode_only_their_rows():
    t = ticks(50)
    assert pgcopy.encode(t.slice(10, 5), with_header=False) == pgcopy.encode(
        pa.Table.from_pylist(t.slice(10, 5).to_pylist(), schema=TICKS), with_header=False
    )


def test_chunks_are_the_same_bytes_as_one_encoding():
    t = pa.concat_tables([ticks(37), ticks(40)])  # a chunked table, cut across its chunk boundary
    pieces = list(pgcopy.chunks(t, rows=16))
    assert len(pieces) == 2 + 5  # header, 77 rows in pieces of 16, trailer
    assert b"".join(pieces) == pgcopy.encode(t)


def test_null_in_a_not_null_fixed_column_is_refused():
    t = ticks(2).set_column(1, TICKS.field("price"), pa.array([1.0, None]))  # the field says NOT NULL
    with pytest.raises(ValueError, match="price"):
        pgcopy.encode(t)


def test_a_nullable_fixed_column_carries_its_nulls():
    t = ticks(12)
    assert t.column("kafka_time").null_count == 2
    assert pgcopy.encode(t.slice(2, 1), with_header=False).endswith(struct.pack(">i", -1))  # row 2: NULL


@pytest.mark.postgres
def test_round_trip_through_postgres(postgres):
    t = ticks(1000, symbol=pa.array([("€" * (i % 4)) + f"X{i}" for i in range(1000)]))
    cols = pgcopy.copy_columns(TICKS)
    with psycopg.connect(postgres.postgres_conninfo()) as conn:
        conn.execute(
            "CREATE TEMP TABLE rt (symbol text, price float8, size float8, timestamp_ms int8, "
            "trade_time timestamptz, exchange text, side text, trade_id text, kafka_time timestamptz, "
            "broker_time bool, kafka_partition int4, kafka_offset int8, tick_index int4)"
        )
        with conn.cursor().copy(f"COPY rt ({', '.join(cols)}) FROM STDIN (FORMAT BINARY)") as copy:
            for chunk in pgcopy.chunks(t, rows=300):
                copy.write(chunk)
        rows = conn.execute(f"SELECT {', '.join(TICKS.names)} FROM rt ORDER BY kafka_offset").fetchall()
    back = pa.Table.from_pylist([dict(zip(TICKS.names, r)) for r in rows], schema=TICKS)
    assert back.equals(t)
