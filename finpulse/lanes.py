"""A lane feeds one sink, in order, on its own thread.

Batches handed to a lane while it is writing pile up and go out together as the next write (group
commit): the batch size is a trigger, and a backlog still drains in large writes. A sink that is
down (ServiceUnavailable) is retried with backoff; nothing is dropped, and the pile-up is what
makes the worker pause consumption. Anything else stops the lane and is re-raised by the worker.
"""

from __future__ import annotations

import logging
import threading
import time

from finpulse.batch import Offsets, TickBatch
from finpulse.errors import ServiceUnavailable
from finpulse.sinks import Sink

log = logging.getLogger(__name__)

# Backoff for a sink that is down: quick first retries for a blip, then every 10 s at most,
# so recovery is noticed within seconds without hammering a server that is restarting.
RETRY_FIRST_S = 0.25
RETRY_MAX_S = 10.0


class Lane:
    def __init__(self, sink: Sink):
        self.sink = sink
        self.positions: Offsets = {}  # what the sink holds, as of its last write
        self.rows = 0  # rows this lane wrote (ticks, not rejects)
        self.rejects = 0
        self.waiting = 0  # ticks and rejects handed over but not yet durable
        self.waiting_bytes = 0  # their estimated size (TickBatch.nbytes)
        self.down: str | None = None  # why the sink is unavailable right now
        self.failure: BaseException | None = None
        self._queue: list[TickBatch] = []
        self._busy = False
        self._closing = threading.Event()
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._run, name=f"lane-{sink.name}", daemon=True)
        self._thread.start()

    @property
    def name(self) -> str:
        return self.sink.name

    def submit(self, batch: TickBatch) -> None:
        with self._cond:
            self._queue.append(batch)
            self.waiting += batch.size
            self.waiting_bytes += batch.nbytes
            self._cond.notify_all()

    def wait_idle(self, timeout: float | None) -> bool:
        """Block until everything submitted is durable (True) or the timeout passes (False)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while (self._queue or self._busy) and self.failure is None:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                self._cond.wait(left)
            return self.failure is None

    def close(self) -> None:
        self._closing.set()
        with self._cond:
            self._cond.notify_all()
        self._thread.join(timeout=5)
        self.sink.close()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._closing.is_set():
                    self._cond.wait()
                if not self._queue:
                    return
                batches, self._queue, self._busy = self._queue, [], True
            # what submit() counted, not the merged batch: merging may drop overlapping rows
            size, nbytes = sum(b.size for b in batches), sum(b.nbytes for b in batches)
            batch = TickBatch.merge(batches)
            # What this write adds beyond what the sink held after the last one (a re-read after a
            # rebalance is skipped by the sink's guard; counting it would inflate the totals).
            fresh = batch.after(self.positions)
            try:
                held = self._write(batch)
            except BaseException as exc:  # a sink that will not heal: the worker re-raises it
                with self._cond:
                    self.failure, self._busy = exc, False
                    self._cond.notify_all()
                return
            with self._cond:
                self.positions.update(held)
                self.rows += fresh.ticks.num_rows
                self.rejects += len(fresh.rejects)
                self.waiting -= size
                self.waiting_bytes -= nbytes
                self._busy = False
                self._cond.notify_all()

    def _write(self, batch: TickBatch) -> Offsets:
        delay = RETRY_FIRST_S
        while True:
            try:
                held = self.sink.write(batch)
            except ServiceUnavailable as exc:
                if self.down is None:
                    log.warning("%s unavailable, pausing its writes and retrying: %s", self.name, exc)
                self.down = str(exc)
                if self._closing.wait(delay):  # stopping: what is not durable is re-read next start
                    raise
                delay = min(delay * 2, RETRY_MAX_S)
                continue
            if self.down is not None:
                log.warning("%s is back; resuming with %d waiting", self.name, batch.size)
                self.down = None
            return held
