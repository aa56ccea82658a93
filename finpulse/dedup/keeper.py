"""Where a reader's trade windows come from, and where they go: the sinks' snapshots and Kafka.

`start` rebuilds the windows of partitions a reader is about to read from given offsets (the
worker on an assignment, replay and verify per range); `apply` folds decoded messages in;
`due` hands out the snapshots worth saving now (the worker posts them to every sink).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator

from finpulse import source
from finpulse.config import Settings
from finpulse.decode import Decoder
from finpulse.dedup import SNAPSHOT_EVERY_MESSAGES, SNAPSHOT_EVERY_S, Deduped, TradeWindow
from finpulse.errors import ServiceUnavailable
from finpulse.records import Decoded, Messages

log = logging.getLogger(__name__)


class Keeper:
    def __init__(self, settings: Settings, decoder: Decoder, sinks: list):
        """`sinks`: the reader's sinks (or proxies running each call on a sink's lane)."""
        self.settings, self.decoder, self.sinks = settings, decoder, sinks
        self.windows = TradeWindow(settings)
        self._saved: dict[int, tuple[int, float]] = {}  # partition -> (offset, monotonic time) of the last save

    @property
    def enabled(self) -> bool:
        return self.windows.enabled

    def start(self, starts: dict[int, int], lows: dict[int, int]) -> None:
        """The windows of `starts` (partition -> first offset to read) as they stand before those
        offsets. ServiceUnavailable when no sink can say, or Kafka cannot be read: retry."""
        if not self.enabled:
            return
        reader: source.RangeReader | None = None
        try:
            for p, at in sorted(starts.items()):

                def read(partition: int, start: int, end: int) -> Iterator[tuple[Decoded, Messages]]:
                    nonlocal reader
                    if reader is None:
                        reader = source.RangeReader(self.settings)
                    for msgs in reader.read(partition, start, end):
                        yield self.decoder.decode(msgs), msgs

                began = time.monotonic()
                self.windows.rebuild(p, at, lows.get(p, 0), self._snapshot, read)
                self._saved[p] = (at, time.monotonic())
                took = time.monotonic() - began
                if took > 1:
                    log.info("partition %d: trade window at offset %d rebuilt in %.1fs", p, at, took)
        finally:
            if reader is not None:
                reader.close()

    def start_span(self, span) -> None:
        """`start` for one replay.Span: its partition from its first offset."""
        self.start({span.partition: span.start}, {span.partition: span.low})

    def _snapshot(self, partition: int, at: int) -> tuple[int, bytes] | None:
        """The newest snapshot at or below `at` any sink holds. A sink that is down is passed over
        while another answers: any snapshot below `at` is right, a newer one is only quicker."""
        best: tuple[int, bytes] | None = None
        down: ServiceUnavailable | None = None
        answered = False
        for sink in self.sinks:
            try:
                found = sink.load_trade_state(partition, at)
            except ServiceUnavailable as exc:
                down = exc
                continue
            answered = True
            if found is not None and (best is None or found[0] > best[0]):
                best = found
        if not answered and down is not None:
            raise down
        return best

    def apply(self, decoded: Decoded, msgs: Messages) -> Deduped:
        return self.windows.apply(decoded, msgs)

    def forget(self, partitions) -> None:
        self.windows.forget(partitions)
        for p in partitions:
            self._saved.pop(p, None)

    def due(self, partitions=None, force: bool = False) -> list[tuple[int, int, bytes]]:
        """(partition, offset, snapshot) of the windows to save now: moved on since their last save
        by SNAPSHOT_EVERY_MESSAGES, or SNAPSHOT_EVERY_S ago (`force`: any that moved at all)."""
        if not self.enabled:
            return []
        now, out = time.monotonic(), []
        for p in sorted(self.windows.partitions if partitions is None else partitions):
            window = self.windows.partitions.get(p)
            if window is None:
                continue
            offset, at = self._saved.get(p, (-1, now))
            moved = window.next_offset - offset
            if moved > 0 and (force or moved >= SNAPSHOT_EVERY_MESSAGES or now - at >= SNAPSHOT_EVERY_S):
                self._saved[p] = (window.next_offset, now)
                out.append((p, *self.windows.snapshot(p)))
        return out
