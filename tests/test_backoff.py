"""Retry delays (Backoff) and the supervisor's decaying restart budget, with injected clocks."""

from __future__ import annotations

import pytest

from finpulse.backoff import Backoff
from finpulse.supervisor import KAFKA_WAIT_FIRST_S, KAFKA_WAIT_MAX_S, RESTART_BUDGET, RESTART_WINDOW_S, RestartBudget


def test_backoff_doubles_from_first_up_to_the_cap_and_reset_starts_over():
    b = Backoff(KAFKA_WAIT_FIRST_S, KAFKA_WAIT_MAX_S)
    assert [b.next_delay() for _ in range(8)] == [0.5, 1, 2, 4, 8, 10, 10, 10]
    b.reset()
    assert b.next_delay() == 0.5


def test_backoff_jitter_stays_within_its_fraction_and_under_the_cap():
    lowest, highest = Backoff(1.0, 4.0, jitter=0.1, rand=lambda: 0.0), Backoff(1.0, 4.0, jitter=0.1, rand=lambda: 1.0)
    assert [round(lowest.next_delay(), 6) for _ in range(4)] == [0.9, 1.8, 3.6, 3.6]
    assert [round(highest.next_delay(), 6) for _ in range(4)] == [1.1, 2.2, 4.0, 4.0]


@pytest.mark.parametrize("first, cap, jitter", [(0, 1, 0), (2, 1, 0), (1, 2, 1.0), (1, 2, -0.1)])
def test_backoff_rejects_nonsense(first, cap, jitter):
    with pytest.raises(ValueError):
        Backoff(first, cap, jitter)


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_restart_budget_allows_the_limit_within_the_window_and_not_one_more():
    clock = Clock()
    budget = RestartBudget(limit=3, window_s=60, clock=clock)
    for _ in range(3):
        assert budget.spend()
        clock.now += 10
    assert not budget.spend()
    assert budget.recent == 4


def test_restart_budget_forgets_crashes_older_than_the_window():
    clock = Clock()
    budget = RestartBudget(limit=3, window_s=60, clock=clock)
    for _ in range(3):
        assert budget.spend()
    clock.now += 60  # the three crashes are now exactly one window old: they no longer count
    assert budget.spend() and budget.recent == 1
    # a worker that crashes now and then, never more than 3 times a minute, runs for ever
    for _ in range(100):
        clock.now += 20
        assert budget.spend()
    assert budget.recent == 3


def test_default_budget_ends_a_worker_that_crashes_at_once_every_time():
    """With the supervisor's restart delays (1, 2, 4 ... 30 s), a worker that dies on start
    spends the default budget within one window; one that runs a minute between crashes never does."""
    from finpulse.supervisor import RESTART_FIRST_S, RESTART_MAX_S

    clock = Clock()
    budget, delay, crashes = RestartBudget(clock=clock), RESTART_FIRST_S, 0
    start = clock.now
    while budget.spend():
        crashes += 1
        clock.now += delay
        delay = min(delay * 2, RESTART_MAX_S)
    assert crashes == RESTART_BUDGET and clock.now - start < RESTART_WINDOW_S

    clock = Clock()
    budget = RestartBudget(clock=clock)
    for _ in range(1000):  # a crash every 61 s: under the default budget at any moment
        clock.now += 61
        assert budget.spend()
