"""The in-flight limit in bytes: what the accumulator and the lanes count, and when a worker pauses.
No services: sinks and the consumer are stand-ins."""

from __future__ import annotations

import threading
from types import SimpleNamespace

from finpulse.batch import Accumulator, TickBatch, reject_nbytes
from finpulse.config import load_settings
from finpulse.decode import Decoder, Messages, Reject
from finpulse.lanes import Lane
from finpulse.sinks import Written
from finpulse.worker import Worker

TICK = b'{"symbol":"A","price":1,"size":1,"timestamp_ms":1700000000000}'


def _decoded(partition: int, offsets: list[int], values: list[bytes] | None = None):
    values = values or [TICK] * len(offsets)
    msgs = Messages(values, [partition] * len(offsets), offsets, [0] * len(offsets))
    return Decoder().decode(msgs), msgs


def _filled(*parts: tuple[int, list[int], list[bytes] | None]) -> Accumulator:
    acc = Accumulator()
    for p, offs, values in parts:
        d, m = _decoded(p, offs, values)
        acc.add(d, m.partitions, m.offsets)
    return acc


def test_tick_batch_nbytes_is_arrow_rows_plus_raw_and_reason_of_rejects():
    acc = _filled((0, [0, 1, 2], None))
    ticks = acc.take().ticks
    rejects = (
        Reject(0, 3, -1, "canonical", "bad", b"x" * 1000, None),
        Reject(0, 4, -1, "unknown", "tombstone", None, None),
    )
    batch = TickBatch(ticks, rejects, {0: 5})
    assert ticks.nbytes > 0
    assert batch.nbytes == ticks.nbytes + (1000 + 3) + (0 + len("tombstone"))
    assert TickBatch(ticks.slice(0, 0), (), {}).nbytes == 0


def test_accumulator_counts_bytes_of_ticks_and_rejects_and_take_resets_them():
    big = b"{" + b" " * 50_000  # broken JSON: a reject carrying 50 kB of raw bytes
    acc = _filled((0, [0, 1], None), (1, [7, 8], [TICK, big]))
    assert acc.ticks == 3 and len(acc.rejects) == 1
    assert acc.nbytes > 50_000
    assert acc.nbytes == sum(p.nbytes for p in acc.pieces) + reject_nbytes(acc.rejects[0])
    batch = acc.take()
    assert batch.nbytes == acc_bytes_of(batch)
    assert acc.nbytes == 0 and acc.size == 0


def acc_bytes_of(batch: TickBatch) -> int:
    return batch.ticks.nbytes + sum(len(r.raw or b"") + len(r.reason) for r in batch.rejects)


def test_drop_forgets_the_bytes_of_revoked_partitions():
    big = b"\xff" * 20_000  # not UTF-8: rejected with its raw bytes
    acc = _filled((0, [0, 1], None), (1, [5], [big]))
    assert acc.nbytes > 20_000
    acc.drop([1])
    assert acc.rejects == [] and acc.ticks == 2
    assert acc.nbytes == sum(p.nbytes for p in acc.pieces) < 20_000
    acc.drop([0])
    assert acc.nbytes == 0


class _Sink:
    """Holds every write until released, then reports the batch's offsets as held."""

    name = "fake"

    def __init__(self):
        self.release = threading.Event()
        self.writes: list[TickBatch] = []

    def write(self, batch: TickBatch):
        assert self.release.wait(10), "test never released the sink"
        self.writes.append(batch)
        return Written(dict(batch.next_offsets), batch.ticks.num_rows, len(batch.rejects))

    def close(self) -> None:
        pass


def test_lane_counts_waiting_bytes_and_returns_to_zero_even_when_merge_drops_an_overlap():
    sink = _Sink()
    lane = Lane(sink)
    try:
        first = _filled((0, [0, 1, 2, 3], None)).take()
        again = _filled((0, [2, 3, 4], None)).take()  # re-read after a rebalance: overlaps `first`
        lane.submit(first)
        lane.submit(again)
        assert lane.waiting == 7
        assert lane.waiting_bytes == first.nbytes + again.nbytes
        sink.release.set()
        assert lane.wait_idle(10)
        assert (lane.waiting, lane.waiting_bytes) == (0, 0)
        assert sum(b.ticks.num_rows for b in sink.writes) == lane.rows
    finally:
        lane.close()


class _Source:
    """What _backpressure uses of source.GroupSource."""

    def __init__(self):
        self.calls: list[str] = []
        self.paused = False

    def pause(self) -> None:
        self.calls.append("pause")
        self.paused = True

    def resume(self) -> None:
        self.calls.append("resume")
        self.paused = False


def _worker(max_ticks: int, max_bytes: int) -> Worker:
    """A Worker with just what _backpressure reads (no Kafka, no sinks)."""
    w = Worker.__new__(Worker)
    w.settings = load_settings(max_inflight_ticks=max_ticks, max_inflight_bytes=max_bytes)
    w.acc = Accumulator()
    w.lanes = [SimpleNamespace(waiting=0, waiting_bytes=0), SimpleNamespace(waiting=0, waiting_bytes=0)]
    w.source = _Source()
    w.undecoded = None  # nothing held back by the decoder
    return w


def test_backpressure_pauses_on_bytes_alone_and_resumes_below_half_of_both():
    mib = 1 << 20
    w = _worker(max_ticks=1000, max_bytes=4 * mib)
    slow = w.lanes[1]
    slow.waiting, slow.waiting_bytes = 10, 4 * mib  # few ticks, many bytes (large rejects)
    w._backpressure()
    assert w.source.paused and w.source.calls == ["pause"]

    slow.waiting_bytes = 3 * mib  # below the limit, not below half
    w._backpressure()
    assert w.source.paused and w.source.calls == ["pause"]

    slow.waiting, slow.waiting_bytes = 600, mib  # bytes below half, ticks not
    w._backpressure()
    assert w.source.paused and w.source.calls == ["pause"]

    slow.waiting = 499  # both below half
    w._backpressure()
    assert not w.source.paused and w.source.calls == ["pause", "resume"]


def test_backpressure_still_pauses_on_the_tick_count():
    w = _worker(max_ticks=1000, max_bytes=256 << 20)
    w.lanes[0].waiting = 1000
    w._backpressure()
    assert w.source.paused
    w.lanes[0].waiting = 0
    w._backpressure()
    assert not w.source.paused
