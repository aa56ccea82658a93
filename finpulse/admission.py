"""Admission: rows are held against every sink's own rules before any sink writes them.

A sink's table can refuse rows that FinPulse decoded as valid: a CHECK constraint on the Delta
table, a CHECK, domain or trigger on prices_raw. If each sink dealt with that alone, one would
store a row the other refused, and the two would differ for good. Instead every path that writes
or checks rows (each ingest lane, replay, verify) passes them through the same admission first:
a row any chosen sink's rules refuse becomes a reject (feed = that sink, the reason naming the
rule, the row as JSON for raw bytes) and reaches no sink as a tick. PostgreSQL keeps such rejects;
Delta skips them. The outcome depends only on the rows and the rules, so every path agrees.

Rules are read when first needed and again every RULES_TTL_S or after a sink refused rows the
admission let through (`reload`): a rule added while ingest runs applies within a minute.
Tables without such rules cost nothing.
"""

from __future__ import annotations

import time
from dataclasses import replace

import numpy as np
import pyarrow as pa

from finpulse import sinks
from finpulse.batch import TickBatch
from finpulse.checks import refused_rows
from finpulse.config import Settings
from finpulse.errors import ServiceUnavailable
from finpulse.sinks import KINDS

RULES_TTL_S = 60.0
RULES_RETRY_S = 5.0  # a refresh that found a sink down is tried again this soon


class Admission:
    def __init__(self, settings: Settings, sink_names: tuple[str, ...] | None = None):
        self.settings = settings
        self.sink_names = sink_names or sinks.chosen(settings)
        self._rules: list | None = None
        self._read_at = 0.0

    def rules(self) -> list:
        """Each chosen sink's rule checker (sinks without rules have none); re-read when stale."""
        if self._rules is None or time.monotonic() - self._read_at > RULES_TTL_S:
            try:
                fresh = [r for name in self.sink_names if (r := KINDS[name].rules(self.settings)) is not None]
            except ServiceUnavailable:
                if self._rules is None:
                    raise  # never read: the caller waits for the sink
                # a sink that is down keeps its last rules for now, so the other sink's lane goes on
                self._read_at = time.monotonic() - RULES_TTL_S + RULES_RETRY_S
                return self._rules
            self.close()
            self._rules, self._read_at = fresh, time.monotonic()
        return self._rules

    def reload(self) -> None:
        """Read the rules again before the next batch (a sink refused rows admitted under the old ones)."""
        self.close()

    def refused(self, ticks: pa.Table) -> dict[int, tuple[str, str]]:
        """Row index -> (the first sink whose rules refuse it, every reason) ({} if none)."""
        found: dict[int, tuple[str, str]] = {}
        for checker in self.rules():
            for i, why in checker.refused(ticks).items():
                sink, before = found.get(i, (checker.sink, ""))
                found[i] = (sink, f"{before}; {why}" if before else why)
        return found

    def admit(self, batch: TickBatch) -> TickBatch:
        """`batch` with every refused tick moved to its rejects."""
        ticks = batch.ticks
        refused = self.refused(ticks) if ticks.num_rows else {}
        if not refused:
            return batch
        keep = np.ones(ticks.num_rows, dtype=bool)
        keep[list(refused)] = False
        return replace(batch, ticks=ticks.filter(pa.array(keep)), rejects=batch.rejects + refused_rows(ticks, refused))

    def close(self) -> None:
        for checker in self._rules or []:
            checker.close()
        self._rules = None
