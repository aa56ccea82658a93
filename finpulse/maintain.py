"""Maintain: what a table needs after months of live ingest, sink by sink (Sink.maintain).

For Delta: compact small files per date partition toward a target size, write a checkpoint,
clean expired log entries, vacuum with Delta's 7-day retention. Positions (`txn`) are untouched,
so ingest goes on exactly once while or after this runs. Safe to run next to a live ingest:
a compaction that loses a commit race is retried by delta-rs.
"""

from __future__ import annotations

from finpulse import sinks
from finpulse.config import Settings
from finpulse.sinks.delta.maintenance import RETENTION_HOURS, TARGET_FILE_BYTES

__all__ = ["RETENTION_HOURS", "TARGET_FILE_BYTES", "run"]


def run(
    settings: Settings, target_bytes: int = TARGET_FILE_BYTES, retention_hours: int = RETENTION_HOURS
) -> dict[str, dict[str, object]]:
    """Maintain every sink `settings.sinks` names; per sink, what was done."""
    done = {}
    for sink in sinks.open_sinks(settings):
        try:
            done[sink.name] = sink.maintain(target_bytes, retention_hours)
        finally:
            sink.close()
    return done
