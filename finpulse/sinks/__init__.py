"""Where ticks land. Each sink writes rows and its own offsets in one atomic step, and owns every
byte of its I/O: preparing its tables, positions, the read side that status, verify and show use,
and the background services an ingest process runs for it. The rest of FinPulse asks this registry,
never a driver: a third sink is a module (a SinkKind, sinks/base.py) and a line in KINDS, and
status, show, verify and the metrics list it."""

from __future__ import annotations

from typing import TYPE_CHECKING

from finpulse.config import Settings
from finpulse.errors import ConfigError
from finpulse.sinks.base import Service, Sink, SinkKind, Summary, Written
from finpulse.sinks.delta import DeltaSink
from finpulse.sinks.postgres import PostgresSink

if TYPE_CHECKING:
    from finpulse.link import Links, WorkerLink

#: Every kind of sink, in the order they are opened, written and shown.
KINDS: dict[str, SinkKind] = {kind.name: kind for kind in (PostgresSink, DeltaSink)}


def names() -> tuple[str, ...]:
    return tuple(KINDS)


def chosen(settings: Settings) -> tuple[str, ...]:
    """The sinks FINPULSE_SINKS / --sinks names: "all", or a comma list of kinds (ConfigError for
    one that is not a kind). In KINDS order."""
    wanted = [n.strip().lower() for n in settings.sinks.split(",") if n.strip()]
    if not wanted or wanted == ["all"]:
        return names()
    unknown = [n for n in wanted if n not in KINDS]
    if unknown:
        raise ConfigError(
            f"FINPULSE_SINKS / --sinks: {', '.join(map(repr, unknown))} is not a sink: choose all, or one or "
            f"more of {', '.join(names())} separated by commas"
        )
    return tuple(n for n in KINDS if n in wanted)


def keeping_rejects(sink_names: tuple[str, ...]) -> str | None:
    """The first of these sinks that keeps rejects (the one that counts them), if any."""
    return next((n for n in sink_names if KINDS[n].keeps_rejects), None)


def open_sinks(
    settings: Settings, topic_id: str | None = None, every: bool = False, link: WorkerLink | None = None
) -> list[Sink]:
    """The chosen sinks (`every`: all kinds). `topic_id`: Kafka's id of the topic, stored with every
    position they write (None: keep what is stored). `link`: a worker's pipe to its supervisor, for
    a sink whose writes a service of the supervisor completes (Delta's committer)."""
    return [KINDS[name].from_settings(settings, topic_id, link) for name in (names() if every else chosen(settings))]


def prepare_sinks(settings: Settings) -> dict[str, list[tuple[str, bool]]]:
    """Tables of the chosen sinks exist (idempotent) and can take our rows (SinkRejected if not);
    per sink, each thing it ensures and whether this call created it."""
    return {name: KINDS[name].prepare(settings) for name in chosen(settings)}


def services(settings: Settings, links: Links, workers: int) -> list[Service]:
    """The background services the chosen sinks run in an ingest process (not started yet)."""
    return [service for name in chosen(settings) for service in KINDS[name].services(settings, links, workers)]


__all__ = [
    "KINDS",
    "Service",
    "Sink",
    "SinkKind",
    "Summary",
    "Written",
    "chosen",
    "keeping_rejects",
    "names",
    "open_sinks",
    "prepare_sinks",
    "services",
]
