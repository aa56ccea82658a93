"""Spawns one worker process per partition, restarts the ones that die, stops them all cleanly."""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import queue
import signal
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing import forkserver
from multiprocessing.context import ForkServerContext
from multiprocessing.process import BaseProcess

from confluent_kafka import KafkaException
from rich.console import Console

from finpulse import deadletter, decode, metrics, resume, sinks, source
from finpulse.backoff import Backoff
from finpulse.batch import Offsets
from finpulse.config import Settings
from finpulse.errors import FinpulseError, ServiceUnavailable, WorkerFailed
from finpulse.kafka_config import bootstrap
from finpulse.link import Links
from finpulse.memory import ALLOCATOR_ENV
from finpulse.progress import Progress, Totals
from finpulse.sinks import open_sinks, prepare_sinks
from finpulse.worker import WorkerSpec
from finpulse.worker import main as worker_main

log = logging.getLogger("finpulse.supervisor")

RESTART_FIRST_S = 1.0  # a crashed worker comes back after 1 s, then 2, 4 ... up to 30 s
RESTART_MAX_S = 30.0
HEALTHY_AFTER_S = 60.0  # a worker that ran this long starts its backoff afresh when it dies
STOP_TIMEOUT_S = 45.0  # after SIGTERM a worker gets this long (its own grace is 30 s) before SIGKILL
DRAIN_CHECK_S = 1.0  # how often --drain asks the sinks whether they hold everything yet
# Restart budget: more than RESTART_BUDGET crashes within any RESTART_WINDOW_S stops the run.
# A worker that crashes at once every time is restarted after 1, 2, 4, 8, 16, then every 30 s,
# so it spends the budget in about 9 minutes and the run ends with its error; crashes older
# than the window no longer count, so a run that has a crash now and then lives for ever.
RESTART_BUDGET = 20
RESTART_WINDOW_S = 600.0
# Kafka unreachable at start: retry after 0.5 s, doubling to 10 s, as sinks do when they are down.
KAFKA_WAIT_FIRST_S = 0.5
KAFKA_WAIT_MAX_S = 10.0
# One metadata request while waiting: a running broker answers in milliseconds; short enough
# that the first progress line and a Ctrl+C / SIGTERM come within a couple of seconds.
KAFKA_PROBE_TIMEOUT_S = 2.0


def worker_context() -> ForkServerContext:
    """Workers start from a fork server (multiprocessing's "forkserver"): a fresh process that has
    imported finpulse.worker once and forks each worker from there, never from this process, whose
    threads and librdkafka clients do not survive a fork. A worker then starts in milliseconds
    instead of re-importing Arrow, delta-rs, librdkafka and psycopg (about 1 s of CPU each time,
    and a restarted worker's partitions wait for it). Started at once, so that import runs while
    Kafka is awaited and the sinks are prepared."""
    for name, value in ALLOCATOR_ENV.items():  # read as a process starts: set before the fork server's
        os.environ.setdefault(name, value)
    ctx = mp.get_context("forkserver")
    assert isinstance(ctx, ForkServerContext)
    ctx.set_forkserver_preload(["finpulse.worker"])
    forkserver.ensure_running()
    return ctx


@dataclass
class Summary:
    totals: Totals
    workers: int
    partitions: int


def prepare(settings: Settings) -> None:
    """Tables of the chosen sinks (and the DLQ topic) exist, so `ingest` works without `init`; the
    decoder's mapping and schema registry are usable (decode.check)."""
    decode.check(settings)
    prepare_sinks(settings)
    deadletter.create_topic(settings)


