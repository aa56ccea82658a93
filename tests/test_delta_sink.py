"""The Delta sink on a local table: the guard that skips what it holds, positions read once per new
commit, the topic a table belongs to, duplicates removed, background compaction. The committer,
compaction claims and the table's log have files of their own (test_committer, test_delta_compaction,
test_delta_log)."""

from __future__ import annotations

import pytest
from deltalake import DeltaTable, write_deltalake
from support.rules import span
from support.sinks import KEY_COLUMNS

from finpulse.errors import SinkRejected
from finpulse.sinks.delta import DeltaSink
from finpulse.sinks.delta.table import PARTITION_BY, create_table, with_partition_columns

pytestmark = [pytest.mark.postgres]


def _keys(uri: str) -> list[tuple]:
    table = DeltaTable(uri).to_pyarrow_table(columns=list(KEY_COLUMNS))
    return sorted(zip(*(table.column(c).to_pylist() for c in KEY_COLUMNS)))


def test_a_write_skips_what_the_table_holds_and_advances_the_positions(tmp_path):
    uri = str(tmp_path / "t")
    create_table(uri, {})
    sink = DeltaSink(uri, {}, "topic")
    assert sink.write(span(0, 0, 10)) == ({0: 10}, 10, 0)
    assert sink.write(span(0, 5, 15)) == ({0: 15}, 5, 0)  # a re-read overlap: only the new rows
    assert sink.write(span(0, 0, 15)).rows == 0
    assert DeltaSink(uri, {}, "topic").positions([0, 1]) == {0: 15}
    assert _keys(uri) == [(0, o, 0) for o in range(15)]


def test_a_duplicated_row_is_removed_by_the_sink_in_one_commit(tmp_path):
    uri = str(tmp_path / "t")
    create_table(uri, {})
    sink = DeltaSink(uri, {}, "topic")
    sink.write(span(0, 0, 10))
    write_deltalake(uri, with_partition_columns(span(0, 3, 5).ticks), mode="append", partition_by=PARTITION_BY)
    version = DeltaTable(uri).version()
    assert sink.remove_duplicates([(0, 3, 5)]) == 2
    assert DeltaTable(uri).version() == version + 1 and _keys(uri) == [(0, o, 0) for o in range(10)]
    assert sink.positions([0]) == {0: 10}  # positions untouched


def test_a_delta_table_records_its_topic_and_refuses_another(isolated):
    a = DeltaSink.from_settings(isolated)
    a.own_topic([0])  # a new table: recorded
    a.write(span(0, 0, 10))
    a.own_topic([0])  # its own again: fine
    b = DeltaSink(isolated.delta_uri, {}, "another-topic")
    with pytest.raises(SinkRejected, match="another topic than 'another-topic'"):
        b.own_topic([0])


def test_a_table_from_an_earlier_release_is_claimed_only_by_the_topic_of_its_positions(tmp_path, isolated):
    """No record of the topic yet (written before it existed): positions of this topic make it
    this topic's; rows without them are another's."""
    with_positions = DeltaSink(str(tmp_path / "old"), {}, "t1")
    create_table(with_positions.uri, {})
    with_positions.write(span(0, 0, 10))  # positions of t1, no record of the topic
    with_positions.own_topic([0])
    rows_only = str(tmp_path / "rows")
    create_table(rows_only, {})
    write_deltalake(rows_only, with_partition_columns(span(0, 0, 10).ticks), mode="append", partition_by=PARTITION_BY)
    with pytest.raises(SinkRejected):
        DeltaSink(rows_only, {}, "t1").own_topic([0])


def test_background_compaction_reads_no_history(tmp_path, monkeypatch):
    """The compactor asked for the table's health every minute, which reads up to 2,000 commits of
    history for a field it discarded: millions of reads a day on Azure. A check reads none; a
    compaction reads only the commits made since its claim (to find a concurrent one)."""
    uri = str(tmp_path / "t")
    create_table(uri, {})
    for start in range(0, 500, 100):  # five small files
        write_deltalake(
            uri, with_partition_columns(span(0, start, start + 100).ticks), mode="append", partition_by=PARTITION_BY
        )
    keys = [(0, o, 0) for o in range(500)]

    def no_history(*_args, **_kw):
        raise AssertionError("background compaction read the table's history")

    monkeypatch.setattr(DeltaTable, "history", no_history)
    sink = DeltaSink(uri, {}, "t")
    assert sink.compact_if_needed(100, 1 << 27) is None  # too few small files: nothing to do
    monkeypatch.undo()
    done = sink.compact_if_needed(5, 1 << 27)
    assert done is not None and done["files_removed"] == 5
    assert _keys(uri) == keys
