"""Exponential backoff between attempts, shared by the places that wait for a service.

Modelled on psycopg_pool's AttemptWithBackoff: the first delay is `first`, each next one doubles,
none exceeds `cap`. `jitter` (a fraction, 0.1 = +-10 %) spreads the retries of many processes
that lost the same service at the same moment; 0 gives exact delays.
"""

from __future__ import annotations

import random
from collections.abc import Callable


class Backoff:
    FACTOR = 2.0

    def __init__(self, first: float, cap: float, jitter: float = 0.0, rand: Callable[[], float] = random.random):
        if not 0 < first <= cap:
            raise ValueError(f"backoff needs 0 < first <= cap, got first={first}, cap={cap}")
        if not 0 <= jitter < 1:
            raise ValueError(f"jitter is a fraction in [0, 1), got {jitter}")
        self.first, self.cap, self.jitter = first, cap, jitter
        self._rand = rand
        self._base = 0.0  # 0: no attempt failed since the last reset

    def next_delay(self) -> float:
        """How long to wait before the next attempt; each call is one more failed attempt."""
        self._base = self.first if self._base == 0.0 else min(self._base * self.FACTOR, self.cap)
        if not self.jitter:
            return self._base
        spread = self._base * self.jitter * (2 * self._rand() - 1)
        return min(max(self._base + spread, 0.0), self.cap)

    def reset(self) -> None:
        """The attempt succeeded: the next failure starts again from `first`."""
        self._base = 0.0
