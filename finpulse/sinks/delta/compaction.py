"""Compaction of a Delta table by one compactor at a time, across processes and hosts.

delta-rs 1.6.4 and later let two compactions of one snapshot both commit: each removes the same
small files and adds its own compacted copy of their rows, so every compacted row is doubled (the
background compactors of two ingest hosts, two `finpulse maintain`, or one of each). delta-rs
checks nothing that stops it, and its OPTIMIZE commit cannot carry an app transaction that would.

So a compactor first claims the table: a commit whose only action is the `txn`
`finpulse-compaction`, its version the claim's expiry (epoch ms). Two claims made from one
snapshot name the same app id, and delta-rs refuses the second (a concurrent transaction); a claim
made later sees an unexpired expiry and backs off. The holder renews the claim every minute while
it compacts and ends it when done. Only a holder that froze past its expiry (the claim lapses and
another compactor takes over) can still commit a second compaction; it then finds the other one in
the log and removes the doubled rows at once (`remove_duplicates`, which `verify --repair` uses too).
Positions (`txn` of the partitions) are never touched.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import socket
import threading
import time
import uuid
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from deltalake import CommitProperties, DeltaTable, write_deltalake
from deltalake.exceptions import CommitFailedError

from finpulse.backoff import Backoff
from finpulse.schema import LINEAGE
from finpulse.sinks.delta import files
from finpulse.sinks.delta.table import MAX_COMMIT_RETRIES, commit

log = logging.getLogger(__name__)

LEASE_APP_ID = "finpulse-compaction"
# A claim lasts this long unless renewed: far longer than a renewal interval, so only a holder
# that is frozen (SIGSTOP, a paused VM) loses it. Expiries are wall-clock times: hosts share no
# other clock, and NTP keeps theirs within a fraction of this.
LEASE_S = 600.0
RENEW_EVERY_S = 60.0
# Commit metadata naming the claim a compaction commit was made under.
TOKEN_KEY = "finpulse.compaction"
HOLDER_KEY = "finpulse.compaction.holder"
# A compactor that finds the table claimed looks again after 1 s, doubling to 10 s.
WAIT_FIRST_S = 1.0
WAIT_MAX_S = 10.0


def _now_ms() -> int:
    return int(time.time() * 1000)


@dataclass
class Lease:
    """A claim on compacting one table: its token, expiry and the version that recorded it."""

    uri: str
    storage_options: dict[str, str]
    token: str
    until_ms: int
    version: int
    lost: bool = False  # a renewal found the claim taken over: it lapsed while this holder was frozen


def holder(table: DeltaTable) -> int | None:
    """Until when (epoch ms) the current claim runs, or None when nobody holds the table."""
    until = table.transaction_version(LEASE_APP_ID)
    return until if until is not None and until > _now_ms() else None


def _stamp(table: DeltaTable, until_ms: int, token: str, who: str) -> None:
    """A commit of the claim `txn` alone (CommitFailedError when another claim was made meanwhile)."""
    commit(table, txns={LEASE_APP_ID: until_ms}, metadata={TOKEN_KEY: token, HOLDER_KEY: who})


def claim(
    table: DeltaTable, uri: str, storage_options: dict[str, str], who: str, lease_s: float = LEASE_S
) -> Lease | None:
    """Claim the table for one compaction; None when another compactor holds it or claimed it first.
    `table` is refreshed to the claim's version: compact from there."""
    table.update_incremental()
    if holder(table) is not None:
        return None
    token = uuid.uuid4().hex
    until = _now_ms() + int(lease_s * 1000)
    try:
        _stamp(table, until, token, who)
    except CommitFailedError:  # another claim from the same snapshot won
        return None
    table.update_incremental()
    return Lease(uri, storage_options, token, until, table.version())


def renew(lease: Lease, lease_s: float = LEASE_S) -> bool:
    """Extend the claim; False (and `lease.lost`) when it lapsed and another compactor took it."""
    table = DeltaTable(lease.uri, storage_options=lease.storage_options)
    if table.transaction_version(LEASE_APP_ID) != lease.until_ms:
        lease.lost = True
        return False
    until = _now_ms() + int(lease_s * 1000)
    try:
        _stamp(table, until, lease.token, "renewal")
    except CommitFailedError:
        lease.lost = True
        return False
    lease.until_ms = until
    return True


