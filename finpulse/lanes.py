"""A lane feeds one sink, in order, on its own thread, and is the only thread that touches it.

Batches handed to a lane while it is writing pile up and go out together as the next write (group
commit): the batch size is a trigger, and a backlog still drains in large writes. A sink that is
down (ServiceUnavailable) is retried with backoff; nothing is dropped, and the pile-up is what
makes the worker pause consumption. Anything else stops the lane and is re-raised by the worker.

Before each write the lane passes the rows through its admission (finpulse.admission): rows some
sink's own rules refuse become rejects in every lane alike. A sink that refuses rows anyway
(RulesChanged: a rule added since they were read) gets one retry with the rules read afresh.

Reads the worker needs (positions on an assignment) go through the lane as well (`call`, or the
`remote` proxy), queued behind the writes already handed over, so they see what those wrote.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from finpulse import clock
from finpulse.admission import Admission
from finpulse.backoff import Backoff
from finpulse.batch import FlushPolicy, Offsets, TickBatch
from finpulse.errors import FinpulseError, RulesChanged, ServiceUnavailable
from finpulse.progress import Durations
from finpulse.sinks import Sink, Written

log = logging.getLogger(__name__)

# Backoff for a sink that is down: quick first retries for a blip, then every 10 s at most,
# so recovery is noticed within seconds without hammering a server that is restarting.
RETRY_FIRST_S = 0.25
RETRY_MAX_S = 10.0
# A caller waiting on `call` looks at its cancel flag this often.
CALL_POLL_S = 0.2


class _Call:
    """A function to run on the lane's thread with its sink, and where its outcome goes."""

    def __init__(self, fn: Callable[[Sink], Any], posted: bool = False):
        self.fn = fn
        self.posted = posted  # nobody waits for it (Lane.post): it never hurries a write
        self.done = threading.Event()
        self.result: Any = None
        self.error: BaseException | None = None

    def run(self, sink: Sink) -> None:
        try:
            self.result = self.fn(sink)
        except BaseException as exc:  # handed to the caller, whatever it is
            self.error = exc
        self.done.set()


