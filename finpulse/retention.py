"""Retention: PostgreSQL is the hot store of the last days, Delta the store of record of all of them.

`finpulse maintain --pg-retention-days N` drops a sink's whole days older than N days (a sink
that keeps days: prices_raw's day partitions), oldest first, and each only once every sink that
keeps all days (Delta) holds it:

  * its position in each Kafka partition is past the highest offset of that day's rows there
    (it wrote, exactly once, every row below its position), and
  * it holds at least as many rows of that day as the day holds (its own count, from statistics).

A day that fails either check is kept, with the day and what is missing, and so is every later
day (what a sink holds stays one unbroken run of days: its horizon). Dropping is a detach and a
drop of one partition, recorded in the sink, so verify and status know the days before the
horizon are gone on purpose.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

from finpulse import sinks
from finpulse.config import Settings
from finpulse.errors import SinkRejected


@dataclass
class Report:
    dropped: list[tuple[str, int]] = field(default_factory=list)  # (day, rows), per sink that keeps days
    kept: list[tuple[str, str]] = field(default_factory=list)  # (day, why) of the first day not dropped


def run(settings: Settings, keep_days: int, today: dt.date | None = None) -> dict[str, Report]:
    """Drop the days older than `keep_days` days before `today` (UTC) that are safe elsewhere."""
    today = today or dt.datetime.now(dt.UTC).date()
    cutoff = today - dt.timedelta(days=keep_days)
    opened = sinks.open_sinks(settings, every=True)
    try:
        hot = [s for s in opened if s.keeps_days]
        records = [s for s in opened if not s.keeps_days]
        if hot and not records:
            raise SinkRejected("retention needs a store of record (the Delta table) to hold each day first")
        return {sink.name: _trim(sink, records, cutoff) for sink in hot}
    finally:
        for sink in opened:
            sink.close()


def _trim(hot, records: list, cutoff: dt.date) -> Report:
    report = Report()
    for day in hot.expired_days(cutoff):
        why = _unsafe(day, records)
        if why is not None:
            report.kept.append((str(day.day), why))
            break
        hot.drop_day(day)
        report.dropped.append((str(day.day), day.rows))
    return report


def _unsafe(day, records: list) -> str | None:
    """Why `day` may not leave the hot store yet, or None."""
    for record in records:
        held = record.positions(day.last_offsets)
        behind = sorted((p, o) for p, o in day.last_offsets.items() if held.get(p, 0) <= o)
        if behind:
            where = ", ".join(f"partition {p} offset {o:,}" for p, o in behind[:4])
            return f"{record.name} has not reached {where} yet"
        have = record.rows_on_day(day.day)
        if have < day.rows:
            return f"{record.name} holds {have:,} of its {day.rows:,} rows ({day.rows - have:,} missing)"
    return None