def release(lease: Lease) -> None:
    """End the claim (expiry 0), unless another compactor holds the table by now."""
    table = DeltaTable(lease.uri, storage_options=lease.storage_options)
    if table.transaction_version(LEASE_APP_ID) == lease.until_ms:
        try:
            _stamp(table, 0, lease.token, "release")
        except CommitFailedError:
            pass  # someone claimed it meanwhile: it is theirs


class Renewing:
    """Renews `lease` every RENEW_EVERY_S on a thread of its own while the block runs, then releases it."""

    def __init__(self, lease: Lease, every_s: float = RENEW_EVERY_S):
        self.lease, self.every_s = lease, every_s
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, name="compaction-lease", daemon=True)

    def __enter__(self) -> Lease:
        self._thread.start()
        return self.lease

    def _run(self) -> None:
        while not self._done.wait(self.every_s):
            try:
                if not renew(self.lease):
                    log.error("the compaction claim lapsed and another compactor took it over")
                    return
            except Exception as exc:  # a store blip: the next renewal tries again, well within the lease
                log.warning("renewing the compaction claim failed: %s", exc)

    def __exit__(self, *exc) -> None:
        self._done.set()
        self._thread.join(30)
        try:
            release(self.lease)
        except Exception as error:  # it lapses by itself
            log.warning("releasing the compaction claim failed (it expires by itself): %s", error)


def compact_if_needed(
    table: DeltaTable, uri: str, storage_options: dict[str, str], small_files: int, target_bytes: int
) -> dict[str, int] | None:
    """Background compaction: compact when at least `small_files` small files piled up and no other
    process compacts the table (None: nothing was done). Reads no history: it runs every minute."""
    from finpulse.sinks.delta import maintenance

    if maintenance.small_files(table) < small_files:
        return None
    return compact_exclusively(table, uri, storage_options, target_bytes)


def compact_exclusively(
    table: DeltaTable, uri: str, storage_options: dict[str, str], target_bytes: int, wait_s: float = 0.0
) -> dict[str, int] | None:
    """Claim the table, compact it, end the claim. While another compactor holds it, wait up to
    `wait_s` seconds for it to finish (then compact what is left); None if it still holds it."""
    who = f"{socket.gethostname()}:{os.getpid()}"
    deadline = time.monotonic() + wait_s
    backoff = Backoff(WAIT_FIRST_S, WAIT_MAX_S)
    while (lease := claim(table, uri, storage_options, who)) is None:
        left = deadline - time.monotonic()
        if left <= 0:
            return None
        until = holder(table)
        log.info(
            "another process is compacting %s%s; waiting for it",
            uri,
            ""
            if until is None
            else f" (its claim runs until {dt.datetime.fromtimestamp(until / 1000, dt.UTC):%H:%M:%S} UTC)",
        )
        time.sleep(min(backoff.next_delay(), left))
    with Renewing(lease):
        return compact(table, lease, target_bytes)


def compact(table: DeltaTable, lease: Lease, target_bytes: int) -> dict[str, int]:
    """Bin-pack each date partition's files toward `target_bytes` under `lease` (from `claim`);
    what was removed and added, and the doubled rows removed should the claim have lapsed."""
    metrics = table.optimize.compact(
        target_size=target_bytes,
        max_concurrent_tasks=2,
        commit_properties=CommitProperties(
            custom_metadata={TOKEN_KEY: lease.token}, max_commit_retries=MAX_COMMIT_RETRIES
        ),
    )
    done = {
        "files_removed": int(metrics.get("numFilesRemoved", 0)),
        "files_added": int(metrics.get("numFilesAdded", 0)),
        "partitions": int(metrics.get("partitionsOptimized", 0)),
        "duplicates_removed": 0,
    }
    if done["files_removed"]:
        done["duplicates_removed"] = undo_double_compaction(table, lease)
    return done


def undo_double_compaction(table: DeltaTable, lease: Lease) -> int:
    """After a compaction: when another compactor's OPTIMIZE commit landed since `lease` was
    claimed (only possible once the claim lapsed), remove the rows both compactions copied."""
    table.update_incremental()
    since = table.version() - lease.version
    ours: list[int] = []
    theirs: list[int] = []
    for entry in table.history(since) if since > 0 else []:
        if entry.get("operation") == "OPTIMIZE" and entry["version"] > lease.version:
            (ours if entry.get(TOKEN_KEY) == lease.token else theirs).append(entry["version"])
    if not ours or not theirs:
        return 0
    fs = files.filesystem(lease.uri, lease.storage_options)
    removed_by_them = {a["path"] for v in theirs for a in _actions(fs, v, "remove")}
    doubled = [a for v in ours for a in _actions(fs, v, "remove") if a["path"] in removed_by_them]
    if not doubled:
        return 0
    boxes = [_box(a) for v in ours for a in _actions(fs, v, "add")]
    log.error(
        "a compaction ran while this one held the table (its claim lapsed): %d files were compacted "
        "twice; removing the doubled rows",
        len(doubled),
    )
    return remove_duplicates(table, _duplicated_spans(table, [b for b in boxes if b is not None]))


