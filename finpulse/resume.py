"""Resume: where each partition starts, and whether the topic still holds what the sinks expect.

Spark's failOnDataLoss, kept: before a worker reads a partition (and before a replay), each sink's
position is held against the topic as it is now.

  * position above the high watermark, or a topic id other than the one stored with the position:
    the topic was deleted and recreated; its offsets are not the ones the sink counted;
  * position below the low watermark: retention deleted messages the sink never ingested.

Either stops with one DataLoss line, unless --allow-data-loss: then each sink goes on from the
earliest offset still held (a recreated topic's offsets below the old position are skipped: the
sinks keep the old topic's rows under those keys and never delete a row), and records the gap,
which `status` and `verify` report.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass

from finpulse.batch import Offsets
from finpulse.errors import DataLoss

log = logging.getLogger(__name__)

Marks = dict[int, tuple[int, int]]  # partition -> (low, high) watermark

# A DataLoss line names at most this many partitions, then says how many more.
MAX_NAMED = 4


def fingerprint(topic_id: str) -> int:
    """A topic id (Kafka's UUID) as a non-negative int64, the form a Delta `txn` version can hold."""
    return int.from_bytes(hashlib.sha256(topic_id.encode()).digest()[:8], "big") >> 1


@dataclass(frozen=True)
class Gap:
    """Offsets [start, end) of one partition that a sink did not and will not ingest."""

    sink: str
    partition: int
    start: int
    end: int
    reason: str  # "recreated" or "retention"
    position: int  # the sink's position when the gap was found
    high: int  # the partition's high watermark then

    def describe(self, topic: str) -> str:
        where = f"partition {self.partition}: {self.sink} holds offset {self.position:,}"
        if self.reason == "retention":
            return (
                f"{where}, below the oldest offset still retained, {self.end:,} ({self.end - self.start:,} "
                "messages deleted by retention before they were ingested)"
            )
        why = f"the topic now ends at {self.high:,}" if self.position > self.high else "its topic id changed"
        return f"{where} of an earlier topic named {topic} (deleted and recreated: {why})"

    @property
    def target(self) -> int:
        """Where the sink's position goes when the gap is accepted (never lower than it is)."""
        return max(self.position, self.end)


def find_gaps(sink: str, held: Offsets, topic_keys: dict[int, int], marks: Marks, current: int | None) -> list[Gap]:
    """The gaps between one sink's positions (and the topic fingerprints stored with them) and the
    topic now. A partition the sink holds nothing of has no gap: it starts at the earliest offset."""
    gaps = []
    for p, (low, high) in sorted(marks.items()):
        pos = held.get(p)
        if pos is None:
            continue
        stored = topic_keys.get(p)
        same_topic = current is not None and stored == current  # a recreated topic's gap accepted earlier
        other_topic = current is not None and stored is not None and stored != current
        if other_topic or (pos > high and not same_topic):
            # The new topic's offsets below the old position are skipped: the sink keeps the old
            # topic's rows under those keys, and a position never goes back.
            gaps.append(Gap(sink, p, low, max(low, pos), "recreated", pos, high))
        elif pos < low:
            gaps.append(Gap(sink, p, pos, low, "retention", pos, high))
    return gaps


def refuse(topic: str, gaps: list[Gap]) -> DataLoss:
    """The one line that stops ingest or replay, naming the partitions, offsets and what to do."""
    named = "; ".join(g.describe(topic) for g in gaps[:MAX_NAMED])
    more = f"; and {len(gaps) - MAX_NAMED} more" if len(gaps) > MAX_NAMED else ""
    return DataLoss(
        f"data loss on topic {topic}: {named}{more}. Nothing was written. To go on from the earliest offset "
        "still held and record the gap, rerun with --allow-data-loss (FINPULSE_ALLOW_DATA_LOSS=true); "
        "to ingest a recreated topic from its start, point POSTGRES_SCHEMA and DELTA_TABLE_URI at new tables."
    )


def settle(topic: str, sinks: list, marks: Marks, topic_id: str | None, allow: bool) -> dict[str, Offsets]:
    """Hold every sink's positions against the topic (`marks`, Kafka's `topic_id`), once each sink
    said its tables belong to this topic (Sink.own_topic). No gap: nothing happens. Gaps and not `allow`: DataLoss. Gaps and `allow`: each sink records its gaps and moves
    its positions to where ingest goes on (storing `topic_id` with them). Returns each sink's
    positions after that, so a caller need not read them again."""
    current = fingerprint(topic_id) if topic_id else None
    parts = list(marks)
    held: dict[str, Offsets] = {}
    found: dict[str, list[Gap]] = {}
    for sink in sinks:
        sink.own_topic(parts)  # another topic's ticks in these tables: SinkRejected (their keys collide)
        held[sink.name] = sink.positions(parts)
        gaps = find_gaps(sink.name, held[sink.name], sink.topic_keys(parts), marks, current)
        if gaps:
            found[sink.name] = gaps
    every = [g for gaps in found.values() for g in gaps]
    if not every:
        return held
    if not allow:
        raise refuse(topic, every)
    for sink in sinks:
        if sink.name in found:
            sink.accept_gaps(found[sink.name], topic_id)
            held[sink.name].update({g.partition: g.target for g in found[sink.name]})
    for g in every:
        log.warning(
            "data loss accepted (--allow-data-loss): %s; recorded as a gap of offsets %d-%d",
            g.describe(topic),
            g.start,
            g.end,
        )
    return held
