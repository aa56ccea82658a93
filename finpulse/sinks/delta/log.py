"""One Delta table handle kept fresh, and the versions of its app transactions (`txn`: partition
positions, the topic's id and name, the compaction claim) as of that handle's version.

delta-rs's `transaction_version(app_id)` reads the log every time it is called: commit files from
the newest back until it finds the app id, up to the last checkpoint (100 commits). The committer
asks for every partition it commits, every second, and a drain or a status for each partition: on
Azure that is hundreds of GETs a second (Azurite, which leaks a file handle for each read it is
not allowed to finish, runs out of them within minutes). Here each new commit is read once, when
the handle moves past it, and its `txn` actions update what is known; only an app id never seen
costs one `transaction_version` call.
"""

from __future__ import annotations

import json

from deltalake import DeltaTable
from pyarrow import fs as pafs

from finpulse.sinks.delta import files

# Past this many new commits since the last refresh, the known versions are dropped and asked
# again (one transaction_version per app id) rather than read commit by commit.
MAX_TAIL = 200


class TableLog:
    def __init__(self, uri: str, storage_options: dict[str, str]):
        self.uri, self.storage_options = uri, storage_options
        self._table: DeltaTable | None = None
        self._fs: pafs.FileSystem | None = None
        self._known: dict[str, int | None] = {}  # app id -> its version, as of self._version
        self._version = -1

    def table(self) -> DeltaTable:
        """The table at its latest version (DeltaError / OSError when the log cannot be read)."""
        if self._table is None:
            self._table = DeltaTable(self.uri, storage_options=self.storage_options)
            self._known, self._version = {}, self._table.version()
            return self._table
        self._table.update_incremental()
        version = self._table.version()
        if version != self._version:
            try:
                if not self._version < version <= self._version + MAX_TAIL:
                    raise LookupError("too far behind: ask again")
                for v in range(self._version + 1, version + 1):
                    for txn in self._txns(v):
                        self._known[txn["appId"]] = int(txn["version"])
            except (LookupError, OSError, ValueError):  # a commit gone (log clean-up) or unreadable
                self._known = {}
            self._version = version
        return self._table

    def txn(self, app_id: str) -> int | None:
        """The version of `app_id`'s latest `txn` in the table as last refreshed (None: never)."""
        if app_id not in self._known:
            assert self._table is not None, "refresh the table first"
            self._known[app_id] = self._table.transaction_version(app_id)
        return self._known[app_id]

    def reset(self) -> None:
        """Forget the handle: the next `table()` reads the log afresh (after an error or a lost race)."""
        self._table = None
        self._known, self._version = {}, -1

    def _txns(self, version: int) -> list[dict]:
        if self._fs is None:
            self._fs = files.filesystem(self.uri, self.storage_options)
        with self._fs.open_input_stream(f"_delta_log/{version:020d}.json") as stream:
            lines = stream.read().decode().splitlines()
        return [action["txn"] for line in lines if line and "txn" in (action := json.loads(line))]
