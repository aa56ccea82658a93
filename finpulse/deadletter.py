"""Rejected messages copied to a Kafka dead-letter topic (FINPULSE_DLQ_TOPIC / --dlq-topic).

The record keeps the original bytes as its value, and says why in headers. Delivery is at least
once: after a crash the re-read batch sends its rejects again. prices_rejected, written in the
sink's transaction, is the exactly-once record. A copy that cannot be made (a value cut to fit
the producer's size limit aside) is logged and counted, never fatal: the DLQ is a convenience.
"""

from __future__ import annotations

import logging
import threading
import time

from confluent_kafka import KafkaException, Producer

from finpulse import source
from finpulse.config import Settings
from finpulse.kafka_config import client_config
from finpulse.records import Reject

log = logging.getLogger(__name__)

# A dead-letter record lands in partition (source partition % DLQ partitions): the same number
# when the DLQ was created by us (same count), so consumers of the DLQ see rejects of one source
# partition in order; a DLQ created with fewer partitions still gets every reject.

# The producer's message.max.bytes, set explicitly: librdkafka's default, just under the broker's
# default max.message.bytes (1,048,588), so a record we accept is one the broker accepts.
MESSAGE_MAX_BYTES = 1_000_000
# Room left for headers and record overhead: the reason is cut to REASON_MAX_BYTES, the source
# header holds a topic name (<= 249 characters) and two numbers; 16 KiB is several times that.
HEADERS_HEADROOM = 16 * 1024
# A larger reject's value is cut to this many bytes; header finpulse.truncated = original length.
MAX_VALUE_BYTES = MESSAGE_MAX_BYTES - HEADERS_HEADROOM
REASON_MAX_BYTES = 1024  # reasons quote bits of the message; keep the header bounded
# A send() waits at most this long, in all, for room in the producer's queue (full while the DLQ's
# partition leader is offline): the worker that calls it must keep reading, reporting and hearing
# SIGTERM. What does not fit by then is not copied (counted and logged; prices_rejected has it).
QUEUE_WAIT_S = 1.0


def create_topic(settings: Settings) -> bool:
    """The DLQ topic, with the source topic's partition count, when FINPULSE_DLQ_TOPIC is set."""
    if not settings.dlq_topic:
        return False
    dlq = settings.model_copy(update={"kafka_topic": settings.dlq_topic})
    return source.create_topic(dlq, len(source.partitions(settings)))


class DeadLetters:
    def __init__(self, settings: Settings, stop: threading.Event | None = None):
        assert settings.dlq_topic, "DeadLetters needs FINPULSE_DLQ_TOPIC"
        self.topic, self.source_topic = settings.dlq_topic, settings.kafka_topic
        self.settings = settings
        self.partitions: int | None = None  # the DLQ's partition count, read at the first send
        self.producer = Producer(
            {
                **client_config(settings),
                "enable.idempotence": True,  # no duplicates from producer retries
                "linger.ms": 50,
                "message.max.bytes": MESSAGE_MAX_BYTES,
            }
        )
        self.failed = 0
        self.stop = stop or threading.Event()  # set: waiting for room in the queue ends at once

    def send(self, rejects: tuple[Reject, ...] | list[Reject]) -> None:
        if self.partitions is None:  # in the worker's loop, so an outage here is retried
            self.partitions = len(source.partitions(self.settings, topic=self.topic))
        deadline = time.monotonic() + QUEUE_WAIT_S
        for i, r in enumerate(rejects):
            headers = [
                ("finpulse.reason", _cut(r.reason.encode(), REASON_MAX_BYTES)),
                ("finpulse.feed", r.feed.encode()),
                ("finpulse.source", f"{self.source_topic}/{r.partition}/{r.offset}".encode()),
                ("finpulse.tick_index", str(r.tick_index).encode()),
            ]
            value = r.raw
            if value is not None and len(value) > MAX_VALUE_BYTES:
                headers.append(("finpulse.truncated", str(len(value)).encode()))
                value = value[:MAX_VALUE_BYTES]
            if not self._produce(r, value, headers, r.partition % self.partitions, deadline):
                left = len(rejects) - i
                self.failed += left
                log.warning(
                    "%d dead-letter records not copied to %s: the producer's queue stayed full for %.0fs "
                    "(is the topic's leader offline?); prices_rejected holds them",
                    left,
                    self.topic,
                    QUEUE_WAIT_S,
                )
                break
        self.producer.poll(0)

    def _produce(self, r: Reject, value: bytes | None, headers, partition: int, deadline: float) -> bool:
        """Queue one record; False when the queue stayed full until `deadline` (or a stop)."""
        while True:
            try:
                self.producer.produce(
                    self.topic, value=value, partition=partition, headers=headers, on_delivery=self._delivered
                )
                return True
            except BufferError:  # local queue full: let librdkafka send some first, for a while
                left = deadline - time.monotonic()
                if left <= 0 or self.stop.is_set():
                    return False
                self.producer.poll(min(0.1, left))
            except KafkaException as exc:  # e.g. MSG_SIZE_TOO_LARGE: this copy is lost, ingest goes on
                self.failed += 1
                log.warning(
                    "dead-letter record for %s/%d/%d not sent to %s: %s",
                    self.source_topic,
                    r.partition,
                    r.offset,
                    self.topic,
                    exc.args[0].str(),
                )
                return True

    def _delivered(self, err, _msg) -> None:
        if err is not None:
            self.failed += 1
            log.warning("dead-letter record not delivered to %s: %s", self.topic, err.str())

    def close(self, timeout: float = 10.0) -> None:
        left = self.producer.flush(timeout)
        if left:
            log.warning("%d dead-letter records still unsent at shutdown", left)


def _cut(data: bytes, limit: int) -> bytes:
    """At most `limit` bytes of UTF-8 text, never ending inside a character."""
    return data if len(data) <= limit else data[:limit].decode("utf-8", "ignore").encode()
