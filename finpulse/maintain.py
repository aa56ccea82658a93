"""Maintain: what a table needs after months of live ingest, sink by sink (Sink.maintain), then
the hot store's retention (finpulse/retention.py) when FINPULSE_PG_RETENTION_DAYS is set.

For Delta: compact small files per date partition toward a target size, write a checkpoint,
clean expired log entries, vacuum with Delta's 7-day retention. For PostgreSQL: the coming days'
partitions, the default partition's rows moved to their days, old bars deleted, statistics.
Positions are untouched, so ingest goes on exactly once while or after this runs.
"""

from __future__ import annotations

from finpulse import retention, sinks
from finpulse.config import Settings
from finpulse.sinks.delta.maintenance import RETENTION_HOURS, TARGET_FILE_BYTES

__all__ = ["RETENTION_HOURS", "TARGET_FILE_BYTES", "run"]


def run(
    settings: Settings, target_bytes: int = TARGET_FILE_BYTES, retention_hours: int = RETENTION_HOURS
) -> dict[str, dict[str, object]]:
    """Maintain every sink `settings.sinks` names; per sink, what was done."""
    done: dict[str, dict[str, object]] = {}
    for sink in sinks.open_sinks(settings):
        try:
            done[sink.name] = sink.maintain(target_bytes, retention_hours)
        finally:
            sink.close()
    if settings.pg_retention_days:
        for name, report in retention.run(settings, settings.pg_retention_days).items():
            done.setdefault(name, {})["retention"] = report
    return done


def days_kept(done: dict[str, dict[str, object]]) -> list[tuple[str, str]]:
    """(day, why) of every day retention kept because another sink does not hold it yet."""
    return [
        kept
        for report in done.values()
        if isinstance(r := report.get("retention"), retention.Report)
        for kept in r.kept
    ]
