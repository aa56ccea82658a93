"""The supervisor's run totals: what they keep as workers come and go."""

from __future__ import annotations

from finpulse.progress import GONE_KEPT, Totals, WorkerStats


def test_exited_workers_are_remembered_for_their_late_words_but_not_for_ever():
    """Totals.gone kept one pid per worker restart for the life of the run (months)."""
    totals = Totals()
    for pid in range(1000, 1000 + 10 * GONE_KEPT):
        totals.add(0, pid, WorkerStats(partitions=[0]))
        totals.forget(0)
    assert len(totals.gone) == GONE_KEPT
    last = 1000 + 10 * GONE_KEPT - 1
    totals.add(0, last, WorkerStats(messages=5, partitions=[0]))  # the last words of the newest one
    assert totals.messages == 5 and 0 not in totals.partitions  # counted, but its view is stale
