"""Kafka message bytes -> canonical tick rows (an Arrow record batch) and rejects.

`Decoder.decode` never raises on input: every message ends up as one or more ticks, as a
reject with its reason and raw bytes, or as a skipped non-trade event. It raises only
ServiceUnavailable, when its wire format cannot decode now (wire.py): the caller retries.

Decoding is two steps: the wire format turns bytes into a value (wire.py: JSON; registry.py:
Avro, Protobuf and JSON Schema through a schema registry), the feed shapes turn a value into
trades (finpulse/feeds/; a field mapping, feeds/mapped.py, names the fields of any other record). Two paths, one result:
  * the fast path (fast.py) assumes JSON in the canonical FinPulse shape and builds whole columns
    at once; a batch in which anything is off (a missing key, a string where a number belongs)
    falls back to
  * the careful path (careful.py), one message at a time through both steps, which knows every
    feed shape and says precisely what is wrong with a message that yields no tick.

Both hold each trade to the same rules (checks.py). The records that cross stages (Messages in,
Decoded ticks and Rejects out) live in records.py. `Decoder.from_settings` is the one place a
decoder is made (ingest, replay and verify decode alike).
"""

from __future__ import annotations

import logging

import pyarrow as pa

from finpulse import feeds
from finpulse.checks import MAX_FUTURE_US, MAX_TIMESTAMP_US, MIN_TIMESTAMP_US, clean_reason
from finpulse.config import Settings
from finpulse.decode.careful import Careful
from finpulse.decode.fast import fast_canonical, fast_records
from finpulse.decode.wire import JsonWire, Wire
from finpulse.feeds.mapped import NAME as MAPPED
from finpulse.feeds.mapped import Mapping
from finpulse.feeds.mapped import load as load_mapping
from finpulse.records import Decoded, Messages, Reject

log = logging.getLogger(__name__)

__all__ = [
    "MAX_FUTURE_US",
    "MAX_TIMESTAMP_US",
    "MIN_TIMESTAMP_US",
    "Decoded",
    "Decoder",
    "Messages",
    "Reject",
    "clean_reason",
]

# Below this many messages a batch that fails the fast path is not split any further: the
# careful path on 256 messages costs about what two more fast attempts would.
MIN_FAST_SPAN = 256


def check(settings: Settings) -> None:
    """At the start of ingest, replay and verify: the field mapping reads (ConfigError naming the
    file), and a configured schema registry takes our sign-in (AccessRefused, one line). A registry
    that is down is only a warning: plain JSON goes on, framed messages wait for it."""
    from finpulse import registry as schema_registry
    from finpulse.errors import ServiceUnavailable

    if settings.mapping_file:
        load_mapping(settings.mapping_file)
    if schema_registry.configured(settings):
        try:
            schema_registry.check(settings)
        except ServiceUnavailable as exc:
            log.warning("%s; registry-framed messages wait for it, plain JSON goes on", exc)


class Decoder:
    def __init__(
        self,
        max_message_bytes: int = 1 << 20,
        feed: str | None = None,
        strict: bool = False,
        wire: Wire | None = None,
        mapping: Mapping | None = None,
    ):
        self.max_message_bytes = max_message_bytes
        mapped = mapping.feed() if mapping is not None else None
        self.feed = (mapped if feed == MAPPED else feeds.get(feed)) if feed else None
        self.strict = strict
        self.wire = wire or JsonWire(max_message_bytes)
        self._careful = Careful(self.wire, self.feed, strict, (mapped,) if mapped is not None else ())

    @classmethod
    def from_settings(cls, settings: Settings, feed: str | None = None, strict: bool = False) -> Decoder:
        """The decoder of ingest, replay and verify: the message size limit, `--format` / `--strict`
        as given to the command, the field mapping (FINPULSE_MAPPING) and, when a schema registry is
        configured, its framed messages beside plain JSON (registry.py)."""
        from finpulse import registry as schema_registry
        from finpulse.decode.registry import RegistryWire

        mapping = load_mapping(settings.mapping_file) if settings.mapping_file else None
        wire: Wire | None = None
        if schema_registry.configured(settings):
            wire = RegistryWire(settings, mapping, settings.max_message_bytes)
        return cls(settings.max_message_bytes, feed=feed, strict=strict, wire=wire, mapping=mapping)

    def decode(self, msgs: Messages) -> Decoded:
        if self.feed is None or self.feed is feeds.CANONICAL:
            fast = self.fast(msgs)
            if fast is not None:
                return fast
            return _merge(self._split(msgs))
        return self.careful(msgs)

    def fast(self, msgs: Messages) -> Decoded | None:
        """The fast path alone (decode.fast.py): None when the batch is not all plain canonical ticks,
        or all records of the canonical fields from typed schemas (Avro, Protobuf) of the registry."""
        if self.wire.plain(msgs):
            return fast_canonical(msgs, self.max_message_bytes)
        records = self.wire.records(msgs)
        return fast_records(msgs, records) if records is not None else None

    def careful(self, msgs: Messages, indexes=None) -> Decoded:
        """The careful path alone (decode.careful.py), over `indexes` (default: every message)."""
        return self._careful.decode(msgs, range(len(msgs)) if indexes is None else indexes)

    def _split(self, msgs: Messages) -> list[Decoded]:
        """`msgs` failed the fast path: retry its halves, so one odd message in a large batch costs
        a few fast passes instead of sending every message the careful way. Where both halves fail
        too, odd messages are dense and the careful path takes the whole span."""
        if len(msgs) <= MIN_FAST_SPAN:
            return [self.careful(msgs)]
        halves = msgs.halves()
        tried = [self.fast(h) for h in halves]
        if tried[0] is None and tried[1] is None:
            return [self.careful(msgs)]
        out: list[Decoded] = []
        for half, fast in zip(halves, tried):
            out.extend([fast] if fast is not None else self._split(half))
        return out


def _merge(parts: list[Decoded]) -> Decoded:
    if len(parts) == 1:
        return parts[0]
    if all(p.feeds is None for p in parts):
        feeds_read = None
    else:
        feeds_read = pa.concat_arrays(
            [p.feeds if p.feeds is not None else pa.array([CANONICAL] * p.ticks.num_rows, pa.string()) for p in parts]
        )
    return Decoded(
        pa.concat_batches([p.ticks for p in parts]),
        [r for p in parts for r in p.rejects],
        sum(p.skipped for p in parts),
        feeds_read,
    )


CANONICAL = feeds.CANONICAL.name
