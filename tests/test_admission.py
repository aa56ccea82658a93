"""Admission: rows are held against both sinks' own rules (a CHECK constraint on the Delta table, a
trigger on prices_raw) before any sink writes them, so a refused tick is a reject everywhere and the
two sinks never differ. Against the real PostgreSQL, Kafka and a local Delta table."""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

import orjson
import psycopg
import pytest
from deltalake import DeltaTable
from support.cli import env_for, finpulse
from support.rules import POISON_TRIGGER, T0, span
from support.sinks import KEY_COLUMNS, delta_rows, pg_count, pg_rows

from finpulse import produce
from finpulse.admission import Admission
from finpulse.batch import FlushPolicy
from finpulse.lanes import Lane
from finpulse.sinks.delta import DeltaSink
from finpulse.sinks.delta import rules as delta_rules

pytestmark = [pytest.mark.postgres]


def add_rules(s, delta_check: str = "price <> 42.0") -> None:
    with psycopg.connect(s.postgres_conninfo(), autocommit=True) as conn:
        conn.execute(POISON_TRIGGER)
    DeltaTable(s.delta_uri).alter.add_constraint({"not_42": delta_check})


def rejects(s) -> list[tuple]:
    with psycopg.connect(s.postgres_conninfo()) as conn:
        return conn.execute(
            "SELECT kafka_partition, kafka_offset, tick_index, feed, reason, raw FROM prices_rejected ORDER BY 1, 2, 3"
        ).fetchall()


def test_tables_without_rules_admit_every_row_unchanged(isolated):
    admission = Admission(isolated)
    try:
        batch = span(0, 0, 100)
        assert admission.rules() == []
        assert admission.admit(batch) is batch
    finally:
        admission.close()


def test_rows_either_sink_refuses_become_rejects_naming_the_rule(isolated):
    add_rules(isolated)
    admission = Admission(isolated)
    try:
        batch = span(2, 0, 1000, poison={3, 41, 700})  # offset 41 has price 42.0: both rules refuse it
        admitted = admission.admit(batch)
    finally:
        admission.close()
    assert admitted.ticks.num_rows == 997 and admitted.next_offsets == {2: 1000}
    assert sorted(admitted.ticks.column("kafka_offset").to_pylist()) == sorted(set(range(1000)) - {3, 41, 700})
    by_offset = {r.offset: r for r in admitted.rejects}
    assert sorted(by_offset) == [3, 41, 700]
    assert by_offset[3].feed == "postgres" and "poison tick" in by_offset[3].reason
    assert by_offset[41].feed == "postgres"  # the first sink to refuse it; the reason names both rules
    assert "poison tick" in by_offset[41].reason and "not_42" in by_offset[41].reason
    assert orjson.loads(by_offset[700].raw)["symbol"] == "POISON"

    only_delta = Admission(isolated, ("delta",))
    try:
        [refused] = only_delta.admit(span(2, 0, 100, poison={3})).rejects
    finally:
        only_delta.close()
    assert (refused.offset, refused.feed) == (41, "delta") and "not_42 (price != 42)" in refused.reason


def test_a_constraint_added_after_the_rules_were_read_is_picked_up_by_the_lane(isolated):
    sink = DeltaSink.from_settings(isolated)
    lane = Lane(sink, FlushPolicy(), Admission(isolated))
    try:
        lane.submit(span(0, 0, 10))
        assert lane.wait_idle(30)  # rules read: none yet
        DeltaTable(isolated.delta_uri).alter.add_constraint({"cheap": "price < 15"})
        lane.submit(span(0, 10, 20))  # prices 11..20: 15..20 refused
        assert lane.wait_idle(30), lane.failure
        assert lane.failure is None and lane.positions == {0: 20}
    finally:
        lane.close()
    offsets = sorted(r[1] for r in delta_rows(isolated, KEY_COLUMNS))
    assert offsets == list(range(14))


@pytest.mark.kafka
@pytest.mark.slow
def test_ingest_replay_and_verify_agree_on_what_the_sinks_rules_refuse(isolated):
    add_rules(isolated)
    values = [
        orjson.dumps(
            {
                "symbol": "POISON" if i % 97 == 5 else "OK",
                "price": 42.0 if i % 101 == 7 else 2.5,
                "size": 1,
                "timestamp_ms": T0 + i,
            }
        )
        for i in range(3000)
    ]
    produce.send(isolated, iter([(b"k%d" % (i % 7), v) for i, v in enumerate(values)]))
    refused = sum(1 for i in range(3000) if i % 97 == 5 or i % 101 == 7)
    env = env_for(isolated, FINPULSE_BATCH_SIZE="50")
    out = finpulse("ingest", "--drain", env=env, timeout=240).stdout
    assert "0 restarts" in out

    pg_keys = sorted(pg_rows(isolated, KEY_COLUMNS))
    assert pg_keys == sorted(delta_rows(isolated, KEY_COLUMNS)), "the sinks hold different ticks"
    assert len(pg_keys) == 3000 - refused and pg_count(isolated, "prices_rejected") == refused
    feeds = {feed for *_, feed, _, _ in rejects(isolated)}
    assert feeds == {"postgres", "delta"}
    finpulse("verify", env=env, timeout=240)

    # replaying the whole topic adds nothing to either sink, and verify still agrees
    finpulse("replay", "--from-offset", "0", env=env, timeout=240)
    assert sorted(pg_rows(isolated, KEY_COLUMNS)) == pg_keys == sorted(delta_rows(isolated, KEY_COLUMNS))
    assert pg_count(isolated, "prices_rejected") == refused
    finpulse("verify", env=env, timeout=240)

    status = orjson.loads(finpulse("status", "--json", env=env).stdout)
    assert any("refuse_poison" in r for r in status["rules"]["postgres"]), status["rules"]
    assert status["rules"]["delta"] == ["CHECK not_42: price != 42"], status["rules"]


def test_the_delta_rules_scratch_table_holds_one_probe_and_a_dead_process_leaves_none(tmp_path, monkeypatch):
    """Months of probes kept every probe's Parquet files in the temporary directory until the rules
    were read again, and a SIGKILLed worker's for good."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    orphan = tmp_path / f"{delta_rules.SCRATCH_PREFIX}{dead.pid}-abc"
    (orphan / "_delta_log").mkdir(parents=True)
    rules = delta_rules.DeltaRules({"cheap": "price < 15"})
    try:
        for start in range(0, 200, 20):
            assert sorted(rules.refused(span(0, start, start + 20).ticks)) == (
                list(range(14, 20)) if start == 0 else list(range(20))
            )
        assert not orphan.exists()
        assert rules._dir is not None
        assert len(list(Path(rules._dir).glob("*.parquet"))) == 1
    finally:
        rules.close()
    assert list(tmp_path.glob(f"{delta_rules.SCRATCH_PREFIX}*")) == []
