"""Keeping the Delta table fast after months of live ingest: health, compaction, checkpoint, log
clean-up and vacuum. Functions of an open DeltaTable; the Delta sink calls them.

None of this touches the `txn` application transactions: they live in the table's snapshot, not
in data files, so compaction keeps every partition's position and a later `ingest` goes on
exactly once. A Parquet file whose commit never happened (a worker killed mid-write) is in no
version of the table, so no reader sees it; vacuum deletes it once it is older than the retention.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
from deltalake import DeltaTable

# Compaction packs each date partition's small files toward this size: large enough that a day
# of ticks is a handful of files for Spark and delta-rs, small enough to rewrite in a few seconds.
TARGET_FILE_BYTES = 128 << 20
# A file below this counts as small in `status` and for background compaction: a second of a
# trickle is ~10 KB, a compacted day hundreds of MB.
SMALL_FILE_BYTES = 16 << 20
# Vacuum keeps files removed less than this long ago: Delta's own default (7 days), so a reader
# or a time-travel query that started before a compaction still finds its files.
RETENTION_HOURS = 168
# How far back `health` looks in the log for the last compaction.
HISTORY_SCAN = 2_000


def small_files(table: DeltaTable) -> int:
    """How many live files are small (below SMALL_FILE_BYTES): what compaction would pack."""
    sizes = pa.table(table.get_add_actions(flatten=True)).column("size_bytes")
    return int(pc.sum(pc.less(sizes, SMALL_FILE_BYTES)).as_py() or 0) if len(sizes) else 0


HEALTH = ("version", "files", "bytes", "small_files", "last_compaction", "last_checkpoint")


def health(table: DeltaTable) -> dict[str, Any]:
    """Version, live files, small files, bytes, last compaction (ISO time) and last checkpoint."""
    sizes = pa.table(table.get_add_actions(flatten=True)).column("size_bytes")
    return {
        "version": table.version(),
        "files": len(sizes),
        "bytes": int(pc.sum(sizes).as_py() or 0),
        "small_files": small_files(table),
        "last_compaction": _last_compaction(table),
        "last_checkpoint": _last_checkpoint(table),
    }


def checkpoint_and_clean(table: DeltaTable) -> int:
    """Write a checkpoint of the current version, then delete log entries older than the table's
    log retention (delta.logRetentionDuration, 30 days by default). Returns the checkpoint version."""
    table.update_incremental()
    table.create_checkpoint()
    table.cleanup_metadata()
    return table.version()


def vacuum(table: DeltaTable, retention_hours: int = RETENTION_HOURS, dry_run: bool = False) -> int:
    """Delete files no version within `retention_hours` needs (compacted-away files, files of
    commits that never happened); how many. Delta refuses a retention below its own minimum."""
    # full: list the table's files, not only the log's tombstones, so files of commits that never
    # happened go too (they were never in the log). One listing of the table per run.
    return len(
        table.vacuum(retention_hours=retention_hours, dry_run=dry_run, enforce_retention_duration=True, full=True)
    )


def _last_compaction(table: DeltaTable) -> str | None:
    for entry in table.history(HISTORY_SCAN):
        if entry.get("operation") == "OPTIMIZE" and entry.get("timestamp"):
            when = dt.datetime.fromtimestamp(entry["timestamp"] / 1000, tz=dt.UTC)
            return when.isoformat(timespec="seconds").replace("+00:00", "Z")
    return None


def _last_checkpoint(table: DeltaTable) -> int | None:
    """The version of the newest checkpoint, from `_delta_log/_last_checkpoint`. Read on local
    tables only: delta-rs does not expose it, and on object stores it is reported as unknown."""
    uri = table.table_uri
    if "://" in uri and not uri.startswith("file://"):
        return None
    marker = Path(uri.removeprefix("file://")) / "_delta_log" / "_last_checkpoint"
    try:
        return int(json.loads(marker.read_text())["version"])
    except (OSError, ValueError, KeyError):
        return None
