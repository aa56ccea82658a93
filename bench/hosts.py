"""Several `finpulse ingest` processes (hosts) in one group on one Delta table, measured: Delta
commits and commit conflicts per minute, for 1, 2 and 3 hosts, under a live feed.

    .venv/bin/python bench/hosts.py [--hosts 1,2,3] [--rate 5000] [--seconds 60] [--partitions 8]

Each host runs with its default settings (one committer per process, background compaction on).
A conflict is a commit a host's committer lost to another process (logged by the committer: the
requests are judged again, or retried), or a worker's Delta write that found the store down.
Runs against the local stack (`scripts/services up`) in a fresh topic, schema and Delta table per
host count, and prints one JSON line per count. Not part of `scripts/bench`: it takes as long as it
measures.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WARM_UP_S = 10.0  # every host's workers join the group and settle their positions


def run(hosts: int, rate: int, seconds: int, partitions: int) -> dict:
    tag = uuid.uuid4().hex[:8]
    table = Path(tempfile.mkdtemp(prefix="finpulse-hosts-")) / "prices"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KAFKA_TOPIC", "KAFKA_GROUP", "FINPULSE_"))}
    env.update(
        KAFKA_TOPIC=f"hosts-{tag}",
        KAFKA_GROUP_ID=f"hosts-{tag}",
        POSTGRES_SCHEMA=f"hosts_{tag}",
        DELTA_TABLE_URI=str(table),
    )
    subprocess.run(
        [sys.executable, "-m", "finpulse", "init", "--partitions", str(partitions)],
        env=env,
        cwd=ROOT,
        check=True,
        capture_output=True,
    )
    logs = [tempfile.TemporaryFile(mode="w+") for _ in range(hosts)]
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "finpulse", "ingest", "--workers", str(max(1, partitions // (2 * hosts)))],
            env=env,
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        for log in logs
    ]
    feed = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "finpulse",
            "produce",
            "--count",
            str(int(rate * (seconds + WARM_UP_S))),
            "--rate",
            str(rate),
        ],
        env=env,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
    )
    time.sleep(WARM_UP_S)
    first = _version(table)
    time.sleep(seconds)
    last = _version(table)
    feed.wait()
    for p in procs:
        os.killpg(p.pid, signal.SIGTERM)
    for p in procs:
        p.wait(120)
    text = ""
    for log in logs:
        log.seek(0)
        text += log.read()
    minutes = seconds / 60
    lost = len(re.findall(r"lost a race to another process", text))
    failed = len(re.findall(r"Delta commit of \d+ staged writes failed", text))
    down = len(re.findall(r"WARNING finpulse.lanes: delta unavailable", text))
    return {
        "hosts": hosts,
        "rate": rate,
        "seconds": seconds,
        "commits_per_minute": round((last - first) / minutes, 1),
        "conflicts_per_minute": round((lost + failed) / minutes, 2),
        "lane_down_per_minute": round(down / minutes, 2),
        "compactions": len(re.findall(r"background compaction:", text)),
    }


def _version(table: Path) -> int:
    return max(int(p.stem) for p in (table / "_delta_log").glob("*.json"))


def main() -> None:
    args = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    args.add_argument("--hosts", default="1,2,3", help="host counts to measure, comma separated")
    args.add_argument("--rate", type=int, default=5000, help="ticks per second")
    args.add_argument("--seconds", type=int, default=60, help="how long each count is measured")
    args.add_argument("--partitions", type=int, default=8)
    opts = args.parse_args()
    for n in (int(h) for h in opts.hosts.split(",")):
        print(json.dumps(run(n, opts.rate, opts.seconds, opts.partitions)), flush=True)


if __name__ == "__main__":
    main()
