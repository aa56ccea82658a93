"""Prometheus metrics, /healthz and /readyz of `finpulse ingest`, served by the supervisor alone.

Workers never touch prometheus_client: they already send their counts and state once a second
(progress.WorkerStats), and the supervisor sums them into one Totals. The collector here turns a
snapshot of it into metric families at each scrape, so a gauge always shows the live workers'
latest view: a partition that moved to another worker, or a worker that exited, leaves no series
behind. The registry is this module's own, never prometheus_client's global one.

    /metrics   the metrics (docs/metrics.md lists them)
    /healthz   200 while the supervisor runs
    /readyz    200 once every worker reported, partitions are assigned and no sink is down;
               otherwise 503 and one line saying which worker or sink (never a host, user or
               driver message: anyone who can reach the port may ask; the log has the detail)

The server binds FINPULSE_METRICS_HOST (all interfaces by default, as exporters do: Prometheus
scrapes from another host or container), answers at most MAX_CONNECTIONS requests at once (more are
closed unanswered) and gives each connection REQUEST_DEADLINE_S: an idle or half-sent request can
hold no thread of the supervisor, the process that also commits Delta and restarts workers.
"""

from __future__ import annotations

import errno
import logging
import socket
import socketserver
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import Collector

from finpulse import sinks as registry
from finpulse.config import Settings
from finpulse.errors import ConfigError
from finpulse.progress import WRITE_BUCKETS, Totals
from finpulse.sinks import keeping_rejects

log = logging.getLogger(__name__)

# Requests answered at once: a scrape and a probe or two at a time is the normal load; past this,
# a connection is closed unanswered rather than given a thread.
MAX_CONNECTIONS = 8
# A connection is closed this long after it was accepted, answered or not (a scrape takes
# milliseconds): a client that sends nothing, or a byte now and then, holds its thread no longer.
REQUEST_DEADLINE_S = 5.0
# A worker reports every second, except while it waits for its writes on a rebalance (up to
# FINPULSE_REBALANCE_GRACE_MS) or at a retention reset (30 s). Silent this much longer, it is stuck.
STALE_MARGIN_S = 15.0
RESET_WAIT_S = 30.0


class Exporter:
    """What the endpoints read: the run's Totals once the workers start (`watch`), and how many
    workers it runs. Before that (Kafka not answering yet) only /healthz says yes."""

    def __init__(self, sinks: tuple[str, ...], stale_s: float = RESET_WAIT_S + STALE_MARGIN_S):
        self.sinks, self.stale_s = sinks, stale_s
        self.totals: Totals | None = None
        self.workers = 0
        self.stopping = False
        self.registry = CollectorRegistry()
        self.registry.register(_RunCollector(self))
        self._server: _Server | None = None

    def watch(self, totals: Totals, workers: int) -> None:
        self.totals, self.workers = totals, workers

    def unready(self) -> str | None:
        """Why the run is not ready, in a few words; None when it is."""
        if self.stopping:
            return "stopping"
        if self.totals is None:
            return "waiting for Kafka"
        return unready(self.totals.snapshot(), self.workers, self.stale_s)

    def metrics(self) -> bytes:
        return generate_latest(self.registry)

    @property
    def port(self) -> int | None:
        return self._server.server_address[1] if self._server is not None else None

    def start(self, port: int, host: str = "0.0.0.0") -> None:
        """Listen on `host`:`port` (0: a free port), answering on a daemon thread. An address that
        cannot be bound is a ConfigError naming the settings."""
        try:
            self._server = _Server((host, port), _Handler, self)
        except OSError as exc:
            why = "is already in use" if exc.errno == errno.EADDRINUSE else f"cannot be bound ({exc.strerror})"
            raise ConfigError(
                f"FINPULSE_METRICS_PORT / --metrics-port: port {port} {why} (on {host}); choose another port "
                "(0 for a free one), or another FINPULSE_METRICS_HOST / --metrics-host"
            ) from None
        threading.Thread(target=self._server.serve_forever, name="metrics-http", daemon=True).start()
        log.info("metrics on http://%s:%d/metrics (health: /healthz, /readyz)", host, self.port)

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


