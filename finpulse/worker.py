"""One worker process: consume -> decode -> trade window -> accumulate -> hand to the sink lanes -> commit.

Positions come from the sinks: on every assignment the worker holds them against the topic
(resume.settle) and seeks each partition to the lowest offset any sink holds, and each sink skips
what it already has. The Kafka group commit after both sinks only feeds lag tools. The consumer's
mechanics live in source.GroupSource; each sink is touched only by its lane's thread. The trade
window (finpulse/dedup) of each assigned partition is rebuilt at the same offset, from a snapshot
the sinks keep and the messages since, so re-sent trades are recognised exactly as before.
"""

from __future__ import annotations

import functools
import logging
import os
import signal
import sys
import threading
import time
import traceback
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, KafkaException

from finpulse import memory, resume
from finpulse.admission import Admission
from finpulse.backoff import Backoff
from finpulse.batch import Accumulator, Offsets
from finpulse.config import Settings
from finpulse.deadletter import DeadLetters
from finpulse.decode import Decoder
from finpulse.dedup.keeper import Keeper
from finpulse.errors import FinpulseError, ServiceUnavailable
from finpulse.lanes import Lane, Remote
from finpulse.link import WorkerLink
from finpulse.logformat import ToParent
from finpulse.progress import WorkerStats
from finpulse.records import Messages
from finpulse.sinks import open_sinks
from finpulse.source import GroupSource

log = logging.getLogger("finpulse.worker")

IDLE_POLL_S = 0.2  # how often an idle worker looks at its stop flag
REPORT_EVERY_S = 1.0  # stats to the supervisor, the Kafka group commit, freed memory back to the system
STOP_GRACE_S = 30.0  # Ctrl+C / SIGTERM waits this long for buffered rows to become durable
# Decoding that failed for now (a look-up the wire format needs): 0.25 s doubling to 10 s.
DECODE_RETRY_FIRST_S = 0.25
DECODE_RETRY_MAX_S = 10.0
# Reading the sinks' positions on an assignment while a sink is down: 0.5 s doubling to 10 s.
POSITIONS_RETRY_FIRST_S = 0.5
POSITIONS_RETRY_MAX_S = 10.0


@dataclass(frozen=True)
class WorkerSpec:
    worker_id: int
    settings: Settings
    parent_pid: int
    feed: str | None = None
    strict: bool = False
    topic_id: str | None = None  # Kafka's id of the topic, stored with every position
    # The supervisor's environment as the worker starts: the fork server it comes from started
    # earlier (delta-rs and librdkafka read credentials and settings from the environment).
    env: dict[str, str] | None = None


def main(spec: WorkerSpec, conn: Connection) -> None:
    """Entry point of the child process, forked by the supervisor's fork server before any
    librdkafka client exists in it (supervisor.worker_context). `conn` is its end of the pipe to the
    supervisor (finpulse.link)."""
    if spec.env is not None:
        os.environ.clear()
        os.environ.update(spec.env)
    _leave_fork_server()
    link = WorkerLink(conn, spec.worker_id)
    root = logging.getLogger()
    root.handlers[:] = [ToParent(link)]  # the supervisor formats them (--log-format)
    root.setLevel(logging.INFO)
    _die_with_parent()
    worker = Worker(spec, link)
    signal.signal(signal.SIGTERM, lambda *_: worker.stop.set())
    signal.signal(signal.SIGINT, lambda *_: worker.stop.set())
    try:
        worker.run()
    except FinpulseError as exc:
        link.tell("error", exc)
        log.error("worker %d stopped: %s", spec.worker_id, exc)
        sys.exit(exc.exit_code)
    except BaseException:
        link.tell("crash", traceback.format_exc())
        raise


def _save_window(sink, partition: int, offset: int, state: bytes) -> None:
    sink.save_trade_state(partition, offset, state)


def _alive(pid: int) -> bool:
    """The supervisor still runs: neither gone nor a zombie (killed, not yet reaped by its parent)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False
    except OSError:  # no /proc here: ask the kernel whether the pid exists
        try:
            os.kill(pid, 0)
        except OSError:
            return False
        return True


def _leave_fork_server() -> None:
    """Drop the fork server's liveness pipe. multiprocessing hands every forked child the
    supervisor's end of it, so that the child could start processes of its own; the fork server
    exits only once every holder has closed it. A worker starts none, and holding it kept the fork
    server, and so the SIGTERM it sends its children as it dies, alive after the supervisor died."""
    from multiprocessing import forkserver

    server: Any = forkserver._forkserver
    fd = getattr(server, "_forkserver_alive_fd", None)
    if fd is not None:
        os.close(fd)
        server._forkserver_alive_fd = None


def _die_with_parent() -> None:
    """Linux: get SIGTERM when the fork server dies, as it does when the supervisor dies, even by
    SIGKILL (no orphan workers)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass  # elsewhere the loop's parent-pid check does the same, a little later


