"""Faults against real services: outages, a broker restart, SIGKILLs. After each, `finpulse verify`
must exit 0 and both sinks must hold every produced tick exactly once.

The shared services are never stopped: a scenario that takes a service down runs against a private
instance of it (tests/support/private/, started from the binaries `scripts/services up` installs),
and uses the shared ones for the rest. Each scenario has its own topic, consumer group, PostgreSQL
schema and Delta table, so runs of other tests on the shared services cannot rebalance it.
"""

from __future__ import annotations

import os
import random
import re
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from contextlib import contextmanager
from pathlib import Path

import psycopg
import pytest
from support import ROOT
from support.cli import children, env_for, finpulse
from support.group import group_member
from support.ingest_log import assigned_pids, stalled
from support.private import PrivateAzurite, PrivateKafka, PrivatePostgres, running
from support.sinks import VALUE_COLUMNS, assert_exactly_once, delta_rows, pg_rows, produced
from support.stack import fresh_stack

from finpulse import source
from finpulse.config import Settings
from finpulse.errors import ServiceUnavailable
from finpulse.sinks.delta.azure import storage_options

pytestmark = [pytest.mark.kafka, pytest.mark.postgres, pytest.mark.slow]

INGEST_TIMEOUT_S = 150  # generous on a busy 2-core machine; a hang fails instead of blocking CI
WAIT_S = 60


# ---------------------------------------------------------------------------- private services
# Session-scoped and lazy: a service starts only when a scenario asks for it, and is stopped at the
# end of the session even when a test fails (support.private also stops it at interpreter exit).
# Their binaries are those `scripts/services up` installs (Debian's PostgreSQL, the Kafka jars in
# .stack/kafka/libs, Azurite in .stack/azurite); a missing one fails the test with that hint.
@pytest.fixture(scope="module")
def private_postgres():
    with running(PrivatePostgres) as pg:
        yield pg


@pytest.fixture(scope="module")
def private_kafka():
    with running(PrivateKafka) as kafka:
        yield kafka


@pytest.fixture(scope="module")
def private_azurite():
    with running(PrivateAzurite) as azurite:
        yield azurite


# ---------------------------------------------------------------------------- helpers
def wait_for(predicate, what: str, timeout: float = WAIT_S, ingest: Ingest | None = None) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(
                f"timed out after {timeout:.0f}s waiting for {what}"
                + (f"\ningest output:\n{ingest.tail()}" if ingest else "")
            )
        time.sleep(0.1)


class Ingest:
    """`finpulse ingest` in its own process group (so the whole tree can be SIGKILLed), its output
    in a file: a pipe nobody reads could fill up and stall it during a long outage."""

    def __init__(self, env: dict[str, str], log: Path, *args: str):
        self.log = log
        self._out = log.open("w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "finpulse", "ingest", *args],
            env=env,
            cwd=ROOT,
            stdout=self._out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def tail(self, lines: int = 60) -> str:
        """The last lines, without the connection pool's retry chatter during an outage."""
        noise = ("psycopg.pool", "\tIs the server running", "Connection refused")
        kept = [line for line in self.output().splitlines() if not any(n in line for n in noise)]
        return "\n".join(kept[-lines:])

    def alive(self) -> bool:
        return self.proc.poll() is None

    def workers(self) -> list[int]:
        """Pids of the supervisor's worker processes (not multiprocessing's resource tracker)."""
        return children(self.proc.pid)

    def kill(self) -> None:
        """SIGKILL the supervisor and every worker at once."""
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(timeout=30)
        self.close()

    def close(self) -> None:
        self._out.close()

    def finish(self, timeout: float = INGEST_TIMEOUT_S) -> str:
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"ingest still running after {timeout:.0f}s:\n{self.tail(80)}") from None
        self.close()
        assert self.proc.returncode == 0, f"ingest exited {self.proc.returncode}:\n{self.tail(80)}"
        return self.output()


