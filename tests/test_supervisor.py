"""The process tree of `finpulse ingest`: restarts, clean stops, no orphans."""

from __future__ import annotations

import os
import signal
import socket
import threading
import time
from pathlib import Path

import pytest
from support.cli import children, env_for, finpulse, start_ingest
from support.sinks import delta_rows, pg_count, pg_rows, produced

pytestmark = [pytest.mark.kafka, pytest.mark.postgres, pytest.mark.slow]


def wait_for(predicate, timeout: float = 30.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_a_killed_worker_is_restarted_and_sigterm_stops_cleanly(isolated):
    env = env_for(isolated, FINPULSE_BATCH_SIZE="100")
    finpulse("produce", "--count", "20000", env=env)
    proc = start_ingest(env, "--workers", "2")
    wait_for(lambda: len(children(proc.pid)) == 2, what="two workers")
    wait_for(lambda: pg_count(isolated) == 20_000, what="the backlog to land")

    victim = children(proc.pid)[0]
    os.kill(victim, signal.SIGKILL)
    wait_for(lambda: len(children(proc.pid)) == 2 and victim not in children(proc.pid), what="a restarted worker")

    finpulse("produce", "--count", "5000", "--seed", "8", env=env)
    wait_for(lambda: pg_count(isolated) == 25_000, what="ticks produced after the restart")
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out[-3000:]
    assert "restarting in 1s" in out and "1 restarts" in out
    # two produce runs, two wall-clock starts: compare symbol, price and size
    expected = sorted(e[:3] for e in produced(20_000) + produced(5_000, seed=8))
    for rows in (pg_rows(isolated), delta_rows(isolated)):
        assert len({r[-3:] for r in rows}) == len(rows) == 25_000
        assert sorted(r[:3] for r in rows) == expected


def test_killing_the_supervisor_outright_leaves_no_orphans(isolated):
    env = env_for(isolated, MALLOC_ARENA_MAX="3")  # a user's own allocator setting wins
    proc = start_ingest(env, "--workers", "2")
    wait_for(lambda: len(children(proc.pid)) == 2, what="two workers")
    workers = children(proc.pid)
    servers = {int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1]) for pid in workers}
    assert len(servers) == 1 and proc.pid not in servers, "the workers are forked by one fork server"
    for pid in workers:  # the workers' allocators (memory.ALLOCATOR_ENV) are set as they start
        environ = dict(v.split("=", 1) for v in Path(f"/proc/{pid}/environ").read_text().split("\0") if "=" in v)
        allocators = [
            environ.get(k) for k in ("ARROW_DEFAULT_MEMORY_POOL", "MALLOC_MMAP_THRESHOLD_", "MALLOC_ARENA_MAX")
        ]
        assert allocators == ["system", "262144", "3"]
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=10)
    wait_for(lambda: not any(alive(w) for w in workers), timeout=15, what="the workers to exit")


class Output:
    """Collects a subprocess's stdout on a thread, so a test can wait for a line without blocking."""

    def __init__(self, proc):
        self.lines: list[str] = []
        self._thread = threading.Thread(target=lambda: self.lines.extend(proc.stdout), daemon=True)
        self._thread.start()

    @property
    def text(self) -> str:
        return "".join(self.lines)

    def wait_for(self, needle: str, timeout: float) -> None:
        wait_for(lambda: needle in self.text, timeout=timeout, what=f"{needle!r} in the output")

    def finish(self, proc, timeout: float = 10) -> str:
        self._thread.join(timeout)
        proc.stdout.close()
        return self.text


def test_ingest_waits_for_an_unreachable_kafka_and_stops_promptly_on_sigterm(base_settings):
    with socket.socket() as hole:  # bound but never listening: every connection to it is refused
        hole.bind(("127.0.0.1", 0))
        where = f"127.0.0.1:{hole.getsockname()[1]}"
        proc = start_ingest(env_for(base_settings, KAFKA_BOOTSTRAP_SERVERS=where), "--drain")
        out = Output(proc)
        try:
            out.wait_for("retrying in 1 s", timeout=20)  # the second attempt: it keeps waiting
            assert proc.poll() is None, out.text
            assert children(proc.pid) == [], "no worker starts before Kafka answers"
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=15)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
    text = out.finish(proc)
    assert f"Kafka at {where} not reachable yet (" in text
    assert "retrying in 0.5 s — is the broker running?" in text
    assert "stopped while waiting for Kafka" in text
    assert "stopped before Kafka answered: nothing was ingested" in text
    assert proc.returncode == 0, text
    assert "Traceback" not in text


def test_ingest_of_a_missing_topic_still_stops_at_once(kafka):
    proc = finpulse(
        "ingest", "--drain", "--topic", "finpulse-no-such-topic", env=env_for(kafka), check=False, timeout=60
    )
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "'finpulse-no-such-topic' does not exist" in proc.stderr
    assert "not reachable yet" not in proc.stdout + proc.stderr


