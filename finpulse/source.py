"""Kafka: the readers. GroupSource is a worker's side of the consumer group; RangeReader reads
bounded offset ranges for replay and verify. The topic look-ups (partitions, id, watermarks...) are
in topic.py and re-exported here, so callers name one Kafka module."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, TopicPartition

from finpulse.config import Settings
from finpulse.errors import ServiceUnavailable
from finpulse.records import Messages
from finpulse.topic import (
    METADATA_TIMEOUT_S,
    PREFETCH,
    admin,
    client_config,
    committed,
    create_topic,
    offsets_for_time,
    outsider,
    partitions,
    topic_id,
    watermarks,
)

log = logging.getLogger(__name__)

# A killed worker's partitions move to a survivor after this long (the broker's minimum is 6 s).
SESSION_TIMEOUT_MS = 6000
HEARTBEAT_MS = 500


def consumer(settings: Settings, on_assign: Callable, on_revoke: Callable, on_lost: Callable) -> Consumer:
    """A group member of KAFKA_GROUP_ID subscribed to KAFKA_TOPIC. Offsets are never auto-committed:
    positions come from the sinks (on_assign), Kafka's commit only feeds lag tools."""
    c = Consumer(
        {
            **PREFETCH,
            **client_config(settings),
            "group.id": settings.kafka_group_id,
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            # Positions come from the sinks, and resume.settle checks them against the watermarks at
            # every assignment. A position that falls below the low watermark while we read (retention
            # outran us) must not be skipped silently: librdkafka reports it as an error instead.
            "auto.offset.reset": "error",
            # End-of-partition events tell the worker where a partition ends even when its last
            # offsets hold no message (transaction markers), so the sinks' positions reach it.
            "enable.partition.eof": True,
            "session.timeout.ms": SESSION_TIMEOUT_MS,
            # A member learns of a rebalance at its next heartbeat, and a cooperative rebalance takes
            # two rounds: 500 ms heartbeats hand partitions to a joining worker within about a second
            # (at a third of the session timeout, 2 s each, a drain's second worker idled for 4 s).
            "heartbeat.interval.ms": HEARTBEAT_MS,
            # Incremental rebalancing: a joining worker takes only the partitions that move to it, the
            # others keep theirs and keep writing (the eager "range" protocol revoked every partition
            # of every member at each join, so starting N workers stopped the group N times).
            # No static membership (group.instance.id): a stopped run must hand its partitions over
            # at once, and two runs on one host must never fence each other.
            "partition.assignment.strategy": "cooperative-sticky",
            "client.id": "finpulse",
        }
    )
    c.subscribe([settings.kafka_topic], on_assign=on_assign, on_revoke=on_revoke, on_lost=on_lost)
    return c


# Messages taken from librdkafka's local queue per consume() call during a backlog: large enough
# that decoding works on whole columns, small enough that one call stays well under a second and
# its Python objects (one per message and field while decoding) a few MiB.
MAX_TAKE = 10_000