@pytest.fixture
def ingests(tmp_path):
    """Starts ingest runs; whatever still runs at the end of the test is killed (process group)."""
    started: list[Ingest] = []

    def start(env: dict[str, str], *args: str) -> Ingest:
        run = Ingest(env, tmp_path / f"ingest-{len(started)}.log", *args)
        started.append(run)
        return run

    yield start
    for run in started:
        if run.alive():
            run.kill()
        run.close()


@contextmanager
def scenario(tmp_path: Path, partitions: int = 4, **overrides):
    """A fresh stack (support.stack) on the services `overrides` name; removed after."""
    with fresh_stack(partitions=partitions, prefix="faults", **overrides) as s:
        yield s


def pg_count(s: Settings) -> int:
    """Rows in prices_raw; -1 while PostgreSQL cannot be reached."""
    try:
        with psycopg.connect(s.postgres_conninfo()) as conn:
            return conn.execute("SELECT count(*) FROM prices_raw").fetchone()[0]
    except psycopg.OperationalError:
        return -1


def delta_count(s: Settings) -> int:
    from deltalake import DeltaTable

    return (
        DeltaTable(s.delta_uri, storage_options=storage_options(s)).to_pyarrow_table(columns=["kafka_offset"]).num_rows
    )


def check_exactly_once(
    s: Settings, env: dict[str, str], total: int, second: tuple[int, dict[int, int]] | None = None
) -> None:
    """`finpulse verify` exits 0, and each sink holds each produced tick once, with its values.
    `total` ticks came from one `produce --seed 7`; `second`: (count, high watermarks before it)
    of a later `produce --seed 8` (its own wall-clock start, so its values are compared apart)."""
    verified = finpulse("verify", env=env, check=False, timeout=180)
    count = total + (second[0] if second else 0)
    report = []
    for where, rows in (("postgres", pg_rows(s)), ("delta", delta_rows(s))):
        keys = Counter(r[len(VALUE_COLUMNS) :] for r in rows)
        duplicated = sum(n - 1 for n in keys.values())
        report.append(f"{where}: {len(rows):,} rows, {count - len(keys):,} lost, {duplicated:,} duplicated")
        if second is None:
            assert_exactly_once(rows, produced(total), f"{where} ({report[-1]})")
        else:
            n, highs = second
            p, o = len(VALUE_COLUMNS), len(VALUE_COLUMNS) + 1
            later = [r for r in rows if r[o] >= highs[r[p]]]
            assert_exactly_once(
                [r for r in rows if r[o] < highs[r[p]]], produced(total), f"{where}, first produce ({report[-1]})"
            )
            assert_exactly_once(later, produced(n, seed=8), f"{where}, second produce ({report[-1]})")
    print("; ".join(report))
    assert verified.returncode == 0, f"verify exited {verified.returncode}:\n{verified.stdout}\n{verified.stderr}"


def produce(env: dict[str, str], total: int, seed: int = 7) -> None:
    finpulse("produce", "--count", str(total), "--seed", str(seed), env=env, timeout=120)


def wait_writing(run: Ingest, count, workers: int) -> int:
    """Wait until `workers` workers own partitions and `count()` grew after that; return it."""
    wait_for(
        lambda: len(assigned_pids(run.output())) == workers, f"{workers} workers to be assigned partitions", ingest=run
    )
    landed = count()
    wait_for(lambda: count() > landed, "rows after the assignment", ingest=run)
    return count()


