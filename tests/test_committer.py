"""One Delta committer per `finpulse ingest` process: workers write the data files, the committer
commits them together with every partition's position, and a write whose positions went stale is
rewritten, never duplicated. Against a local Delta table (and, end to end, the real stack)."""

from __future__ import annotations

import json
import multiprocessing as mp
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest
from deltalake import DeltaTable
from deltalake.exceptions import DeltaError
from support.cli import env_for, finpulse
from support.rules import span
from support.sinks import KEY_COLUMNS, assert_exactly_once, delta_rows, produced

from finpulse.link import Links, WorkerLink
from finpulse.sinks.delta import DeltaSink
from finpulse.sinks.delta.committer import CommitClient, Committer, Request

pytestmark = [pytest.mark.postgres]


def txn_partitions_per_commit(table_uri: str) -> list[set[int]]:
    """For each commit of the table's log, the partitions whose position (`txn`) it moves."""
    commits = []
    for entry in sorted(Path(table_uri, "_delta_log").glob("*.json")):
        apps = set()
        for line in entry.read_text().splitlines():
            txn = json.loads(line).get("txn")
            if txn and txn["appId"].startswith("finpulse:"):
                apps.add(int(txn["appId"].rsplit(":", 1)[1]))
        commits.append(apps)
    return commits


def committer_for(settings, workers: int) -> Committer:
    return Committer(settings, Links(mp.get_context("spawn")), workers)


def staged(settings, committer: Committer, worker: int) -> DeltaSink:
    """A Delta sink of `worker`, on a thread of this process, whose commits go to `committer`."""
    sink = DeltaSink.from_settings(settings)
    sink.stage_commits(CommitClient(WorkerLink(committer.links.connect(worker), worker)))
    return sink


