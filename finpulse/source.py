"""Kafka: the consumer a worker reads from, and the admin look-ups around it."""

from __future__ import annotations

import logging
from typing import Callable

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from finpulse.config import Settings
from finpulse.errors import ConfigError, ServiceUnavailable

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


def partitions(settings: Settings, topic: str | None = None) -> list[int]:
    """Partition ids of the topic; ServiceUnavailable when the broker does not answer."""
    topic = topic or settings.kafka_topic
    try:
        md = admin(settings).list_topics(topic=topic, timeout=METADATA_TIMEOUT_S)
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
    c = Consumer({**_base(settings), "group.id": f"{settings.kafka_group_id}.probe", "enable.auto.commit": False})
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
            "auto.offset.reset": "earliest",
            "session.timeout.ms": SESSION_TIMEOUT_MS,
            "heartbeat.interval.ms": SESSION_TIMEOUT_MS // 3,
            "queued.max.messages.kbytes": PREFETCH_KBYTES,
            "partition.assignment.strategy": "range",
            "client.id": "finpulse",
        }
    )
    c.subscribe([settings.kafka_topic], on_assign=on_assign, on_revoke=on_revoke, on_lost=on_lost)
    return c


__all__ = ["OFFSET_BEGINNING", "TopicPartition", "admin", "consumer", "create_topic", "partitions", "watermarks"]
