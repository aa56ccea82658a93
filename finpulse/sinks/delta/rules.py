"""The rules a Delta table adds to FinPulse's schema: its CHECK constraints (`delta.constraints.*`).

delta-rs checks them while writing and refuses a whole write without saying which row or which
constraint failed. So they are evaluated here the way delta-rs evaluates them (DataFusion SQL:
a row is refused when `NOT (expression)` is true): the rows are written, numbered, to a scratch
table on local disk and each constraint is asked for the numbers it refuses. A table with no
constraints costs nothing (`constraints` returns {} and no checker is made).

The scratch table lives in the temporary directory (delta-rs's SQL engine reads only Delta
tables, and its in-memory store does not outlive one handle). It holds one probe's rows at a time:
the files of earlier probes are deleted after each one. A process killed before it removed its
scratch table leaves it behind; the next checker made on this host removes it.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pyarrow as pa
from deltalake import DeltaTable, QueryBuilder, write_deltalake
from deltalake.exceptions import DeltaError, TableNotFoundError

from finpulse.sinks.delta.errors import unavailable
from finpulse.sinks.delta.table import DELTA, with_partition_columns

CONSTRAINT_PREFIX = "delta.constraints."
# The scratch table's log grows by one commit per probe; it is started afresh after this many.
FRESH_AFTER_PROBES = 500
SCRATCH_PREFIX = "finpulse-delta-rules-"


def constraints(uri: str, storage_options: dict[str, str]) -> dict[str, str]:
    """Name -> SQL expression of each CHECK constraint on the table ({} if it has none or is absent)."""
    try:
        config = DeltaTable(uri, storage_options=storage_options).metadata().configuration
    except TableNotFoundError:
        return {}
    except (DeltaError, OSError) as exc:
        raise unavailable(uri, "reading its constraints", exc) from None
    return {k.removeprefix(CONSTRAINT_PREFIX): v for k, v in sorted(config.items()) if k.startswith(CONSTRAINT_PREFIX)}


ROW = "__finpulse_row"


class DeltaRules:
    """Which rows the table's constraints refuse, asked of delta-rs's SQL engine on a scratch table."""

    sink = "delta"

    def __init__(self, checks: dict[str, str]):
        self.checks = checks
        self.described = [f"CHECK {name}: {expr}" for name, expr in checks.items()]
        self._dir: str | None = None
        self._table: DeltaTable | None = None
        self._probes = 0

    def _scratch(self) -> DeltaTable:
        if self._table is None or self._probes >= FRESH_AFTER_PROBES:
            self.close()
            _remove_orphans()
            self._dir = tempfile.mkdtemp(prefix=f"{SCRATCH_PREFIX}{os.getpid()}-")
            self._table = DeltaTable.create(self._dir, schema=DELTA.append(pa.field(ROW, pa.int64())))
            self._probes = 0
        return self._table

    def refused(self, ticks: pa.Table) -> dict[int, str]:
        """Index in `ticks` -> why, for every row some constraint refuses."""
        if not ticks.num_rows:
            return {}
        table = self._scratch()
        self._probes += 1
        rows = with_partition_columns(ticks)
        numbered = rows.append_column(ROW, pa.array(range(rows.num_rows), pa.int64()))
        write_deltalake(table, numbered, mode="overwrite")
        _drop_replaced_files(table)
        query = QueryBuilder().register("probe", table)
        found: dict[int, list[str]] = {}
        for name, expr in self.checks.items():
            hits = pa.table(query.execute(f'SELECT "{ROW}" FROM probe WHERE NOT ({expr})').read_all())
            for i in hits.column(ROW).to_pylist():
                found.setdefault(i, []).append(f"{name} ({expr})")
        return {i: f"the Delta table's constraint refuses the tick: {'; '.join(names)}" for i, names in found.items()}

    def close(self) -> None:
        self._table = None
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None


def _drop_replaced_files(table: DeltaTable) -> None:
    """Delete the data files earlier probes left (each probe overwrites the last one's rows)."""
    live = {Path(uri.removeprefix("file://")).name for uri in table.file_uris()}
    for old in Path(table.table_uri.removeprefix("file://")).glob("*.parquet"):
        if old.name not in live:
            old.unlink(missing_ok=True)


def _remove_orphans() -> None:
    """Scratch tables of processes that are gone (killed before they cleaned up) on this host."""
    for path in Path(tempfile.gettempdir()).glob(f"{SCRATCH_PREFIX}*"):
        try:
            pid = int(path.name.removeprefix(SCRATCH_PREFIX).split("-", 1)[0])
        except ValueError:
            continue
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            shutil.rmtree(path, ignore_errors=True)
        except PermissionError:
            pass  # another user's live process
