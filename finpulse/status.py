"""Status: where the topic is, where each sink is, and how far behind; read-only.

`collect` asks the broker (watermarks, the group's committed offsets) and each kind of sink in the
registry (its positions, and what it describes of itself: Delta version, files and bytes;
PostgreSQL's rejects per partition). A sink that cannot be read
is reported in `errors` with nulls in its columns, so one outage does not hide the rest.
`as_json` is the stable shape that docs/operations.md documents key by key.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import cast

from finpulse import sinks, source
from finpulse.config import Settings
from finpulse.errors import FinpulseError, ServiceUnavailable, SinkRejected

SINKS = sinks.names()


@dataclass(frozen=True)
class PartitionStatus:
    partition: int
    low: int  # broker's low watermark: the oldest offset still retained
    high: int  # broker's high watermark: one past the newest message
    committed: int | None  # KAFKA_GROUP_ID's committed offset (None: never committed)
    positions: dict[str, int | None]  # sink -> next offset it will write (None: holds nothing / unread)
    rejected: int | None  # rejects PostgreSQL holds for this partition (None: unread)

    def lag(self, position: int | None, readable: bool = True) -> int | None:
        """Messages from `position` to the high watermark; a sink that holds nothing of the
        partition lags by everything retained; None when the sink could not be read."""
        if not readable:
            return None
        return self.high - (self.low if position is None else position)


@dataclass
class Status:
    topic: str
    group_id: str
    partitions: list[PartitionStatus]
    delta: dict[str, object]  # uri, version, files, bytes (None when unreadable)
    postgres: dict[str, object]  # server (no password), schema
    errors: dict[str, FinpulseError] = field(default_factory=dict)  # what could not be read
    gaps: list[tuple[int, int, int, str]] = field(default_factory=list)  # accepted with --allow-data-loss
    rules: dict[str, list[str]] = field(default_factory=dict)  # per sink, the table's own rules (admission)

    def as_json(self) -> dict:
        parts = []
        for p in self.partitions:
            row: dict[str, object] = {
                "partition": p.partition,
                "low": p.low,
                "high": p.high,
                "committed": p.committed,
                "committed_lag": p.lag(p.committed),
            }
            for sink in SINKS:
                row[f"{sink}_position"] = p.positions.get(sink)
                row[f"{sink}_lag"] = p.lag(p.positions.get(sink), sink not in self.errors)
            row["rejected"] = p.rejected
            parts.append(row)
        totals: dict[str, object] = {"messages": sum(p.high - p.low for p in self.partitions)}
        for key in ("committed_lag", *(f"{s}_lag" for s in SINKS), "rejected"):
            values = [row[key] for row in parts]
            totals[key] = None if None in values else sum(values)  # type: ignore[arg-type]
        return {
            "topic": self.topic,
            "group_id": self.group_id,
            "partitions": parts,
            "totals": totals,
            "delta": self.delta,
            "postgres": self.postgres,
            "gaps": [{"partition": p, "from_offset": a, "to_offset": b, "reason": r} for p, a, b, r in self.gaps],
            "rules": self.rules,
            "errors": {sink: str(exc) for sink, exc in self.errors.items()},
        }


def collect(settings: Settings) -> Status:
    """Everything `finpulse status` shows. Kafka must answer; a sink may not (see `errors`)."""
    parts = source.partitions(settings)
    marks = source.watermarks(settings, parts)
    committed = source.committed(settings, parts)
    errors: dict[str, FinpulseError] = {}
    positions: dict[str, dict[int, int]] = {}
    described: dict[str, dict[str, object]] = {}
    gaps: list[tuple[int, int, int, str]] = []
    rules: dict[str, list[str]] = {}
    for name, kind in sinks.KINDS.items():
        positions[name], described[name] = {}, {}
        try:
            sink = kind.from_settings(settings)
            try:
                positions[name] = sink.positions(parts)
                described[name] = sink.describe(parts)
                gaps += sink.gaps()
            finally:
                sink.close()
            checker = kind.rules(settings)
            if checker is not None:
                rules[name] = checker.described
                checker.close()
        except (ServiceUnavailable, SinkRejected) as exc:
            errors[name] = exc
    # Rejects per partition, from the sink that keeps them (None when it could not be read).
    counted = [d["rejected"] for d in described.values() if "rejected" in d]
    rejected = cast("dict[int, int]", counted[0]) if counted else None
    delta = {"uri": settings.delta_uri, "version": None, "files": None, "bytes": None, **described.get("delta", {})}
    return Status(
        settings.kafka_topic,
        settings.kafka_group_id,
        [
            PartitionStatus(
                p,
                low,
                high,
                committed.get(p),
                {s: positions[s].get(p) for s in SINKS},
                None if rejected is None else rejected.get(p, 0),
            )
            for p, (low, high) in sorted(marks.items())
        ],
        delta,
        {"server": settings.postgres_display(), "schema": settings.postgres_schema},
        errors,
        sorted(set(gaps)),
        rules,
    )
