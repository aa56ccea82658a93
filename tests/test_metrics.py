"""`finpulse ingest --metrics-port`: Prometheus metrics that agree with what the sinks hold, /healthz
and /readyz; `--log-format json`."""

from __future__ import annotations

import io
import json
import logging
import multiprocessing
import os
import re
import signal
import socket
import threading
import time
from datetime import datetime

import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families
from support import ROOT
from support.cli import children, env_for, finpulse
from support.metrics import Run, get, scrape, series, value, wait_for
from support.private import PrivatePostgres, running
from support.sinks import delta_rows, pg_count
from support.stack import fresh_stack

from finpulse import metrics, produce
from finpulse.link import WorkerLink
from finpulse.logformat import JsonFormatter, ToParent
from finpulse.metrics import Exporter
from finpulse.progress import WRITE_BUCKETS, Durations, Totals, WorkerStats


@pytest.fixture
def runs(tmp_path):
    """Starts ingest runs; whatever still runs at the end of the test is killed (process group)."""
    started: list[Run] = []

    def start(env: dict[str, str], *args: str, root: tuple[str, ...] = ()) -> Run:
        started.append(Run(tmp_path, env, *args, root=root))
        return started[-1]

    yield start
    for run in started:
        run.kill()


def json_lines(text: str) -> list[dict]:
    """Every line of `text` parsed as one JSON object (any other line fails the test)."""
    records = []
    for line in text.splitlines():
        try:
            records.append(json.loads(line))
        except ValueError:
            raise AssertionError(f"not a JSON line: {line!r}") from None
    for r in records:
        assert {"time", "level", "logger", "process", "message"} <= r.keys(), r
        assert r["time"].endswith("Z") and datetime.fromisoformat(r["time"]).utcoffset().total_seconds() == 0, r
    return records


# ---------------------------------------------------------------------------- the log format
def test_json_log_lines_carry_time_level_logger_pid_message_and_the_traceback():
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("finpulse.test-json")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        logger.warning("partition %d: %s", 3, 'quote " and newline\n and ünïcode')
        try:
            raise ZeroDivisionError("division by zero")
        except ZeroDivisionError:
            logger.exception("write failed")
    finally:
        logger.removeHandler(handler)
    first, second = json_lines(stream.getvalue())
    assert first["level"] == "WARNING" and first["logger"] == "finpulse.test-json" and first["process"] == os.getpid()
    assert first["message"] == 'partition 3: quote " and newline\n and ünïcode' and "exc_info" not in first
    assert second["message"] == "write failed" and second["level"] == "ERROR"
    assert "ZeroDivisionError" in second["exc_info"] and "Traceback" in second["exc_info"]


def test_a_worker_record_crosses_the_link_with_its_message_and_traceback_apart():
    supervisor_end, worker_end = multiprocessing.Pipe()
    sender = logging.getLogger("finpulse.test-queue")
    sender.addHandler(ToParent(WorkerLink(worker_end, 3)))
    sender.propagate = False
    try:
        try:
            {}["missing"]
        except KeyError:
            sender.exception("lane %s failed", "postgres")
    finally:
        sender.handlers.clear()
    assert supervisor_end.poll(5), "the record was not sent"
    kind, worker, _, record = supervisor_end.recv()  # pickled and sent, as from a worker process
    assert (kind, worker) == ("log", 3)
    parsed = json.loads(JsonFormatter().format(record))
    assert parsed["message"] == "lane postgres failed" and "KeyError" in parsed["exc_info"]
    text = logging.Formatter("%(levelname)s %(name)s: %(message)s").format(record)
    assert text.startswith("ERROR finpulse.test-queue: lane postgres failed\nTraceback") and "KeyError" in text


