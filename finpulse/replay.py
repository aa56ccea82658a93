"""Replay: read a bounded range of the topic again and give each sink what it lacks, then stop.

The rules that keep a replay safe next to a live `finpulse ingest`:

  * below a sink's position (offsets it already claims) a replay only inserts what is missing,
    `insert_missing`, keyed by (partition, offset, tick_index), and never moves the position;
  * at or above the position rows go only through the sink's guarded `write`, which advances the
    position with them, and only when the replayed range reaches down to the position: a position
    never jumps over offsets nobody wrote. A range that starts above a position is left to ingest;
  * Kafka is read outside the consumer group (assign, throwaway group id, no commits).

Data flows one way: plan (spans from watermarks or times) -> read -> decode -> trade window -> each
sink. The trade window of each span is rebuilt at its start (finpulse/dedup), so a re-sent trade is
a duplicate here exactly as it was for ingest.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from finpulse import resume, source
from finpulse.admission import Admission
from finpulse.backoff import Backoff
from finpulse.batch import Accumulator, Offsets, TickBatch
from finpulse.config import Settings
from finpulse.decode import Decoder
from finpulse.decode import check as decoder_check
from finpulse.dedup.keeper import Keeper
from finpulse.errors import ConfigError, ServiceUnavailable, first_line
from finpulse.lanes import RETRY_FIRST_S, RETRY_MAX_S
from finpulse.progress import LOG_EVERY_S
from finpulse.sinks import open_sinks, prepare_sinks
from finpulse.sinks.base import Sink

if TYPE_CHECKING:
    from rich.console import Console

log = logging.getLogger("finpulse.replay")
progress_log = logging.getLogger("finpulse.progress")

# A sink that is down or losing commit races to a live ingester is retried with the lanes'
# backoff, for up to two minutes before the replay gives up (a replay is a job, not a service).
RETRY_FOR_S = 120.0


# ---------------------------------------------------------------------------- planning
@dataclass(frozen=True)
class Bound:
    """One end of a range: an offset, a record time (epoch ms), or neither (the default end)."""

    offset: int | None = None
    timestamp_ms: int | None = None


@dataclass(frozen=True)
class Span:
    """Offsets [start, end) of one partition; `low` is the partition's low watermark at planning."""

    partition: int
    start: int
    end: int
    low: int

    @property
    def size(self) -> int:
        return max(0, self.end - self.start)


def parse_time(text: str, flag: str) -> int:
    """Epoch milliseconds from digits, or from ISO-8601 (UTC when it carries no offset)."""
    text = text.strip()
    if text.isdigit():
        return int(text)
    try:
        when = dt.datetime.fromisoformat(text.replace("Z", "+00:00") if text.endswith("Z") else text)
    except ValueError:
        raise ConfigError(
            f"{flag}: {text!r} is neither ISO-8601 (2024-05-01T13:30:00Z) nor epoch milliseconds"
        ) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return int(when.timestamp() * 1000)


def plan(settings: Settings, partitions: list[int] | None, start: Bound, end: Bound) -> list[Span]:
    """Spans per partition: the bounds resolved (times with the broker's offsets_for_times) and
    clamped to what the topic holds now; the end defaults to the high watermark seen here."""
    known = source.partitions(settings)
    chosen = sorted(set(partitions)) if partitions else known
    unknown = sorted(set(chosen) - set(known))
    if unknown:
        raise ConfigError(
            f"--partition {unknown[0]}: topic {settings.kafka_topic} has partitions {known[0]}-{known[-1]}"
        )
    marks = source.watermarks(settings, chosen)
    starts = _resolve(settings, chosen, start, {p: low for p, (low, _) in marks.items()})
    ends = _resolve(settings, chosen, end, {p: high for p, (_, high) in marks.items()})
    return [Span(p, max(starts[p], low), min(ends[p], high), low) for p, (low, high) in sorted(marks.items())]


def _resolve(settings: Settings, parts: list[int], bound: Bound, default: dict[int, int]) -> dict[int, int]:
    if bound.offset is not None:
        return {p: bound.offset for p in parts}
    if bound.timestamp_ms is not None:
        return source.offsets_for_time(settings, parts, bound.timestamp_ms)
    return default


# ---------------------------------------------------------------------------- running
@dataclass
class Left:
    """Offsets a replay read but left to `finpulse ingest`: they start above the sink's position."""

    position: int | None
    start: int
    end: int


@dataclass
class Tally:
    keeps_rejects: bool = False  # the sink keeps rejects (they are counted too)
    rows: int = 0  # ticks this sink took from the replay
    rejects: int = 0
    left: dict[int, Left] = field(default_factory=dict)  # partition -> what was left to ingest


@dataclass
class Report:
    messages: int
    sinks: dict[str, Tally]
    elapsed: float


def positions(settings: Settings, partitions: list[int]) -> dict[str, Offsets]:
    """Each sink's positions (next offset per partition it holds anything of)."""
    sinks = open_sinks(settings)
    try:
        return {sink.name: sink.positions(partitions) for sink in sinks}
    finally:
        for sink in sinks:
            sink.close()


