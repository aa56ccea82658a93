"""Sink-side rules for tests: a PostgreSQL trigger that refuses the symbol POISON, and batches of
canonical ticks in which chosen offsets carry that symbol."""

from __future__ import annotations

import orjson

from finpulse.batch import Accumulator, TickBatch
from finpulse.decode import Decoder
from finpulse.records import Messages

T0 = 1_700_000_000_000

POISON_TRIGGER = """
CREATE FUNCTION refuse_poison() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF NEW.symbol = 'POISON' THEN RAISE EXCEPTION 'poison tick' USING ERRCODE = '22023'; END IF;
  RETURN NEW;
END $$;
CREATE TRIGGER refuse_poison BEFORE INSERT ON prices_raw FOR EACH ROW EXECUTE FUNCTION refuse_poison();
"""


def span(partition: int, start: int, end: int, poison: set[int] = frozenset(), price=lambda o: 1.0 + o) -> TickBatch:
    """Offsets [start, end) of one partition, one tick each; offsets in `poison` are symbol POISON."""
    offsets = list(range(start, end))
    values = [
        orjson.dumps(
            {"symbol": "POISON" if o in poison else "OK", "price": price(o), "size": 1, "timestamp_ms": T0 + o}
        )
        for o in offsets
    ]
    msgs = Messages(values, [partition] * len(offsets), offsets, [T0] * len(offsets))
    acc = Accumulator()
    acc.add(Decoder().decode(msgs), msgs.partitions, msgs.offsets)
    return acc.take()
