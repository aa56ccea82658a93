"""TableLog: txn versions kept as of the table's version, each new commit read once instead of the
whole log read back for every app id asked (delta-rs's transaction_version)."""

from __future__ import annotations

from deltalake import CommitProperties, DeltaTable, Transaction, write_deltalake
from support.rules import span

from finpulse.sinks.delta.log import TableLog
from finpulse.sinks.delta.table import PARTITION_BY, create_table, with_partition_columns


def _commit(uri: str, txns: dict[str, int]) -> None:
    write_deltalake(
        uri,
        with_partition_columns(span(0, 0, 1).ticks),
        mode="append",
        partition_by=PARTITION_BY,
        commit_properties=CommitProperties(app_transactions=[Transaction(a, v) for a, v in txns.items()]),
    )


def test_versions_follow_other_writers_commits_with_one_log_scan_per_app_id(tmp_path, monkeypatch):
    uri = str(tmp_path / "t")
    create_table(uri, {})
    _commit(uri, {"a": 1, "b": 7})
    scans: list[str] = []
    real = DeltaTable.transaction_version
    monkeypatch.setattr(DeltaTable, "transaction_version", lambda self, app: scans.append(app) or real(self, app))
    log = TableLog(uri, {})
    log.table()
    assert (log.txn("a"), log.txn("b"), log.txn("c")) == (1, 7, None)
    for v in range(2, 30):  # another process commits; this one refreshes now and then
        _commit(uri, {"a": v, **({"c": 100 + v} if v % 7 == 0 else {})})
        if v % 3 == 0:
            log.table()
            assert log.txn("a") == v
    log.table()
    assert (log.txn("a"), log.txn("b"), log.txn("c")) == (29, 7, 128)
    assert sorted(scans) == ["a", "b", "c"], "each app id is looked up in the log once"
    assert (log.txn("a"), log.txn("b"), log.txn("c")) == tuple(real(DeltaTable(uri), a) for a in "abc")


def test_a_refresh_far_behind_asks_again(tmp_path, monkeypatch):
    uri = str(tmp_path / "t")
    create_table(uri, {})
    log = TableLog(uri, {})
    log.table()
    assert log.txn("a") is None
    monkeypatch.setattr("finpulse.sinks.delta.log.MAX_TAIL", 3)
    for v in range(1, 6):
        _commit(uri, {"a": v})
    log.table()
    assert log.txn("a") == 5
