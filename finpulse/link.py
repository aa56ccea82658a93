"""The pipe between the supervisor and one worker process.

Up it go the worker's stats, errors, log records and Delta commit requests; down it come the
committer's answers. Every message is a tuple (kind, worker, pid, payload).

Each worker process gets a pipe of its own when it is spawned, dropped when it exits. Queues shared
between processes (multiprocessing.Queue) are not used: a queue guards its pipe with a lock in
shared memory, and a worker killed (OOM killer, `kill -9`) while it holds that lock leaves it held
for ever. A worker killed while it waited for the committer's answer left its successor unable to
read an answer again: its Delta writes timed out until the run was restarted. A pipe with one
process at each end has no such lock; when the worker dies, the supervisor's end reads EOF.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
from multiprocessing.connection import Connection, wait
from multiprocessing.context import BaseContext
from typing import cast

READ_WAIT_S = 0.1  # how often the reading thread notices new workers and the end of the run
CLOSE_WAIT_S = 5.0  # at the end of the run, how long to wait for what exited workers sent last


class WorkerLink:
    """The worker's end. `tell` may be called from any thread; `receive` from one thread only."""

    def __init__(self, conn: Connection, worker: int):
        self.conn, self.worker, self.pid = conn, worker, os.getpid()
        self._lock = threading.Lock()

    def tell(self, kind: str, payload: object) -> bool:
        """Send one message; False when the supervisor is gone (the worker stops on its own)."""
        with self._lock:
            try:
                self.conn.send((kind, self.worker, self.pid, payload))
                return True
            except OSError:
                return False

    def receive(self, timeout: float) -> object | None:
        """The next message from the supervisor, or None after `timeout` seconds (or if it is gone)."""
        try:
            return self.conn.recv() if self.conn.poll(max(timeout, 0.0)) else None
        except (EOFError, OSError):
            return None


class Links:
    """The supervisor's ends, read by one thread. Log records go to this process's handlers, the
    payload of a routed kind (`route`) to its queue, every other message whole to `events`."""

    def __init__(self, ctx: BaseContext):
        self.ctx = ctx
        self.events: queue.Queue = queue.Queue()
        self._routes: dict[str, queue.Queue] = {}
        self._open: dict[Connection, int] = {}  # every end not at EOF yet -> its worker
        self._current: dict[int, Connection] = {}  # worker -> the end of its latest process
        self._lock = threading.Lock()
        self._closing = threading.Event()
        self._thread = threading.Thread(target=self._read, name="worker-links", daemon=True)
        self._thread.start()

    def route(self, kind: str, to: queue.Queue) -> None:
        self._routes[kind] = to

    def connect(self, worker: int) -> Connection:
        """A new pipe for `worker`, replacing its last one for replies; returns the worker's end.
        Hand it to the worker's process, then close it here (`Process.start()` copied it)."""
        here, there = self.ctx.Pipe()
        with self._lock:
            self._open[here] = worker
            self._current[worker] = here
        return there

    def reply(self, worker: int, message: object) -> None:
        """Send to the latest process of `worker`; dropped when it has exited."""
        with self._lock:
            conn = self._current.get(worker)
        if conn is None:
            return
        try:
            conn.send(message)
        except OSError:
            pass  # it died; its successor asks again

    def close(self, timeout: float = CLOSE_WAIT_S) -> None:
        """Once the workers exited: take what they sent last, then stop reading."""
        self._closing.set()
        self._thread.join(timeout)
        with self._lock:
            for conn in self._open:
                conn.close()
            self._open.clear()
            self._current.clear()

    def _read(self) -> None:
        while True:
            with self._lock:
                ends = list(self._open)
            if not ends:
                if self._closing.is_set():
                    return
                self._closing.wait(READ_WAIT_S)
                continue
            try:
                ready = cast(list[Connection], wait(ends, READ_WAIT_S))
            except (OSError, ValueError):  # close() gave up waiting and closed them
                return
            for conn in ready:
                try:
                    message = conn.recv()
                except (EOFError, OSError):  # the worker exited (or died mid-message)
                    self._drop(conn)
                    continue
                self._deliver(message)

    def _drop(self, conn: Connection) -> None:
        with self._lock:
            worker = self._open.pop(conn, None)
            if worker is not None and self._current.get(worker) is conn:
                del self._current[worker]
        conn.close()

    def _deliver(self, message: tuple) -> None:
        kind, _, _, payload = message
        if kind == "log":
            logging.getLogger().handle(payload)
            return
        route = self._routes.get(kind)
        if route is not None:
            route.put(payload)
        else:
            self.events.put(message)