def run(
    settings: Settings,
    workers: int | None = None,
    drain: bool = False,
    feed: str | None = None,
    strict: bool = False,
    console: Console | None = None,
) -> Summary:
    """Run the workers until stopped (or drained). Progress goes to `console` when it is a
    terminal, to the log otherwise. With FINPULSE_METRICS_PORT the metrics and health endpoints
    answer from the start (finpulse.metrics), while Kafka is awaited too."""
    ctx = worker_context()
    with metrics.serve(settings) as exporter:
        parts = wait_for_kafka(settings)
        if parts is None:  # stopped before Kafka answered: nothing started, nothing to flush
            return Summary(Totals(), 0, 0)
        prepare(settings)
        topic_id = source.topic_id(settings)
        marks = source.watermarks(settings, parts)
        _settle(settings, marks, topic_id)  # a recreated topic or a retention gap: DataLoss, or recorded
        n = workers or settings.workers or len(parts)
        links = Links(ctx)  # a pipe per worker process: its stats, errors, logs and commit requests
        totals = Totals()
        exporter.watch(totals, n)

        def start(i: int) -> BaseProcess:
            spec = WorkerSpec(
                i, settings, os.getpid(), feed=feed, strict=strict, topic_id=topic_id, env=dict(os.environ)
            )
            end = links.connect(i)
            p = ctx.Process(target=worker_main, args=(spec, end), name=f"finpulse-worker-{i}", daemon=False)
            p.start()
            end.close()  # the worker holds its copy: when it exits, the supervisor's end reads EOF
            return p

        sup = Supervisor(n, start)
        # --drain ends when every sink holds each partition up to the high watermark seen now. The
        # sinks decide, not the workers: a worker may be assigned nothing for a while (another run
        # of the group, or members killed moments ago, hold the partitions) without being done.
        drained = _DrainCheck(settings, {p: high for p, (_, high) in marks.items()}) if drain else None
        services = sinks.services(settings, links, n)  # e.g. Delta's committer and compactor
        log.info(
            "ingesting %s (%d partitions) with %d workers%s",
            settings.kafka_topic,
            len(parts),
            n,
            ", draining to the current high watermarks" if drain else "",
        )

        def stop(*_) -> None:
            if not sup.stopping:
                log.info("stopping: flushing buffered ticks")
            exporter.stopping = True
            sup.stop()

        old = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            for service in services:
                service.start()
            sup.start_all()
            with Progress(totals, console) as progress:
                while not sup.finished:
                    _pump(links.events, totals, sup.fatal)
                    totals.alive = sup.alive()
                    progress.refresh()
                    if sup.fatal and not sup.stopping:
                        stop()
                    # not asked while a worker reports a sink down: a read would hold this loop
                    if drained is not None and not sup.stopping and not any(totals.down.values()) and drained():
                        log.info("every sink holds everything up to the high watermarks seen at start")
                        stop()
                    for i in sup.step():
                        totals.forget(i)  # its partitions and sink states are no longer its to report
                    totals.restarts = sup.restarts
                links.close()  # every worker exited: what they sent last is read
                _pump(links.events, totals, sup.fatal)
        finally:
            stop()
            sup.join_all()
            for sig, handler in old.items():
                signal.signal(sig, handler)
            for service in reversed(services):  # after the workers: their last writes were answered
                service.stop()
            links.close()
            if drained is not None:
                drained.close()
        if sup.fatal:
            raise sup.fatal[0]
        return Summary(totals, n, len(parts))


