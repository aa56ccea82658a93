"""What every sink promises. A sink is the source of truth for how far it got."""

from __future__ import annotations

from typing import Iterable, Protocol

from finpulse.batch import Offsets, TickBatch


class Sink(Protocol):
    name: str

    def positions(self, partitions: Iterable[int]) -> Offsets:
        """Next offset to read for each partition the sink holds anything of (absent: nothing)."""

    def write(self, batch: TickBatch) -> Offsets:
        """Write the rows and advance the positions atomically, skipping what the sink already
        holds; return the positions afterwards. Raises ServiceUnavailable (retry later) or
        SinkRejected (give up)."""

    def close(self) -> None: ...
