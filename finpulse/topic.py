"""What the broker says about the topic, and the short-lived clients that ask it: partitions, the
topic's id, watermarks, offsets for a time, the group's committed offsets, creating the topic.
source.py holds the long-lived readers (the group consumer and RangeReader)."""

from __future__ import annotations

import concurrent.futures
import time
import uuid
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from finpulse.config import Settings
from finpulse.errors import AccessRefused, ConfigError, ServiceUnavailable
from finpulse.kafka_config import bootstrap, client_config, refusal

# How much librdkafka fetches ahead of what we take. Each fetched message costs its decompressed
# bytes plus a few hundred bytes of librdkafka's own, and the thresholds are checked only between
# fetches, so they bound memory only together with a small fetch: with librdkafka's defaults
# (1 MiB of compressed batches per partition and fetch, 1 s backoff once the queue is full) a
# worker's queue held up to 440,000 messages. A small queue refilled every 20 ms still fetches far
# faster than a worker decodes (a bare consumer: 1M messages/s). Defaults: KAFKA_CONFIG_FILE may
# set any of them.
PREFETCH = {
    "queued.min.messages": 20_000,
    "queued.max.messages.kbytes": 4 * 1024,
    "max.partition.fetch.bytes": 256 * 1024,
    "fetch.queue.backoff.ms": 20,
}
METADATA_TIMEOUT_S = 10.0
PROBE_SLICE_S = 0.25  # a metadata wait is cut into slices this long to notice a refusal


def admin(settings: Settings) -> AdminClient:
    return AdminClient(client_config(settings))


def partitions(settings: Settings, topic: str | None = None, timeout: float = METADATA_TIMEOUT_S) -> list[int]:
    """Partition ids of the topic; ServiceUnavailable when the broker does not answer within
    `timeout` seconds, AccessRefused as soon as it refuses our credentials or we its certificate."""
    topic = topic or settings.kafka_topic
    refused: list = []
    # librdkafka's own log lines stay quiet: a refusal becomes our one line, an outage our retry message
    config: dict[str, Any] = {**client_config(settings), "error_cb": refused.append, "log_level": 0}
    client = AdminClient(config)
    deadline = time.monotonic() + timeout
    while True:  # in short slices, so a refusal reported meanwhile ends the wait at once
        try:
            md = client.list_topics(topic=topic, timeout=max(0.05, min(PROBE_SLICE_S, deadline - time.monotonic())))
            break
        except KafkaException as exc:
            client.poll(0)  # serves error_cb
            for error in refused:
                if (why := refusal(settings, error)) is not None:
                    raise why from None
            if time.monotonic() >= deadline:
                raise ServiceUnavailable(
                    f"Kafka at {bootstrap(settings)} did not answer: {exc.args[0].str()}; "
                    "is it running? (`scripts/services up` starts the local one)"
                ) from None
    meta = md.topics.get(topic)
    if meta is None or meta.error is not None:
        if meta is not None and meta.error.code() != KafkaError.UNKNOWN_TOPIC_OR_PART:
            raise ServiceUnavailable(f"Kafka metadata for {topic}: {meta.error.str()}")
        raise ConfigError(
            f"topic {topic!r} does not exist on {bootstrap(settings)}: run `finpulse init` (or set KAFKA_TOPIC)"
        )
    return sorted(meta.partitions)


def topic_id(settings: Settings) -> str | None:
    """Kafka's id of the topic (a recreated topic gets a new one); None when the broker does not
    report ids (before Kafka 2.8)."""
    from confluent_kafka import TopicCollection

    client = admin(settings)  # keep a reference: the futures die with their client
    try:
        futures = client.describe_topics(TopicCollection([settings.kafka_topic]), request_timeout=METADATA_TIMEOUT_S)
        described = futures[settings.kafka_topic].result(timeout=METADATA_TIMEOUT_S)
    except concurrent.futures.TimeoutError:
        raise ServiceUnavailable(
            f"Kafka did not describe topic {settings.kafka_topic} within "
            f"{METADATA_TIMEOUT_S:.0f}s; is the broker overloaded?"
        ) from None
    except KafkaException as exc:
        if exc.args[0].code() == KafkaError.UNKNOWN_TOPIC_OR_PART:
            raise ConfigError(
                f"topic {settings.kafka_topic!r} does not exist on {bootstrap(settings)}: "
                "run `finpulse init` (or set KAFKA_TOPIC)"
            ) from None
        raise ServiceUnavailable(
            f"Kafka could not describe topic {settings.kafka_topic}: {exc.args[0].str()}"
        ) from None
    tid = str(described.topic_id) if described.topic_id is not None else ""
    return tid if tid and tid != "AAAAAAAAAAAAAAAAAAAAAA" else None  # the all-zero id means "unknown"


def create_topic(settings: Settings, num_partitions: int) -> bool:
    """Create the topic if absent; True when this call created it."""
    try:
        partitions(settings)
        return False
    except AccessRefused:
        raise
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
    c = outsider(settings, "probe")
    try:
        out = {}
        for p in parts:
            out[p] = c.get_watermark_offsets(TopicPartition(settings.kafka_topic, p), timeout=METADATA_TIMEOUT_S)
        return out
    except KafkaException as exc:
        raise ServiceUnavailable(f"Kafka watermarks: {exc.args[0].str()}") from None
    finally:
        c.close()


def outsider(settings: Settings, purpose: str) -> Consumer:
    """A consumer that never joins or commits to a group (its group id is unique and unused): what
    replay, verify and status read with, so the live ingester never notices them."""
    return Consumer(
        {
            **PREFETCH,
            **client_config(settings),
            "group.id": f"{settings.kafka_group_id}.{purpose}-{uuid.uuid4().hex[:12]}",
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "enable.partition.eof": True,
            "auto.offset.reset": "earliest",  # a start that retention deleted meanwhile: the oldest left
            # A new range is assigned only after the broker answers the fetch in flight; its long-poll
            # default (500 ms) would then stall every window of `verify`. Reads are short-lived, so a
            # 20 ms poll at the end of a partition costs little.
            "fetch.wait.max.ms": 20,
            "client.id": f"finpulse-{purpose}",
        }
    )


def offsets_for_time(settings: Settings, parts: list[int], timestamp_ms: int) -> dict[int, int]:
    """Per partition, the first offset whose record timestamp is >= timestamp_ms (the broker's
    offsets_for_times); the high watermark when every record is older."""
    c = outsider(settings, "probe")
    try:
        found = c.offsets_for_times(
            [TopicPartition(settings.kafka_topic, p, timestamp_ms) for p in parts], timeout=METADATA_TIMEOUT_S
        )
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
    c = Consumer({**client_config(settings), "group.id": settings.kafka_group_id, "enable.auto.commit": False})
    try:
        found = c.committed([TopicPartition(settings.kafka_topic, p) for p in parts], timeout=METADATA_TIMEOUT_S)
    except KafkaException as exc:
        raise ServiceUnavailable(f"Kafka committed offsets of {settings.kafka_group_id}: {exc.args[0].str()}") from None
    finally:
        c.close()
    return {tp.partition: tp.offset if tp.offset >= 0 else None for tp in found}