class Lane:
    def __init__(self, sink: Sink, policy: FlushPolicy | None = None, admission: Admission | None = None):
        self.sink = sink
        self.admission = admission  # used on this lane's thread only
        self.policy = policy or FlushPolicy()
        self._next_due = 0.0  # monotonic time the next write is due (FlushPolicy.next_due)
        self._hurry = 0  # callers in wait_idle: write what is queued now
        self.positions: Offsets = {}  # what the sink holds, as of its last write
        self.rows = 0  # rows this lane wrote (ticks, not rejects)
        self.rejects = 0
        self.waiting = 0  # ticks and rejects handed over but not yet durable
        self.waiting_bytes = 0  # their estimated size (TickBatch.nbytes)
        self.down: str | None = None  # why the sink is unavailable right now
        self._stalled: str | None = None  # set while a write waits to retry against a sink that is down
        self.write_times = Durations()  # each write until durable, retries included; see take_write_times
        self.failure: BaseException | None = None
        self._queue: list[TickBatch | _Call] = []
        self._busy = False
        self._closing = threading.Event()
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._run, name=f"lane-{sink.name}", daemon=True)
        self._thread.start()

    @property
    def name(self) -> str:
        return self.sink.name

    @property
    def remote(self) -> Remote:
        """The sink, as seen from another thread: every method call runs on this lane's thread."""
        return Remote(self)

    def submit(self, batch: TickBatch) -> None:
        with self._cond:
            self._queue.append(batch)
            self.waiting += batch.size
            self.waiting_bytes += batch.nbytes
            self._cond.notify_all()

    def held(self) -> Offsets:
        """A copy of the positions, safe to read while the lane writes."""
        with self._cond:
            return dict(self.positions)

    def note_held(self, held: Offsets) -> None:
        """Positions read from the sink outside a write (an assignment): what it holds before this
        lane writes those partitions again. A position never goes back."""
        with self._cond:
            for p, n in held.items():
                self.positions[p] = max(self.positions.get(p, n), n)

    def take_write_times(self) -> Durations:
        """The durations of the writes since the last call (for the worker's report)."""
        with self._cond:
            taken, self.write_times = self.write_times, Durations()
        return taken

    def call(self, fn: Callable[[Sink], Any], cancel: threading.Event | None = None) -> Any:
        """Run `fn(sink)` on the lane's thread after everything submitted before it, and return its
        result (or raise its exception). A lane that failed raises its failure; `cancel` set while
        waiting raises ServiceUnavailable, and so does a write retrying against a sink that is down
        (the call would wait behind it: the caller retries with its backoff, still reporting, and a
        rebalance callback never hangs on a sink outage). On an idle lane the call itself is what
        finds the sink back."""
        job = _Call(fn)
        with self._cond:
            if self.failure is not None:
                raise self.failure
            if self._stalled is not None:
                raise ServiceUnavailable(self._stalled)
            self._queue.append(job)
            self._cond.notify_all()
        while not job.done.wait(CALL_POLL_S):
            if self.failure is not None:
                raise self.failure
            if cancel is not None and cancel.is_set():
                raise ServiceUnavailable(f"stopped while waiting for {self.name}")
            stalled = self._stalled
            if stalled is not None and not job.done.is_set():  # it runs later; its result is not wanted
                raise ServiceUnavailable(stalled)
        if job.error is not None:
            raise job.error
        return job.result

    def post(self, fn: Callable[[Sink], Any]) -> None:
        """Run `fn(sink)` on the lane's thread after everything submitted before it, without waiting
        for it (a trade window snapshot): it goes out with the next write, and a failure is logged."""
        with self._cond:
            if self.failure is None:
                self._queue.append(_Call(fn, posted=True))
                self._cond.notify_all()

    def wait_idle(self, timeout: float | None) -> bool:
        """Block until everything submitted is durable (True) or the timeout passes (False)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            self._hurry += 1
            self._cond.notify_all()
            try:
                while (self._queue or self._busy) and self.failure is None:
                    left = None if deadline is None else deadline - time.monotonic()
                    if left is not None and left <= 0:
                        return False
                    self._cond.wait(left)
                return self.failure is None
            finally:
                self._hurry -= 1

    def close(self) -> None:
        self._closing.set()
        with self._cond:
            self._cond.notify_all()
        self._thread.join(timeout=5)
        self.sink.close()
        if self.admission is not None:
            self.admission.close()

    def _run(self) -> None:
        self._read_rules()
        while True:
            with self._cond:
                while not self._closing.is_set():
                    if self._queue and self._due():
                        break
                    left = self._next_due - time.monotonic()
                    self._cond.wait(max(left, 0.001) if self._queue else None)
                if not self._queue:
                    return
                items, self._queue, self._busy = self._queue, [], True
                self._next_due = self.policy.next_due(time.monotonic(), clock.wall())
            batches: list[TickBatch] = []
            for item in [*items, None]:  # consecutive batches go out as one write; calls in between
                if isinstance(item, TickBatch):
                    batches.append(item)
                    continue
                if batches and not self._write_all(batches):
                    self._abandon(items)
                    return
                batches = []
                if item is not None:
                    item.run(self.sink)
                    self._note_call(item)
            with self._cond:
                self._busy = False
                self._cond.notify_all()

    def _read_rules(self) -> None:
        """Read the sinks' rules as the lane starts, while they are likely up: admission keeps the
        last rules of a sink that goes down, so this lane's sink is not paused by the other's outage
        (rules never read wait for it, to keep the sinks identical). A failure here is left to the
        first write."""
        if self.admission is not None:
            try:
                self.admission.rules()
            except FinpulseError as exc:  # the first write meets it again, and handles it as a write failure
                log.debug("%s: sink rules not read at start (%s); the first write reads them", self.name, exc)

    def _due(self) -> bool:
        """The flush rule of this lane (FlushPolicy), with the reasons to write at once."""
        if self._hurry or any(isinstance(item, _Call) and not item.posted for item in self._queue):
            return True
        return self.policy.due(self.waiting, self._next_due, time.monotonic())

    def _write_all(self, batches: list[TickBatch]) -> bool:
        """Write `batches` as one; False when the lane failed (the failure is kept for the worker)."""
        # what submit() counted, not the merged batch: merging may drop overlapping rows
        size, nbytes = sum(b.size for b in batches), sum(b.nbytes for b in batches)
        batch = TickBatch.merge(batches)
        began = time.monotonic()
        try:
            written = self._write(batch)
        except BaseException as exc:  # a sink that will not heal: the worker re-raises it
            with self._cond:
                self.failure, self._busy = exc, False
                self._cond.notify_all()
            return False
        with self._cond:
            self.positions.update(written.held)
            self.rows += written.rows  # what the sink added: a re-read it skipped is not counted
            self.rejects += written.rejects
            self.waiting -= size
            self.waiting_bytes -= nbytes
            self.write_times.observe(time.monotonic() - began)
        return True

    def _note_call(self, call: _Call) -> None:
        """A read that found the sink unavailable marks it down as a failed write does (the worker
        retries the read and reports the lane meanwhile); one that succeeds marks it back. A posted
        call's failure is only logged: nobody retries it, the next one replaces it."""
        if call.posted:
            if call.error is not None:
                log.warning("%s: %s", self.name, call.error)
            return
        if isinstance(call.error, ServiceUnavailable):
            self.down = self.down or str(call.error)
        elif call.error is None and self.down is not None:
            log.warning("%s is back", self.name)
            self.down = None

    def _abandon(self, items: list) -> None:
        """The lane failed: calls still queued get its failure instead of waiting for ever."""
        for item in items:
            if isinstance(item, _Call) and not item.done.is_set():
                item.error = self.failure
                item.done.set()

    def _write(self, batch: TickBatch) -> Written:
        backoff = Backoff(RETRY_FIRST_S, RETRY_MAX_S)
        reread = False
        while True:
            try:
                admitted = batch if self.admission is None else self.admission.admit(batch)
                written = self.sink.write(admitted)
            except RulesChanged as exc:
                if self.admission is None or reread:
                    raise
                log.warning("%s refused rows admission let through; reading its rules again: %s", self.name, exc)
                self.admission.reload()
                reread = True
                continue
            except ServiceUnavailable as exc:
                if self.down is None:
                    log.warning("%s unavailable, pausing its writes and retrying: %s", self.name, exc)
                self.down = self._stalled = str(exc)
                try:
                    if self._closing.wait(backoff.next_delay()):  # stopping: what is not durable is re-read
                        raise
                finally:
                    self._stalled = None
                continue
            if self.down is not None:
                log.warning("%s is back; resuming with %d waiting", self.name, batch.size)
                self.down = None
            return written


class Remote:
    """A sink's methods called from another thread, each run on its lane's thread (Lane.call)."""

    def __init__(self, lane: Lane, cancel: threading.Event | None = None):
        self._lane, self._cancel = lane, cancel
        self.name = lane.name

    def __getattr__(self, method: str) -> Callable[..., Any]:
        def run(*args: Any, **kwargs: Any) -> Any:
            return self._lane.call(lambda sink: getattr(sink, method)(*args, **kwargs), self._cancel)

        return run
