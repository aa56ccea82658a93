"""Kafka: the consumer a worker reads from, and the admin look-ups around it."""

from __future__ import annotations

import logging
import time
import uuid
from typing import Callable, Iterator

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from finpulse.config import Settings
from finpulse.errors import ConfigError, ServiceUnavailable
from finpulse.records import Messages

log = logging.getLogger(__name__)

# librdkafka prefetches up to this much per partition while we decode and write; 16 MiB keeps a
# worker's memory bounded yet lets a consume() call return ~100k ticks at once during a backlog.
PREFETCH_KBYTES = 16 * 1024
# A killed worker's partitions move to a survivor after this long (the broker's minimum is 6 s).
SESSION_TIMEOUT_MS = 6000
METADATA_TIMEOUT_S = 10.0


def _base(settings: Settings) -> dict:
    return {"bootstrap.servers": settings.kafka_bootstrap_servers, "logger": logging.getLogger("librdkafka")}


def admin(settings: Settings) -> AdminClient:
    return AdminClient(_base(settings))


def partitions(settings: Settings, topic: str | None = None, timeout: float = METADATA_TIMEOUT_S) -> list[int]:
    """Partition ids of the topic; ServiceUnavailable when the broker does not answer within
    `timeout` seconds."""
    topic = topic or settings.kafka_topic
    try:
        md = admin(settings).list_topics(topic=topic, timeout=timeout)
    except KafkaException as exc:
        raise ServiceUnavailable(
            f"Kafka at {settings.kafka_bootstrap_servers} did not answer: {exc.args[0].str()}; "
            "is it running? (`scripts/services up` starts the local one)"
        ) from None
    meta = md.topics.get(topic)
    if meta is None or meta.error is not None:
        if meta is not None and meta.error.code() != KafkaError.UNKNOWN_TOPIC_OR_PART:
            raise ServiceUnavailable(f"Kafka metadata for {topic}: {meta.error.str()}")
        raise ConfigError(f"topic {topic!r} does not exist on {settings.kafka_bootstrap_servers}: "
                          "run `finpulse init` (or set KAFKA_TOPIC)")
    return sorted(meta.partitions)


def topic_id(settings: Settings) -> str | None:
    """Kafka's id of the topic (a recreated topic gets a new one); None when the broker does not
    report ids (before Kafka 2.8)."""
    from confluent_kafka import TopicCollection

    client = admin(settings)  # keep a reference: the futures die with their client
    try:
        futures = client.describe_topics(TopicCollection([settings.kafka_topic]), request_timeout=METADATA_TIMEOUT_S)
        described = futures[settings.kafka_topic].result(timeout=METADATA_TIMEOUT_S)
    except KafkaException as exc:
        if exc.args[0].code() == KafkaError.UNKNOWN_TOPIC_OR_PART:
            raise ConfigError(f"topic {settings.kafka_topic!r} does not exist on {settings.kafka_bootstrap_servers}: "
                              "run `finpulse init` (or set KAFKA_TOPIC)") from None
        raise ServiceUnavailable(f"Kafka could not describe topic {settings.kafka_topic}: {exc.args[0].str()}") from None
    tid = str(described.topic_id) if described.topic_id is not None else ""
    return tid if tid and tid != "AAAAAAAAAAAAAAAAAAAAAA" else None  # the all-zero id means "unknown"


def create_topic(settings: Settings, num_partitions: int) -> bool:
    """Create the topic if absent; True when this call created it."""
    try:
        partitions(settings)
        return False
    except ConfigError:
        pass
    client = admin(settings)  # keep a reference: the futures die with their client
    futures = client.create_topics([NewTopic(settings.kafka_topic, num_partitions, 1)])
    try:
        futures[settings.kafka_topic].result(timeout=30)
    except KafkaException as exc:
        if exc.args[0].code() == KafkaError.TOPIC_ALREADY_EXISTS:
            return False
        raise ServiceUnavailable(f"cannot create topic {settings.kafka_topic}: {exc.args[0].str()}") from None
    return True


def watermarks(settings: Settings, parts: list[int] | None = None) -> dict[int, tuple[int, int]]:
    """(low, high) watermark per partition, straight from the broker."""
    parts = partitions(settings) if parts is None else parts
    c = _outsider(settings, "probe")
    try:
        out = {}
        for p in parts:
            out[p] = c.get_watermark_offsets(TopicPartition(settings.kafka_topic, p), timeout=METADATA_TIMEOUT_S)
        return out
    except KafkaException as exc:
        raise ServiceUnavailable(f"Kafka watermarks: {exc.args[0].str()}") from None
    finally:
        c.close()