@contextmanager
def serve(settings: Settings) -> Iterator[Exporter]:
    """An Exporter, listening on settings.metrics_port while the block runs (None: not at all)."""
    exporter = Exporter(
        registry.chosen(settings), max(settings.rebalance_grace_ms / 1000, RESET_WAIT_S) + STALE_MARGIN_S
    )
    if settings.metrics_port is not None:
        exporter.start(settings.metrics_port, settings.metrics_host)
    try:
        yield exporter
    finally:
        exporter.stop()


def unready(t: Totals, workers: int, stale_s: float) -> str | None:
    """The readiness rule: every worker has reported lately, some own partitions, no sink is down."""
    missing = sorted(set(range(workers)) - set(t.reported))
    if missing:
        return f"worker {', '.join(map(str, missing))} has not reported yet"
    now = time.monotonic()
    silent = {w: now - at for w, at in sorted(t.reported.items()) if now - at > stale_s}
    if silent:
        return "; ".join(f"worker {w} has not reported for {s:.0f}s" for w, s in silent.items())
    down = sorted({sink for d in t.down.values() for sink in d})
    if down:  # why is in the log: a driver's message names hosts and users
        return "; ".join(f"{sink} down" for sink in down)
    if not any(t.partitions.values()):
        return "no partitions assigned to this run's workers yet"
    return None


def held_lag(t: Totals) -> dict[tuple[int, str], int]:
    """(partition, sink) -> lag, from each live worker's latest report. During a rebalance two
    workers may both still name a partition: the newer report wins."""
    lag: dict[tuple[int, str], int] = {}
    for worker in sorted(t.reported, key=t.reported.__getitem__):
        for sink, parts in t.held_lag.get(worker, {}).items():
            for p, n in parts.items():
                lag[(p, sink)] = n
    return lag


