"""PostgreSQL's tables: their names and DDL, derived from schema.TICKS.

prices_raw is the hot store: partitioned by day on trade_time (UTC), one partition per day named
prices_raw_pYYYYMMDD, and a default partition that takes any tick whose day has none yet (a late
tick, a clock error upstream), so a write is never refused for its day. `finpulse init` and
`finpulse maintain` keep partitions FINPULSE_PG_DAYS_AHEAD days ahead and move what the default
partition caught into its day (days.py); retention drops whole days the Delta table holds
(finpulse/retention.py). prices_1m holds 1-minute OHLCV bars, updated in the transaction of the
rows (bars.py).
"""

from __future__ import annotations

import datetime as dt

import pyarrow as pa

from finpulse.schema import LINEAGE, TICKS

PRICES_TABLE = "prices_raw"
DEFAULT_PARTITION = f"{PRICES_TABLE}_default"
OFFSETS_TABLE = "finpulse_offsets"
REJECTS_TABLE = "prices_rejected"
GAPS_TABLE = "finpulse_gaps"  # offsets lost with --allow-data-loss (not trades: see SEQUENCE_GAPS_TABLE)
DUPLICATES_TABLE = "prices_duplicates"  # --keep-duplicates: each re-sent trade removed, as a row
DUPLICATE_COUNTS_TABLE = "finpulse_duplicates"  # re-sent trades removed, per partition and exchange
SEQUENCE_GAPS_TABLE = "finpulse_sequence_gaps"  # trade ids missing from a symbol's numbering
TRADE_STATE_TABLE = "finpulse_trade_windows"  # snapshots of the trade windows (finpulse/dedup)
BARS_TABLE = "prices_1m"  # 1-minute OHLCV bars per (symbol, exchange)
RETENTION_TABLE = "finpulse_retention"  # days of prices_raw dropped by retention, safe in Delta
MIGRATION_TABLE = "finpulse_migration"  # present while `finpulse migrate` converts prices_raw
MIGRATING_TABLE = f"{PRICES_TABLE}_migrating"  # the partitioned table `migrate` fills

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


def columns_sql(schema: pa.Schema = TICKS) -> str:
    return ",\n    ".join(f"{f.name} {pg_type(f.type)}{'' if f.nullable else ' NOT NULL'}" for f in schema)


# A partitioned table's primary key must hold its partition key: lineage, then trade_time (a key
# still names one row: a message's tick has one trade time).
PRICES_KEY = (*LINEAGE, "trade_time")


def prices_ddl(name: str = PRICES_TABLE) -> str:
    return f"""CREATE TABLE IF NOT EXISTS {name} (
    {columns_sql()},
    PRIMARY KEY ({", ".join(PRICES_KEY)})
) PARTITION BY RANGE (trade_time)"""


# What every release before day partitions made: one table, keyed by lineage (`finpulse migrate`
# converts it; tests and benchmarks build it to compare).
LEGACY_PRICES_DDL = f"""CREATE TABLE IF NOT EXISTS {PRICES_TABLE} (
    {columns_sql()},
    PRIMARY KEY ({", ".join(LINEAGE)})
)"""


# Indexes are the price of queries: the primary key proves lineage is unique (and lets replay
# find what is missing); (symbol, trade_time) serves "symbol X between t1 and t2". On the
# partitioned table each day has its own. Their cost to the ingest rate is measured in bench/.
def index_ddl(table: str = PRICES_TABLE) -> str:
    return f"CREATE INDEX IF NOT EXISTS {table}_symbol_time ON {table} (symbol, trade_time)"


def day_name(day: dt.date) -> str:
    return f"{PRICES_TABLE}_p{day:%Y%m%d}"


def day_bounds(day: dt.date) -> tuple[str, str]:
    """The partition bound of a day: [00:00 UTC, the next day's 00:00 UTC)."""
    return f"{day:%Y-%m-%d} 00:00:00+00", f"{day + dt.timedelta(days=1):%Y-%m-%d} 00:00:00+00"


OTHER_DDL = [
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
    {columns_sql()},
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
    # 1-minute bars, exactly once: updated with the rows they count, in the same transaction. The
    # lineage of the first and last trade breaks ties of trade time, as schema.LAST_ORDER does.
    f"""CREATE TABLE IF NOT EXISTS {BARS_TABLE} (
    symbol text NOT NULL,
    exchange text,
    minute timestamptz NOT NULL,
    open double precision NOT NULL,
    high double precision NOT NULL,
    low double precision NOT NULL,
    close double precision NOT NULL,
    volume double precision NOT NULL,
    trades bigint NOT NULL,
    vwap double precision,
    notional double precision NOT NULL,
    first_trade_time timestamptz NOT NULL,
    last_trade_time timestamptz NOT NULL,
    first_partition integer NOT NULL,
    first_offset bigint NOT NULL,
    first_tick integer NOT NULL,
    last_partition integer NOT NULL,
    last_offset bigint NOT NULL,
    last_tick integer NOT NULL
)""",
    # NULLS NOT DISTINCT: one bar per minute for ticks without an exchange too (PostgreSQL 15+)
    f"CREATE UNIQUE INDEX IF NOT EXISTS {BARS_TABLE}_key ON {BARS_TABLE} (symbol, exchange, minute) NULLS NOT DISTINCT",
    f"""CREATE TABLE IF NOT EXISTS {RETENTION_TABLE} (
    day date PRIMARY KEY,
    rows bigint NOT NULL,
    dropped_at timestamptz NOT NULL DEFAULT now()
)""",
]
