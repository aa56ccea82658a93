"""Freshness: at a steady produced rate and default settings, how long from produce to visible.

PostgreSQL: a poller every POLL_S sees new rows; latency = when seen - the tick's timestamp
(stamped just before it is produced). Delta: from the table's log, each row becomes visible at
the commit whose txn offset passes it; latency = that commit's timestamp - the tick's timestamp.

What a live feed sees for months is the steady state, so WARM_UP_S of the same feed runs first, from
the same producer, and is not measured: otherwise the first ticks carry the producer's own
connection set-up (metadata, idempotent producer id) and each lane's first write, which made the
whole of the p99 (p99 of the first second ~590 ms, of every later second 47-86 ms).
"""

from __future__ import annotations

import bisect
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import numpy as np
import psycopg
import pytest
from conftest import QUICK, ROOT
from deltalake import DeltaTable
from support.cli import env_for

from finpulse import produce, source

RATES = [5_000] if QUICK else [2_000, 5_000]  # ticks/s: a steady feed, a busy one
SECONDS = 10 if QUICK else 30
POLL_S = 0.01  # PostgreSQL poll period: the resolution of its latency figures
WARM_UP_S = 3  # seconds of the feed sent, and seen landed, before the measured ones


def _env(s) -> dict[str, str]:
    # BENCH_DELTA_COMMITTER=worker measures the design before the per-process committer
    return env_for(s, FINPULSE_DELTA_COMMITTER=os.environ.get("BENCH_DELTA_COMMITTER", "process"))


def live_ticks(count: int):
    """Ticks stamped with the wall clock at the moment they are handed to the producer."""
    for t in produce.ticks(count):
        t["timestamp_ms"] = int(time.time() * 1000)
        yield t


class PostgresWatch(threading.Thread):
    def __init__(self, s):
        super().__init__(daemon=True)
        self.s, self.seen, self.stop = s, 0, threading.Event()
        self.landed: list[tuple[int, float]] = []  # (tick time, latency) of every row seen

    def run(self) -> None:
        nxt = {p: 0 for p in range(4)}
        with psycopg.connect(self.s.postgres_conninfo(), autocommit=True) as conn:
            while not self.stop.wait(POLL_S):
                where = " OR ".join(f"(kafka_partition = {p} AND kafka_offset >= {o})" for p, o in nxt.items())
                rows = conn.execute(
                    f"SELECT kafka_partition, kafka_offset, timestamp_ms FROM prices_raw WHERE {where}"
                ).fetchall()
                now = time.time() * 1000
                for p, o, ts in rows:
                    self.landed.append((ts, now - ts))
                    nxt[p] = max(nxt[p], o + 1)
                self.seen += len(rows)


def delta_latencies(uri: str, since_ms: int) -> list[float]:
    """Per row stamped at or after `since_ms`: commit time of the version that made it visible - its
    tick time."""
    steps: dict[int, list[tuple[int, int]]] = {}  # partition -> [(next offset, commit ms)]
    for f in sorted(Path(uri, "_delta_log").glob("*.json")):
        actions = [json.loads(line) for line in f.read_text().splitlines() if line.strip()]
        when = next((a["commitInfo"]["timestamp"] for a in actions if "commitInfo" in a), None)
        for a in actions:
            app = a["txn"]["appId"] if "txn" in a else ""
            tail = app.rsplit(":", 1)[-1] if app.startswith("finpulse:") else ""
            if tail.isdigit() and when is not None:  # a partition's position, not another finpulse txn
                steps.setdefault(int(tail), []).append((a["txn"]["version"], when))
    table = DeltaTable(uri).to_pyarrow_dataset().to_table(columns=["kafka_partition", "kafka_offset", "timestamp_ms"])
    out = []
    for p, o, ts in zip(*(table.column(c).to_pylist() for c in table.column_names)):
        if ts < since_ms:
            continue
        marks = steps[p]
        i = bisect.bisect_right([m[0] for m in marks], o)
        out.append(marks[i][1] - ts)
    return out


@pytest.mark.parametrize("rate", RATES)
def test_freshness_default_settings(benchmark, fresh_sinks, rate):
    topic = f"bench-fresh-{uuid.uuid4().hex[:8]}"
    s = fresh_sinks(kafka_topic=topic)
    source.create_topic(s, 4)
    result = {}

    def run():
        ingest = subprocess.Popen(
            [sys.executable, "-m", "finpulse", "ingest"],
            env=_env(s),
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        watch = PostgresWatch(s)
        watch.start()
        try:
            time.sleep(5)  # workers started and assigned
            producer = produce.producer(s)
            warm = rate * WARM_UP_S
            produce.send(s, produce.encoded(live_ticks(warm)), rate=rate, using=producer)
            count = rate * SECONDS
            since_ms = int(time.time() * 1000)
            produce.send(s, produce.encoded(live_ticks(count)), rate=rate, using=producer)
            deadline = time.monotonic() + 60
            while watch.seen < warm + count and time.monotonic() < deadline:
                time.sleep(0.1)
            time.sleep(1)  # let the last Delta commit land
        finally:
            watch.stop.set()
            os.killpg(ingest.pid, signal.SIGTERM)
            ingest.wait(60)
        assert watch.seen == warm + count, f"{watch.seen} of {warm + count} ticks became visible in PostgreSQL"
        result["postgres"] = np.array([lat for ts, lat in watch.landed if ts >= since_ms])
        result["delta"] = np.array(delta_latencies(s.delta_uri, since_ms))
        assert len(result["postgres"]) == len(result["delta"]) == count

    benchmark.pedantic(run, rounds=1, iterations=1)
    for sink in ("postgres", "delta"):
        benchmark.extra_info[f"freshness_p50_ms_{sink}"] = round(float(np.percentile(result[sink], 50)), 1)
        benchmark.extra_info[f"freshness_p99_ms_{sink}"] = round(float(np.percentile(result[sink], 99)), 1)
    benchmark.extra_info.update(rate=rate, seconds=SECONDS, batch_size=5, design="finpulse", kind="freshness")
    client = source.admin(s)
    client.delete_topics([topic])[topic].result(timeout=30)
