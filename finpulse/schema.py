"""The one Arrow schema of a tick row; the PostgreSQL tables (sinks/postgres/tables.py) and the
Delta schema (with its partition columns, sinks/delta/table.py) are derived from it.

A row is a trade as the exchange reported it plus its lineage: the Kafka partition and offset of
the message that carried it and `tick_index`, its position inside that message (0 for a message
with one tick). `(kafka_partition, kafka_offset, tick_index)` identifies a row in every sink;
`(exchange, symbol, trade_id)` identifies the trade itself, where the feed numbers its trades
(finpulse/dedup: a trade re-sent in another message is a duplicate, not a second row).

Columns added by a release (trade_id, kafka_time) are nullable: `finpulse init` adds them to an
existing table (PostgreSQL ALTER TABLE, Delta schema evolution) and the old rows read as null.
"""

from __future__ import annotations

import pyarrow as pa

TICKS = pa.schema(
    [
        pa.field("symbol", pa.string(), nullable=False),  # trimmed, upper-cased, as the feed spells it
        pa.field("price", pa.float64(), nullable=False),
        pa.field("size", pa.float64(), nullable=False),
        pa.field("timestamp_ms", pa.int64(), nullable=False),  # UTC epoch ms of the trade
        pa.field("trade_time", pa.timestamp("us", tz="UTC"), nullable=False),  # keeps sub-ms digits
        pa.field("exchange", pa.string()),  # venue from the message, else the feed's name
        pa.field("side", pa.string()),  # 'buy' / 'sell' when the feed says so
        pa.field("trade_id", pa.string()),  # the venue's id of the trade, as text (numbers or UUIDs)
        pa.field("kafka_time", pa.timestamp("us", tz="UTC")),  # the Kafka record's timestamp
        pa.field("broker_time", pa.bool_(), nullable=False),  # true: no trade time, Kafka's stands in
        pa.field("kafka_partition", pa.int32(), nullable=False),
        pa.field("kafka_offset", pa.int64(), nullable=False),
        pa.field("tick_index", pa.int32(), nullable=False),
    ]
)

LINEAGE = ("kafka_partition", "kafka_offset", "tick_index")
# The total order of ticks, newest first when descending: a symbol's "last" price is the first
# tick in it, the same in every sink even when ticks share a trade time (a millisecond feed).
LAST_ORDER = ("trade_time", *LINEAGE)

# Columns a release added (nullable): `finpulse init` adds them to older tables.
ADDED_COLUMNS = ("trade_id", "kafka_time")
