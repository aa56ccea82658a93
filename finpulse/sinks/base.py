"""What every sink promises. A sink is the source of truth for how far it got."""

from __future__ import annotations

from typing import Iterable, NamedTuple, Protocol

from finpulse.batch import Offsets, TickBatch


class Filled(NamedTuple):
    """What `insert_missing` added, and the positions it saw: it only ever writes below them."""

    rows: int
    rejects: int
    held: Offsets


class Sink(Protocol):
    name: str
    topic_id: str | None  # Kafka's id of the topic; stored with every position this sink writes

    def topic_keys(self, partitions: Iterable[int]) -> dict[int, int]:
        """Fingerprint (resume.fingerprint) of the topic id stored with each partition's position."""

    def accept_gaps(self, gaps: list, topic_id: str | None) -> None:
        """Record `gaps` (resume.Gap) and move each partition's position to its gap's target,
        never lower, in one atomic step, storing `topic_id` with the positions."""

    def positions(self, partitions: Iterable[int]) -> Offsets:
        """Next offset to read for each partition the sink holds anything of (absent: nothing)."""

    def write(self, batch: TickBatch) -> Offsets:
        """Write the rows and advance the positions atomically, skipping what the sink already
        holds; return the positions afterwards. Raises ServiceUnavailable (retry later) or
        SinkRejected (give up)."""

    def insert_missing(self, batch: TickBatch) -> Filled:
        """Replay: add the rows of `batch` below the sink's positions that it lacks, never
        touching the positions (rows at or above them are left to `write`)."""

    def close(self) -> None: ...
