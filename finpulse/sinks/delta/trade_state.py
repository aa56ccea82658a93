"""Snapshots of the trade windows (finpulse/dedup) kept beside the Delta table, for a deployment
whose only sink is Delta: files under _finpulse/trade-windows/p<partition>/ in the table's location,
named by the offset they were taken before. No Delta reader sees them (a commit names none), and
vacuum leaves them alone (it skips folders whose name starts with "_", as it does _delta_log).

Kept: the newest KEEP snapshots per partition, and the newest one of each hour of the last day
(replay and verify of older ranges start from those); the rest are deleted as new ones are saved.
"""

from __future__ import annotations

import time

import pyarrow as pa
import pyarrow.parquet as pq
from pyarrow import fs as pafs

FOLDER = "_finpulse/trade-windows"
KEEP = 3
HOURLY_FOR_S = 86_400
_SUFFIX = ".window"


def _folder(partition: int) -> str:
    return f"{FOLDER}/p{int(partition)}"


def _listing(fs: pafs.FileSystem, partition: int) -> list[tuple[int, pafs.FileInfo]]:
    """(offset, file) of each snapshot of `partition`, newest first."""
    found = []
    for info in fs.get_file_info(pafs.FileSelector(_folder(partition), allow_not_found=True)):
        name = info.base_name
        if info.type == pafs.FileType.File and name.endswith(_SUFFIX) and name[: -len(_SUFFIX)].isdigit():
            found.append((int(name[: -len(_SUFFIX)]), info))
    return sorted(found, key=lambda f: f[0], reverse=True)


def save(fs: pafs.FileSystem, partition: int, next_offset: int, state: bytes) -> None:
    """A one-row Parquet file holding `state`: the way every file of the table is written (the
    object stores' streams take Parquet writers, not raw bytes)."""
    path = f"{_folder(partition)}/{next_offset:020d}{_SUFFIX}"
    with fs.open_output_stream(path) as out:
        pq.write_table(pa.table({"state": pa.array([state], pa.large_binary())}), out)
    _prune(fs, partition)


def load(fs: pafs.FileSystem, partition: int, at_most: int) -> tuple[int, bytes] | None:
    for offset, info in _listing(fs, partition):
        if offset <= at_most:
            with fs.open_input_file(info.path) as f:
                return offset, pq.read_table(f).column("state")[0].as_py()
    return None


def _prune(fs: pafs.FileSystem, partition: int) -> None:
    now, hours = time.time(), set()
    for i, (_, info) in enumerate(_listing(fs, partition)):
        if i < KEEP:
            continue
        mtime = info.mtime.timestamp() if info.mtime is not None else now
        hour = int(mtime // 3600)
        if now - mtime < HOURLY_FOR_S and hour not in hours:
            hours.add(hour)
            continue
        fs.delete_file(info.path)
