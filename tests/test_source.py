"""GroupSource's own mechanics, against a stand-in for librdkafka's consumer: what a take() returns
when the worker seeks partitions back while the messages of that very take are being filtered."""

from __future__ import annotations

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