def _actions(fs, version: int, kind: str) -> list[dict]:
    with fs.open_input_stream(f"_delta_log/{version:020d}.json") as stream:
        lines = stream.read().decode().splitlines()
    return [action[kind] for line in lines if line and kind in (action := json.loads(line))]


def _box(add: dict) -> tuple[int, int, int, int] | None:
    """(lowest partition, highest partition, lowest offset, highest offset) of an added file's rows."""
    stats = json.loads(add.get("stats") or "{}")
    lo, hi = stats.get("minValues", {}), stats.get("maxValues", {})
    try:
        return lo["kafka_partition"], hi["kafka_partition"], lo["kafka_offset"], hi["kafka_offset"]
    except KeyError:
        return None


def _duplicated_spans(table: DeltaTable, boxes: list[tuple[int, int, int, int]]) -> list[tuple[int, int, int]]:
    """(partition, start, end): per Kafka partition, the offsets holding every lineage key stored
    twice within `boxes`."""
    spans: dict[int, tuple[int, int]] = {}
    for p0, p1, o0, o1 in boxes:
        where = f"kafka_partition >= {p0} AND kafka_partition <= {p1} AND kafka_offset >= {o0} AND kafka_offset <= {o1}"
        keys = table.to_pyarrow_dataset(file_pruning_predicate=where).to_table(
            columns=list(LINEAGE),
            filter=(pc.field("kafka_partition") >= p0)
            & (pc.field("kafka_partition") <= p1)
            & (pc.field("kafka_offset") >= o0)
            & (pc.field("kafka_offset") <= o1),
        )
        counted = keys.group_by(list(LINEAGE)).aggregate([([], "count_all")])
        twice = counted.filter(pc.greater(counted.column("count_all"), 1))
        for p in pc.unique(twice.column("kafka_partition")).to_pylist():
            offsets = twice.filter(pc.equal(twice.column("kafka_partition"), p)).column("kafka_offset")
            start, end = pc.min(offsets).as_py(), pc.max(offsets).as_py() + 1
            if p in spans:
                start, end = min(start, spans[p][0]), max(end, spans[p][1])
            spans[p] = (start, end)
    return [(p, a, b) for p, (a, b) in sorted(spans.items())]


def remove_duplicates(table: DeltaTable, spans: list[tuple[int, int, int]]) -> int:
    """Rewrite the rows of each (partition, start, end) offset range in `spans` with every lineage
    key once: one commit that replaces exactly those rows (overwrite with a predicate), so a crash
    leaves either the old rows or the new. Returns how many rows were removed. The spans must lie
    below the positions: ingest never writes there, and a concurrent replay's insert makes this
    commit fail (CommitFailedError: try again)."""
    if not spans:
        return 0
    predicate = " OR ".join(
        f"(kafka_partition = {int(p)} AND kafka_offset >= {int(a)} AND kafka_offset < {int(b)})" for p, a, b in spans
    )
    expr = None
    for p, a, b in spans:
        part = (pc.field("kafka_partition") == p) & (pc.field("kafka_offset") >= a) & (pc.field("kafka_offset") < b)
        expr = part if expr is None else expr | part
    table.update_incremental()
    rows = table.to_pyarrow_dataset(file_pruning_predicate=predicate).to_table(filter=expr)
    numbered = rows.append_column("__row", pa.array(np.arange(rows.num_rows, dtype=np.int64)))
    first = numbered.group_by(list(LINEAGE)).aggregate([("__row", "min")]).column("__row_min")
    removed = rows.num_rows - len(first)
    if not removed:
        return 0
    unique = rows.take(pa.array(np.sort(first.to_numpy())))
    write_deltalake(
        table,
        unique,
        mode="overwrite",
        predicate=predicate,
        commit_properties=CommitProperties(
            custom_metadata={"finpulse.operation": "remove duplicates"}, max_commit_retries=MAX_COMMIT_RETRIES
        ),
    )
    return removed
