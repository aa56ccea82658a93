"""One Delta committer per `finpulse ingest` process, whatever --workers is.

Workers write their Parquet files themselves, in parallel (files.py), and send the add
actions with the positions they cover to this thread of the supervisor. Every interval it commits
everything that arrived as one Delta commit, with every partition's `txn` (its position) in the
same commit, so commits per table grow with processes, not with workers, and workers never read
the Delta log on the write path. Workers write at the same wall-clock moments (their flush
interval is aligned), so on a trickle one commit per interval carries every worker's files.

Exactly-once: a request names, per partition, the position its rows start from (`base`, what the
worker last saw). The committer accepts it only if the table's position for each of those
partitions still equals its base; otherwise its rows may overlap what another writer committed,
so it is answered "stale" with the table's positions and the worker rewrites from there. Files of
a request that is never committed stay invisible, and `finpulse maintain` removes them. Two
`ingest` processes on one table are still safe: delta-rs refuses a commit whose `txn` another
commit changed meanwhile (then every request of the round is answered "retry").
"""

from __future__ import annotations

import logging
import queue
import threading
import time
import uuid
from dataclasses import dataclass, field

from deltalake import DeltaTable
from deltalake.exceptions import CommitFailedError, DeltaError

from finpulse.config import Settings
from finpulse.errors import ServiceUnavailable, first_line
from finpulse.link import Links, WorkerLink
from finpulse.sinks.delta.azure import storage_options
from finpulse.sinks.delta.log import TableLog
from finpulse.sinks.delta.table import app_id, commit, position_txns, topic_app_id

log = logging.getLogger("finpulse.committer")  # the name operators filter on

# A worker gives up waiting for an answer after this long and retries its write (ServiceUnavailable);
# a late commit of the abandoned request cannot duplicate rows: the retry's base is then stale.
REPLY_TIMEOUT_S = 120.0
POLL_S = 0.2
# Workers write at the same wall-clock moments (FlushPolicy.aligned); after the first request of
# a round the committer waits at most this long for the other workers' (and at most a tenth of
# the interval), and commits as soon as every worker has sent one.
GATHER_S = 0.1
# A request whose commit lost a race to another process is judged again this many times before its
# worker is told to retry (each time against the log as it is then).
CONFLICTS_JUDGED_AGAIN = 3


@dataclass
class Request:
    worker: int
    id: str
    adds: list[dict]
    base: dict[int, int | None]  # partition -> position its rows start from (None: nothing held)
    next_offsets: dict[int, int]
    topic_key: int | None  # resume.fingerprint of the topic id, stored as its own txn
    conflicts: int = 0  # commits of it that lost a race to another process


@dataclass
class Answer:
    id: str
    status: str  # "ok", "stale" (rewrite from `positions`) or "retry" (the commit failed)
    positions: dict[int, int | None] = field(default_factory=dict)
    reason: str = ""


class CommitClient:
    """A worker's side: send one request over its link to the supervisor, wait for its answer."""

    def __init__(self, link: WorkerLink):
        self.link = link

    def commit(
        self, adds: list[dict], base: dict[int, int | None], next_offsets: dict[int, int], topic_key: int | None
    ) -> Answer:
        rid = uuid.uuid4().hex
        if not self.link.tell("commit", Request(self.link.worker, rid, adds, base, next_offsets, topic_key)):
            raise ServiceUnavailable("the Delta committer is gone (the supervisor exited)")
        deadline = time.monotonic() + REPLY_TIMEOUT_S
        while True:
            answer = self.link.receive(deadline - time.monotonic())
            if answer is None:
                raise ServiceUnavailable(f"the Delta committer did not answer within {REPLY_TIMEOUT_S:.0f}s")
            assert isinstance(answer, Answer)
            if answer.id == rid:  # older answers belong to requests an earlier process of this worker sent
                return answer


