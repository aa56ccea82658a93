"""GroupSource's own mechanics: against a stand-in for librdkafka's consumer, what a take() returns
when the worker seeks partitions back while the messages of that very take are being filtered; against
the broker, that members closed mid-rebalance leave the group at once."""

from __future__ import annotations

import time

import pytest
from confluent_kafka import KafkaError

from finpulse.source import GroupSource


class _Error:
    def __init__(self, code: int):
        self._code = code

    def code(self) -> int:
        return self._code

    def str(self) -> str:
        return "offset out of range"

    def fatal(self) -> bool:
        return False


class _Message:
    def __init__(self, partition: int, offset: int, error: _Error | None = None):
        self._p, self._o, self._e = partition, offset, error

    def error(self):
        return self._e

    def partition(self) -> int:
        return self._p

    def offset(self) -> int:
        return self._o


class _Consumer:
    def __init__(self, records: list[_Message]):
        self.records, self.seeks = records, []

    def consume(self, n: int, timeout: float) -> list[_Message]:
        taken, self.records = self.records, []
        return taken

    def seek(self, tp) -> None:
        self.seeks.append((tp.partition, tp.offset))


def _source(consumer: _Consumer, on_reset) -> GroupSource:
    source = GroupSource.__new__(GroupSource)  # no broker: the consumer is the stand-in
    source.topic, source.assigned, source._seeked, source.paused = "t", {0, 1}, set(), False
    source._on_end = lambda *_: None
    source._on_reset = on_reset
    source._consumer = consumer  # type: ignore[assignment]
    return source


def test_messages_of_partitions_sought_back_during_a_take_are_left_for_the_re_read():
    """Retention overtook partition 1: on_reset seeks every assigned partition to what the sinks
    hold. The messages this take() fetched of them arrive again from there, so it must not return
    them too (the batch then held each twice)."""
    consumer = _Consumer(
        [
            _Message(0, 100),
            _Message(2, 7),
            _Message(1, 0, _Error(KafkaError._AUTO_OFFSET_RESET)),
            _Message(0, 101),
        ]
    )
    source = _source(consumer, lambda partition, why: source.seek({0: 100, 1: 50}))
    taken = source.take(10, 0)
    assert [(m.partition(), m.offset()) for m in taken] == [(2, 7)]
    assert consumer.seeks == [(0, 100), (1, 50)]
    consumer.records = [_Message(0, 100), _Message(0, 101)]  # the re-read
    assert [(m.partition(), m.offset()) for m in source.take(10, 0)] == [(0, 100), (0, 101)]


@pytest.mark.kafka
@pytest.mark.postgres
def test_members_closed_mid_rebalance_leave_the_group_at_once(isolated):
    """Two members stop right after the first round of a cooperative rebalance, while the second
    (which hands the moved partitions over) is still pending: the one with nothing assigned used to
    close without a LeaveGroup, so the broker kept it for its session timeout and the other's close
    waited 5 s on its leave. Both must be gone from the group the moment close() returns."""
    from finpulse import source as kafka_source

    revoked: list[list[int]] = []

    def member() -> GroupSource:
        return GroupSource(isolated, lambda parts: {}, revoked.append, lambda parts: None, noop, noop)

    def noop(*_):
        return None

    first = member()
    deadline = time.monotonic() + 30
    while not first.assigned:
        assert time.monotonic() < deadline, "the first member was never assigned"
        first.take(1, 0.1)
    second = member()
    while not revoked:  # round one: the first gives up the partitions moving to the second
        assert time.monotonic() < deadline, "no rebalance after the second member joined"
        first.take(1, 0.05)
        second.take(1, 0.05)
    second.close()
    first.close()
    client = kafka_source.admin(isolated)  # kept alive until the answer arrives
    group = client.describe_consumer_groups([isolated.kafka_group_id])[isolated.kafka_group_id].result(timeout=10)
    assert [m.member_id for m in group.members] == [], "a closed member is still in the group"
