"""The Delta Lake sink, all of it: the table (table.py: schema, partitioning, app ids, the one
commit), its log as FinPulse reads it (log.py), data files written apart from their commit
(files.py), the sink (sink.py), the process's committer (committer.py) and background compactor
(compactor.py), compaction by one compactor at a time (compaction.py), maintenance, the table's
CHECK constraints as admission rules (rules.py), Azure sign-in (azure.py) and the one mapping of
delta-rs errors (errors.py). Nothing outside this package imports deltalake."""

from __future__ import annotations

from finpulse.sinks.delta.sink import DeltaSink

__all__ = ["DeltaSink"]