def consumer(settings: Settings, on_assign: Callable, on_revoke: Callable, on_lost: Callable) -> Consumer:
    """A group member of KAFKA_GROUP_ID subscribed to KAFKA_TOPIC. Offsets are never auto-committed:
    positions come from the sinks (on_assign), Kafka's commit only feeds lag tools."""
    c = Consumer(
        {
            **_base(settings),
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
            "heartbeat.interval.ms": SESSION_TIMEOUT_MS // 3,
            "queued.max.messages.kbytes": PREFETCH_KBYTES,
            "partition.assignment.strategy": "range",
            "client.id": "finpulse",
        }
    )
    c.subscribe([settings.kafka_topic], on_assign=on_assign, on_revoke=on_revoke, on_lost=on_lost)
    return c


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


def _outsider(settings: Settings, purpose: str) -> Consumer:
    """A consumer that never joins or commits to a group (its group id is unique and unused)."""
    return Consumer({
        **_base(settings),
        "group.id": f"{settings.kafka_group_id}.{purpose}-{uuid.uuid4().hex[:12]}",
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "enable.partition.eof": True,
        "auto.offset.reset": "earliest",  # a start that retention deleted meanwhile: the oldest left
        "queued.max.messages.kbytes": PREFETCH_KBYTES,
        # A new range is assigned only after the broker answers the fetch in flight; its long-poll
        # default (500 ms) would then stall every window of `verify`. Reads are short-lived, so a
        # 20 ms poll at the end of a partition costs little.
        "fetch.wait.max.ms": 20,
        "client.id": f"finpulse-{purpose}",
    })


def offsets_for_time(settings: Settings, parts: list[int], timestamp_ms: int) -> dict[int, int]:
    """Per partition, the first offset whose record timestamp is >= timestamp_ms (the broker's
    offsets_for_times); the high watermark when every record is older."""
    c = _outsider(settings, "probe")
    try:
        found = c.offsets_for_times([TopicPartition(settings.kafka_topic, p, timestamp_ms) for p in parts],
                                    timeout=METADATA_TIMEOUT_S)
        out = {}
        for tp in found:
            if tp.error is not None:
                raise ServiceUnavailable(f"Kafka offsets for time, partition {tp.partition}: {tp.error.str()}")
            if tp.offset < 0:  # nothing at or after that time
                _, tp.offset = c.get_watermark_offsets(tp, timeout=METADATA_TIMEOUT_S)
            out[tp.partition] = tp.offset
        return out
    except KafkaException as exc:
        raise ServiceUnavailable(f"Kafka offsets for time: {exc.args[0].str()}") from None
    finally:
        c.close()


def committed(settings: Settings, parts: list[int]) -> dict[int, int | None]:
    """KAFKA_GROUP_ID's committed offset per partition (None: never committed). Only asks the group
    coordinator; it does not join the group."""
    c = Consumer({**_base(settings), "group.id": settings.kafka_group_id, "enable.auto.commit": False})
    try:
        found = c.committed([TopicPartition(settings.kafka_topic, p) for p in parts], timeout=METADATA_TIMEOUT_S)
    except KafkaException as exc:
        raise ServiceUnavailable(f"Kafka committed offsets of {settings.kafka_group_id}: {exc.args[0].str()}") from None
    finally:
        c.close()
    return {tp.partition: tp.offset if tp.offset >= 0 else None for tp in found}


class RangeReader:
    """Reads offset ranges [start, end) of single partitions; one consumer for many ranges."""

    def __init__(self, settings: Settings, take: int = RANGE_TAKE):
        self.topic, self.take = settings.kafka_topic, take
        self._consumer = _outsider(settings, "replay")

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
                    raise ServiceUnavailable(f"Kafka returned nothing for {RANGE_IDLE_S:.0f}s while reading "
                                             f"partition {partition} of {self.topic} from offset {start}")
        finally:
            c.unassign()

    def close(self) -> None:
        self._consumer.close()

    def __enter__(self) -> "RangeReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


__all__ = ["OFFSET_BEGINNING", "RangeReader", "TopicPartition", "admin", "committed", "consumer", "create_topic",
           "offsets_for_time", "partitions", "topic_id", "watermarks"]