class Supervisor:
    """The workers' lives, as steps: start them, and on every `step` take the ones that exited,
    restart a crashed one after its backoff (an outage heals by waiting; any other exit spends the
    restart budget, and an exhausted budget is fatal), and once stopping kill those that outlive
    STOP_TIMEOUT_S after SIGTERM. `start(i)` makes worker i's process (anything with pid,
    exitcode, is_alive, join, terminate and kill), so a test drives these steps without processes."""

    def __init__(
        self,
        workers: int,
        start: Callable[[int], BaseProcess],
        budget: RestartBudget | None = None,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.workers, self._start, self.clock = workers, start, clock
        self.budget = budget or RestartBudget(clock=clock)
        self.procs: dict[int, BaseProcess] = {}
        self.started: dict[int, float] = {}
        self.backoff: dict[int, Backoff] = {}  # worker -> its restart delays
        self.due: dict[int, float] = {}  # worker -> when to restart it
        self.done: set[int] = set()
        self.fatal: list[FinpulseError] = []
        self.restarts = 0
        self.stopping = False
        self.kill_at = float("inf")  # once stopping: a worker still running then is killed

    @property
    def finished(self) -> bool:
        return len(self.done) >= self.workers

    def alive(self) -> int:
        return sum(p.is_alive() for p in self.procs.values())

    def start_all(self) -> None:
        for i in range(self.workers):
            self._spawn(i)

    def _spawn(self, i: int) -> None:
        self.procs[i], self.started[i] = self._start(i), self.clock()

    def stop(self) -> None:
        """SIGTERM to every worker (again, on a second call); no restarts from now on."""
        if not self.stopping:
            self.kill_at = self.clock() + STOP_TIMEOUT_S
            self.stopping = True
        for p in self.procs.values():
            if p.is_alive():
                p.terminate()

    def step(self) -> list[int]:
        """Handle what happened since the last step; the workers whose process exited."""
        now = self.clock()
        exited = []
        for i, p in list(self.procs.items()):
            if i in self.done or i in self.due or p.is_alive():
                continue
            p.join()
            exited.append(i)
            self._exited(i, p, now)
        for i, when in list(self.due.items()):
            if self.stopping:
                del self.due[i]
                self.done.add(i)
            elif now >= when:
                del self.due[i]
                self._spawn(i)
        if self.stopping and now > self.kill_at:
            for i, p in self.procs.items():
                if p.is_alive():
                    log.error(
                        "worker %d (pid %s) did not stop within %.0fs of SIGTERM; killing it", i, p.pid, STOP_TIMEOUT_S
                    )
                    p.kill()
        return exited

    def _exited(self, i: int, p: BaseProcess, now: float) -> None:
        if p.exitcode == 0 or self.stopping:
            self.done.add(i)
            return
        # An outage (ServiceUnavailable's exit code) heals by waiting; anything else spends the budget.
        if p.exitcode != ServiceUnavailable.exit_code and not self.budget.spend():
            self.fatal.append(
                WorkerFailed(
                    f"worker {i} keeps crashing: {self.budget.recent} crashes within "
                    f"{self.budget.window_s / 60:.0f} minutes (last exit code {p.exitcode}); last error above"
                )
            )
            self.done.add(i)
            return
        delays = self.backoff.setdefault(i, Backoff(RESTART_FIRST_S, RESTART_MAX_S))
        if now - self.started[i] > HEALTHY_AFTER_S:
            delays.reset()
        delay = delays.next_delay()
        self.due[i] = now + delay
        self.restarts += 1
        log.warning("worker %d (pid %d) exited with code %s; restarting in %.0fs", i, p.pid, p.exitcode, delay)

    def join_all(self) -> None:
        """At the end: wait for every worker, killing one that outlives STOP_TIMEOUT_S."""
        for p in self.procs.values():
            p.join(STOP_TIMEOUT_S)
            if p.is_alive():
                p.kill()


class RestartBudget:
    """At most `limit` worker crashes within any `window_s` seconds (a sliding window): crashes
    older than the window are forgotten, so only a worker that keeps crashing ends the run."""

    def __init__(
        self,
        limit: int = RESTART_BUDGET,
        window_s: float = RESTART_WINDOW_S,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.limit, self.window_s, self.clock = limit, window_s, clock
        self._crashes: deque[float] = deque()

    def spend(self) -> bool:
        """Count one crash now; False once more than `limit` fall within the window."""
        now = self.clock()
        self._crashes.append(now)
        while self._crashes[0] <= now - self.window_s:
            self._crashes.popleft()
        return len(self._crashes) <= self.limit

    @property
    def recent(self) -> int:
        """Crashes within the window, as of the last spend()."""
        return len(self._crashes)


def wait_for_kafka(settings: Settings) -> list[int] | None:
    """The topic's partitions, waiting with backoff while Kafka does not answer; None when
    Ctrl+C / SIGTERM comes first. A missing topic (ConfigError) is raised at once."""
    stop: list[int] = []
    old = {
        sig: signal.signal(sig, lambda signum, _frame: stop.append(signum)) for sig in (signal.SIGINT, signal.SIGTERM)
    }
    backoff = Backoff(KAFKA_WAIT_FIRST_S, KAFKA_WAIT_MAX_S)
    try:
        while not stop:
            try:
                return source.partitions(settings, timeout=KAFKA_PROBE_TIMEOUT_S)
            except ServiceUnavailable as exc:
                if stop:
                    break
                delay = backoff.next_delay()
                log.warning(
                    "Kafka at %s not reachable yet (%s); retrying in %g s — is the broker running?",
                    bootstrap(settings),
                    _kafka_reason(exc),
                    delay,
                )
                deadline = time.monotonic() + delay
                while not stop and time.monotonic() < deadline:  # short sleeps: a signal ends the wait
                    time.sleep(min(0.1, max(0.0, deadline - time.monotonic())))
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)
    log.info("stopped while waiting for Kafka at %s; nothing was ingested", bootstrap(settings))
    return None


def _kafka_reason(exc: ServiceUnavailable) -> str:
    """librdkafka's own words when the metadata request failed, else the whole message."""
    cause = exc.__cause__ or exc.__context__
    return cause.args[0].str() if isinstance(cause, KafkaException) else str(exc)


def _settle(settings: Settings, marks: resume.Marks, topic_id: str | None) -> None:
    """Every chosen sink's positions held against the topic before any worker starts."""
    sinks = open_sinks(settings, topic_id)
    try:
        resume.settle(settings.kafka_topic, sinks, marks, topic_id, settings.allow_data_loss)
    finally:
        for sink in sinks:
            sink.close()


class _DrainCheck:
    """True once every sink holds each partition up to its target offset."""

    def __init__(self, settings: Settings, targets: Offsets, opened: list | None = None):
        self.targets = {p: t for p, t in targets.items() if t > 0}
        self.sinks = opened if opened is not None else open_sinks(settings)
        self.next_check = 0.0

    def __call__(self) -> bool:
        if time.monotonic() < self.next_check:
            return False
        self.next_check = time.monotonic() + DRAIN_CHECK_S
        try:
            for sink in self.sinks:
                held = sink.positions(self.targets)
                if any(held.get(p, 0) < t for p, t in self.targets.items()):
                    return False
        except ServiceUnavailable:
            return False  # the workers are waiting for it too
        return True

    def close(self) -> None:
        for sink in self.sinks:
            sink.close()


def _pump(events, totals: Totals, fatal: list[FinpulseError]) -> None:
    """Take what the workers sent: stats, and errors that will not heal by restarting."""
    deadline = time.monotonic() + 0.25
    while True:
        try:
            kind, worker, pid, payload = events.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            return
        if kind == "stats":
            totals.add(worker, pid, payload)
        elif kind == "error" and not isinstance(payload, ServiceUnavailable):
            fatal.append(payload)
        elif kind == "crash":  # the restart budget (RestartBudget) decides when crashes are fatal
            log.error("worker %d (pid %d) crashed:\n%s", worker, pid, payload)