class Committer:
    """The supervisor's side: a thread that commits what the workers staged, once per interval on
    a trickle (they write together); on a backlog, as fast as writes triggered by size arrive."""

    name = "delta-committer"

    def __init__(self, settings: Settings, links: Links, workers: int):
        self.settings = settings
        self.gather_s = min(GATHER_S, settings.delta_flush_ms / 1000 / 10)
        self.workers = workers
        self.links = links
        self.requests: queue.Queue[Request] = queue.Queue()
        links.route("commit", self.requests)
        self.commits = 0
        self.log = TableLog(settings.delta_uri, storage_options(settings))
        self._carry: list[Request] = []  # requests a round deferred to the next (see _commit)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="delta-committer", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """After the workers exited: answer what is left, then end."""
        self._stop.set()
        self._thread.join(timeout=60)

    def _run(self) -> None:
        while True:
            if self._carry:  # requests a round left for after its commit: decided now
                pending, self._carry = self._carry, []
            else:
                try:
                    pending = [self.requests.get(timeout=POLL_S)]
                except queue.Empty:
                    if self._stop.is_set():
                        return
                    continue
            self._gather(pending)
            try:
                answers = self._commit(pending)
            except Exception as exc:  # a bug must not leave every worker waiting for an answer
                log.exception("Delta committer failed on %d staged writes; the workers retry", len(pending))
                answers = [(r.worker, Answer(r.id, "retry", reason=f"committer error: {exc!r}")) for r in pending]
            for answer_to, answer in answers:
                self.links.reply(answer_to, answer)

    def _gather(self, pending: list[Request]) -> None:
        """Add to `pending` what the other workers send within the gather window (their writes of
        the same aligned interval), ending it as soon as every worker has sent one."""
        deadline = time.monotonic() + self.gather_s
        while len({r.worker for r in pending}) < self.workers:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            try:
                pending.append(self.requests.get(timeout=left))
            except queue.Empty:
                break
        while True:  # and whatever else is already waiting
            try:
                pending.append(self.requests.get_nowait())
            except queue.Empty:
                return

    def _latest(self) -> DeltaTable:
        return self.log.table()

    def _commit(self, pending: list[Request]) -> list[tuple[int, Answer]]:
        try:
            table = self._latest()
        except (DeltaError, OSError) as exc:
            self.log.reset()
            return [
                (r.worker, Answer(r.id, "retry", reason=f"reading the Delta log: {first_line(exc)}")) for r in pending
            ]
        topic = self.settings.kafka_topic

        def position(p: int) -> int | None:  # the table's position, as committed
            return self.log.txn(app_id(topic, p))

        # A request is judged against committed positions only. One that names a partition an
        # accepted request of this round moves waits for the next round: judged against the
        # position this round's commit has not made yet, it would be told "stale" with an offset
        # that, should the commit fail, was never committed (the worker would skip rows up to it).
        accepted: list[Request] = []
        answers: list[tuple[int, Answer]] = []
        moving: set[int] = set()
        for r in pending:
            if moving.intersection(r.base):
                self._carry.append(r)
            elif all(position(p) == b for p, b in r.base.items()):
                accepted.append(r)
                moving.update(r.next_offsets)
            else:
                answers.append((r.worker, Answer(r.id, "stale", {p: position(p) for p in r.base})))
        if not accepted:
            return answers
        keys = [r.topic_key for r in accepted if r.topic_key is not None]
        try:
            positions = {p: n for r in accepted for p, n in r.next_offsets.items()}
            key = keys[0] if keys else None  # one topic: one key
            commit(
                table,
                [a for r in accepted for a in r.adds],
                position_txns(topic, positions, key, self.log.txn(topic_app_id(topic))),
            )
        except CommitFailedError as exc:
            # Another process's commit moved a position these requests start from (a partition that
            # changed hands between hosts): judged again next round against the log as it is now,
            # they are answered "stale" and rewritten, not "retry" (which pauses the worker's lane).
            self.log.reset()
            again = [r for r in accepted if r.conflicts < CONFLICTS_JUDGED_AGAIN]
            for r in again:
                r.conflicts += 1
            self._carry.extend(again)
            log.info(
                "Delta commit of %d staged writes lost a race to another process: %s", len(accepted), first_line(exc)
            )
            return answers + [
                (r.worker, Answer(r.id, "retry", reason=first_line(exc))) for r in accepted if r not in again
            ]
        except (DeltaError, OSError) as exc:
            self.log.reset()
            log.warning(
                "Delta commit of %d staged writes failed; the workers retry: %s", len(accepted), first_line(exc)
            )
            return answers + [(r.worker, Answer(r.id, "retry", reason=first_line(exc))) for r in accepted]
        self.commits += 1
        return answers + [(r.worker, Answer(r.id, "ok", dict(r.next_offsets))) for r in accepted]
