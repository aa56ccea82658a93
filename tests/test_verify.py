"""`finpulse verify` (and --repair) against the real broker, PostgreSQL and a local Delta table."""

from __future__ import annotations

import re

import psycopg
import pyarrow.compute as pc
import pytest
from deltalake import DeltaTable, write_deltalake
from support.cli import env_for, finpulse
from support.sinks import assert_exactly_once, delta_rows, pg_rows, produced

from finpulse import produce
from finpulse.sinks.delta.table import PARTITION_BY, with_partition_columns

pytestmark = [pytest.mark.kafka, pytest.mark.postgres, pytest.mark.slow]


def counts(out: str, sink: str) -> dict[str, int]:
    """{'missing': n, 'duplicated': n, 'unexpected': n} from the last verdict line of a sink."""
    line = re.findall(rf"^{sink}: ([\d,]+) missing.*?, ([\d,]+) duplicated, ([\d,]+) unexpected", out, re.M)[-1]
    return dict(zip(("missing", "duplicated", "unexpected"), (int(n.replace(",", "")) for n in line)))


def test_verify_finds_a_deleted_tenth_and_repair_restores_it(isolated):
    env = env_for(isolated)
    finpulse("produce", "--count", "50000", env=env)
    finpulse("ingest", "--drain", env=env)
    assert finpulse("verify", env=env).returncode == 0

    with psycopg.connect(isolated.postgres_conninfo(), autocommit=True) as conn:
        conn.execute("SELECT setseed(0.7)")
        gone = {
            r[0:3]
            for r in conn.execute(
                "DELETE FROM prices_raw WHERE random() < 0.1 RETURNING kafka_partition, kafka_offset, tick_index"
            )
        }
    table = DeltaTable(isolated.delta_uri)
    removed = table.delete("(kafka_offset * 7919 + kafka_partition * 104729) % 10 = 3")["num_deleted_rows"]
    assert 3_000 < len(gone) < 7_000 and 3_000 < removed < 7_000

    found = finpulse("verify", "--show", "5", env=env, check=False)
    assert found.returncode == 1, found.stdout + found.stderr
    assert counts(found.stdout, "postgres") == {"missing": len(gone), "duplicated": 0, "unexpected": 0}
    assert counts(found.stdout, "delta") == {"missing": removed, "duplicated": 0, "unexpected": 0}
    listed = re.search(r"^  missing \(partition, offset, tick_index\): (.*?) and [\d,]+ more$", found.stdout, re.M)
    assert listed and {tuple(map(int, k)) for k in re.findall(r"\((\d+), (\d+), (-?\d+)\)", listed[1])} <= gone

    repaired = finpulse("verify", "--repair", env=env, check=False)
    assert repaired.returncode == 0, repaired.stdout + repaired.stderr
    assert "repair postgres: replayed" in repaired.stdout and f"+{len(gone):,} rows" in repaired.stdout
    assert f"+{removed:,} rows" in repaired.stdout

    again = finpulse("verify", env=env)
    assert counts(again.stdout, "postgres")["missing"] == counts(again.stdout, "delta")["missing"] == 0
    expected = produced(50_000)
    assert_exactly_once(pg_rows(isolated), expected, "postgres")
    assert_exactly_once(delta_rows(isolated), expected, "delta")


def test_verify_counts_rejects_and_reports_duplicates_and_strays(isolated):
    env = env_for(isolated)
    good = list(produce.encoded(produce.ticks(20_000)))
    bad = [(b"x", b"not json"), (b"y", b'{"symbol": "A"}'), (b"z", b"")]
    produce.send(isolated, iter(good[:10_000] + bad + good[10_000:]))
    finpulse("ingest", "--drain", env=env)
    exact = finpulse("verify", "--window", "3000", env=env).stdout  # many small windows: same answer
    assert counts(exact, "postgres") == counts(exact, "delta") == {"missing": 0, "duplicated": 0, "unexpected": 0}

    with psycopg.connect(isolated.postgres_conninfo(), autocommit=True) as conn:
        reject = conn.execute(
            "DELETE FROM prices_rejected WHERE kafka_offset = (SELECT min(kafka_offset) "
            "FROM prices_rejected) RETURNING kafka_partition, kafka_offset, tick_index"
        ).fetchone()
        # a row the topic never carried: every message holds one tick, so tick_index 7 is a stray
        conn.execute(
            "INSERT INTO prices_raw (symbol, price, size, timestamp_ms, trade_time, exchange, side, "
            "broker_time, kafka_partition, kafka_offset, tick_index) SELECT symbol, price, size, timestamp_ms, trade_time, exchange, side, "
            "broker_time, 0, 5, 7 FROM prices_raw LIMIT 1"
        )
    table = DeltaTable(isolated.delta_uri)
    twice = table.to_pyarrow_dataset().to_table(filter=pc.field("kafka_partition") == 1).slice(0, 3)
    twice = twice.drop_columns(["trade_date"])
    write_deltalake(table, with_partition_columns(twice), mode="append", partition_by=PARTITION_BY)

    found = finpulse("verify", env=env, check=False)
    assert found.returncode == 1
    assert counts(found.stdout, "postgres") == {"missing": 1, "duplicated": 0, "unexpected": 1}
    assert counts(found.stdout, "delta") == {"missing": 0, "duplicated": 3, "unexpected": 0}
    assert f"({reject[0]}, {reject[1]}, {reject[2]})" in found.stdout
    assert "(0, 5, 7)" in found.stdout

    # --repair fills what is missing; strays are for a person to look at.
    repaired = finpulse("verify", "--repair", "--sink", "postgres", env=env, check=False)
    assert repaired.returncode == 1
    assert "+0 rows, +1 rejects" in repaired.stdout
    assert counts(repaired.stdout, "postgres") == {"missing": 0, "duplicated": 0, "unexpected": 1}
    with psycopg.connect(isolated.postgres_conninfo()) as conn:
        assert conn.execute("SELECT count(*) FROM prices_rejected").fetchone()[0] == len(bad)
    assert "delta:" not in repaired.stdout

    # Duplicated rows in Delta (two compactions of one snapshot did this): --repair rewrites their
    # offsets with every key once, in one commit.
    fixed = finpulse("verify", "--repair", "--sink", "delta", env=env, check=False)
    assert fixed.returncode == 0, fixed.stdout + fixed.stderr
    assert "repair delta: removed 3 duplicated rows" in fixed.stdout
    assert counts(fixed.stdout, "delta") == {"missing": 0, "duplicated": 0, "unexpected": 0}
    assert len(delta_rows(isolated)) == 20_000
