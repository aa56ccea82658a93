"""A live trickle, measured: Delta commits and live files per minute, and the time to count the
table's rows, while `finpulse ingest` (default settings) takes a steady rate of ticks.

    .venv/bin/python bench/trickle.py [--rate 2000] [--seconds 60] [--partitions 4] [--committer worker]
        [--maintain]

--maintain runs `finpulse maintain` after the trickle and reads the table again: the read times
before and after it (row count, and a scan of every column) are in the JSON line.

Runs against the local stack (`scripts/services up`) in a fresh topic, schema and Delta path,
and prints one JSON line. Not part of `scripts/bench`: it takes as long as it measures.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WARM_UP_S = 8.0  # workers join the group and settle their positions
SETTLE_S = 3.0  # the last Delta interval lands


def main() -> None:
    args = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    args.add_argument("--rate", type=int, default=2000, help="ticks per second")
    args.add_argument("--seconds", type=int, default=60, help="how long the trickle lasts")
    args.add_argument("--partitions", type=int, default=4)
    args.add_argument(
        "--committer",
        choices=("process", "worker"),
        default="process",
        help="FINPULSE_DELTA_COMMITTER: one Delta committer per process (default) or one per worker (before)",
    )
    args.add_argument("--maintain", action="store_true", help="then run `finpulse maintain` and read again")
    args.add_argument(
        "--before",
        action="store_true",
        help="the design before per-sink flushing: every batch committed by its worker, no background compaction",
    )
    opts = args.parse_args()

    tag = uuid.uuid4().hex[:8]
    table = Path(tempfile.mkdtemp(prefix="finpulse-trickle-")) / "prices"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KAFKA_TOPIC", "KAFKA_GROUP", "FINPULSE_"))}
    env.update(
        KAFKA_TOPIC=f"trickle-{tag}",
        KAFKA_GROUP_ID=f"trickle-{tag}",
        POSTGRES_SCHEMA=f"trickle_{tag}",
        DELTA_TABLE_URI=str(table),
        FINPULSE_DELTA_COMMITTER=opts.committer,
    )
    if opts.before:
        env.update(FINPULSE_DELTA_COMMITTER="worker", FINPULSE_DELTA_FLUSH_MS="0", FINPULSE_AUTO_COMPACT_FILES="0")

    def finpulse(*argv: str) -> None:
        subprocess.run([sys.executable, "-m", "finpulse", *argv], env=env, cwd=ROOT, check=True, capture_output=True)

    finpulse("init", "--partitions", str(opts.partitions))
    ingest = subprocess.Popen(
        [sys.executable, "-m", "finpulse", "ingest"],
        env=env,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        from deltalake import DeltaTable

        time.sleep(WARM_UP_S)
        first = DeltaTable(str(table)).version()
        started = time.monotonic()
        finpulse("produce", "--count", str(opts.rate * opts.seconds), "--rate", str(opts.rate))
        elapsed = time.monotonic() - started
        time.sleep(SETTLE_S)
        dt = DeltaTable(str(table))
        rows, read = _read(str(table))
        commits, files = dt.version() - first, len(dt.file_uris())
    finally:
        os.killpg(ingest.pid, signal.SIGTERM)
        ingest.wait(60)
    after: dict = {}
    if opts.maintain:
        finpulse("maintain")
        maintained_rows, maintained = _read(str(table))
        assert maintained_rows >= rows
        after = {
            "after_maintain_live_files": len(DeltaTable(str(table)).file_uris()),
            "after_maintain_count_rows_s": maintained["count_rows_s"],
            "after_maintain_scan_s": maintained["scan_s"],
        }
    print(
        json.dumps(
            {
                "rate": opts.rate,
                "committer": env["FINPULSE_DELTA_COMMITTER"],
                "design": "before" if opts.before else "now",
                "seconds": round(elapsed, 1),
                "rows": rows,
                "commits": commits,
                "live_files": files,
                "commits_per_min": round(commits / elapsed * 60),
                **read,
                **after,
            }
        )
    )
    sys.stdout.flush()
    os._exit(0)  # delta-rs can abort the interpreter at exit (delta-rs #2184): the line above is the result


def _read(uri: str) -> tuple[int, dict]:
    """Rows of the table, the time to count them and the time to scan every column (fresh opens)."""
    from deltalake import DeltaTable

    started = time.perf_counter()
    rows = DeltaTable(uri).to_pyarrow_dataset().count_rows()
    counted = time.perf_counter() - started
    started = time.perf_counter()
    DeltaTable(uri).to_pyarrow_table()
    scanned = time.perf_counter() - started
    return rows, {"count_rows_s": round(counted, 3), "scan_s": round(scanned, 3)}


if __name__ == "__main__":
    main()