class GroupSource:
    """A worker's side of the consumer group: what it reads, and the mechanics around it.

    The worker supplies the decisions as callbacks: `on_assign(partitions)` returns where each
    partition starts (from the sinks), `on_revoke`/`on_lost` hand partitions back, `on_end` is told
    where a partition ends, `on_reset` that Kafka cannot serve a partition's next offset (retention
    overtook it). Everything librdkafka-specific stays here: error filtering, pause/resume, the
    informational group commit and lag from the cached watermarks.
    """

    def __init__(
        self,
        settings: Settings,
        on_assign: Callable[[list[int]], dict[int, int]],
        on_revoke: Callable[[list[int]], None],
        on_lost: Callable[[list[int]], None],
        on_end: Callable[[int, int], None],
        on_reset: Callable[[int, str], None],
    ):
        self.topic = settings.kafka_topic
        self._on_assign, self._on_revoke, self._on_lost = on_assign, on_revoke, on_lost
        self._on_end, self._on_reset = on_end, on_reset
        self.assigned: set[int] = set()
        self._seeked: set[int] = set()  # partitions moved by seek() during the current take()
        self.paused = False
        self.committed: dict[int, int] = {}
        self._consumer = consumer(settings, self._assigned, self._revoked, self._lost)

    # rebalance callbacks, on the consumer's poll
    # With the cooperative protocol each callback names only the partitions that change hands, and
    # a rebalance that moves none of this member's still calls them, with none: the worker is not
    # asked then (its answer reads the sinks, and a sink that is down must not hold up the group).
    def _assigned(self, c: Consumer, tps: list[TopicPartition]) -> None:
        if not tps:
            c.incremental_assign(tps)
            return
        starts = self._on_assign([tp.partition for tp in tps])
        for tp in tps:
            tp.offset = starts.get(tp.partition, OFFSET_BEGINNING)
        c.incremental_assign(tps)
        # librdkafka keeps a partition's pause across assignments: one paused for backpressure
        # before it was revoked would stay paused for good; new partitions follow the others.
        c.resume(tps)
        if self.paused:
            c.pause(tps)
        self.assigned |= {tp.partition for tp in tps}

    def _revoked(self, c: Consumer, tps: list[TopicPartition]) -> None:
        if tps:
            self._on_revoke([tp.partition for tp in tps])
        c.incremental_unassign(tps)
        self.assigned -= {tp.partition for tp in tps}

    def _lost(self, c: Consumer, tps: list[TopicPartition]) -> None:
        self._on_lost([tp.partition for tp in tps])
        c.incremental_unassign(tps)
        self.assigned -= {tp.partition for tp in tps}

    def take(self, want: int, wait_s: float) -> list:
        """Messages already fetched (up to MAX_TAKE); when there are none, wait up to `wait_s` for
        `want` more. Error events are filtered out: end of partition and offset resets go to their
        callbacks, a fatal error raises ServiceUnavailable, the rest is logged (librdkafka retries)."""
        records = self._consumer.consume(MAX_TAKE, 0)
        if not records:
            records = self._consumer.consume(max(1, min(want, MAX_TAKE)), wait_s)
        good = []
        self._seeked.clear()
        for m in records:
            err = m.error()
            if err is None:
                good.append(m)
            elif err.code() == KafkaError._PARTITION_EOF:
                self._on_end(m.partition(), m.offset())
            elif err.code() == KafkaError._AUTO_OFFSET_RESET:
                self._on_reset(m.partition(), err.str())
            elif err.fatal():
                raise ServiceUnavailable(f"Kafka consumer failed: {err.str()}")
            else:
                log.warning("Kafka: %s", err.str())
        if self._seeked:  # on_reset moved these: what this call fetched of them comes again from there
            good = [m for m in good if m.partition() not in self._seeked]
        return good

    def pause(self) -> None:
        if not self.paused and self.assigned:
            self._consumer.pause(self._tps(self.assigned))
            self.paused = True

    def resume(self) -> None:
        if self.paused:
            self._consumer.resume(self._tps(self.assigned))
            self.paused = False

    def seek(self, starts: dict[int, int]) -> None:
        for p, offset in starts.items():
            self._consumer.seek(TopicPartition(self.topic, p, offset))
            self._seeked.add(p)

    def watermarks(self, parts: list[int]) -> dict[int, tuple[int, int]]:
        """(low, high) per partition from the broker; KafkaException when it does not answer."""
        return {
            p: self._consumer.get_watermark_offsets(TopicPartition(self.topic, p), timeout=METADATA_TIMEOUT_S)
            for p in parts
        }

    def lag(self, consumed: dict[int, int]) -> dict[int, int]:
        """Messages between what was read and the high watermark (cached: no broker round trip)."""
        lag = {}
        for p in sorted(self.assigned):
            try:
                _, high = self._consumer.get_watermark_offsets(TopicPartition(self.topic, p), cached=True)
            except KafkaException:
                continue
            if high >= 0:
                lag[p] = max(0, high - consumed.get(p, 0))
        return lag

    def commit(self, held: dict[int, int], asynchronous: bool = True) -> None:
        """Commit the offsets every sink holds, for lag tools. Never read back for correctness."""
        offsets = [
            TopicPartition(self.topic, p, n)
            for p, n in held.items()
            if p in self.assigned and n > self.committed.get(p, -1)
        ]
        if not offsets:
            return
        # A synchronous commit (a revoke, the stop) may meet the rebalance that other workers stopping
        # at the same moment start: asked again a few times, it lands once that settles, so lag tools
        # see the drained positions.
        for attempt in range(1 if asynchronous else 5):
            try:
                self._consumer.commit(offsets=offsets, asynchronous=asynchronous)
                self.committed.update({tp.partition: tp.offset for tp in offsets})
                return
            except KafkaException as exc:  # informational only; the sinks hold the truth
                log.debug("Kafka commit skipped (attempt %d): %s", attempt + 1, exc)
                if not asynchronous and not exc.args[0].fatal():
                    time.sleep(0.2)
                    continue
                return

    def close(self) -> None:
        """Leave the group, then close. The explicit leave (unsubscribe) matters: librdkafka closes
        a member caught mid-rebalance with nothing assigned without a LeaveGroup, so the group waits
        for its session to time out; meanwhile every other member's next join, and its own leave
        at close, stalls (5 s at each stop of a run whose workers joined a moment ago)."""
        try:
            self._consumer.unsubscribe()
        except KafkaException as exc:  # a consumer already failed: close() still frees it
            log.debug("Kafka unsubscribe at close: %s", exc)
        self._consumer.close()

    def _tps(self, parts) -> list[TopicPartition]:
        return [TopicPartition(self.topic, p) for p in sorted(parts)]


