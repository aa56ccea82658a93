"""The one Arrow schema of a tick row; the PostgreSQL DDL below and the Delta schema (with its
partition columns, sinks/delta/table.py) are derived from it.

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

# --------------------------------------------------------------------- PostgreSQL
PRICES_TABLE = "prices_raw"
OFFSETS_TABLE = "finpulse_offsets"
REJECTS_TABLE = "prices_rejected"
GAPS_TABLE = "finpulse_gaps"  # offsets lost with --allow-data-loss (not trades: see SEQUENCE_GAPS_TABLE)
DUPLICATES_TABLE = "prices_duplicates"  # --keep-duplicates: each re-sent trade removed, as a row
DUPLICATE_COUNTS_TABLE = "finpulse_duplicates"  # re-sent trades removed, per partition and exchange
SEQUENCE_GAPS_TABLE = "finpulse_sequence_gaps"  # trade ids missing from a symbol's numbering
TRADE_STATE_TABLE = "finpulse_trade_windows"  # snapshots of the trade windows (finpulse/dedup)

_PG_TYPES = {
    pa.string(): "text",
    pa.float64(): "double precision",
    pa.int64(): "bigint",
    pa.int32(): "integer",
    pa.bool_(): "boolean",
    pa.timestamp("us", tz="UTC"): "timestamp with time zone",
}


def pg_type(arrow_type: pa.DataType) -> str:
    return _PG_TYPES[arrow_type]


def _columns_sql(schema: pa.Schema) -> str:
    return ",\n    ".join(f"{f.name} {pg_type(f.type)}{'' if f.nullable else ' NOT NULL'}" for f in schema)


# Indexes are the price of queries: the primary key proves lineage is unique (and lets replay
# find what is missing); (symbol, trade_time) serves "symbol X between t1 and t2". Their cost
# to the ingest rate is measured in bench/.
PG_DDL = [
    f"""CREATE TABLE IF NOT EXISTS {PRICES_TABLE} (
    {_columns_sql(TICKS)},
    PRIMARY KEY ({", ".join(LINEAGE)})
)""",
    # The sink's own record of how far it got: written in the same transaction as the rows.
    f"""CREATE TABLE IF NOT EXISTS {OFFSETS_TABLE} (
    topic text NOT NULL,
    kafka_partition integer NOT NULL,
    next_offset bigint NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (topic, kafka_partition)
)""",
    # Kafka's id of the topic the position belongs to: a recreated topic has a new one.
    f"ALTER TABLE {OFFSETS_TABLE} ADD COLUMN IF NOT EXISTS topic_id text",
    # Offsets that were never ingested and never will be, accepted with --allow-data-loss.
    f"""CREATE TABLE IF NOT EXISTS {GAPS_TABLE} (
    topic text NOT NULL,
    kafka_partition integer NOT NULL,
    from_offset bigint NOT NULL,
    to_offset bigint NOT NULL,
    reason text NOT NULL,
    topic_id text,
    recorded_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (topic, kafka_partition, from_offset, to_offset)
)""",
    # Trades re-sent in another message (finpulse/dedup): how many, and with --keep-duplicates each one.
    f"""CREATE TABLE IF NOT EXISTS {DUPLICATE_COUNTS_TABLE} (
    topic text NOT NULL,
    kafka_partition integer NOT NULL,
    exchange text NOT NULL,
    duplicates bigint NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (topic, kafka_partition, exchange)
)""",
    f"""CREATE TABLE IF NOT EXISTS {DUPLICATES_TABLE} (
    {_columns_sql(TICKS)},
    recorded_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY ({", ".join(LINEAGE)})
)""",
    # Holes in a symbol's consecutive trade ids: missed trades upstream. `missing` counts down as
    # late trades fill it; filled_at is set when none is missing any more.
    f"""CREATE TABLE IF NOT EXISTS {SEQUENCE_GAPS_TABLE} (
    topic text NOT NULL,
    kafka_partition integer NOT NULL,
    exchange text NOT NULL,
    symbol text NOT NULL,
    id_prefix text NOT NULL,
    from_id bigint NOT NULL,
    to_id bigint NOT NULL,
    missing bigint NOT NULL,
    first_seen_at timestamptz NOT NULL,
    kafka_offset bigint NOT NULL,
    filled_at timestamptz,
    recorded_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (topic, kafka_partition, exchange, symbol, id_prefix, from_id)
)""",
    f"""CREATE TABLE IF NOT EXISTS {TRADE_STATE_TABLE} (
    topic text NOT NULL,
    kafka_partition integer NOT NULL,
    next_offset bigint NOT NULL,
    state bytea NOT NULL,
    saved_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (topic, kafka_partition, next_offset)
)""",
    # Messages (or single trades of a frame) that yielded no valid tick, with the bytes as read.
    f"""CREATE TABLE IF NOT EXISTS {REJECTS_TABLE} (
    kafka_partition integer NOT NULL,
    kafka_offset bigint NOT NULL,
    tick_index integer NOT NULL,
    feed text NOT NULL,
    reason text NOT NULL,
    raw bytea,
    kafka_timestamp_ms bigint,
    rejected_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (kafka_partition, kafka_offset, tick_index)
)""",
]
# Columns a release added to prices_raw (nullable): an older table gains them with ALTER TABLE.
ADDED_COLUMNS = ("trade_id", "kafka_time")
# Created after the tables' columns are checked (an old table may lack trade_time).
PG_INDEXES = [f"CREATE INDEX IF NOT EXISTS {PRICES_TABLE}_symbol_time ON {PRICES_TABLE} (symbol, trade_time)"]
