"""One worker process: consume -> decode -> accumulate -> hand to the sink lanes -> commit.

Positions come from the sinks: on every assignment the worker seeks each partition to the lowest
offset any sink holds, and each sink skips what it already has. The Kafka group commit after
both sinks only feeds lag tools.
"""

from __future__ import annotations

import logging
import logging.handlers
import os
import signal
import sys
import threading
import time
import traceback
from dataclasses import dataclass

from confluent_kafka import OFFSET_BEGINNING, KafkaError, KafkaException, TopicPartition

from finpulse import resume, source
from finpulse.batch import Accumulator, Offsets
from finpulse.config import Settings
from finpulse.deadletter import DeadLetters
from finpulse.errors import FinpulseError, ServiceUnavailable
from finpulse.lanes import Lane
from finpulse.normalize import Decoder
from finpulse.records import Messages
from finpulse.sinks import open_sinks

log = logging.getLogger("finpulse.worker")

# Messages taken from librdkafka's local queue per consume() call during a backlog: large enough
# that decoding works on whole columns, small enough that one call stays well under a second.
MAX_TAKE = 20_000
IDLE_POLL_S = 0.2  # how often an idle worker looks at its stop flag
REPORT_EVERY_S = 1.0  # stats to the supervisor and the Kafka group commit
STOP_GRACE_S = 30.0  # Ctrl+C / SIGTERM waits this long for buffered rows to become durable


@dataclass(frozen=True)
class WorkerSpec:
    worker_id: int
    settings: Settings
    parent_pid: int
    feed: str | None = None
    strict: bool = False
    topic_id: str | None = None  # Kafka's id of the topic, stored with every position


def main(spec: WorkerSpec, events, logs) -> None:
    """Entry point of the child process (spawn start method: librdkafka does not survive fork)."""
    root = logging.getLogger()
    root.handlers[:] = [logging.handlers.QueueHandler(logs)]
    root.setLevel(logging.INFO)
    _die_with_parent()
    worker = Worker(spec, events)
    signal.signal(signal.SIGTERM, lambda *_: worker.stop.set())
    signal.signal(signal.SIGINT, lambda *_: worker.stop.set())
    try:
        worker.run()
    except FinpulseError as exc:
        events.put(("error", spec.worker_id, os.getpid(), exc))
        log.error("worker %d stopped: %s", spec.worker_id, exc)
        sys.exit(exc.exit_code)
    except BaseException:
        events.put(("crash", spec.worker_id, os.getpid(), traceback.format_exc()))
        raise