def test_workers_writes_are_committed_together_with_their_positions(isolated):
    s = isolated.model_copy(update={"delta_flush_ms": 1000})
    committer = committer_for(s, 2)
    committer.start()
    sinks = [staged(s, committer, i) for i in range(2)]
    errors: list[BaseException] = []

    def writes(sink: DeltaSink, partition: int) -> None:
        try:
            for start in (0, 100, 200):
                assert sink.write(span(partition, start, start + 100)).held == {partition: start + 100}
        except BaseException as exc:  # re-raised below
            errors.append(exc)

    threads = [threading.Thread(target=writes, args=(sink, p)) for p, sink in enumerate(sinks)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
    finally:
        committer.stop()
    assert errors == []
    # six writes; the second and third of each worker wait for the interval and go out together
    assert committer.commits <= 4
    assert any(parts == {0, 1} for parts in txn_partitions_per_commit(s.delta_uri))
    keys = sorted(delta_rows(s, KEY_COLUMNS))
    assert keys == sorted((p, o, 0) for p in (0, 1) for o in range(300))
    assert DeltaSink.from_settings(s).positions([0, 1]) == {0: 300, 1: 300}


def test_a_write_whose_positions_went_stale_is_rewritten_from_the_tables(isolated):
    committer = committer_for(isolated, 2)
    committer.start()
    first, second = staged(isolated, committer, 0), staged(isolated, committer, 1)
    try:
        assert second.positions([0]) == {}  # the new owner saw nothing held, then the old one wrote
        assert first.write(span(0, 0, 100)).held == {0: 100}
        written = second.write(span(0, 0, 150))  # based on "nothing held": stale, rewritten from 100
        assert (written.held, written.rows) == ({0: 150}, 50)
    finally:
        committer.stop()
    assert sorted(delta_rows(isolated, KEY_COLUMNS)) == [(0, o, 0) for o in range(150)]
    on_disk = list(Path(isolated.delta_uri).glob("trade_date=*/*.parquet"))
    live = DeltaTable(isolated.delta_uri).file_uris()
    assert len(on_disk) == len(live) + 1, "the stale write's file stays on disk, invisible, for vacuum"


def _ask_once(conn) -> None:
    """A worker process that sends one commit request (based on a position the table does not
    hold, so the answer is "stale") and exits 0 once it is answered."""
    answer = CommitClient(WorkerLink(conn, 0)).commit([], {0: 123}, {0: 200}, None)
    sys.exit(0 if answer.status == "stale" else 3)


def test_a_worker_killed_while_it_waits_for_an_answer_leaves_its_successor_answered(isolated):
    """The OOM killer strikes a worker while it waits for the committer. The worker restarted in
    its place must still get answers (a queue shared by processes stayed locked by the dead one)."""
    ctx = mp.get_context("spawn")
    committer = committer_for(isolated, 1)  # not started: the first request waits for an answer

    def worker() -> mp.process.BaseProcess:
        end = committer.links.connect(0)
        p = ctx.Process(target=_ask_once, args=(end,))
        p.start()
        end.close()
        return p

    first = worker()
    deadline = time.monotonic() + 60
    while committer.requests.empty():  # it asked, and waits
        assert time.monotonic() < deadline and first.is_alive(), "the first worker sent no request"
        time.sleep(0.05)
    first.kill()
    first.join(10)
    committer.start()
    try:
        second = worker()
        second.join(60)
        assert second.exitcode == 0, f"the restarted worker got no answer (exit code {second.exitcode})"
    finally:
        committer.stop()
        committer.links.close()


@pytest.mark.kafka
@pytest.mark.slow
def test_ingest_with_four_workers_commits_their_partitions_together(isolated):
    env = env_for(isolated, FINPULSE_DELTA_FLUSH_TICKS="5000")
    finpulse("produce", "--count", "100000", env=env)
    finpulse("ingest", "--workers", "4", "--drain", env=env)
    assert_exactly_once(delta_rows(isolated), produced(100_000), "delta")
    moved = [parts for parts in txn_partitions_per_commit(isolated.delta_uri) if parts]
    # one commit carried several workers' positions (how many meet in one round depends on timing)
    assert max(len(parts) for parts in moved) >= 2, moved


def _request(worker: int, base: dict, next_offsets: dict, key: int | None = None) -> Request:
    return Request(worker, uuid.uuid4().hex, [], base, next_offsets, key)


def test_a_request_behind_one_accepted_in_its_round_waits_for_that_commit(isolated, monkeypatch):
    """Two requests for one partition in a round (a resend after a reply timeout, or a dead worker's
    request beside its successor's): the second is judged only once the first's commit is known.
    Judged before, it was told "stale" with a position that a failed commit never stored, and its
    worker skipped the rows below it: a hole in Delta."""
    assert DeltaSink.from_settings(isolated).write(span(0, 0, 300)).held == {0: 300}
    committer = committer_for(isolated, 2)
    first, resent = _request(0, {0: 300}, {0: 500}), _request(1, {0: 300}, {0: 500})

    def refused(*_args, **_kw):
        raise DeltaError("storage throttled")

    monkeypatch.setattr(DeltaTable, "create_write_transaction", refused)
    answers = {a.id: a for _, a in committer._commit([first, resent])}
    assert answers[first.id].status == "retry"
    assert resent.id not in answers, f"answered before the commit was known: {answers[resent.id]}"
    monkeypatch.undo()
    answers = {a.id: a for _, a in committer._commit(committer._carry)}
    assert (answers[resent.id].status, answers[resent.id].positions) == ("ok", {0: 500})
    assert DeltaSink.from_settings(isolated).positions([0]) == {0: 500}


def test_two_processes_committing_other_partitions_at_once_do_not_conflict(isolated):
    """Two `ingest` hosts commit on the same aligned second, each from the version it read: their
    partitions differ, so delta-rs rebases one onto the other. A `txn` both commits named (the
    topic's id) made the second fail every time."""
    key = 12345
    setup = committer_for(isolated, 1)
    assert setup._commit([_request(0, {9: None}, {9: 1}, key)])[0][1].status == "ok"  # the topic id is stored
    a, b = committer_for(isolated, 1), committer_for(isolated, 1)
    ta, tb = a._latest(), b._latest()  # both read the log before either commits
    b._latest = lambda: tb  # type: ignore[method-assign]
    assert ta.version() == tb.version()
    assert a._commit([_request(0, {0: None}, {0: 100}, key)])[0][1].status == "ok"
    answer = b._commit([_request(0, {1: None}, {1: 100}, key)])[0][1]
    assert answer.status == "ok", answer.reason
    assert DeltaSink.from_settings(isolated).positions([0, 1, 9]) == {0: 100, 1: 100, 9: 1}


def test_a_commit_that_loses_a_partition_to_another_host_is_answered_stale_not_retry(isolated):
    """A partition changed hands between two ingest hosts while the old owner's write was in flight:
    both committers accept a request from the same position, and delta-rs refuses the second commit.
    "retry" paused that worker's lane as if Delta were down; judged again, the request is stale."""
    a, b = committer_for(isolated, 1), committer_for(isolated, 1)
    a._latest()
    tb = b._latest()  # b read the log before a committed
    stale_view = [tb]
    b._latest = lambda: stale_view.pop() if stale_view else Committer._latest(b)  # type: ignore[method-assign]
    assert a._commit([_request(0, {0: None}, {0: 100})])[0][1].status == "ok"
    lost = _request(0, {0: None}, {0: 80})
    assert b._commit([lost]) == [], "answered before it was judged against the winning commit"
    [(_, answer)] = b._commit(b._carry)
    assert (answer.status, answer.positions) == ("stale", {0: 100})
