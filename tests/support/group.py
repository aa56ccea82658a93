"""Another member of an ingest's consumer group, for rebalance tests."""

from __future__ import annotations

import threading
from contextlib import contextmanager

from confluent_kafka import Consumer

from finpulse.config import Settings


@contextmanager
def group_member(s: Settings):
    """Another member of the ingest's consumer group (same assignment protocol) that takes
    partitions and reads nothing into any sink, until the block ends and it leaves."""
    member = Consumer(
        {
            "bootstrap.servers": s.kafka_bootstrap_servers,
            "group.id": s.kafka_group_id,
            "partition.assignment.strategy": "cooperative-sticky",
            "enable.auto.commit": False,
            "session.timeout.ms": 6000,
        }
    )
    member.subscribe([s.kafka_topic])
    stop = threading.Event()

    def poll() -> None:
        while not stop.is_set():
            member.poll(0.1)

    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    try:
        yield
    finally:
        stop.set()
        poller.join(10)
        member.close()