class _RunCollector(Collector):
    """Every metric, built afresh from a snapshot of the run's Totals at each scrape."""

    def __init__(self, exporter: Exporter):
        self.exporter = exporter

    def collect(self) -> Iterator[Metric]:
        if self.exporter.totals is None:
            return
        t = self.exporter.totals.snapshot()
        sinks = self.exporter.sinks

        written = CounterMetricFamily(
            "finpulse_ticks_written",
            "Rows each sink added this run (rows it already held are not counted).",
            labels=["sink"],
        )
        for sink in sinks:
            written.add_metric([sink], t.rows.get(sink, 0))
        yield written
        # Every sink records each reject once; the first that keeps rejects counts them.
        counting = keeping_rejects(sinks) or sinks[0]
        yield CounterMetricFamily(
            "finpulse_rejects", "Messages rejected this run, each counted once.", value=t.rejects.get(counting, 0)
        )
        yield CounterMetricFamily(
            "finpulse_messages_consumed", "Messages read from Kafka this run (re-reads included).", value=t.messages
        )
        duplicates = CounterMetricFamily(
            "finpulse_duplicates",
            "Re-sent trades (an exchange, symbol and trade id seen before) removed before any sink wrote them.",
            labels=["exchange"],
        )
        for venue, n in sorted(t.duplicates.items()):
            duplicates.add_metric([venue], n)
        yield duplicates
        gaps = CounterMetricFamily(
            "finpulse_sequence_gaps",
            "Holes found in a symbol's consecutive trade ids (missed trades upstream).",
            labels=["exchange"],
        )
        for venue, n in sorted(t.sequence_gaps.items()):
            gaps.add_metric([venue], n)
        yield gaps
        yield CounterMetricFamily(
            "finpulse_worker_restarts", "Worker processes restarted after they exited.", value=t.restarts
        )

        lag = GaugeMetricFamily(
            "finpulse_lag_messages",
            "Messages between the high watermark and what the sink holds durably, per partition.",
            labels=["partition", "sink"],
        )
        for (p, sink), n in sorted(held_lag(t).items()):
            lag.add_metric([str(p), sink], n)
        yield lag

        up = GaugeMetricFamily("finpulse_sink_up", "0 while some worker finds the sink unavailable.", labels=["sink"])
        down = {sink for d in t.down.values() for sink in d}
        for sink in sinks:
            up.add_metric([sink], 0 if sink in down else 1)
        yield up

        hist = HistogramMetricFamily(
            "finpulse_write_seconds",
            "Duration of each write to a sink, until durable (retries while it was down included).",
            labels=["sink"],
        )
        for sink in sinks:
            if sink in t.writes:
                d = t.writes[sink]
                cumulative, buckets = 0, []
                for bound, n in zip([*map(str, WRITE_BUCKETS), "+Inf"], d.counts):
                    cumulative += n
                    buckets.append((bound, cumulative))
                hist.add_metric([sink], buckets, d.total)
        yield hist

        yield GaugeMetricFamily("finpulse_workers_alive", "Worker processes running.", value=t.alive)
        yield GaugeMetricFamily(
            "finpulse_workers_paused",
            "Workers that paused consuming because too much waits for the sinks (backpressure).",
            value=sum(t.paused.values()),
        )
        yield GaugeMetricFamily(
            "finpulse_partitions_assigned",
            "Partitions assigned to this run's workers.",
            value=len({p for parts in t.partitions.values() for p in parts}),
        )


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    # Connections the kernel queues before this server takes them: they cost no thread; busy
    # ones are then closed at once instead of timing out in a short queue.
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler], exporter: Exporter):
        self.exporter = exporter
        self._slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
        self._deadlines: dict[int, threading.Timer] = {}  # connection -> the timer that cuts it
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, handler)

    def process_request(self, request, client_address) -> None:
        """A thread per connection, at most MAX_CONNECTIONS at once, each closed by its deadline."""
        if not self._slots.acquire(blocking=False):
            self.shutdown_request(request)  # busy: closed unanswered, as a full accept queue would
            return
        deadline = threading.Timer(REQUEST_DEADLINE_S, _cut, (request,))
        deadline.daemon = True
        self._deadlines[id(request)] = deadline
        deadline.start()
        try:
            super().process_request(request, client_address)  # its thread ends in process_request_thread
        except BaseException:
            self._deadlines.pop(id(request), None)
            deadline.cancel()
            self._slots.release()
            raise

    def handle_error(self, request, client_address) -> None:
        """A client that went away (or was cut at its deadline) is no error of ours."""
        log.debug("metrics request from %s ended early", client_address[0], exc_info=True)

    def process_request_thread(self, request, client_address) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            timer = self._deadlines.pop(id(request), None)
            if timer is not None:
                timer.cancel()
            self._slots.release()

    def server_bind(self) -> None:
        # HTTPServer's own looks up the host's fully qualified name, which can stall on DNS
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = str(self.server_address[0]), int(self.server_address[1])


def _cut(request: socket.socket) -> None:
    """A connection past its deadline: blocked reads and writes on it end at once."""
    try:
        request.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass  # already closed


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    timeout = REQUEST_DEADLINE_S  # each read and write of the socket, within the connection's deadline

    def do_GET(self) -> None:
        exporter = self.server.exporter
        path = self.path.split("?", 1)[0]
        if path == "/metrics":
            self._answer(200, exporter.metrics(), CONTENT_TYPE_LATEST)
        elif path == "/healthz":
            self._answer(200, b"ok\n")
        elif path == "/readyz":
            reason = exporter.unready()
            if reason is None:
                self._answer(200, b"ready\n")
            else:
                self._answer(503, f"not ready: {reason}\n".encode())
        else:
            self._answer(404, b"not found: try /metrics, /healthz or /readyz\n")

    def _answer(self, code: int, body: bytes, content_type: str = "text/plain; charset=utf-8") -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args) -> None:  # one line per scrape would drown the log
        log.debug("%s " + format, self.address_string(), *args)
