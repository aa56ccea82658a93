"""The PostgreSQL sink's guards: positions only move forward, a partition's first write is serialised,
and a batch PostgreSQL refuses for a data reason is narrowed down to the rows it refuses."""

from __future__ import annotations

import threading

import orjson
import psycopg
import pytest
from support.cli import env_for, finpulse
from support.sinks import pg_count

from finpulse import produce
from finpulse.batch import Accumulator, TickBatch
from finpulse.normalize import Decoder, Messages
from finpulse.sinks.postgres import _ADVANCE, PostgresSink

pytestmark = [pytest.mark.postgres]

T0 = 1_700_000_000_000


def span(partition: int, start: int, end: int, poison: set[int] = frozenset()) -> TickBatch:
    offsets = list(range(start, end))
    values = [
        orjson.dumps({"symbol": "POISON" if o in poison else "OK", "price": 1.0 + o, "size": 1, "timestamp_ms": T0 + o})
        for o in offsets
    ]
    msgs = Messages(values, [partition] * len(offsets), offsets, [T0] * len(offsets))
    acc = Accumulator()
    acc.add(Decoder().decode(msgs), msgs.partitions, msgs.offsets)
    return acc.take()


def test_the_offsets_upsert_never_lowers_a_position(isolated):
    sink = PostgresSink(isolated.postgres_conninfo(), isolated.kafka_topic)
    try:
        assert sink.write(span(0, 0, 10)).held == {0: 10}
        with psycopg.connect(isolated.postgres_conninfo()) as conn:
            conn.execute(_ADVANCE, (isolated.kafka_topic, None, [0], [3]))
        assert sink.positions([0]) == {0: 10}
    finally:
        sink.close()


def test_concurrent_first_writes_of_a_partition_are_serialised(isolated):
    """Two writers (a live ingester and a replay, or two owners around a rebalance) race for a
    partition nobody has written yet: one lands the rows, the other finds them held. Neither fails."""
    sinks = [PostgresSink(isolated.postgres_conninfo(), isolated.kafka_topic) for _ in range(2)]
    batches = [span(3, 0, 2000), span(3, 0, 2500)]
    errors: list[BaseException] = []
    start = threading.Barrier(2)

    def write(sink, batch):
        start.wait()
        try:
            sink.write(batch)
        except BaseException as exc:  # noqa: BLE001 - the test reports whatever escaped
            errors.append(exc)

    threads = [threading.Thread(target=write, args=pair) for pair in zip(sinks, batches)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert errors == []
        assert pg_count(isolated) == 2500 and sinks[0].positions([3]) == {3: 2500}
    finally:
        for sink in sinks:
            sink.close()


POISON_TRIGGER = """
CREATE FUNCTION refuse_poison() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF NEW.symbol = 'POISON' THEN RAISE EXCEPTION 'poison tick' USING ERRCODE = '22023'; END IF;
  RETURN NEW;
END $$;
CREATE TRIGGER refuse_poison BEFORE INSERT ON prices_raw FOR EACH ROW EXECUTE FUNCTION refuse_poison();
"""


def test_a_batch_refused_for_a_data_reason_is_narrowed_to_the_offending_rows(isolated):
    with psycopg.connect(isolated.postgres_conninfo(), autocommit=True) as conn:
        conn.execute(POISON_TRIGGER)
    sink = PostgresSink(isolated.postgres_conninfo(), isolated.kafka_topic)
    try:
        assert sink.write(span(1, 0, 1000, poison={17, 640})) == ({1: 1000}, 998, 2)
    finally:
        sink.close()
    with psycopg.connect(isolated.postgres_conninfo()) as conn:
        assert conn.execute("SELECT count(*) FROM prices_raw").fetchone()[0] == 998
        rejects = conn.execute(
            "SELECT kafka_offset, tick_index, feed, reason, raw FROM prices_rejected ORDER BY 1"
        ).fetchall()
    assert [(o, i, f) for o, i, f, _, _ in rejects] == [(17, 0, "postgres"), (640, 0, "postgres")]
    assert all("22023" in reason and "poison tick" in reason for *_, reason, _ in rejects)
    assert orjson.loads(bytes(rejects[0][4]))["symbol"] == "POISON"


@pytest.mark.kafka
@pytest.mark.slow
def test_a_tick_postgres_refuses_does_not_stop_ingest_and_verify_agrees(isolated):
    with psycopg.connect(isolated.postgres_conninfo(), autocommit=True) as conn:
        conn.execute(POISON_TRIGGER)
    ticks = [
        orjson.dumps({"symbol": "POISON" if i % 97 == 5 else "OK", "price": 2.5, "size": 1, "timestamp_ms": T0 + i})
        for i in range(3000)
    ]
    produce.send(isolated, iter([(b"k%d" % (i % 7), v) for i, v in enumerate(ticks)]))
    env = env_for(isolated, FINPULSE_BATCH_SIZE="50")
    out = finpulse("ingest", "--drain", env=env, timeout=240).stdout
    assert "0 restarts" in out
    poisoned = sum(1 for i in range(3000) if i % 97 == 5)
    assert pg_count(isolated) == 3000 - poisoned and pg_count(isolated, "prices_rejected") == poisoned
    finpulse("verify", env=env, timeout=240)


@pytest.mark.kafka
@pytest.mark.slow
def test_a_delta_constraint_that_refuses_valid_ticks_stops_the_run_with_one_line(isolated):
    """Delta's counterpart of a PostgreSQL trigger: a CHECK constraint the ticks violate. delta-rs
    cannot be asked which row failed, so FinPulse stops (exit 4) instead of pausing Delta for ever."""
    from deltalake import DeltaTable

    DeltaTable(isolated.delta_uri).alter.add_constraint({"cheap": "price < 100"})
    ticks = [orjson.dumps({"symbol": "OK", "price": 250.0, "size": 1, "timestamp_ms": T0 + i}) for i in range(20)]
    produce.send(isolated, iter([(b"k", v) for v in ticks]))
    out = finpulse("ingest", "--drain", "--sinks", "delta", env=env_for(isolated), check=False, timeout=120)
    assert out.returncode == 4, out.stderr
    assert "refuses rows FinPulse decoded as valid" in out.stderr and "constraint" in out.stderr
