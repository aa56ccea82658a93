"""decode/avro_batch.py: a batch of Avro payloads read at once by polars gives exactly what
fastavro gives message by message, or nothing (None: the batch goes message by message)."""

from __future__ import annotations

import io
import random

import fastavro
import orjson
import pytest

from finpulse import encode
from finpulse.decode import avro_batch
from finpulse.decode.avro_batch import batch_reader
from finpulse.decode.registry import _avro

SCHEMA = orjson.dumps(encode.AVRO_TICK).decode()
PARSED = fastavro.parse_schema(encode.AVRO_TICK)


def _payload(record: dict) -> bytes:
    out = io.BytesIO()
    fastavro.schemaless_writer(out, PARSED, record)
    return out.getvalue()


def _records(rng: random.Random, n: int) -> list[dict]:
    return [
        {
            "symbol": rng.choice(["AAPL", "MSFT", "BRK.B", "Ünïcode", "x" * 300]),
            "price": rng.uniform(-1e12, 1e12),
            "size": rng.choice([0.0, 1.5, 1e300]),
            "timestamp_ms": rng.choice([None, 0, -1, 1_700_000_000_000 + i, 2**63 - 1, -(2**63)]),
            "exchange": rng.choice([None, "", "XNAS"]),
            "side": rng.choice([None, "buy", "sell"]),
            "trade_id": rng.choice([None, str(i), "é" * 70]),
        }
        for i in range(n)
    ]


def _one_by_one(payloads: list[bytes]) -> list[dict]:
    read = _avro(SCHEMA)
    return [read(p, None) for p in payloads]


def _as_rows(columns: dict) -> list[dict]:
    lists = {name: column.to_pylist() for name, column in columns.items()}
    return [dict(zip(lists, values)) for values in zip(*lists.values())]


def test_a_batch_reads_as_fastavro_reads_each_message():
    payloads = [_payload(r) for r in _records(random.Random(1), 3000)]
    reader = batch_reader(SCHEMA)
    assert reader is not None
    columns = reader.read(payloads)
    assert columns is not None
    assert _as_rows(columns) == _one_by_one(payloads)


@pytest.mark.parametrize(
    "spoil",
    [
        pytest.param(lambda p: p + b"\x00", id="a byte after the record"),
        pytest.param(lambda p: p[:-1], id="a byte short"),
        # timestamp_ms's union after symbol (1+4 bytes), price and size (8 each): branch 5, or -1
        pytest.param(lambda p: p[:21] + b"\x0a" + p[22:], id="union branch 5"),
        pytest.param(lambda p: p[:21] + b"\x01" + p[22:], id="union branch -1"),
        # the symbol's length as two bytes (0x88 0x00 is 4 too): not the fewest bytes
        pytest.param(lambda p: b"\x88\x00" + p[1:], id="a length of more bytes than it needs"),
    ],
)
def test_a_payload_that_is_not_exactly_one_record_sends_the_batch_message_by_message(spoil):
    record = {"symbol": "AAPL", "price": 1.0, "size": 2.0, "timestamp_ms": 3, "exchange": None, "side": "buy"}
    payloads = [_payload({**record, "trade_id": str(i)}) for i in range(10)]
    assert payloads[0][:5] == b"\x08AAPL" and payloads[0][21] == 0x02  # where the spoilers aim
    payloads[4] = spoil(payloads[4])
    assert batch_reader(SCHEMA).read(payloads) is None


def test_random_damage_is_never_read_as_something_else():
    """Flip, cut or grow one payload of a batch: the batch is refused, or each row is what fastavro
    reads from its own payload."""
    rng = random.Random(7)
    good = [_payload(r) for r in _records(rng, 40)]
    reader = batch_reader(SCHEMA)
    refused = 0
    for _ in range(1500):
        payloads = list(good)
        i = rng.randrange(len(payloads))
        damaged = bytearray(payloads[i])
        kind = rng.choice("fcg")
        if kind == "f":
            damaged[rng.randrange(len(damaged))] ^= 1 << rng.randrange(8)
        elif kind == "c":
            del damaged[rng.randrange(len(damaged)) :]
        else:
            damaged.append(rng.randrange(256))
        payloads[i] = bytes(damaged)
        reader.quiet_until = 0.0  # a panic's pause would hide the next cases
        columns = reader.read(payloads)
        if columns is None:
            refused += 1
            continue
        assert _as_rows(columns) == _one_by_one(payloads)  # raises if fastavro refuses one
    assert 0 < refused < 1500


def test_a_string_longer_than_the_batch_is_refused():
    payloads = [_payload(r) for r in _records(random.Random(3), 20)]
    # the symbol's length says 4,000 bytes: more than the batch holds (polars 2.2 panics on it)
    assert batch_reader(SCHEMA).read([b"\xc0\x3e" + payloads[0][1:], *payloads[1:]]) is None


def test_a_panic_of_polars_pauses_batch_reading_for_a_while(monkeypatch):
    import polars

    class PanicException(BaseException):  # pyo3's, which derives from BaseException too
        pass

    payloads = [_payload(r) for r in _records(random.Random(3), 20)]
    reader = batch_reader(SCHEMA)
    now = [1000.0]
    monkeypatch.setattr(avro_batch.time, "monotonic", lambda: now[0])
    with monkeypatch.context() as m:
        m.setattr(polars, "read_avro", lambda *_: (_ for _ in ()).throw(PanicException("boom")))
        assert reader.read(payloads) is None
    assert reader.read(payloads) is None  # paused: polars is not asked
    now[0] += avro_batch.PANIC_PAUSE_S + 1
    assert reader.read(payloads) is not None

    with monkeypatch.context() as m:  # anything else that is not an Exception goes through
        m.setattr(polars, "read_avro", lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
        with pytest.raises(KeyboardInterrupt):
            reader.read(payloads)


@pytest.mark.parametrize(
    "field_type",
    [
        ["null", "long", "string"],
        {"type": "long", "logicalType": "timestamp-millis"},
        {"type": "record", "name": "Inner", "fields": [{"name": "x", "type": "long"}]},
        {"type": "array", "items": "long"},
        "boolean",
    ],
)
def test_schemas_beyond_flat_primitive_fields_are_read_message_by_message(field_type):
    schema = {**encode.AVRO_TICK, "fields": [*encode.AVRO_TICK["fields"][:6], {"name": "trade_id", "type": field_type}]}
    assert batch_reader(orjson.dumps(schema).decode()) is None
