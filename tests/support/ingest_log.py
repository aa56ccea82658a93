"""What a `finpulse ingest` run's log says about its workers (text lines: `time pid LEVEL name: ...`)."""

from __future__ import annotations

import re


def stalled(output: str, sink: str = "postgres") -> set[int]:
    """Worker pids whose writes to `sink` failed because it is unavailable."""
    return {int(pid) for pid in re.findall(rf"^\S+ \S+ (\d+) WARNING finpulse.lanes: {sink} unavailable", output, re.M)}


def assigned_pids(output: str) -> set[int]:
    """Worker pids that own partitions after their latest assignment or revocation
    (`... partitions [..]...; owns [..]`)."""
    latest = {}
    for pid, owns in re.findall(r"^\S+ \S+ (\d+) INFO finpulse.worker: .*partitions .*; owns \[(.*)\]", output, re.M):
        latest[int(pid)] = bool(owns.strip())
    return {pid for pid, some in latest.items() if some}
