"""`finpulse mapping check FILE`: decode a sample of the topic with a field mapping and say what it
would land as (the rows) or why not (the rejects' reasons). Reads only: no sink, no commit.

The sample is the oldest retained messages, spread over the chosen partitions, decoded by the very
decoder ingest builds (Decoder.from_settings with the mapping), so what it prints is what ingest
would write.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from finpulse import source
from finpulse.config import Settings
from finpulse.decode import Decoder, Messages
from finpulse.decode import check as decoder_check

SHOWN = ("symbol", "price", "size", "trade_time", "exchange", "side", "trade_id", "kafka_partition", "kafka_offset")


@dataclass
class Checked:
    messages: int = 0
    rows: list[dict] = field(default_factory=list)
    rejects: list[dict] = field(default_factory=list)  # partition, offset, reason
    skipped: int = 0  # non-trade events

    def as_json(self) -> dict:
        return {
            "messages": self.messages,
            "rows": [{k: (v.isoformat() if hasattr(v, "isoformat") else v) for k, v in r.items()} for r in self.rows],
            "rejects": self.rejects,
            "skipped": self.skipped,
        }


def run(settings: Settings, sample: int, partitions: list[int] | None = None) -> Checked:
    decoder_check(settings)  # the mapping file reads; the registry takes our sign-in
    decoder = Decoder.from_settings(settings)
    parts = partitions or source.partitions(settings)
    marks = source.watermarks(settings, parts)
    each = math.ceil(sample / max(1, len(parts)))
    batches: list[Messages] = []
    taken = 0
    with source.RangeReader(settings) as reader:
        for p in parts:
            low, high = marks[p]
            want = min(each, sample - taken)
            if want <= 0:
                break
            for msgs in reader.read(p, low, min(high, low + want)):
                batches.append(msgs)
                taken += len(msgs)
    checked = Checked()
    if not batches:
        return checked
    msgs = Messages.concat(batches)
    decoded = decoder.decode(msgs)
    checked.messages = len(msgs)
    checked.skipped = decoded.skipped
    table = decoded.ticks.select(list(SHOWN)).to_pylist()
    checked.rows = table
    checked.rejects = [{"partition": r.partition, "offset": r.offset, "reason": r.reason} for r in decoded.rejects]
    return checked
