"""Where ticks land. Each sink writes rows and its own offsets in one atomic step, and owns every
byte of its I/O: preparing its tables, positions, and the read side that status, verify and show
use. The rest of FinPulse asks this registry, never a driver; a third sink is a module here and a
line in KINDS."""

from __future__ import annotations

from finpulse.config import Settings
from finpulse.sinks.base import Sink, SinkKind, Summary, Written
from finpulse.sinks.delta import DeltaSink
from finpulse.sinks.postgres import PostgresSink

#: Every kind of sink, in the order they are opened, written and shown.
KINDS: dict[str, SinkKind] = {kind.name: kind for kind in (PostgresSink, DeltaSink)}


def names() -> tuple[str, ...]:
    return tuple(KINDS)


def open_sinks(settings: Settings, topic_id: str | None = None, every: bool = False) -> list[Sink]:
    """The sinks `settings.sinks` names (`every`: all kinds). `topic_id`: Kafka's id of the topic,
    stored with every position they write (None: keep what is stored)."""
    chosen = names() if every else settings.sink_names
    return [KINDS[name].from_settings(settings, topic_id) for name in chosen]


def prepare_sinks(settings: Settings) -> dict[str, list[tuple[str, bool]]]:
    """Tables of the chosen sinks exist (idempotent) and can take our rows (SinkRejected if not);
    per sink, each thing it ensures and whether this call created it."""
    return {name: KINDS[name].prepare(settings) for name in settings.sink_names}


__all__ = ["KINDS", "Sink", "SinkKind", "Summary", "Written", "names", "open_sinks", "prepare_sinks"]