def test_workers_join_without_a_rebalance_storm(isolated):
    """Cooperative rebalancing: as the workers join one after another, only the partitions that
    move are revoked (at most one per joining worker) and each worker ends with one partition.
    The eager protocol revoked every member's every partition at each join."""
    env = env_for(isolated)
    finpulse("produce", "--count", "5000", env=env)
    proc = start_ingest(env, "--workers", "4")
    try:
        wait_for(lambda: _owners(isolated) == [1, 1, 1, 1], timeout=60, what="one partition per worker")
        wait_for(lambda: pg_count(isolated) == 5000, what="the backlog to land")
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
    # The revocations of the clean stop leave a worker owning nothing; a join's never does (each
    # worker keeps one partition at least). The stop's lines are told apart by that, not by where
    # they fall in the output: a worker may log its last assignment after the supervisor's
    # "stopping:" line, its callback having run just before the SIGTERM reached it.
    lines = out.splitlines()
    revoked = [p for line in lines if "revoked partitions [" in line and "owns []" not in line for p in _listed(line)]
    assigned = [p for line in lines if "assigned partitions [" in line for p in _listed(line)]
    assert len(revoked) <= 3, f"{len(revoked)} partitions revoked while 4 workers joined:\n{out}"
    assert sorted(assigned) == sorted([0, 1, 2, 3] + revoked), out  # a moved partition is assigned once more
    assert sorted(pg_rows(isolated)) == sorted(delta_rows(isolated))


def _owners(s) -> list[int]:
    """Partitions per member of the group, as the broker sees it."""
    from finpulse import source

    client = source.admin(s)  # keep a reference: the futures die with their client
    group = client.describe_consumer_groups([s.kafka_group_id])[s.kafka_group_id].result(timeout=10)
    return sorted(len(m.assignment.topic_partitions) for m in group.members)


def _listed(line: str) -> list[int]:
    inside = line.split("partitions [", 1)[1].split("]", 1)[0]
    return [int(x) for x in inside.split(",") if x.strip()]


# ---------------------------------------------------------------------------- the steps, without processes
class _Proc:
    """Stands in for a worker process: a test says when it exits and with what code."""

    def __init__(self, pid: int):
        self.pid, self.exitcode, self.signals = pid, None, []

    def is_alive(self) -> bool:
        return self.exitcode is None

    def join(self, timeout=None) -> None:
        pass

    def terminate(self) -> None:
        self.signals.append("TERM")

    def kill(self) -> None:
        self.signals.append("KILL")
        self.exitcode = -9


class _Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _supervisor(workers: int = 2, budget=None):
    clock, started = _Clock(), []

    def start(i: int) -> _Proc:
        started.append(i)
        return _Proc(100 + len(started))

    from finpulse.supervisor import Supervisor

    return Supervisor(workers, start, budget=budget, clock=clock), clock, started


def test_a_crashed_worker_comes_back_after_its_backoff_and_an_outage_costs_no_budget():
    from finpulse.errors import ServiceUnavailable
    from finpulse.supervisor import RestartBudget

    sup, clock, started = _supervisor(budget=RestartBudget(limit=1, clock=_Clock()))
    sup.start_all()
    assert started == [0, 1]
    sup.procs[0].exitcode = 1  # a crash
    assert sup.step() == [0] and sup.restarts == 1 and started == [0, 1]
    clock.now += 0.5
    sup.step()
    assert started == [0, 1], "restarted before its 1 s backoff"
    clock.now += 0.6
    sup.step()
    assert started == [0, 1, 0]
    for _ in range(3):  # outages heal by waiting: restarted every time, budget untouched
        sup.procs[1].exitcode = ServiceUnavailable.exit_code
        sup.step()
        clock.now += 60
        sup.step()
    assert sup.fatal == [] and started.count(1) == 4


def test_a_worker_that_keeps_crashing_spends_the_budget_and_ends_the_run():
    from finpulse.supervisor import RestartBudget

    sup, clock, _ = _supervisor(workers=1, budget=RestartBudget(limit=2, window_s=600, clock=_Clock()))
    sup.start_all()
    for _ in range(3):
        sup.procs[0].exitcode = 1
        sup.step()
        clock.now += 60
        sup.step()
    assert len(sup.fatal) == 1 and "keeps crashing: 3 crashes within 10 minutes" in str(sup.fatal[0])
    assert sup.finished


def test_stop_terminates_every_worker_then_kills_the_ones_that_outlive_the_timeout():
    from finpulse.supervisor import STOP_TIMEOUT_S

    sup, clock, started = _supervisor()
    sup.start_all()
    sup.procs[1].exitcode = 1
    sup.step()  # worker 1 is due for a restart when the stop comes
    sup.stop()
    assert sup.procs[0].signals == ["TERM"]
    sup.step()
    assert started == [0, 1] and 1 in sup.done, "no restart once stopping"
    clock.now += STOP_TIMEOUT_S + 1
    sup.step()
    assert sup.procs[0].signals == ["TERM", "KILL"]
    sup.step()
    assert sup.finished


def test_the_drain_check_waits_for_every_sink_and_a_sink_that_is_down():
    from types import SimpleNamespace

    from finpulse.errors import ServiceUnavailable
    from finpulse.supervisor import _DrainCheck

    held = {"a": {0: 10, 1: 5}, "b": {0: 10, 1: 5}}
    down = []

    def positions(name):
        def read(parts):
            if down:
                raise ServiceUnavailable("down")
            return held[name]

        return read

    opened = [SimpleNamespace(positions=positions(n), close=lambda: None) for n in held]
    check = _DrainCheck(None, {0: 10, 1: 7, 2: 0}, opened)  # type: ignore[arg-type]
    assert not check()
    held["a"][1] = held["b"][1] = 7
    check.next_check = 0
    down.append(1)
    assert not check()
    down.clear()
    check.next_check = 0
    assert check()  # partition 2 holds nothing to wait for