class Worker:
    def __init__(self, spec: WorkerSpec, link: WorkerLink):
        self.spec, self.link = spec, link
        self.forked_by = os.getppid()  # the fork server: it exits when the supervisor does
        s = spec.settings
        self.settings = s
        self.stop = threading.Event()
        self.decoder = Decoder.from_settings(s, spec.feed, spec.strict)
        # each lane holds rows against every sink's rules with its own admission (its thread's)
        sinks = open_sinks(s, spec.topic_id, link=link)  # a sink may be written with the supervisor's help
        self.lanes = [Lane(sink, sink.flush, Admission(s)) for sink in sinks]
        self.sinks = [Remote(lane, self.stop) for lane in self.lanes]  # reads, run on each lane's thread
        self.trades = Keeper(s, self.decoder, self.sinks)  # the assigned partitions' trade windows
        self.dead_letters = DeadLetters(s, self.stop) if s.dlq_topic else None
        self.undecoded: Messages | None = None  # messages the decoder could not decode yet (not now)
        self.decode_down: str | None = None  # why, while it cannot
        self.decode_at = 0.0  # monotonic time of the next try
        self.decode_backoff = Backoff(DECODE_RETRY_FIRST_S, DECODE_RETRY_MAX_S)
        self.acc = Accumulator()
        self.consumed: Offsets = {}  # next offset per assigned partition, as read
        self.linger_s = s.linger_ms / 1000
        self.stats = WorkerStats()
        self.reported = {lane.name: (0, 0) for lane in self.lanes}  # rows and rejects at the last report
        self.source: GroupSource | None = None

    # ------------------------------------------------------------------ rebalance callbacks
    def _on_assign(self, parts: list[int]) -> dict[int, int]:
        """Where each newly assigned partition starts: the lowest position any sink holds, once the
        positions are held against the topic; a partition no sink holds anything of: the earliest."""
        starts = self._retrying("check sink positions against the topic", lambda: self._starts(parts))
        for p, n in starts.items():  # only these partitions change hands (cooperative rebalancing)
            self.consumed.pop(p, None)
            if n >= 0:
                self.consumed[p] = n
        log.info(
            "assigned partitions %s, starting at %s; owns %s",
            parts,
            {p: "earliest" if n < 0 else n for p, n in starts.items()},
            sorted(self._owned() | set(parts)),
        )
        return starts

    def _owned(self) -> set[int]:
        return set(self.source.assigned) if self.source is not None else set()

    def _on_revoke(self, parts: list[int]) -> None:
        log.info("revoked partitions %s; owns %s", parts, sorted(self._owned() - set(parts)))
        self._forget_undecoded(parts)
        self._flush()
        self._save_windows(parts, force=True)  # the next owner starts from here, reading nothing again
        self.trades.forget(parts)
        grace = self.settings.rebalance_grace_ms / 1000
        if not all(lane.wait_idle(grace) for lane in self.lanes):
            log.warning(
                "rebalance: writes still pending after %.1fs (FINPULSE_REBALANCE_GRACE_MS); "
                "the sinks will skip what they hold",
                grace,
            )
        self._commit_kafka(asynchronous=False)

    def _on_lost(self, parts: list[int]) -> None:
        self.acc.drop(parts)  # another member owns them now
        self._forget_undecoded(parts)
        self.trades.forget(parts)

    def _forget_undecoded(self, parts: list[int]) -> None:
        """Messages held back for partitions that moved: their new owner reads them again."""
        if self.undecoded is not None:
            self.undecoded = self.undecoded.without(set(parts))
            if not len(self.undecoded):
                self.undecoded = self.decode_down = None

    def _on_end(self, partition: int, end: int) -> None:
        """The consumer reached the end of a partition at offset `end`. Offsets it passed without a
        message (transaction markers, aborted records, or a partition retention emptied) are done:
        hand them to the sinks as positions, so `--drain` and lag see the partition as complete."""
        held_back = self.undecoded is not None and partition in self.undecoded.partitions
        if held_back:  # messages below `end` wait to be decoded: the position must not pass them
            return
        if self.source is not None and partition in self.source.assigned and end > self.consumed.get(partition, -1):
            self.acc.advance(partition, end)
            self.consumed[partition] = end

    def _on_reset(self, partition: int, why: str) -> None:
        """Retention deleted messages of an assigned partition before we read them: hold the sinks
        against the topic again (DataLoss, or the gap recorded), then seek where they now start."""
        log.warning("partition %d: Kafka cannot serve the next offset (%s); checking for data loss", partition, why)
        assert self.source is not None
        self._flush()
        for lane in self.lanes:
            lane.wait_idle(STOP_GRACE_S)
        self._raise_lane_failure()
        parts = sorted(self.source.assigned)
        self.source.seek(self._retrying("check sink positions against the topic", lambda: self._starts(parts)))

    def _starts(self, parts: list[int]) -> dict[int, int]:
        """Where each partition starts: the lowest position any sink holds, once the positions were
        held against the topic (resume.settle: a recreated topic or a retention gap raises DataLoss
        unless --allow-data-loss). A partition some sink holds nothing of starts at the earliest
        offset, and so does one whose position lies past the end (a recreated topic whose gap was
        accepted): each sink's guard skips what lies below its position."""
        assert self.source is not None
        try:
            marks = self.source.watermarks(parts)
        except KafkaException as exc:
            raise ServiceUnavailable(f"Kafka watermarks: {exc.args[0].str()}") from None
        by_sink = resume.settle(
            self.settings.kafka_topic, self.sinks, marks, self.spec.topic_id, self.settings.allow_data_loss
        )
        for lane in self.lanes:  # what each sink holds before it writes again: its lag from the start
            lane.note_held(by_sink.get(lane.name, {}))
        held = by_sink.values()
        starts = {}
        for p in parts:
            lowest = min((h[p] for h in held if p in h), default=None)
            whole = all(p in h for h in held)
            starts[p] = lowest if whole and lowest is not None and lowest <= marks[p][1] else OFFSET_BEGINNING
        # each partition's trade window as it stood before its first offset to read
        lows = {p: low for p, (low, _) in marks.items()}
        self.trades.start({p: lows[p] if n < 0 else n for p, n in starts.items()}, lows)
        return starts

    def _retrying(self, what: str, step):
        """`step()` until a sink or Kafka answers; the stop flag ends the wait."""
        backoff = Backoff(POSITIONS_RETRY_FIRST_S, POSITIONS_RETRY_MAX_S)
        while True:
            try:
                return step()
            except ServiceUnavailable as exc:
                if self.stop.is_set():
                    raise
                delay = backoff.next_delay()
                log.warning("cannot %s yet (%s); retrying in %.1fs", what, exc, delay)
                self._report()  # the loop waits here: the supervisor still hears which sink is down
                self.stop.wait(delay)

    # ------------------------------------------------------------------ the loop
    def run(self) -> None:
        s = self.settings
        self.source = GroupSource(s, self._on_assign, self._on_revoke, self._on_lost, self._on_end, self._on_reset)
        log.info("worker %d joined group %s on %s", self.spec.worker_id, s.kafka_group_id, s.kafka_topic)
        next_report = time.monotonic() + REPORT_EVERY_S
        try:
            while not self.stop.is_set():
                self._raise_lane_failure()
                records = self.source.take(
                    s.batch_size - self.acc.size, min(self.acc.wait_left(self.linger_s, IDLE_POLL_S), IDLE_POLL_S)
                )
                if records:
                    self._decode(Messages.from_kafka(records))
                if self.undecoded is not None and time.monotonic() >= self.decode_at:
                    self._decode(None)
                if self.acc.due(s.batch_size, self.linger_s):
                    self._flush()
                self._backpressure()
                if time.monotonic() >= next_report:
                    next_report = time.monotonic() + REPORT_EVERY_S
                    self._commit_kafka()
                    self._save_windows()
                    self._report()
                    memory.release_freed()
                    if os.getppid() != self.forked_by or not _alive(self.spec.parent_pid):
                        log.warning("supervisor is gone; stopping")
                        break
            self._shutdown()
        finally:
            self.source.close()
            for lane in self.lanes:
                lane.close()
            if self.dead_letters is not None:
                self.dead_letters.close()
            self._report()

    def _decode(self, fresh: Messages | None) -> None:
        """Decode `fresh` messages (None: retry those held back) into the accumulator. A decoder
        that cannot decode now (ServiceUnavailable: a look-up failed) is an outage, never a reject:
        the messages are held back, in order, consumption pauses, and the worker tries them again
        with backoff, still reporting and serving the group, as it does while a sink is down."""
        if self.undecoded is not None and fresh is not None:
            fresh = Messages.concat([self.undecoded, fresh])  # behind what is held back, in order
        elif fresh is None:
            fresh = self.undecoded
        if fresh is None or not len(fresh):
            self.undecoded = None
            return
        msgs = fresh
        try:
            decoded = self.decoder.decode(msgs)
        except ServiceUnavailable as exc:
            if self.undecoded is None:
                log.warning("cannot decode messages now, holding them back and retrying: %s", exc)
            self.undecoded, self.decode_down = msgs, str(exc)
            self.decode_at = time.monotonic() + self.decode_backoff.next_delay()
            assert self.source is not None
            self.source.pause()
            return
        if self.undecoded is not None:
            log.warning("decoding again; %d messages held back go on", len(msgs))
            self.undecoded = self.decode_down = None
            self.decode_backoff.reset()
        found = self.trades.apply(decoded, msgs)
        decoded = found.decoded
        self.acc.add(decoded, msgs.partitions, msgs.offsets, found.duplicates, found.gaps)
        last = self.acc.next_offsets  # just advanced past these messages
        for p in set(msgs.partitions):
            self.consumed[p] = max(self.consumed.get(p, 0), last[p])
        st = self.stats
        st.messages += len(msgs)
        st.ticks += decoded.ticks.num_rows
        st.rejected += len(decoded.rejects)
        st.skipped += decoded.skipped
        for venue, n in found.duplicates_by_exchange.items():
            st.duplicates[venue] = st.duplicates.get(venue, 0) + n
        for g in found.gaps:
            if g.filled is None:
                st.sequence_gaps[g.exchange] = st.sequence_gaps.get(g.exchange, 0) + 1

    def _flush(self) -> None:
        if not self.acc.next_offsets:
            return
        batch = self.acc.take()
        for lane in self.lanes:
            lane.submit(batch)
        if self.dead_letters is not None and batch.rejects:
            self.dead_letters.send(batch.rejects)

    def _save_windows(self, partitions=None, force: bool = False) -> None:
        """Hand the snapshots of trade windows that are due (keeper.due) to every sink's lane; each
        is written after the batches already handed over, without waiting for it."""
        for p, offset, state in self.trades.due(partitions, force):
            for lane in self.lanes:
                lane.post(functools.partial(_save_window, partition=p, offset=offset, state=state))

    def _inflight(self) -> tuple[int, int]:
        """Ticks and rejects, and their estimated bytes, not yet durable in the slowest sink."""
        return (
            self.acc.size + max(lane.waiting for lane in self.lanes),
            self.acc.nbytes + max(lane.waiting_bytes for lane in self.lanes),
        )

    def _backpressure(self) -> None:
        """Pause fetching when the ticks or the bytes waiting for the sinks reach their limit;
        resume once both are below half of theirs."""
        assert self.source is not None
        limit, byte_limit = self.settings.max_inflight_ticks, self.settings.max_inflight_bytes
        inflight, nbytes = self._inflight()
        if not self.source.paused and (inflight >= limit or nbytes >= byte_limit):
            self.source.pause()
            log.debug("backpressure: %d ticks (%d bytes) waiting for the sinks; pausing consumption", inflight, nbytes)
        elif self.source.paused and self.undecoded is None and inflight < limit // 2 and nbytes < byte_limit // 2:
            self.source.resume()
            log.debug("backpressure released; resuming consumption")

    def _raise_lane_failure(self) -> None:
        for lane in self.lanes:
            if lane.failure is not None:
                raise lane.failure

    def _commit_kafka(self, asynchronous: bool = True) -> None:
        """Commit what every sink holds, for lag tools. Never read back for correctness."""
        if self.source is None:
            return
        held = [lane.positions for lane in self.lanes]
        self.source.commit(
            {p: min(h[p] for h in held) for p in self.source.assigned if all(p in h for h in held)}, asynchronous
        )

    def _report(self) -> None:
        """Counts since the last report and the state now, to the supervisor (once a second): the
        lag of what was read and of what each sink holds, both against the cached high watermarks."""
        st, self.stats = self.stats, WorkerStats()
        for lane in self.lanes:
            rows, rejects = lane.rows, lane.rejects
            was_rows, was_rejects = self.reported[lane.name]
            st.rows[lane.name], st.rejects[lane.name] = rows - was_rows, rejects - was_rejects
            self.reported[lane.name] = (rows, rejects)
            st.writes[lane.name] = lane.take_write_times()
        if self.source is not None:
            st.lag, st.paused = self.source.lag(self.consumed), self.source.paused
            st.held_lag = {lane.name: self.source.lag(lane.held()) for lane in self.lanes}
            st.partitions = sorted(self.source.assigned)
        st.down = {lane.name: lane.down for lane in self.lanes if lane.down}
        if self.decode_down is not None:
            st.down["decoder"] = self.decode_down
        self.link.tell("stats", st)

    def _shutdown(self) -> None:
        """Flush what is buffered and give the sinks a bounded time to make it durable."""
        self._flush()
        self._save_windows(force=True)
        for lane in self.lanes:
            if not lane.wait_idle(STOP_GRACE_S):
                self._raise_lane_failure()
                log.warning(
                    "%s did not finish in %.0fs; unwritten rows will be re-read next start", lane.name, STOP_GRACE_S
                )
        self._raise_lane_failure()
        self._commit_kafka(asynchronous=False)
