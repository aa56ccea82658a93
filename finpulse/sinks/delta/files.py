"""Delta data files written apart from their commit.

With a committer (committer.py), a worker writes the Parquet files of its rows into the
table's location itself and hands their add actions to one committer per `finpulse ingest`
process, which commits every worker's files and every partition's `txn` together. A file is
visible only once a commit names it: files of a write whose commit never happened (a crash, a
lost race) are invisible to every reader and removed by `finpulse maintain` (vacuum).

Each file carries Delta statistics (row count, and min/max/null count of the numeric lineage and
value columns) so readers can skip files by partition and offset, as with delta-rs's own writes.
"""

from __future__ import annotations

import json
import time
import uuid

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from deltalake.fs import DeltaStorageHandler
from pyarrow import fs as pafs

from finpulse.sinks.delta.table import PARTITION_BY

# Rows per Parquet row group. The writer holds a whole row group's encoded pages and encoders until
# the group is done: one group for a 150k-row write took 32 MB of Arrow memory at its peak, groups
# of 16,384 rows 2 MB, for files about 9% larger (which compaction rewrites anyway).
ROW_GROUP_ROWS = 16_384

# Columns with min/max statistics: numbers only (Delta truncates timestamp and string statistics,
# which readers then have to widen; numbers are exact).
STATS_COLUMNS = ("kafka_partition", "kafka_offset", "tick_index", "price", "size")


def filesystem(uri: str, storage_options: dict[str, str]) -> pafs.FileSystem:
    """The table's location as a pyarrow filesystem whose paths are relative to the table root."""
    return pafs.PyFileSystem(DeltaStorageHandler(uri, storage_options))


def _stats(rows: pa.Table) -> str:
    mins, maxes, nulls = {}, {}, {}
    for name in STATS_COLUMNS:
        column = rows.column(name)
        nulls[name] = column.null_count
        if column.null_count < rows.num_rows:
            bounds = pc.min_max(column)
            mins[name], maxes[name] = bounds["min"].as_py(), bounds["max"].as_py()
    return json.dumps({"numRecords": rows.num_rows, "minValues": mins, "maxValues": maxes, "nullCount": nulls})


def write_files(fs: pafs.FileSystem, rows: pa.Table) -> list[dict]:
    """Write `rows` (in the table's schema, partition columns included) as one Parquet file per
    partition; return their add actions (as dicts: they cross a process boundary)."""
    adds = []
    keys = rows.select(PARTITION_BY).group_by(PARTITION_BY, use_threads=False).aggregate([]).to_pylist()
    for key in keys:
        # one partition (the usual case): the rows themselves, not a filtered copy of them
        part = rows if len(keys) == 1 else rows.filter(_in_partition(rows, key))
        part = part.drop_columns(PARTITION_BY)
        values = {c: _partition_value(v) for c, v in key.items()}
        folder = "/".join(f"{c}={v}" for c, v in values.items())
        path = f"{folder}/part-{uuid.uuid4()}-c000.snappy.parquet"
        with fs.open_output_stream(path) as out:
            pq.write_table(part, out, compression="snappy", row_group_size=ROW_GROUP_ROWS)
            size = out.tell()
        adds.append(
            {
                "path": path,
                "size": size,
                "partition_values": values,
                "modification_time": int(time.time() * 1000),
                "data_change": True,
                "stats": _stats(part),
            }
        )
    return adds


def _in_partition(rows: pa.Table, key: dict) -> pa.ChunkedArray:
    mask = None
    for column, value in key.items():
        equal = pc.equal(rows.column(column), pa.scalar(value, rows.schema.field(column).type))
        mask = equal if mask is None else pc.and_(mask, equal)
    return mask


def _partition_value(value: object) -> str:
    """How Delta spells a partition value in a path and in an add action (dates: ISO 8601)."""
    return value.isoformat() if hasattr(value, "isoformat") else str(value)
