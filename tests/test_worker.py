"""One worker's loop, in this process, against the real broker and sinks: what it does when its
decoder cannot decode for now (a wire format whose look-up failed): an outage, never a reject."""

from __future__ import annotations

import multiprocessing as mp
import os
import threading
import time
from types import SimpleNamespace

import pytest
from support.sinks import delta_rows, pg_count, produced

from finpulse import produce
from finpulse.batch import Accumulator
from finpulse.config import load_settings
from finpulse.errors import ServiceUnavailable
from finpulse.link import WorkerLink
from finpulse.worker import Worker, WorkerSpec

pytestmark = [pytest.mark.kafka, pytest.mark.postgres]


def test_messages_the_decoder_cannot_decode_now_are_held_back_then_land_once(isolated):
    produce.send(isolated, produce.encoded(produce.ticks(200)))
    settings = isolated.model_copy(update={"delta_committer": "worker"})  # no supervisor here
    here, there = mp.Pipe()
    worker = Worker(WorkerSpec(0, settings, os.getppid()), WorkerLink(there, 0))
    real, failures = worker.decoder.decode, [0]

    def flaky(msgs):
        if failures[0] < 4:  # the first four tries: the registry does not answer
            failures[0] += 1
            raise ServiceUnavailable("schema registry at https://registry:8081 unreachable")
        return real(msgs)

    worker.decoder.decode = flaky  # type: ignore[method-assign]
    run = threading.Thread(target=worker.run, daemon=True)
    run.start()
    reports = []
    try:
        deadline = time.monotonic() + 90
        while not (pg_count(isolated) == 200 and len(delta_rows(isolated)) == 200):
            assert time.monotonic() < deadline and run.is_alive(), f"not landed; decode tries failed: {failures[0]}"
            while here.poll(0):
                reports.append(here.recv())
            time.sleep(0.2)
    finally:
        worker.stop.set()
        run.join(60)
    while here.poll(0):
        reports.append(here.recv())
    stats = [payload for kind, _, _, payload in reports if kind == "stats"]
    assert failures[0] == 4
    assert any("decoder" in st.down for st in stats), "the outage was not reported"
    assert "decoder" not in stats[-1].down, "still reported down once decoding went on"
    assert sum(st.rejected for st in stats) == 0 and sum(st.messages for st in stats) == 200
    assert sorted(r[:3] for r in delta_rows(isolated)) == sorted(t[:3] for t in produced(200))


# ---------------------------------------------------------------------------- backpressure, without services
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
