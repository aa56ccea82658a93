"""Rejected messages copied to a Kafka dead-letter topic (FINPULSE_DLQ_TOPIC / --dlq-topic).

The record keeps the original bytes as its value and key, and says why in headers. Delivery is
at least once: after a crash the re-read batch sends its rejects again. prices_rejected, written
in the sink's transaction, is the exactly-once record.
"""

from __future__ import annotations

import logging

from confluent_kafka import Producer

from finpulse import source
from finpulse.config import Settings
from finpulse.normalize import Reject

log = logging.getLogger(__name__)

# A dead-letter record lands in the same partition number as the message it replaces, so
# consumers of the DLQ see rejects of one source partition in order.


def create_topic(settings: Settings) -> bool:
    """The DLQ topic, with the source topic's partition count, when FINPULSE_DLQ_TOPIC is set."""
    if not settings.dlq_topic:
        return False
    dlq = settings.model_copy(update={"kafka_topic": settings.dlq_topic})
    return source.create_topic(dlq, len(source.partitions(settings)))


class DeadLetters:
    def __init__(self, bootstrap_servers: str, topic: str, source_topic: str):
        self.topic, self.source_topic = topic, source_topic
        self.producer = Producer({
            "bootstrap.servers": bootstrap_servers,
            "enable.idempotence": True,  # no duplicates from producer retries
            "linger.ms": 50,
            "logger": logging.getLogger("librdkafka"),
        })
        self.failed = 0

    def send(self, rejects: tuple[Reject, ...] | list[Reject]) -> None:
        for r in rejects:
            headers = [
                ("finpulse.reason", r.reason.encode()),
                ("finpulse.feed", r.feed.encode()),
                ("finpulse.source", f"{self.source_topic}/{r.partition}/{r.offset}".encode()),
                ("finpulse.tick_index", str(r.tick_index).encode()),
            ]
            self._produce(r, headers)
        self.producer.poll(0)

    def _produce(self, r: Reject, headers) -> None:
        while True:
            try:
                self.producer.produce(self.topic, value=r.raw, partition=r.partition, headers=headers,
                                      on_delivery=self._delivered)
                return
            except BufferError:  # local queue full: let librdkafka send some first
                self.producer.poll(0.1)

    def _delivered(self, err, _msg) -> None:
        if err is not None:
            self.failed += 1
            log.warning("dead-letter record not delivered to %s: %s", self.topic, err.str())

    def close(self, timeout: float = 10.0) -> None:
        left = self.producer.flush(timeout)
        if left:
            log.warning("%d dead-letter records still unsent at shutdown", left)