def test_json_log_format_on_a_real_command_and_health_while_kafka_is_awaited(base_settings, runs):
    with socket.socket() as hole:  # bound but never listening: every connection to it is refused
        hole.bind(("127.0.0.1", 0))
        env = env_for(
            base_settings, KAFKA_BOOTSTRAP_SERVERS=f"127.0.0.1:{hole.getsockname()[1]}", FINPULSE_LOG_FORMAT="json"
        )
        run = runs(env, "--metrics-port", "0")
        port = run.port()
        wait_for(lambda: "not reachable yet" in run.stderr(), "a Kafka retry in the log", run=run)
        assert get(port, "/healthz") == (200, "ok\n")
        assert get(port, "/readyz") == (503, "not ready: waiting for Kafka\n")
        assert get(port, "/metrics")[0] == 200 and get(port, "/nothing")[0] == 404
        assert run.stop(signal.SIGTERM) == 0, run.tail()
    records = json_lines(run.stderr())
    assert {r["process"] for r in records} == {run.proc.pid}
    assert any(r["level"] == "WARNING" and "is the broker running?" in r["message"] for r in records)
    assert any(r["logger"] == "finpulse.supervisor" and "stopped while waiting" in r["message"] for r in records)


def test_a_metrics_port_in_use_is_one_clear_line(base_settings):
    with socket.socket() as taken:
        taken.bind(("0.0.0.0", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = finpulse("ingest", "--metrics-port", str(port), env=env_for(base_settings), check=False, timeout=60)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and f"port {port} is already in use" in lines[0], proc.stderr
    assert "FINPULSE_METRICS_PORT" in lines[0] and "--metrics-port" in lines[0]


def test_idle_and_half_sent_requests_hold_no_more_than_a_few_threads_for_a_few_seconds():
    """300 connections that send half a request and wait (or nothing at all) held 302 threads of
    the supervisor for ever. Now at most MAX_CONNECTIONS are served at once, each for at most
    REQUEST_DEADLINE_S, and the server answers again as soon as they are cut."""
    exporter = Exporter(("postgres",))
    exporter.start(0, "127.0.0.1")  # --metrics-host: this host only
    assert exporter._server is not None and exporter._server.server_address[0] == "127.0.0.1"
    before = threading.active_count()
    holes = []
    try:
        for i in range(300):
            s = socket.create_connection(("127.0.0.1", exporter.port), timeout=5)
            if i % 2:
                s.sendall(b"GET /metr")
            holes.append(s)
        time.sleep(0.5)
        assert threading.active_count() <= before + 2 * metrics.MAX_CONNECTIONS + 2
        deadline = time.monotonic() + metrics.REQUEST_DEADLINE_S * 3
        while True:  # the held connections are cut by their deadline; the port answers again
            try:
                if get(exporter.port, "/healthz") == (200, "ok\n"):
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, "the server stayed busy past its connections' deadlines"
            time.sleep(0.2)
    finally:
        for s in holes:
            s.close()
        exporter.stop()


# ---------------------------------------------------------------------------- the collector
def test_the_collector_shows_live_views_only_and_the_newest_report_per_partition():
    totals, exporter = Totals(), Exporter(("postgres", "delta"))
    exporter.watch(totals, workers=2)
    assert exporter.unready() == "worker 0, 1 has not reported yet"
    slow = Durations()
    for seconds in (0.001, 0.2, 0.2, 120.0):
        slow.observe(seconds)
    totals.add(
        0,
        100,
        WorkerStats(
            rows={"postgres": 10, "delta": 10},
            rejects={"postgres": 2, "delta": 2},
            writes={"postgres": slow},
            held_lag={"postgres": {0: 5, 1: 0}, "delta": {0: 7, 1: 0}},
            partitions=[0, 1],
        ),
    )
    totals.add(1, 101, WorkerStats(partitions=[], down={"postgres": "connection refused\nDETAIL: more"}))
    assert exporter.unready() == "postgres down"  # the driver's words name hosts: they stay in the log
    # partition 1 moved to worker 1; worker 0 has not reported since
    totals.add(1, 101, WorkerStats(rows={"postgres": 1}, held_lag={"postgres": {1: 3}}, partitions=[1]))
    assert exporter.unready() is None
    m = {
        (s.name, frozenset(s.labels.items())): s.value
        for f in text_string_to_metric_families(exporter.metrics().decode())
        for s in f.samples
    }
    assert series(m, "finpulse_lag_messages") == {
        frozenset({"partition": "0", "sink": "postgres"}.items()): 5,
        frozenset({"partition": "0", "sink": "delta"}.items()): 7,
        frozenset({"partition": "1", "sink": "postgres"}.items()): 3,  # the newer report
        frozenset({"partition": "1", "sink": "delta"}.items()): 0,
    }
    assert value(m, "finpulse_ticks_written_total", sink="postgres") == 11
    assert value(m, "finpulse_rejects_total") == 2
    assert value(m, "finpulse_write_seconds_count", sink="postgres") == 4
    assert value(m, "finpulse_write_seconds_bucket", sink="postgres", le="0.005") == 1
    assert value(m, "finpulse_write_seconds_bucket", sink="postgres", le="0.25") == 3
    assert value(m, "finpulse_write_seconds_bucket", sink="postgres", le=str(WRITE_BUCKETS[-1])) == 3
    assert value(m, "finpulse_write_seconds_bucket", sink="postgres", le="+Inf") == 4
    assert value(m, "finpulse_write_seconds_sum", sink="postgres") == pytest.approx(120.401)
    assert value(m, "finpulse_sink_up", sink="postgres") == 1  # worker 1's newer report: up again
    totals.reported[1] -= 100  # a worker stuck somewhere stops reporting
    assert exporter.unready() == "worker 1 has not reported for 100s"
    totals.add(1, 101, WorkerStats(held_lag={"postgres": {1: 3}}, partitions=[1]))

    totals.forget(0)  # worker 0 exited: its partition 0 is nobody's until reassigned
    totals.add(0, 100, WorkerStats(rows={"delta": 5}, held_lag={"delta": {0: 9}}, partitions=[0]))  # its last words
    m = {(s.name, frozenset(s.labels.items())): s.value for f in exporter.registry.collect() for s in f.samples}
    assert {dict(k)["partition"] for k in series(m, "finpulse_lag_messages")} == {"1"}
    assert value(m, "finpulse_ticks_written_total", sink="delta") == 15  # its writes still count
    assert exporter.unready() == "worker 0 has not reported yet"


# ---------------------------------------------------------------------------- end to end
@pytest.mark.kafka
@pytest.mark.postgres
@pytest.mark.slow
def test_metrics_agree_with_what_the_sinks_hold(isolated, runs):
    good = [orjson.dumps(t) for t in produce.ticks(3000)]
    bad = [b"\xff\xfe not utf-8", b'{"symbol": "A", "price"', b"null", b"{}"]
    values = good[:1000] + bad[:2] + good[1000:2000] + bad[2:] + good[2000:]
    produce.send(isolated, iter([(b"k%d" % (i % 11), v) for i, v in enumerate(values)]))
    env = env_for(isolated, FINPULSE_BATCH_SIZE="200")
    run = runs(env, "--workers", "2", "--metrics-port", "0", root=("--log-format", "json"))
    port = run.port()
    assert get(port, "/healthz") == (200, "ok\n")

    def agrees(ticks: int, rejects: int) -> bool:
        m = scrape(port)
        lag = series(m, "finpulse_lag_messages")
        return (
            value(m, "finpulse_ticks_written_total", sink="postgres") == pg_count(isolated) == ticks
            and value(m, "finpulse_ticks_written_total", sink="delta") == len(delta_rows(isolated)) == ticks
            and value(m, "finpulse_rejects_total") == pg_count(isolated, "prices_rejected") == rejects
            and len(lag) == 8  # 4 partitions x 2 sinks
            and set(lag.values()) == {0}
        )

    wait_for(lambda: agrees(len(good), len(bad)), "the metrics to agree with both sinks", run=run)
    wait_for(lambda: get(port, "/readyz") == (200, "ready\n"), "/readyz 200", run=run)
    m = scrape(port)
    assert value(m, "finpulse_messages_consumed_total") == len(values)
    assert value(m, "finpulse_sink_up", sink="postgres") == value(m, "finpulse_sink_up", sink="delta") == 1
    assert value(m, "finpulse_worker_restarts_total") == 0
    assert value(m, "finpulse_workers_alive") == 2 and value(m, "finpulse_partitions_assigned") == 4
    for sink in ("postgres", "delta"):
        writes = value(m, "finpulse_write_seconds_count", sink=sink)
        assert writes and writes == value(m, "finpulse_write_seconds_bucket", sink=sink, le="+Inf")
        assert value(m, "finpulse_write_seconds_sum", sink=sink) > 0
    assert {dict(k)["partition"] for k in series(m, "finpulse_lag_messages")} == {"0", "1", "2", "3"}

    # a killed worker is counted as a restart; its partitions leave no stale series behind
    victim = children(run.proc.pid)[0]
    os.kill(victim, signal.SIGKILL)
    wait_for(lambda: value(scrape(port), "finpulse_worker_restarts_total") == 1, "the restart counted", run=run)
    wait_for(lambda: get(port, "/readyz") == (200, "ready\n"), "ready again after the restart", run=run)
    more = [orjson.dumps(t) for t in produce.ticks(500, seed=8)]
    produce.send(isolated, iter([(b"m%d" % i, v) for i, v in enumerate(more)]))

    wait_for(lambda: agrees(len(good) + len(more), len(bad)), "the new ticks counted, lag 0 on 8 series", run=run)

    assert run.stop() == 0, run.tail()
    records = json_lines(run.stderr())
    workers = {r["process"] for r in records if r["logger"] == "finpulse.worker"}
    assert len(workers) >= 3 and run.proc.pid not in workers  # two workers and the restarted one
    assert any(re.search(r"metrics on http://0\.0\.0\.0:\d+/metrics", r["message"]) for r in records)


@pytest.mark.kafka
@pytest.mark.slow
def test_readyz_is_503_while_postgres_is_down(kafka, tmp_path, runs):
    with running(PrivatePostgres) as pg, fresh_stack(partitions=2, prefix="metrics", **pg.settings_overrides) as s:
        env = env_for(s)
        finpulse("produce", "--count", "100", env=env)
        run = runs(env, "--metrics-port", "0")
        port = run.port()
        wait_for(lambda: get(port, "/readyz") == (200, "ready\n"), "/readyz 200", run=run)
        # every worker wrote once, so each lane holds both sinks' rules (admission keeps the
        # last rules of a sink that is down; rules never read pause both lanes, to keep the
        # sinks identical)
        wait_for(lambda: pg_count(s) == 100 and len(delta_rows(s)) == 100, "the first ticks in both sinks", run=run)

        pg.stop("immediate")
        finpulse("produce", "--count", "100", "--seed", "8", env=env)  # a write finds it down

        def refused() -> bool:
            status, text = get(port, "/readyz")
            return status == 503 and text == "not ready: postgres down\n"

        wait_for(refused, "/readyz 503 naming postgres", run=run)
        status, text = get(port, "/readyz")
        assert "5433" not in text and "localhost" not in text and s.postgres_user not in text, text
        m = scrape(port)
        assert value(m, "finpulse_sink_up", sink="postgres") == 0
        assert value(m, "finpulse_sink_up", sink="delta") == 1
        assert get(port, "/healthz") == (200, "ok\n")

        pg.start()
        wait_for(lambda: get(port, "/readyz") == (200, "ready\n"), "/readyz 200 once postgres is back", run=run)
        wait_for(lambda: pg_count(s) == 200, "every tick in postgres", run=run)
        # a worker whose write waited out the outage in the pool reports "back" with its next stats
        wait_for(lambda: value(scrape(port), "finpulse_sink_up", sink="postgres") == 1, "sink_up 1", run=run)
        assert run.stop() == 0, run.tail()


def test_docs_name_every_metric_and_their_alert_rules_parse():
    import yaml

    text = (ROOT / "docs" / "metrics.md").read_text()
    totals, exporter = Totals(), Exporter(("postgres", "delta"))
    exporter.watch(totals, workers=1)
    totals.add(0, 1, WorkerStats(writes={"postgres": Durations()}, held_lag={"postgres": {0: 1}}, partitions=[0]))
    served = {f.name + ("_total" if f.type == "counter" else "") for f in exporter.registry.collect()}
    documented = set(re.findall(r"^\| `(finpulse_\w+)` \|", text, re.M))
    assert documented == served
    blocks = [yaml.safe_load(b) for b in re.findall(r"```yaml\n(.*?)```", text, re.S)]
    rules = [r for b in blocks if "groups" in b for g in b["groups"] for r in g["rules"]]
    assert {r["alert"] for r in rules} >= {"FinpulseLagGrowing", "FinpulseSinkDown", "FinpulseRejects"}
    for rule in rules:
        assert set(re.findall(r"finpulse_\w+", rule["expr"])) <= served, rule["expr"]
