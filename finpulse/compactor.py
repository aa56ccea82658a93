"""Background compaction while `finpulse ingest` runs: small Delta files are packed without a human.

A thread of the supervisor (not of a worker, so no ingest commit waits for it) asks the Delta sink
every FINPULSE_AUTO_COMPACT_EVERY_S seconds whether FINPULSE_AUTO_COMPACT_FILES small files piled
up, and compacts them if so. It first claims the table (sinks/delta_compaction.py): while another
host's compactor or a `finpulse maintain` holds it, this check is skipped. A compaction that loses a
commit race to the workers is retried by delta-rs, and failing that, at the next check; it never
touches a position (`txn`), so it can neither lose nor duplicate one.
"""

from __future__ import annotations

import logging
import threading

from finpulse.config import Settings
from finpulse.errors import FinpulseError
from finpulse.sinks.delta import DeltaSink
from finpulse.sinks.delta_maintenance import TARGET_FILE_BYTES

log = logging.getLogger("finpulse.compactor")


class Compactor:
    def __init__(self, settings: Settings):
        self.settings = settings
        self.compactions = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="compactor", daemon=True)

    @classmethod
    def start_if_enabled(cls, settings: Settings) -> Compactor | None:
        if settings.auto_compact_files <= 0 or DeltaSink.name not in settings.sink_names:
            return None
        compactor = cls(settings)
        compactor._thread.start()
        return compactor

    def _run(self) -> None:
        sink = DeltaSink.from_settings(self.settings)
        try:
            while not self._stop.wait(self.settings.auto_compact_every_s):
                try:
                    done = sink.compact_if_needed(self.settings.auto_compact_files, TARGET_FILE_BYTES)
                except FinpulseError as exc:  # retried at the next check; ingest goes on
                    log.warning("background compaction skipped: %s", exc)
                    continue
                if done:
                    self.compactions += 1
                    log.info(
                        "background compaction: %d small files packed into %d in %d date partitions",
                        done["files_removed"],
                        done["files_added"],
                        done["partitions"],
                    )
        finally:
            sink.close()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=60)