# ---------------------------------------------------------------------------- a. PostgreSQL outage
def test_postgres_outage_longer_than_rebalance_grace_with_a_worker_killed(private_postgres, kafka, tmp_path, ingests):
    """PostgreSQL goes down; during the outage another member joins the group, so the workers must
    give partitions up while their writes are pending: their revoke waits
    FINPULSE_REBALANCE_GRACE_MS and lets go with the writes still queued. Then a worker is
    SIGKILLed and restarted, still during the outage, and the other member leaves. After
    PostgreSQL is back, every tick is in both sinks once."""
    total = 150_000
    with scenario(tmp_path, **private_postgres.settings_overrides) as s:
        env = env_for(
            s, FINPULSE_REBALANCE_GRACE_MS="2000", FINPULSE_BATCH_SIZE="500", FINPULSE_MAX_INFLIGHT_TICKS="5000"
        )
        produce(env, total)
        run = ingests(env, "--workers", "2", "--drain")
        before = wait_writing(run, lambda: pg_count(s), workers=2)  # the first join's rebalance is over
        private_postgres.stop("immediate")
        try:
            # both workers hold writes PostgreSQL did not take, so whichever gives a partition up has some
            wait_for(lambda: stalled(run.output()) >= set(run.workers()), "both workers' writes to stall", ingest=run)
            with group_member(s):
                # partitions move to the new member (cooperative rebalancing: only those): the
                # workers' revoke waits the 2 s grace for their PostgreSQL writes, then lets go
                wait_for(
                    lambda: re.search(r"rebalance.*pending", run.output()), "the rebalance grace to expire", ingest=run
                )
                victim = run.workers()[0]
                os.kill(victim, signal.SIGKILL)
                wait_for(
                    lambda: len(run.workers()) == 2 and victim not in run.workers(),
                    "the killed worker's restart",
                    ingest=run,
                )
            time.sleep(2.0)
            assert run.alive(), f"ingest must wait for PostgreSQL, not exit:\n{run.tail()}"
        finally:
            private_postgres.start()
        run.finish()
        assert 0 < before < total, f"the outage began with {before:,} of {total:,} rows in; it proved nothing"
        check_exactly_once(s, env, total)


def test_postgres_outage_pauses_backpressure_and_a_joining_run_without_loss(private_postgres, kafka, tmp_path, ingests):
    """A small in-flight cap makes backpressure pause consumption during the outage, and a second
    run joining mid-outage forces a rebalance of paused partitions: both must still finish."""
    total = 300_000
    with scenario(tmp_path, **private_postgres.settings_overrides) as s:
        env = env_for(s, FINPULSE_BATCH_SIZE="200", FINPULSE_MAX_INFLIGHT_TICKS="5000")
        produce(env, total)
        first = ingests(env, "--workers", "2", "--drain")
        before = wait_writing(first, lambda: pg_count(s), workers=2)
        second = ingests(env, "--workers", "1", "--drain")
        # past its start-up checks (they read PostgreSQL): its group join, a rebalance, falls in the outage
        wait_for(lambda: "joined group" in second.output(), "the second run's worker to start", ingest=second)
        private_postgres.stop("immediate")
        try:
            time.sleep(5)
            assert first.alive(), f"ingest must wait for PostgreSQL, not exit:\n{first.tail()}"
        finally:
            private_postgres.start()
        first.finish()
        second.finish()
        assert before < total, "PostgreSQL went down only after everything landed; the test proved nothing"
        check_exactly_once(s, env, total)


# ---------------------------------------------------------------------------- b. Kafka broker restart
def test_kafka_broker_restart_mid_ingest(private_kafka, postgres, tmp_path, ingests):
    """The broker is SIGKILLed mid-ingest and started again on the same log dirs; ticks produced to
    the restarted broker must reach the running ingest too, which then stops cleanly on SIGTERM."""
    first, second = 100_000, 30_000
    with scenario(tmp_path, kafka_bootstrap_servers=private_kafka.bootstrap) as s:
        env = env_for(s, FINPULSE_BATCH_SIZE="500", FINPULSE_MAX_INFLIGHT_TICKS="2000")
        produce(env, first)
        run = ingests(env, "--workers", "2")
        before = wait_writing(run, lambda: pg_count(s), workers=2)
        private_kafka.kill()
        try:
            time.sleep(3.0)
            assert run.alive(), f"ingest must wait for Kafka, not exit:\n{run.tail()}"
        finally:
            private_kafka.start()
        highs: dict[int, int] = {}

        def read_highs() -> bool:  # partition leaders may need a moment after the restart
            try:
                highs.update({p: high for p, (_, high) in source.watermarks(s).items()})
                return True
            except ServiceUnavailable:
                return False

        wait_for(read_highs, "the restarted broker's watermarks", ingest=run)
        assert sum(highs.values()) == first, highs
        produce(env, second, seed=8)
        total = first + second
        wait_for(
            lambda: pg_count(s) == total and delta_count(s) == total,
            "both sinks to hold every tick",
            timeout=INGEST_TIMEOUT_S,
            ingest=run,
        )
        run.proc.send_signal(signal.SIGTERM)
        run.finish()
        ingests(env, "--drain").finish()  # a clean run after the fault finds nothing left to add
        assert 0 < before < first, f"the broker died with {before:,} of {first:,} rows in; it proved nothing"
        check_exactly_once(s, env, first, second=(second, highs))


