"""The pipe between the supervisor and one worker process.

Up it go the worker's stats, errors, log records and Delta commit requests; down it come the
committer's answers. Every message is a tuple (kind, worker, pid, payload).

Each worker process gets a pipe of its own when it is spawned, dropped when it exits. Queues shared
between processes (multiprocessing.Queue) are not used: a queue guards its pipe with a lock in
shared memory, and a worker killed (OOM killer, `kill -9`) while it holds that lock leaves it held
for ever. A pipe with one process at each end has no such lock; when the worker dies, the
supervisor's end reads EOF.

The supervisor never blocks on a worker. Its ends are non-blocking and one thread reads them all:
it takes whatever bytes have arrived and decodes a message only once all of it is there (a worker
frozen half-way through sending a large one used to hold a blocking recv(), and with it every other
worker's stats, logs and commit requests). Answers to a worker whose pipe is full (a frozen worker
reads nothing) wait in a buffer of their own instead of holding up the committer. The framing is
multiprocessing.Connection's, so a worker's end is a plain Connection.
"""

from __future__ import annotations

import logging
import os
import pickle
import queue
import selectors
import struct
import threading
from multiprocessing.connection import Connection
from multiprocessing.context import BaseContext

READ_WAIT_S = 0.1  # how often the reading thread notices new workers and the end of the run
CLOSE_WAIT_S = 5.0  # at the end of the run, how long to wait for what exited workers sent last
CHUNK = 1 << 16  # bytes taken from a pipe at a time

log = logging.getLogger(__name__)


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


def frame(message: object) -> bytes:
    """`message` as multiprocessing.Connection.send writes it: a length, then the pickle."""
    body = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    head = struct.pack("!i", len(body)) if len(body) <= 0x7FFFFFFF else struct.pack("!iQ", -1, len(body))
    return head + body


class _End:
    """The supervisor's end of one worker's pipe: bytes read but not yet a whole message, and
    bytes of answers not yet taken by the worker."""

    def __init__(self, conn: Connection, worker: int):
        self.conn, self.worker, self.fd = conn, worker, conn.fileno()
        os.set_blocking(self.fd, False)
        self.inbox = bytearray()
        self.outbox = bytearray()
        self.lock = threading.Lock()  # guards outbox: replies come from the committer's thread

    def messages(self) -> list[object]:
        """Every whole message in the inbox, removed from it."""
        out: list[object] = []
        while True:
            if len(self.inbox) < 4:
                return out
            (size,) = struct.unpack_from("!i", self.inbox)
            start = 4
            if size == -1:
                if len(self.inbox) < 12:
                    return out
                (size,) = struct.unpack_from("!Q", self.inbox, 4)
                start = 12
            if len(self.inbox) < start + size:
                return out
            out.append(pickle.loads(bytes(self.inbox[start : start + size])))
            del self.inbox[: start + size]

    def flush(self) -> None:
        """Write what the worker's pipe takes now; the rest waits for it to drain."""
        with self.lock:
            while self.outbox:
                try:
                    sent = os.write(self.fd, self.outbox)
                except BlockingIOError:
                    return
                del self.outbox[:sent]


class Links:
    """The supervisor's ends, read by one thread. Log records go to this process's handlers, the
    payload of a routed kind (`route`) to its queue, every other message whole to `events`."""

    def __init__(self, ctx: BaseContext):
        self.ctx = ctx
        self.events: queue.Queue = queue.Queue()
        self._routes: dict[str, queue.Queue] = {}
        self._open: dict[int, _End] = {}  # fd -> every end not at EOF yet
        self._current: dict[int, _End] = {}  # worker -> the end of its latest process
        self._lock = threading.Lock()
        self._closing = threading.Event()
        self._wake_r, self._wake_w = os.pipe()  # a byte here: ends or answers changed
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._selector = selectors.DefaultSelector()
        self._watched: dict[int, int] = {}  # fd -> the events the selector waits for (reading thread only)
        self._selector.register(self._wake_r, selectors.EVENT_READ)
        self._thread = threading.Thread(target=self._run, name="worker-links", daemon=True)
        self._thread.start()

    def route(self, kind: str, to: queue.Queue) -> None:
        self._routes[kind] = to

    def connect(self, worker: int) -> Connection:
        """A new pipe for `worker`, replacing its last one for replies; returns the worker's end.
        Hand it to the worker's process, then close it here (`Process.start()` copied it)."""
        here, there = self.ctx.Pipe()
        end = _End(here, worker)
        with self._lock:
            self._open[end.fd] = end
            self._current[worker] = end
        self._wake()
        return there

    def reply(self, worker: int, message: object) -> None:
        """Send to the latest process of `worker`, never waiting for it: what its pipe does not take
        now goes as it drains. Dropped when that process has exited (its successor asks again)."""
        with self._lock:
            end = self._current.get(worker)
        if end is None:
            return
        with end.lock:
            end.outbox += frame(message)
        try:
            end.flush()
        except OSError:
            return  # it died: _run drops its end at EOF
        if end.outbox:
            self._wake()  # the reading thread writes the rest once the pipe has room

    def close(self, timeout: float = CLOSE_WAIT_S) -> None:
        """Once the workers exited: take what they sent last, then stop reading."""
        self._closing.set()
        self._wake()
        self._thread.join(timeout)
        with self._lock:
            for end in self._open.values():
                end.conn.close()
            self._open.clear()
            self._current.clear()

    def _wake(self) -> None:
        try:
            os.write(self._wake_w, b"x")
        except (BlockingIOError, OSError):
            pass  # already woken (or closed)

    def _run(self) -> None:
        watched = self._watched
        try:
            while True:
                with self._lock:
                    ends = dict(self._open)
                if not ends and self._closing.is_set():
                    return
                for fd in list(watched):
                    if fd not in ends:
                        self._selector.unregister(fd)
                        del watched[fd]
                for fd, end in ends.items():
                    want = selectors.EVENT_READ | (selectors.EVENT_WRITE if end.outbox else 0)
                    if watched.get(fd) != want:
                        if fd in watched:
                            self._selector.modify(fd, want)
                        else:
                            self._selector.register(fd, want)
                        watched[fd] = want
                for key, events in self._selector.select(READ_WAIT_S):
                    if key.fd == self._wake_r:
                        try:
                            os.read(self._wake_r, CHUNK)
                        except BlockingIOError:
                            pass
                        continue
                    end = ends[key.fd]
                    if events & selectors.EVENT_WRITE:
                        try:
                            end.flush()
                        except OSError:
                            pass  # it died: the read below meets EOF
                    if events & selectors.EVENT_READ:
                        self._take(end)
        finally:
            self._selector.close()
            os.close(self._wake_r)
            os.close(self._wake_w)

    def _take(self, end: _End) -> None:
        """What arrived on one end: whole messages are delivered, a partial one waits for the rest."""
        try:
            data = os.read(end.fd, CHUNK)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if data:
            end.inbox += data
            for message in end.messages():
                self._deliver(message)  # type: ignore[arg-type]
            return
        with self._lock:  # EOF: the worker exited (a message it left half-sent is dropped)
            self._open.pop(end.fd, None)
            if self._current.get(end.worker) is end:
                del self._current[end.worker]
        if self._watched.pop(end.fd, None) is not None:  # before the fd closes: its number may be reused
            self._selector.unregister(end.fd)
        end.conn.close()

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