# ---------------------------------------------------------------------------- bounded reads
# replay, verify and status read the topic outside the consumer group: assign() with explicit
# offsets, a throwaway group id, nothing ever committed, so the live ingester never notices them.

# Messages per consume() call of a bounded read: a replay batch, and one Delta commit or PostgreSQL
# transaction per sink; ~100k canonical ticks are ~20 MB of Arrow rows, a few hundred ms to write.
RANGE_TAKE = 100_000
RANGE_POLL_S = 1.0  # one consume() call waits at most this long
# A bounded read that gets nothing (no message, no end-of-partition) for this long gives up:
# the broker is unreachable or the range lies in data it no longer has.
RANGE_IDLE_S = 30.0


class RangeReader:
    """Reads offset ranges [start, end) of single partitions; one consumer for many ranges."""

    def __init__(self, settings: Settings, take: int = RANGE_TAKE):
        self.topic, self.take = settings.kafka_topic, take
        self._consumer = outsider(settings, "replay")

    def read(self, partition: int, start: int, end: int) -> Iterator[Messages]:
        """Messages of offsets start <= offset < end in order, in batches of up to `take`. Stops
        early at the end of the partition (records removed by compaction are simply absent)."""
        if start >= end:
            return
        c = self._consumer
        c.assign([TopicPartition(self.topic, partition, start)])
        try:
            quiet_since = time.monotonic()
            at, done = start, False
            while not done:
                records = c.consume(max(1, min(self.take, end - at)), RANGE_POLL_S)
                good = []
                for m in records:
                    err = m.error()
                    if err is not None:
                        if err.code() == KafkaError._PARTITION_EOF:
                            done = True
                        elif err.fatal() or err.code() == KafkaError.UNKNOWN_TOPIC_OR_PART:
                            raise ServiceUnavailable(f"Kafka read of partition {partition}: {err.str()}")
                        else:
                            log.warning("Kafka: %s", err.str())
                        continue
                    if m.offset() < end:
                        good.append(m)
                    done = done or m.offset() >= end - 1
                if good:
                    at = good[-1].offset() + 1
                    yield Messages.from_kafka(good)
                if records:
                    quiet_since = time.monotonic()
                elif time.monotonic() - quiet_since > RANGE_IDLE_S:
                    raise ServiceUnavailable(
                        f"Kafka returned nothing for {RANGE_IDLE_S:.0f}s while reading "
                        f"partition {partition} of {self.topic} from offset {start}"
                    )
        finally:
            c.unassign()

    def close(self) -> None:
        self._consumer.close()

    def __enter__(self) -> RangeReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


__all__ = [
    "MAX_TAKE",
    "OFFSET_BEGINNING",
    "GroupSource",
    "RangeReader",
    "TopicPartition",
    "admin",
    "committed",
    "consumer",
    "create_topic",
    "offsets_for_time",
    "partitions",
    "topic_id",
    "watermarks",
]