# ---------------------------------------------------------------------------- c. Azurite outage
@pytest.mark.azurite
def test_azurite_outage_with_delta_on_abfss(private_azurite, kafka, postgres, tmp_path, ingests, monkeypatch):
    """The Delta table is on abfss:// (Azurite); Azurite stops mid-ingest and comes back."""
    total = 200_000
    # object_store sends emulator traffic to $AZURITE_BLOB_STORAGE_URL: this process's reads too
    monkeypatch.setenv("AZURITE_BLOB_STORAGE_URL", private_azurite.url)
    azure = private_azurite.env
    uri = (
        f"abfss://{azure['AZURE_CONTAINER_NAME']}@{azure['AZURE_STORAGE_ACCOUNT_NAME']}.dfs.core.windows.net/"
        f"faults-{uuid.uuid4().hex[:8]}/prices"
    )
    with scenario(
        tmp_path,
        delta_table_uri=uri,
        azure_storage_account_name=azure["AZURE_STORAGE_ACCOUNT_NAME"],
        azure_storage_account_key=azure["AZURE_STORAGE_ACCOUNT_KEY"],
        azure_storage_use_emulator=True,
    ) as s:
        assert s.delta_uri == uri
        env = env_for(s, FINPULSE_BATCH_SIZE="200", FINPULSE_MAX_INFLIGHT_TICKS="1000", **azure)
        produce(env, total)
        run = ingests(env, "--workers", "2", "--drain")
        before = wait_writing(run, lambda: delta_count(s), workers=2)
        private_azurite.stop()
        try:
            # the Delta lane logs that its sink is unavailable and retries with backoff
            wait_for(
                lambda: re.search(r"delta\b.*unavailable", run.output()), "ingest to notice the outage", ingest=run
            )
            time.sleep(3.0)
            assert run.alive(), f"ingest must wait for Azure storage, not exit:\n{run.tail()}"
        finally:
            private_azurite.start()
        run.finish()
        assert 0 < before < total, f"the outage began with {before:,} of {total:,} rows in; it proved nothing"
        check_exactly_once(s, env, total)


# ---------------------------------------------------------------------------- d. SIGKILL of ingest
def test_sigkill_of_the_ingest_process_group_during_commits(kafka, postgres, tmp_path, ingests):
    """The whole ingest process group is SIGKILLed at random moments while one sink commits
    continuously (Delta-only runs, then PostgreSQL-only runs); a clean `ingest --drain` then lands
    exactly what each sink lacks."""
    total = 200_000
    rng = random.Random(20240607)
    with scenario(tmp_path) as s:
        env = env_for(s, FINPULSE_BATCH_SIZE="500", FINPULSE_MAX_INFLIGHT_TICKS="5000")
        produce(env, total)
        counts = {"delta": lambda: delta_count(s), "postgres": lambda: pg_count(s)}
        for sink, count in counts.items():
            mid_run = 0
            for _ in range(2):
                run = ingests(env, "--workers", "2", "--sinks", sink)
                # kill on progress, not after a delay, so a fast machine cannot finish first
                landed = count()
                target = landed + max(1, int(rng.uniform(0.05, 0.4) * (total - landed)))
                wait_for(lambda count=count, target=target: count() >= target, f"{sink} rows to land", ingest=run)
                run.kill()
                held = count()
                mid_run += held < total
                if held == total:
                    break
            assert mid_run >= 1, f"no kill landed while {sink} was still committing; the test proved nothing"
        run = ingests(env, "--drain")
        run.finish()
        check_exactly_once(s, env, total)
