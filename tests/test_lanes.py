"""The lane's own logic with a fake sink: group commit, retry on an outage, failure propagation,
and queued batches that overlap after a rebalance."""

from __future__ import annotations

import threading
import time

import pytest

from finpulse.batch import Accumulator, FlushPolicy, Offsets, TickBatch
from finpulse.decode import Decoder, Messages
from finpulse.errors import ServiceUnavailable, SinkRejected
from finpulse.lanes import Lane
from finpulse.sinks import Written


def span(partition: int, start: int, end: int) -> TickBatch:
    offsets = list(range(start, end))
    values = [b'{"symbol":"A","price":1,"size":1,"timestamp_ms":1700000000000}'] * len(offsets)
    msgs = Messages(values, [partition] * len(offsets), offsets, [1_700_000_000_000] * len(offsets))
    acc = Accumulator()
    acc.add(Decoder().decode(msgs), msgs.partitions, msgs.offsets)
    return acc.take()


class FakeSink:
    """Holds keys like a table with a primary key: a key written twice is an error, as in the sinks."""

    name = "fake"

    def __init__(self, failures: list[BaseException] | None = None):
        self.keys: set[tuple[int, int, int]] = set()
        self.held: Offsets = {}
        self.writes: list[int] = []  # rows per write call
        self.failures = list(failures or [])
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()  # set once a write has started (and waits at the gate)

    def positions(self, partitions) -> Offsets:
        return {p: self.held[p] for p in partitions if p in self.held}

    def write(self, batch: TickBatch) -> Offsets:
        self.entered.set()
        self.gate.wait(10)
        if self.failures:
            raise self.failures.pop(0)
        todo = batch.after(self.held)
        cols = [todo.ticks.column(c).to_pylist() for c in ("kafka_partition", "kafka_offset", "tick_index")]
        keys = list(zip(*cols))
        assert len(set(keys)) == len(keys) and not self.keys & set(keys), "a key written twice"
        self.keys.update(keys)
        self.writes.append(len(keys))
        for p, n in todo.next_offsets.items():
            assert n >= self.held.get(p, 0), "a position went backwards"
            self.held[p] = n
        return Written(dict(self.held), len(keys), len(todo.rejects))

    def close(self) -> None:
        pass


def test_batches_piled_up_behind_a_write_go_out_as_one():
    sink = FakeSink()
    sink.gate.clear()
    lane = Lane(sink)
    try:
        lane.submit(span(0, 0, 5))  # taken at once; the write waits at the gate
        assert sink.entered.wait(10)
        for start in range(5, 50, 5):
            lane.submit(span(0, start, start + 5))
        sink.gate.set()
        assert lane.wait_idle(10)
        assert sink.writes[0] == 5 and sum(sink.writes) == 50 and len(sink.writes) <= 3
        assert lane.positions == {0: 50} and lane.rows == 50 and lane.waiting == 0
    finally:
        lane.close()


def test_overlapping_batches_queued_after_a_rebalance_are_cut_not_doubled():
    sink = FakeSink()
    sink.gate.clear()
    lane = Lane(sink)
    try:
        lane.submit(span(1, 0, 2))  # in flight
        assert sink.entered.wait(10)
        lane.submit(span(1, 2, 10))  # queued
        lane.submit(span(1, 2, 14))  # the new owner's re-read of the same offsets, and more
        lane.submit(span(1, 0, 6))  # and a re-read from before everything queued
        sink.gate.set()
        assert lane.wait_idle(10), lane.failure
        assert sink.keys == {(1, o, 0) for o in range(14)} and sink.held == {1: 14}
        assert lane.rows == 14
    finally:
        lane.close()


def test_an_outage_is_retried_and_nothing_is_lost(monkeypatch):
    monkeypatch.setattr("finpulse.lanes.RETRY_FIRST_S", 0.01)
    sink = FakeSink([ServiceUnavailable("down"), ServiceUnavailable("still down")])
    lane = Lane(sink)
    try:
        lane.submit(span(0, 0, 7))
        assert lane.wait_idle(10)
        assert sink.held == {0: 7} and len(sink.keys) == 7 and lane.down is None
    finally:
        lane.close()


def test_a_failure_that_will_not_heal_stops_the_lane_and_is_kept_for_the_worker():
    sink = FakeSink([SinkRejected("permission denied")])
    lane = Lane(sink)
    try:
        lane.submit(span(0, 0, 3))
        assert lane.wait_idle(10) is False
        assert isinstance(lane.failure, SinkRejected) and sink.keys == set()
    finally:
        lane.close()


@pytest.mark.parametrize("order", [[(0, 10), (5, 12)], [(0, 4), (0, 4), (4, 8)]])
def test_positions_never_go_backwards_whatever_is_queued(order):
    sink = FakeSink()
    lane = Lane(sink)
    try:
        for start, end in order:
            lane.submit(span(2, start, end))
        assert lane.wait_idle(10), lane.failure
        assert sink.held[2] == max(end for _, end in order)
    finally:
        lane.close()


def test_a_call_runs_on_the_lane_thread_after_what_was_submitted_before_it():
    sink = FakeSink()
    sink.gate.clear()
    lane = Lane(sink)
    try:
        lane.submit(span(0, 0, 4))
        lane.submit(span(0, 4, 9))
        sink.gate.set()
        seen = lane.call(lambda s: (threading.current_thread().name, s.positions([0])))
        assert seen == ("lane-fake", {0: 9})
        assert lane.remote.positions([0]) == {0: 9}
    finally:
        lane.close()


