"""The wall clock, for what may read it: the phase of an aligned interval (the Delta flush), never
an interval itself (those use time.monotonic(), which no clock step moves).

FINPULSE_CLOCK_OFFSET_FILE names a file holding seconds to add to the wall clock, re-read at most
once a second: `scripts/soak` writes -3600 into it to step the running ingest's clock back an hour
the way NTP would, and 0 to step it forward again. Unset (always, outside the soak), wall() is
time.time().
"""

from __future__ import annotations

import os
import time

OFFSET_FILE = os.environ.get("FINPULSE_CLOCK_OFFSET_FILE")
REREAD_S = 1.0

_offset = 0.0
_read_at = float("-inf")


def wall() -> float:
    """Seconds since the epoch, as this host's clock says (stepped by the soak's offset file)."""
    if OFFSET_FILE is None:
        return time.time()
    global _offset, _read_at
    now = time.monotonic()
    if now - _read_at >= REREAD_S:
        _read_at = now
        try:
            with open(OFFSET_FILE) as f:
                _offset = float(f.read().strip() or 0)
        except (OSError, ValueError):
            _offset = 0.0
    return time.time() + _offset
