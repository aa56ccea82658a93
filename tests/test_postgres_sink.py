"""The PostgreSQL sink's guards: positions only move forward, a partition's first write is serialised,
and a batch PostgreSQL refuses for a data reason is narrowed down to the rows it refuses."""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import threading
import time

import orjson
import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from support.rules import POISON_TRIGGER, span
from support.sinks import pg_count

from finpulse.errors import ServiceUnavailable, SinkRejected
from finpulse.sinks.postgres.sink import (
    _ADVANCE,
    FENCE_AFTER_S,
    LOCK_WAIT_S,
    PostgresSink,
    plaintext_risk,
    warn_plaintext,
)

pytestmark = [pytest.mark.postgres]


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


def test_a_read_only_server_is_an_outage_not_a_refusal(isolated):
    """A failover to a standby, a demoted primary: writes fail with 25006 until a primary takes
    them again. The lane must wait and retry, not stop the whole run (exit 4)."""
    info = conninfo_to_dict(isolated.postgres_conninfo())
    read_only = make_conninfo(**{**info, "options": f"{info['options']} -c default_transaction_read_only=on"})
    sink = PostgresSink(read_only, isolated.kafka_topic)
    try:
        with pytest.raises(ServiceUnavailable, match="25006"):
            sink.write(span(0, 0, 10))
    finally:
        sink.close()
    assert pg_count(isolated) == 0


def test_a_key_another_writer_already_stored_stops_with_what_to_do(isolated):
    """A row at a key above the position (another topic on these tables, a hand-made row) would fail
    the COPY with 23505 on every retry: a refusal that says what to do, not an outage for ever. (The
    key of the day-partitioned table holds the trade time too: the stray row has the tick's.)"""
    sink = PostgresSink(isolated.postgres_conninfo(), isolated.kafka_topic)
    try:
        sink.write(span(0, 0, 10))
        with psycopg.connect(isolated.postgres_conninfo(), autocommit=True) as conn:
            conn.execute(
                "INSERT INTO prices_raw (symbol, price, size, timestamp_ms, trade_time, exchange, side, "
                "broker_time, kafka_partition, kafka_offset, tick_index) SELECT symbol, price, size, timestamp_ms + 12, "
                "trade_time + interval '12 milliseconds', exchange, side, broker_time, 0, 12, 0 FROM prices_raw "
                "WHERE kafka_offset = 0"
            )
        with pytest.raises(SinkRejected, match="23505.*only `finpulse ingest` and `replay` of one topic"):
            sink.write(span(0, 10, 20))
    finally:
        sink.close()


def _hold_partition_then_freeze(conninfo: str, topic: str, mid_copy: bool, ready) -> None:
    """A writer that takes partition 0's lock, writes a little, and is frozen (SIGSTOP) with its
    transaction open: idle in it, or half-way through a COPY."""
    conn = psycopg.connect(conninfo)
    conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s), 0)", (topic,))
    if mid_copy:
        with conn.cursor().copy("COPY prices_raw (symbol) FROM STDIN") as copy:
            copy.write("A\n")
            ready.set()
            os.kill(os.getpid(), signal.SIGSTOP)
    ready.set()
    os.kill(os.getpid(), signal.SIGSTOP)


@pytest.mark.parametrize("mid_copy", [False, True], ids=["idle-in-transaction", "mid-copy"])
def test_a_writer_frozen_in_its_transaction_holds_its_partition_seconds_not_minutes(isolated, mid_copy):
    """A worker frozen with its transaction open kept its partitions' locks: their new owner waited
    for the statement timeout (2 minutes), and the partitions made no progress. The new owner ends
    the frozen session after FENCE_AFTER_S and writes."""
    ctx = mp.get_context("spawn")
    ready = ctx.Event()
    frozen = ctx.Process(
        target=_hold_partition_then_freeze, args=(isolated.postgres_conninfo(), isolated.kafka_topic, mid_copy, ready)
    )
    frozen.start()
    sink = PostgresSink(isolated.postgres_conninfo(), isolated.kafka_topic)
    try:
        assert ready.wait(30)
        # it is stopped, its transaction open; its partitions reach a new owner after the group's
        # session timeout (6 s), by which time the transaction is older than FENCE_AFTER_S
        time.sleep(FENCE_AFTER_S + 0.5)
        began = time.monotonic()
        assert sink.write(span(0, 0, 10)).held == {0: 10}
        assert time.monotonic() - began < LOCK_WAIT_S + 3
    finally:
        sink.close()
        os.kill(frozen.pid, signal.SIGCONT)
        frozen.kill()
        frozen.join(10)
    assert pg_count(isolated) == 10


@pytest.mark.parametrize(
    ("host", "mode", "warned"),
    [
        ("db.internal.example", None, True),
        ("db.internal.example", "prefer", True),
        ("db.internal.example", "require", False),
        ("db.internal.example", "verify-full", False),
        ("localhost", None, False),
        ("127.0.0.1", "disable", False),
        ("/var/run/postgresql", None, False),
    ],
)
def test_a_remote_server_without_required_tls_is_warned_about(host, mode, warned, monkeypatch):
    """libpq's default, prefer, silently accepts a downgrade to plain text: fine on this host, a
    risk across a network. One warning at start says what to set."""
    monkeypatch.delenv("PGSSLMODE", raising=False)
    info = {"host": host, "dbname": "finpulse", "user": "finpulse", **({"sslmode": mode} if mode else {})}
    why = plaintext_risk(make_conninfo(**info))
    assert (why is not None) == warned
    if why:
        assert "POSTGRES_SSLMODE=verify-full" in why and host in why


def test_the_plaintext_warning_comes_once(caplog):
    conninfo = make_conninfo(host="db.once.example", dbname="finpulse", user="finpulse")
    for _ in range(3):
        warn_plaintext(conninfo)
    assert sum("db.once.example" in r.getMessage() for r in caplog.records) == 1


def test_a_holder_in_a_young_transaction_is_waited_for_not_ended(isolated):
    """A live writer holds a partition for a moment: the other writer waits a few seconds, then
    retries later (an outage), and never ends a transaction younger than FENCE_AFTER_S."""
    holder = psycopg.connect(isolated.postgres_conninfo())
    holder.execute("SELECT pg_advisory_xact_lock(hashtext(%s), 0)", (isolated.kafka_topic,))
    sink = PostgresSink(isolated.postgres_conninfo(), isolated.kafka_topic)
    try:
        with pytest.raises(ServiceUnavailable, match="55P03"):
            sink.write(span(0, 0, 10))
        assert holder.execute("SELECT 1").fetchone() == (1,), "the holder's session was ended"
        holder.rollback()
        assert sink.write(span(0, 0, 10)).held == {0: 10}
    finally:
        holder.close()
        sink.close()