def run(
    settings: Settings,
    spans: list[Span],
    feed: str | None = None,
    strict: bool = False,
    console: Console | None = None,
    admission: Admission | None = None,
) -> Report:
    """Replay `spans` into the sinks `settings.sinks` names, creating their tables if absent.
    `admission`: whose rules rows are held against (default: those same sinks')."""
    prepare_sinks(settings)
    admission = admission or Admission(settings)
    decoder_check(settings)
    decoder = Decoder.from_settings(settings, feed, strict)
    topic_id = source.topic_id(settings)
    sinks: list[Sink] = open_sinks(settings, topic_id)
    try:
        marks = source.watermarks(settings, [s.partition for s in spans])
        resume.settle(settings.kafka_topic, sinks, marks, topic_id, settings.allow_data_loss)
        trades = Keeper(settings, decoder, sinks)
        with source.RangeReader(settings) as reader, Meter("replaying", sum(s.size for s in spans), console) as meter:
            return replay(spans, sinks, reader, decoder, meter, admission, trades)
    finally:
        admission.close()
        for sink in sinks:
            sink.close()


def replay(
    spans: list[Span],
    sinks: list[Sink],
    reader: source.RangeReader,
    decoder: Decoder,
    meter: Meter | None = None,
    admission: Admission | None = None,
    trades: Keeper | None = None,
) -> Report:
    """Read each span and hand every batch to every sink (see the module's rules)."""
    started = time.monotonic()
    tallies = {sink.name: Tally(sink.keeps_rejects) for sink in sinks}
    messages = 0
    for span in spans:
        at = span.start
        if trades is not None:
            retrying(trades.start_span, span)
        for msgs in reader.read(span.partition, span.start, span.end):
            acc = Accumulator()
            decoded = retrying(decoder.decode, msgs)  # a decoder may say "not now"
            if trades is None:
                acc.add(decoded, msgs.partitions, msgs.offsets)
            else:
                found = trades.apply(decoded, msgs)
                acc.add(found.decoded, msgs.partitions, msgs.offsets, found.duplicates, found.gaps)
            batch = acc.take() if admission is None else retrying(admission.admit, acc.take())
            for sink in sinks:
                _give(sink, batch, at, span, tallies[sink.name])
            at = batch.next_offsets[span.partition]
            messages += len(msgs)
            if meter is not None:
                meter.advance(len(msgs))
    return Report(messages, tallies, time.monotonic() - started)


def _give(sink: Sink, batch: TickBatch, start: int, span: Span, tally: Tally) -> None:
    """Offsets [start, batch end) of one partition to one sink."""
    filled = retrying(sink.insert_missing, batch)
    tally.rows += filled.rows
    tally.rejects += filled.rejects
    rest = batch.after(filled.held)  # at or above the position the sink had under its lock
    if rest.empty:
        return
    position = filled.held.get(span.partition)
    # A sink that holds nothing of a partition starts where ingest would: at the low watermark.
    if start > (span.low if position is None else position):
        left = tally.left.setdefault(span.partition, Left(position, start, span.end))
        left.end = rest.next_offsets[span.partition]
        return
    written = retrying(sink.write, rest)  # skips whatever a live ingester wrote meanwhile, then advances
    tally.rows += written.rows
    tally.rejects += written.rejects


def retrying(step, batch):
    """`step(batch)`, again with backoff while it raises ServiceUnavailable, for up to RETRY_FOR_S."""
    backoff, deadline = Backoff(RETRY_FIRST_S, RETRY_MAX_S), time.monotonic() + RETRY_FOR_S
    while True:
        try:
            return step(batch)
        except ServiceUnavailable as exc:
            delay = backoff.next_delay()
            if time.monotonic() + delay > deadline:
                raise
            log.warning("%s; retrying in %.1fs", first_line(exc), delay)
            time.sleep(delay)


class Meter:
    """Progress of a long read: a rich bar on `console` when it is a terminal (log records go through
    the same console and scroll above it), a log line every few seconds otherwise."""

    def __init__(self, what: str, total: int, console: Console | None = None):
        self.what, self.total, self.done = what, total, 0
        self._bar = None
        self._next_log = time.monotonic() + LOG_EVERY_S
        if console is not None and console.is_terminal:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self._bar = Progress(
                TextColumn(what),
                BarColumn(),
                MofNCompleteColumn(),
                TimeRemainingColumn(),
                console=console,
                transient=True,
            )
            self._task = self._bar.add_task(what, total=total)

    def __enter__(self) -> Meter:
        if self._bar is not None:
            self._bar.__enter__()
        return self

    def advance(self, n: int) -> None:
        self.done += n
        if self._bar is not None:
            self._bar.advance(self._task, n)
        elif time.monotonic() >= self._next_log:
            self._next_log = time.monotonic() + LOG_EVERY_S
            progress_log.info("%s: %s of %s messages", self.what, f"{self.done:,}", f"{self.total:,}")

    def __exit__(self, *exc) -> None:
        if self._bar is not None:
            self._bar.__exit__(*exc)
