"""One compactor at a time per Delta table, across processes and hosts: a claim in the table's own
log, and a compactor whose claim lapsed removes the rows it doubled (sinks/delta_compaction.py)."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest
from deltalake import DeltaTable, write_deltalake
from deltalake.exceptions import CommitFailedError
from support import ROOT
from support.cli import env_for
from support.rules import span
from support.sinks import KEY_COLUMNS, delta_rows

from finpulse.sinks.delta import DeltaSink, compaction
from finpulse.sinks.delta.table import PARTITION_BY, create_table, with_partition_columns

pytestmark = [pytest.mark.postgres]

APPENDS, ROWS = 20, 100  # the reproduction: 20 appends of 100 rows, 2,000 rows
MANY = 300  # small files for two compactors to race over: optimize takes long enough to overlap


def small_files(uri: str, appends: int = APPENDS) -> list[tuple]:
    """A table of `appends` small files of ROWS ticks each (partition 0); its keys."""
    create_table(uri, {})
    for start in range(0, appends * ROWS, ROWS):
        rows = with_partition_columns(span(0, start, start + ROWS).ticks)
        write_deltalake(uri, rows, mode="append", partition_by=PARTITION_BY)
    return [(0, o, 0) for o in range(appends * ROWS)]


def optimize_commits(uri: str) -> int:
    return sum(1 for e in DeltaTable(uri).history() if e.get("operation") == "OPTIMIZE")


def test_a_claim_is_refused_while_another_holds_the_table_or_claimed_from_the_same_snapshot(tmp_path):
    uri = str(tmp_path / "t")
    small_files(uri, 2)
    first, second = DeltaTable(uri), DeltaTable(uri)  # both at the same version
    lease = compaction.claim(first, uri, {}, "first")
    assert lease is not None
    with pytest.raises(CommitFailedError):  # a claim from the same snapshot: delta-rs refuses it
        compaction._stamp(second, 1, "other", "second")
    assert compaction.claim(DeltaTable(uri), uri, {}, "third") is None  # seen held: backs off
    compaction.release(lease)
    assert compaction.claim(DeltaTable(uri), uri, {}, "fourth") is not None


def test_a_compactor_whose_claim_lapsed_removes_the_rows_it_doubled(tmp_path):
    """A compactor frozen past its claim's expiry: another takes the table over and compacts; the
    first, thawed, commits its compaction of the same files (delta-rs 1.6.4+ lets it), finds the
    other one in the log and rewrites the doubled rows once."""
    uri = str(tmp_path / "t")
    keys = small_files(uri)
    frozen = DeltaTable(uri)
    lapsed = compaction.claim(frozen, uri, {}, "frozen", lease_s=0.2)
    assert lapsed is not None
    time.sleep(0.3)
    taker = DeltaTable(uri)
    lease = compaction.claim(taker, uri, {}, "taker")
    assert lease is not None, "an expired claim must not block the table"
    assert compaction.compact(taker, lease, 1 << 27)["duplicates_removed"] == 0
    compaction.release(lease)
    done = compaction.compact(frozen, lapsed, 1 << 27)  # from the snapshot it read before freezing
    assert done["files_removed"] == APPENDS and done["duplicates_removed"] == len(keys)
    assert sorted(DeltaTable(uri).to_pyarrow_table(columns=list(KEY_COLUMNS)).to_pylist(), key=str) == sorted(
        ({"kafka_partition": p, "kafka_offset": o, "tick_index": i} for p, o, i in keys), key=str
    )


def test_remove_duplicates_keeps_each_key_once_and_leaves_other_rows_alone(tmp_path):
    uri = str(tmp_path / "t")
    create_table(uri, {})
    for batch in (span(0, 0, 50), span(0, 20, 30), span(1, 0, 10), span(1, 5, 6)):
        write_deltalake(uri, with_partition_columns(batch.ticks), mode="append", partition_by=PARTITION_BY)
    table = DeltaTable(uri)
    assert compaction.remove_duplicates(table, [(0, 0, 40), (1, 5, 6)]) == 11
    keys = DeltaTable(uri).to_pyarrow_table(columns=list(KEY_COLUMNS))
    assert sorted(zip(*(keys.column(c).to_pylist() for c in KEY_COLUMNS))) == sorted(
        [(0, o, 0) for o in range(50)] + [(1, o, 0) for o in range(10)]
    )
    assert compaction.remove_duplicates(DeltaTable(uri), [(0, 0, 50)]) == 0


# A compactor process: opens the table, says so, and compacts the moment the file argv[1] appears.
_COMPACTOR = """
import pathlib, sys, time
from finpulse.config import load_settings
from finpulse.sinks.delta import DeltaSink
sink = DeltaSink.from_settings(load_settings())
sink.positions([0])  # the log is read: both compactors start from the same snapshot
print("ready", flush=True)
go = pathlib.Path(sys.argv[1])
while not go.exists():
    time.sleep(0.001)
print(sink.compact_if_needed(1, 1 << 27), flush=True)
"""


@pytest.mark.slow
def test_two_processes_compacting_one_snapshot_at_once_compact_every_row_once(isolated, tmp_path):
    """Two background compactors (two ingest hosts) start from one snapshot at the same moment:
    delta-rs 1.6.6 lets both OPTIMIZE commits through (every row doubled); the claim lets one."""
    keys = small_files(isolated.delta_uri, MANY)
    go = tmp_path / "go"
    runs = [
        subprocess.Popen(
            [sys.executable, "-c", _COMPACTOR, str(go)],
            env=env_for(isolated),
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for _ in range(2)
    ]
    for run in runs:
        assert run.stdout is not None and run.stdout.readline().strip() == "ready"
    go.touch()
    outputs = [run.communicate(timeout=180)[0] for run in runs]
    assert [run.returncode for run in runs] == [0, 0], outputs
    assert optimize_commits(isolated.delta_uri) == 1, outputs
    assert sorted(delta_rows(isolated, KEY_COLUMNS)) == keys, outputs


def _maintain(env) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "finpulse", "maintain", "--sinks", "delta"],
        env=env,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


@pytest.mark.slow
def test_two_maintain_processes_at_once_compact_every_row_once(isolated):
    """Two `finpulse maintain` at once (overlapping scheduled flows, or a person by hand): one
    compacts, the other waits for it, then finds nothing left to compact."""
    keys = small_files(isolated.delta_uri, 50)
    env = env_for(isolated)
    runs = [_maintain(env) for _ in range(2)]
    outputs = [run.communicate(timeout=180)[0] for run in runs]
    assert [run.returncode for run in runs] == [0, 0], outputs
    assert sorted(delta_rows(isolated, KEY_COLUMNS)) == keys, outputs
    assert optimize_commits(isolated.delta_uri) == 1, outputs
    assert DeltaSink.from_settings(isolated).positions([0]) == {}  # positions untouched (none were written)
