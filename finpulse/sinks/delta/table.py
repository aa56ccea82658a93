"""The Delta table itself: its schema and partitioning (derived from schema.TICKS), its creation and
the check of an existing one, the `txn` application ids FinPulse keeps in it, and the one way a
commit is made. Every module of the Delta sink commits through `commit`.

    app id                          version
    finpulse:<topic>:<partition>    the partition's position: the next offset to read
    finpulse-topic-id:<topic>       fingerprint of the topic's Kafka id (a recreated topic differs)
    finpulse-table-topic            fingerprint of the name of the topic the table belongs to
    finpulse-compaction             until when (epoch ms) a compactor holds the table (compaction.py)
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc
from deltalake import CommitProperties, DeltaTable, Transaction
from deltalake.exceptions import DeltaError, TableNotFoundError
from deltalake.transaction import AddAction

from finpulse.batch import Offsets
from finpulse.errors import SinkRejected
from finpulse.schema import TICKS
from finpulse.sinks.delta.errors import unavailable

log = logging.getLogger(__name__)

# Several writers append to one table; delta-rs rebases a commit that lost a race onto the winner
# this many times before giving up (appends never truly conflict, so a few rounds always suffice).
MAX_COMMIT_RETRIES = 20


@dataclass(frozen=True)
class PartitionColumn:
    """A column the table is partitioned by, and how it is derived from a tick row."""

    name: str
    type: pa.DataType
    derive: Callable[[pa.Table], pa.Array]


# The table's partitioning, in order: the trade's UTC date. Changing it changes this tuple only
# (and what already exists is refused by check_schema: a table's partitioning is fixed).
PARTITIONING = (PartitionColumn("trade_date", pa.date32(), lambda t: pc.cast(t.column("trade_time"), pa.date32())),)
PARTITION_BY = [c.name for c in PARTITIONING]
DELTA = pa.schema([*TICKS, *(pa.field(c.name, c.type, nullable=False) for c in PARTITIONING)])


def with_partition_columns(ticks: pa.Table) -> pa.Table:
    """Tick rows (schema.TICKS) with the partition columns appended, in the table's schema."""
    for column in PARTITIONING:
        ticks = ticks.append_column(column.name, column.derive(ticks))
    return ticks.cast(DELTA)


def app_id(topic: str, partition: int) -> str:
    """The `txn` application id of one Kafka partition; its version is the next offset."""
    return f"finpulse:{topic}:{partition}"


def topic_app_id(topic: str) -> str:
    """The `txn` application id whose version is the fingerprint of the topic's Kafka id."""
    # Its own prefix: tools that read `finpulse:<topic>:<partition>` as positions never meet it.
    return f"finpulse-topic-id:{topic}"


OWNER_APP_ID = "finpulse-table-topic"


def commit(
    table: DeltaTable,
    adds: list[dict] | None = None,
    txns: dict[str, int] | None = None,
    metadata: dict[str, str] | None = None,
) -> None:
    """One commit on top of the version `table` has loaded: the data files `adds` (files.write_files)
    and the `txn` versions `txns`, with `metadata` in its commit info. DeltaError when it fails;
    CommitFailedError when another commit naming one of the same app ids came first."""
    table.create_write_transaction(
        [AddAction(**a) for a in adds or []],
        mode="append",
        schema=DELTA,
        partition_by=PARTITION_BY,
        commit_properties=CommitProperties(
            app_transactions=[Transaction(a, v) for a, v in (txns or {}).items()],
            custom_metadata=metadata,
            max_commit_retries=MAX_COMMIT_RETRIES,
        ),
    )


def position_txns(
    topic: str, positions: Offsets, topic_key: int | None = None, stored_key: int | None = None
) -> dict[str, int]:
    """The `txn` versions of a write: each partition's new position, and the topic's fingerprint
    when the table does not hold it (`stored_key`) already. Every commit naming an app id conflicts
    with every other that does (delta-rs does not rebase them): were the topic's in every commit,
    two `ingest` processes on disjoint partitions would collide."""
    txns = {app_id(topic, p): n for p, n in sorted(positions.items())}
    if topic_key is not None and stored_key != topic_key:
        txns[topic_app_id(topic)] = topic_key
    return txns


# Delta's names for the Arrow types of our schema.
_DELTA_TYPES = {
    pa.string(): "string",
    pa.float64(): "double",
    pa.int64(): "long",
    pa.int32(): "integer",
    pa.bool_(): "boolean",
    pa.timestamp("us", tz="UTC"): "timestamp",
    pa.date32(): "date",
}


def check_schema(table: DeltaTable, uri: str) -> None:
    """SinkRejected when an existing table cannot take our rows (a write adds missing columns)."""
    parts = table.metadata().partition_columns
    if parts != PARTITION_BY:
        raise SinkRejected(
            f"the Delta table at {uri} is partitioned by {parts or 'nothing'}, FinPulse writes "
            f"partitions by {', '.join(PARTITION_BY)}: point DELTA_TABLE_URI at a new location"
        )
    have = {f.name: getattr(f.type, "type", str(f.type)) for f in table.schema().fields}
    wrong = [
        f"{f.name} is {have[f.name]}, not {_DELTA_TYPES[f.type]}"
        for f in DELTA
        if f.name in have and have[f.name] != _DELTA_TYPES[f.type]
    ]
    if wrong:
        raise SinkRejected(f"the Delta table at {uri} cannot take FinPulse rows: {'; '.join(wrong)}")


def add_missing_columns(table: DeltaTable, uri: str) -> list[str]:
    """Schema evolution: the nullable columns of DELTA an older table lacks (schema.ADDED_COLUMNS)
    are added, so its old rows read them as null; the names added. A commit of its own, made once."""
    from deltalake.schema import Field, PrimitiveType

    have = {f.name for f in table.schema().fields}
    missing = [f for f in DELTA if f.name not in have]
    if missing:
        not_null = [f.name for f in missing if not f.nullable]
        if not_null:
            raise SinkRejected(
                f"the Delta table at {uri} lacks the columns {not_null}: point DELTA_TABLE_URI elsewhere"
            )
        table.alter.add_columns([Field(f.name, PrimitiveType(_DELTA_TYPES[f.type]), nullable=True) for f in missing])
    return [f.name for f in missing]


def create_table(uri: str, storage_options: dict[str, str]) -> bool:
    """Create the Delta table if absent (True when this call created it); check an existing one and
    add the columns a release added to it."""
    try:
        table = DeltaTable(uri, storage_options=storage_options)
        check_schema(table, uri)
        added = add_missing_columns(table, uri)
        if added:
            log.info("Delta table %s: added the columns %s (older rows read them as null)", uri, ", ".join(added))
        return False
    except TableNotFoundError:
        pass
    except (DeltaError, OSError) as exc:
        raise unavailable(uri, "opening it", exc) from None
    try:
        DeltaTable.create(
            uri, schema=DELTA, partition_by=PARTITION_BY, mode="ignore", storage_options=storage_options, name="prices"
        )
    except (DeltaError, OSError) as exc:
        raise unavailable(uri, "creating it", exc) from None
    return True
