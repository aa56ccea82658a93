"""Status: where the topic is, where each sink is, and how far behind; read-only.

`collect` asks the broker (watermarks, the group's committed offsets) and each chosen kind of sink
in the registry: its positions, what it describes of itself (Delta: version, files and bytes;
PostgreSQL: rejects per partition) and its rules. A sink that cannot be read is reported in `errors`
with nulls in its columns, so one outage does not hide the rest. `as_json` is the stable shape that
docs/operations.md documents key by key: per partition `<sink>_position` and `<sink>_lag`, and
per sink a section named after it (where it is, and what it describes).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from finpulse import sinks, source
from finpulse.config import Settings
from finpulse.errors import FinpulseError, ServiceUnavailable, SinkRejected


@dataclass(frozen=True)
class PartitionStatus:
    partition: int
    low: int  # broker's low watermark: the oldest offset still retained
    high: int  # broker's high watermark: one past the newest message
    committed: int | None  # KAFKA_GROUP_ID's committed offset (None: never committed)
    positions: dict[str, int | None]  # sink -> next offset it will write (None: holds nothing / unread)
    rejected: int | None  # rejects the sink that keeps them holds for this partition (None: unread)
    duplicates: int | None = None  # re-sent trades it removed, as that sink counted them (None: unread)

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
    sinks: tuple[str, ...]
    partitions: list[PartitionStatus]
    sections: dict[str, dict[str, object]]  # sink -> where it is and what it describes (None: unread)
    errors: dict[str, FinpulseError] = field(default_factory=dict)  # what could not be read
    gaps: list[tuple[int, int, int, str]] = field(default_factory=list)  # accepted with --allow-data-loss
    rules: dict[str, list[str]] = field(default_factory=dict)  # per sink, the table's own rules (admission)
    sequence_gaps: list[dict] = field(default_factory=list)  # the latest gaps in trade ids, newest first
    # the schema registry, when one is configured: its place, the topic's subjects and their latest
    # versions, and per partition what its newest message was written with (None: no registry)
    schema_registry: dict[str, object] | None = None

    def headlines(self) -> dict[str, str]:
        """Per sink, one line for a person (each kind says what matters of it)."""
        return {name: sinks.KINDS[name].headline(self.sections[name]) for name in self.sinks}

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
            for sink in self.sinks:
                row[f"{sink}_position"] = p.positions.get(sink)
                row[f"{sink}_lag"] = p.lag(p.positions.get(sink), sink not in self.errors)
            row["rejected"] = p.rejected
            row["duplicates"] = p.duplicates
            parts.append(row)
        totals: dict[str, object] = {"messages": sum(p.high - p.low for p in self.partitions)}
        for key in ("committed_lag", *(f"{s}_lag" for s in self.sinks), "rejected", "duplicates"):
            values = [row[key] for row in parts]
            totals[key] = None if None in values else sum(values)  # type: ignore[arg-type]
        return {
            "topic": self.topic,
            "group_id": self.group_id,
            "partitions": parts,
            "totals": totals,
            **self.sections,
            "gaps": [{"partition": p, "from_offset": a, "to_offset": b, "reason": r} for p, a, b, r in self.gaps],
            "rules": self.rules,
            "sequence_gaps": self.sequence_gaps,
            "schema_registry": self.schema_registry,
            "errors": {sink: str(exc) for sink, exc in self.errors.items()},
        }


def collect(settings: Settings) -> Status:
    """Everything `finpulse status` shows. Kafka must answer; a sink may not (see `errors`)."""
    parts = source.partitions(settings)
    marks = source.watermarks(settings, parts)
    committed = source.committed(settings, parts)
    chosen = sinks.chosen(settings)
    errors: dict[str, FinpulseError] = {}
    positions: dict[str, dict[int, int]] = {}
    sections: dict[str, dict[str, object]] = {}
    rejected: dict[int, int] | None = None
    duplicates: dict[int, int] | None = None
    sequence_gaps: list[dict] = []
    gaps: list[tuple[int, int, int, str]] = []
    rules: dict[str, list[str]] = {}
    counting = sinks.keeping_rejects(chosen)  # the sink whose rejects are counted
    for name in chosen:
        kind = sinks.KINDS[name]
        positions[name] = {}
        sections[name] = {**kind.location(settings), **dict.fromkeys(kind.describes)}
        try:
            sink = kind.from_settings(settings)
            try:
                positions[name] = sink.positions(parts)
                described = sink.describe(parts)
                gaps += sink.gaps()
            finally:
                sink.close()
            if name == counting:
                rejected = described.pop("rejected", None)  # type: ignore[assignment]
                duplicates = described.pop("duplicates", None)  # type: ignore[assignment]
                sequence_gaps = described.pop("sequence_gaps", None) or []  # type: ignore[assignment]
            sections[name].update(described)
            checker = kind.rules(settings)
            if checker is not None:
                rules[name] = checker.described
                checker.close()
        except (ServiceUnavailable, SinkRejected) as exc:
            errors[name] = exc
    return Status(
        settings.kafka_topic,
        settings.kafka_group_id,
        chosen,
        [
            PartitionStatus(
                p,
                low,
                high,
                committed.get(p),
                {s: positions[s].get(p) for s in chosen},
                None if counting is None or counting in errors else (rejected or {}).get(p, 0),
                None if counting is None or counting in errors else (duplicates or {}).get(p, 0),
            )
            for p, (low, high) in sorted(marks.items())
        ],
        sections,
        errors,
        sorted(set(gaps)),
        rules,
        sequence_gaps,
        _registry(settings, marks, errors),
    )


def _registry(
    settings: Settings, marks: dict[int, tuple[int, int]], errors: dict[str, FinpulseError]
) -> dict[str, object] | None:
    """The registry's section: None without one; its outage goes to `errors` as "schema_registry"."""
    from finpulse import registry
    from finpulse.decode.registry import in_use

    if not registry.configured(settings):
        return None
    try:
        last: dict[int, tuple[bytes | None, list | None]] = {}
        with source.RangeReader(settings) as reader:
            for p, (low, high) in marks.items():
                if high > low:
                    for msgs in reader.read(p, high - 1, high):
                        last[p] = (msgs.values[-1], msgs.headers[-1] if msgs.headers else None)
        return in_use(settings, last)
    except FinpulseError as exc:
        errors["schema_registry"] = exc
        return {"url": registry.where(settings), "subjects": None, "in_use": None}