def _die_with_parent() -> None:
    """Linux: get SIGTERM when the supervisor dies, even by SIGKILL (no orphan workers)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass  # elsewhere the loop's parent-pid check does the same, a little later


class Worker:
    def __init__(self, spec: WorkerSpec, events):
        self.spec, self.events = spec, events
        s = spec.settings
        self.settings = s
        self.stop = threading.Event()
        self.decoder = Decoder(s.max_message_bytes, feed=spec.feed, strict=spec.strict)
        self.lanes = [Lane(sink) for sink in open_sinks(s, spec.topic_id)]
        self.dead_letters = DeadLetters(s) if s.dlq_topic else None
        self.acc = Accumulator()
        self.assigned: set[int] = set()
        self.consumed: Offsets = {}  # next offset per assigned partition, as read
        self.committed: Offsets = {}
        self.paused = False
        self.linger_s = s.linger_ms / 1000
        self.counts = {"messages": 0, "ticks": 0, "rejected": 0, "skipped": 0}
        self.reported = {lane.name: 0 for lane in self.lanes}
        self.consumer = None

    # ------------------------------------------------------------------ rebalance callbacks
    def _on_assign(self, consumer, tps: list[TopicPartition]) -> None:
        parts = [tp.partition for tp in tps]
        marks = self._settle(parts)
        starts = self._start_positions(parts)
        for tp in tps:
            start = starts.get(tp.partition, OFFSET_BEGINNING)
            # Past the end: a recreated topic whose gap was accepted. Read it from its start; each
            # sink's guard skips what lies below its position.
            tp.offset = OFFSET_BEGINNING if start != OFFSET_BEGINNING and start > marks[tp.partition][1] else start
        consumer.assign(tps)
        # librdkafka keeps a partition's pause across assignments: one paused for backpressure
        # before this rebalance would stay paused for good. Backpressure pauses again if needed.
        consumer.resume(tps)
        self.assigned, self.paused = set(parts), False
        self.consumed = {p: starts[p] for p in parts if p in starts}
        log.info("assigned partitions %s, starting at %s", parts or "none",
                 {p: starts.get(p, "earliest") for p in parts})

    def _on_revoke(self, consumer, tps: list[TopicPartition]) -> None:
        self._flush()
        grace = self.settings.rebalance_grace_ms / 1000
        if not all(lane.wait_idle(grace) for lane in self.lanes):
            log.warning("rebalance: writes still pending after %.1fs (FINPULSE_REBALANCE_GRACE_MS); "
                        "the sinks will skip what they hold", grace)
        self._commit_kafka(asynchronous=False)
        self.assigned = set()

    def _on_lost(self, consumer, tps: list[TopicPartition]) -> None:
        self.acc.drop(tp.partition for tp in tps)  # another member owns them now
        self.assigned = set()

    def _settle(self, parts: list[int]) -> dict[int, tuple[int, int]]:
        """Hold the sinks' positions against the partitions as they are now (resume.settle): a
        recreated topic or a retention gap raises DataLoss unless --allow-data-loss."""
        topic = self.settings.kafka_topic
        delay = 0.5
        while True:
            try:
                marks = {p: self.consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
                         for p in parts}
                resume.settle(topic, [lane.sink for lane in self.lanes], marks, self.spec.topic_id,
                              self.settings.allow_data_loss)
                return marks
            except (ServiceUnavailable, KafkaException) as exc:
                if self.stop.is_set():
                    raise ServiceUnavailable(f"stopping while checking positions: {exc}") from None
                log.warning("cannot check sink positions against the topic yet (%s); retrying in %.1fs",
                            exc, delay)
                time.sleep(delay)
                delay = min(delay * 2, 10.0)

    def _start_positions(self, parts: list[int]) -> Offsets:
        """Lowest position any sink holds per partition; absent = a sink holds nothing: earliest."""
        delay = 0.5
        while True:
            try:
                held = [lane.sink.positions(parts) for lane in self.lanes]
                return {p: min(h[p] for h in held) for p in parts if all(p in h for h in held)}
            except ServiceUnavailable as exc:
                if self.stop.is_set():
                    raise
                log.warning("cannot read sink positions yet (%s); retrying in %.1fs", exc, delay)
                time.sleep(delay)
                delay = min(delay * 2, 10.0)

    # ------------------------------------------------------------------ the loop
    def run(self) -> None:
        s = self.settings
        self.consumer = source.consumer(s, self._on_assign, self._on_revoke, self._on_lost)
        log.info("worker %d joined group %s on %s", self.spec.worker_id, s.kafka_group_id, s.kafka_topic)
        next_report = time.monotonic() + REPORT_EVERY_S
        try:
            while not self.stop.is_set():
                self._raise_lane_failure()
                records = self._take()
                if records:
                    self._decode(records)
                if self.acc.size >= s.batch_size or (self.acc.next_offsets and self.acc.waited() >= self.linger_s):
                    self._flush()
                self._backpressure()
                if time.monotonic() >= next_report:
                    next_report = time.monotonic() + REPORT_EVERY_S
                    self._commit_kafka()
                    self._report()
                    if os.getppid() != self.spec.parent_pid:
                        log.warning("supervisor is gone; stopping")
                        break
            self._shutdown()
        finally:
            self.consumer.close()
            for lane in self.lanes:
                lane.close()
            if self.dead_letters is not None:
                self.dead_letters.close()
            self._report()

    def _take(self):
        consumer = self.consumer
        records = consumer.consume(MAX_TAKE, 0)  # whatever the broker already sent us
        if not records:
            wait = max(0.0, self.linger_s - self.acc.waited()) if self.acc.next_offsets else IDLE_POLL_S
            need = max(1, self.settings.batch_size - self.acc.size)
            records = consumer.consume(min(need, MAX_TAKE), min(wait, IDLE_POLL_S))
        good = []
        for m in records:
            err = m.error()
            if err is None:
                good.append(m)
            elif err.code() == KafkaError._AUTO_OFFSET_RESET:
                self._on_reset(m.partition(), err.str())
            elif err.code() == KafkaError._PARTITION_EOF:
                self._at_end(m.partition(), m.offset())
            else:
                if err.fatal():
                    raise ServiceUnavailable(f"Kafka consumer failed: {err.str()}")
                log.warning("Kafka: %s", err.str())
        return good

    def _at_end(self, partition: int, end: int) -> None:
        """The consumer reached the end of a partition at offset `end`. Offsets it passed without a
        message (transaction markers, aborted records, or a partition retention emptied) are done:
        hand them to the sinks as positions, so `--drain` and lag see the partition as complete."""
        if partition in self.assigned and end > self.consumed.get(partition, -1):
            self.acc.advance(partition, end)
            self.consumed[partition] = end

    def _on_reset(self, partition: int, why: str) -> None:
        """Retention deleted messages of an assigned partition before we read them: hold the sinks
        against the topic again (DataLoss, or the gap recorded), then seek where they now start."""
        log.warning("partition %d: Kafka cannot serve the next offset (%s); checking for data loss", partition, why)
        self._flush()
        for lane in self.lanes:
            lane.wait_idle(STOP_GRACE_S)
        self._raise_lane_failure()
        parts = sorted(self.assigned)
        self._settle(parts)
        starts = self._start_positions(parts)
        for p in parts:
            self.consumer.seek(TopicPartition(self.settings.kafka_topic, p, starts.get(p, OFFSET_BEGINNING)))

    def _decode(self, records) -> None:
        msgs = Messages.from_kafka(records)
        decoded = self.decoder.decode(msgs)
        self.acc.add(decoded, msgs.partitions, msgs.offsets)
        last = self.acc.next_offsets  # just advanced past these messages
        for p in set(msgs.partitions):
            self.consumed[p] = max(self.consumed.get(p, 0), last[p])
        c = self.counts
        c["messages"] += len(msgs)
        c["ticks"] += decoded.ticks.num_rows
        c["rejected"] += len(decoded.rejects)
        c["skipped"] += decoded.skipped

    def _flush(self) -> None:
        if not self.acc.next_offsets:
            return
        batch = self.acc.take()
        for lane in self.lanes:
            lane.submit(batch)
        if self.dead_letters is not None and batch.rejects:
            self.dead_letters.send(batch.rejects)

    def _inflight(self) -> tuple[int, int]:
        """Ticks and rejects, and their estimated bytes, not yet durable in the slowest sink."""
        return (self.acc.size + max(lane.waiting for lane in self.lanes),
                self.acc.nbytes + max(lane.waiting_bytes for lane in self.lanes))

    def _backpressure(self) -> None:
        """Pause fetching when the ticks or the bytes waiting for the sinks reach their limit;
        resume once both are below half of theirs."""
        limit, byte_limit = self.settings.max_inflight_ticks, self.settings.max_inflight_bytes
        inflight, nbytes = self._inflight()
        if not self.paused and (inflight >= limit or nbytes >= byte_limit) and self.assigned:
            self.consumer.pause([TopicPartition(self.settings.kafka_topic, p) for p in self.assigned])
            self.paused = True
            log.debug("backpressure: %d ticks (%d bytes) waiting for the sinks; pausing consumption",
                      inflight, nbytes)
        elif self.paused and inflight < limit // 2 and nbytes < byte_limit // 2:
            self.consumer.resume([TopicPartition(self.settings.kafka_topic, p) for p in self.assigned])
            self.paused = False
            log.debug("backpressure released; resuming consumption")

    def _raise_lane_failure(self) -> None:
        for lane in self.lanes:
            if lane.failure is not None:
                raise lane.failure

    def _commit_kafka(self, asynchronous: bool = True) -> None:
        """Commit what both sinks hold, for lag tools. Never read back for correctness."""
        offsets = []
        for p in self.assigned:
            held = [lane.positions.get(p) for lane in self.lanes]
            if None in held:
                continue
            low = min(held)
            if low > self.committed.get(p, -1):
                offsets.append(TopicPartition(self.settings.kafka_topic, p, low))
                self.committed[p] = low
        if offsets:
            try:
                self.consumer.commit(offsets=offsets, asynchronous=asynchronous)
            except Exception as exc:  # informational only; the sinks hold the truth
                log.debug("Kafka commit skipped: %s", exc)

    def _report(self) -> None:
        lag = {}
        for p in sorted(self.assigned):
            try:
                _, high = self.consumer.get_watermark_offsets(
                    TopicPartition(self.settings.kafka_topic, p), cached=True) if self.consumer else (0, 0)
            except Exception:
                continue
            if high >= 0:
                lag[p] = max(0, high - self.consumed.get(p, 0))
        rows = {lane.name: lane.rows - self.reported[lane.name] for lane in self.lanes}
        for lane in self.lanes:
            self.reported[lane.name] = lane.rows
        counts, self.counts = self.counts, {k: 0 for k in self.counts}
        self.events.put(("stats", self.spec.worker_id, os.getpid(), {
            **counts, "rows": rows, "lag": lag, "paused": self.paused,
            "down": {lane.name: lane.down for lane in self.lanes if lane.down},
        }))

    def _shutdown(self) -> None:
        """Flush what is buffered and give the sinks a bounded time to make it durable."""
        self._flush()
        for lane in self.lanes:
            if not lane.wait_idle(STOP_GRACE_S):
                self._raise_lane_failure()
                log.warning("%s did not finish in %.0fs; unwritten rows will be re-read next start",
                            lane.name, STOP_GRACE_S)
        self._raise_lane_failure()
        self._commit_kafka(asynchronous=False)