def test_a_call_raises_the_lane_failure_or_its_own_error_and_can_be_cancelled():
    sink = FakeSink()
    lane = Lane(sink)
    try:
        with pytest.raises(ZeroDivisionError):
            lane.call(lambda s: 1 / 0)
        sink.gate.clear()
        lane.submit(span(0, 0, 3))  # blocks the lane at the gate
        cancel = threading.Event()
        cancel.set()
        with pytest.raises(ServiceUnavailable, match="stopped while waiting"):
            lane.call(lambda s: s.positions([0]), cancel)
    finally:
        sink.gate.set()
        lane.close()
    failing = FakeSink([SinkRejected("gone")])
    lane = Lane(failing)
    try:
        lane.submit(span(0, 0, 3))
        with pytest.raises(SinkRejected):
            lane.call(lambda s: s.positions([0]))
    finally:
        lane.close()


def test_a_call_behind_a_write_waiting_for_a_down_sink_is_refused_at_once_not_left_hanging(monkeypatch):
    """A rebalance callback reads positions through the lane: while a write waits to retry against
    a sink that is down, the read is refused (the worker retries it with its backoff) instead of
    waiting behind the write for the whole outage. Once the sink is back the read runs again."""
    monkeypatch.setattr("finpulse.lanes.RETRY_FIRST_S", 0.5)
    monkeypatch.setattr("finpulse.lanes.RETRY_MAX_S", 0.5)
    sink = FakeSink([ServiceUnavailable("connection refused")] * 1000)
    lane = Lane(sink)
    try:
        lane.submit(span(0, 0, 3))
        began = time.monotonic()
        with pytest.raises(ServiceUnavailable, match="connection refused"):
            lane.call(lambda s: s.positions([0]))
        assert time.monotonic() - began < 5.0, (
            "the read waited behind the write"
        )  # a hang, not a speed: backoff is 0.5 s
        sink.failures.clear()  # the sink is back: the write lands, and reads run again
        assert lane.wait_idle(10) and lane.down is None
        assert lane.call(lambda s: s.positions([0])) == {0: 3}
    finally:
        lane.close()


def test_an_interval_policy_writes_once_per_interval_and_at_once_when_hurried():
    sink = FakeSink()
    lane = Lane(sink, FlushPolicy(interval_s=0.5, max_ticks=1_000))
    try:
        lane.submit(span(0, 0, 2))  # the first write goes at once
        deadline = time.monotonic() + 5
        while not sink.writes and time.monotonic() < deadline:
            time.sleep(0.01)
        for start in range(2, 20, 2):  # a trickle inside one interval
            lane.submit(span(0, start, start + 2))
            time.sleep(0.01)
        assert len(sink.writes) == 1, "nothing more before the interval has passed"
        assert lane.wait_idle(5)  # a rebalance or a stop does not wait for the interval
        assert sink.writes == [2, 18] and sink.held == {0: 20}
    finally:
        lane.close()


def test_an_interval_policy_still_writes_a_backlog_as_soon_as_it_reaches_the_size_trigger():
    sink = FakeSink()
    lane = Lane(sink, FlushPolicy(interval_s=60, max_ticks=50))
    try:
        lane.submit(span(0, 0, 1))
        lane.submit(span(0, 1, 60))  # 59 ticks queued behind the first write: over the trigger
        deadline = time.monotonic() + 5
        while sum(sink.writes) < 60 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert sum(sink.writes) == 60 and sink.held == {0: 60}
    finally:
        lane.close()


def test_an_aligned_interval_ends_on_the_wall_clocks_multiples_of_it():
    """Delta's policy is aligned, so every worker of a process writes in the same moments and the
    committer commits their files together. The wall clock picks the phase; the deadline it gives
    is on the monotonic clock (here 50.0 when the wall clock reads 1001.7)."""
    aligned, plain = FlushPolicy(2.0, 100, aligned=True), FlushPolicy(2.0, 100)
    assert aligned.next_due(mono=50.0, wall=1001.7) == pytest.approx(50.3)  # next multiple: 1002
    assert plain.next_due(mono=50.0, wall=1001.7) == pytest.approx(52.0)
    assert aligned.due(0, next_due=50.3, mono=50.3) and not aligned.due(0, next_due=50.3, mono=50.2)
    assert aligned.due(100, next_due=50.3, mono=50.0)  # the size trigger needs no boundary
    assert FlushPolicy().due(0, next_due=99.0, mono=50.0)  # no interval: at once


def test_a_wall_clock_stepped_back_an_hour_does_not_hold_up_an_aligned_interval(monkeypatch):
    """NTP steps the clock back an hour: the next write is still due within one interval (deadlines
    taken from the wall clock pushed it an hour away, and a trickle reached Delta only when the
    size trigger filled)."""
    sink = FakeSink()
    real = time.time
    lane = Lane(sink, FlushPolicy(interval_s=0.2, max_ticks=1_000_000, aligned=True))
    try:
        lane.submit(span(0, 0, 2))
        deadline = time.monotonic() + 5
        while not sink.writes and time.monotonic() < deadline:
            time.sleep(0.01)
        monkeypatch.setattr(time, "time", lambda: real() - 3600)  # the step, after the first write
        lane.submit(span(0, 2, 4))
        deadline = time.monotonic() + 5
        while len(sink.writes) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert sink.writes == [2, 2], "the second write waited for the wall clock to catch up"
    finally:
        monkeypatch.undo()
        lane.close()


class _HeldSink:
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
    sink = _HeldSink()
    lane = Lane(sink)
    try:
        first = span(0, 0, 4)
        again = span(0, 2, 5)  # re-read after a rebalance: overlaps `first`
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
