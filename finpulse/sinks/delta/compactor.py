"""Background compaction while `finpulse ingest` runs: small Delta files are packed without a human.

A thread of the supervisor (not of a worker, so no ingest commit waits for it) asks the Delta sink
every FINPULSE_AUTO_COMPACT_EVERY_S seconds whether FINPULSE_AUTO_COMPACT_FILES small files piled
up, and compacts them if so. It first claims the table (compaction.py): while another
host's compactor or a `finpulse maintain` holds it, this check is skipped. A compaction that loses a
commit race to the workers is retried by delta-rs, and failing that, at the next check; it never
touches a position (`txn`), so it can neither lose nor duplicate one.
"""

from __future__ import annotations

import logging
import threading

from deltalake.exceptions import DeltaError

from finpulse.config import Settings
from finpulse.sinks.delta import compaction
from finpulse.sinks.delta.azure import storage_options
from finpulse.sinks.delta.errors import unavailable
from finpulse.sinks.delta.log import TableLog
from finpulse.sinks.delta.maintenance import TARGET_FILE_BYTES

log = logging.getLogger("finpulse.compactor")  # the name operators filter on


class Compactor:
    name = "compactor"

    def __init__(self, settings: Settings):
        self.settings = settings
        self.compactions = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="compactor", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        s = self.settings
        uri, options = s.delta_uri, storage_options(s)
        log_ = TableLog(uri, options)
        try:
            while not self._stop.wait(s.auto_compact_every_s):
                try:
                    table = log_.table()
                    done = compaction.compact_if_needed(table, uri, options, s.auto_compact_files, TARGET_FILE_BYTES)
                except (DeltaError, OSError) as exc:  # retried at the next check; ingest goes on
                    log_.reset()
                    log.warning("background compaction skipped: %s", unavailable(uri, "compacting", exc))
                    continue
                if done:
                    self.compactions += 1
                    log.info(
                        "background compaction: %d small files packed into %d in %d date partitions%s",
                        done["files_removed"],
                        done["files_added"],
                        done["partitions"],
                        f"; {done['duplicates_removed']} doubled rows removed" if done["duplicates_removed"] else "",
                    )
        finally:
            log_.reset()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=60)
