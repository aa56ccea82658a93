"""The soak (scripts/soak): a live feed into `finpulse ingest` with a fault about every minute, on
private Kafka, PostgreSQL and Azurite instances (tests/support/private), so stopping them disturbs
nothing else. Delta lives on Azurite (abfss://). At the end the feed stops, ingest catches up and
stops, and `finpulse verify` must exit 0: every tick exactly once in both sinks.

Meanwhile a monitor reads, once a second, every partition's high watermark and each sink's position,
and measures how long a partition whose messages wait makes no progress. For each fault it reports
the longest such stall of the partitions the faulted worker owned and of all the others.

Faults, in a seeded random order, each drawn once per round:
  kill_worker     SIGKILL one worker (the supervisor restarts it)
  kill_ingest     SIGKILL the whole ingest process group, start it again
  stop_postgres   PostgreSQL down for 15 s
  restart_broker  the broker SIGKILLed and started again
  stop_azurite    Azurite (Delta's storage) down for 15 s
  freeze_worker   one worker SIGSTOPped past the group's session timeout, then resumed: a zombie
                  writer whose partitions moved meanwhile
  clock_back      the ingest's wall clock stepped back an hour (FINPULSE_CLOCK_OFFSET_FILE), and
                  forward again 30 s later
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]  # this checkout's finpulse and test support

import psycopg  # noqa: E402
from confluent_kafka import Consumer, TopicPartition  # noqa: E402
from support.cli import children  # noqa: E402
from support.private import PrivateAzurite, PrivateKafka, PrivatePostgres, running  # noqa: E402

from finpulse.config import load_settings  # noqa: E402
from finpulse.sinks.delta.azure import storage_options  # noqa: E402
from finpulse.sinks.delta.log import TableLog  # noqa: E402
from finpulse.source import SESSION_TIMEOUT_MS  # noqa: E402

FAULTS = (
    "kill_worker",
    "kill_ingest",
    "stop_postgres",
    "restart_broker",
    "stop_azurite",
    "freeze_worker",
    "clock_back",
)
OUTAGE_S = 15.0  # how long a stopped service stays down
FREEZE_S = SESSION_TIMEOUT_MS / 1000 + 9  # past the session timeout: the partitions move
CLOCK_STEP_S = -3600.0
CATCH_UP_S = 600.0  # after the feed: how long ingest may take to hold everything


def log(text: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} soak: {text}", flush=True)


@dataclass
class Fault:
    kind: str
    at: float  # seconds since the soak began
    victim_pid: int | None = None
    victim_partitions: list[int] = field(default_factory=list)
    ended: float = 0.0
    stall_victim_s: float = 0.0  # the longest stall of the victim's partitions during the window
    stall_others_s: float = 0.0  # ... and of every other partition
    samples: int = 0  # monitor readings in the window (0: nothing could be read, the stalls are unknown)


class Monitor(threading.Thread):
    """Each second: per partition, the high watermark and each sink's position; a partition stalls
    while some sink's position stays put below the high watermark."""

    def __init__(self, settings, env: dict[str, str], partitions: list[int]):
        super().__init__(name="soak-monitor", daemon=True)
        self.settings, self.env, self.partitions = settings, env, partitions
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.since: dict[tuple[str, int], float] = {}  # (sink, partition) -> stalled since (monotonic)
        self.last: dict[tuple[str, int], int] = {}
        self.window: dict[int, float] = {}  # partition -> longest stall in the current window
        self.samples = 0  # readings in the current window

    def open_window(self) -> None:
        with self.lock:
            self.window, self.samples = {}, 0

    def close_window(self) -> tuple[dict[int, float], int]:
        with self.lock:
            return dict(self.window), self.samples

    def run(self) -> None:
        s = self.settings
        topic = s.kafka_topic
        # quiet (no librdkafka log lines while the broker is down) and never a group member
        kafka = Consumer({"bootstrap.servers": s.kafka_bootstrap_servers, "group.id": "soak-monitor", "log_level": 0})
        delta = TableLog(s.delta_uri, storage_options(s))  # one read per new commit, not per partition
        while not self.stop.wait(1.0):
            try:
                marks = {p: kafka.get_watermark_offsets(TopicPartition(topic, p), timeout=2) for p in self.partitions}
                with psycopg.connect(s.postgres_conninfo(), connect_timeout=2) as conn:
                    pg = dict(
                        conn.execute(
                            "SELECT kafka_partition, next_offset FROM finpulse_offsets WHERE topic = %s", (topic,)
                        ).fetchall()
                    )
                delta.table()
                held = {p: delta.txn(f"finpulse:{topic}:{p}") for p in self.partitions}
            except Exception:  # a service is down: a fault's doing; the stall clocks go on
                delta.reset()
                continue
            now = time.monotonic()
            with self.lock:
                self.samples += 1
                for positions in (pg, held):
                    for p in self.partitions:
                        at, high = positions.get(p) or 0, marks[p][1]
                        key = ("postgres" if positions is pg else "delta", p)
                        since = self.since.setdefault(key, now)
                        # still since the last reading that saw it move: up to now (seen moving
                        # now, or still still); 0 once it holds everything
                        stalled = 0.0 if at >= high and at == self.last.get(key) else now - since
                        if at >= high or at != self.last.get(key):
                            self.since[key] = now
                        self.last[key] = at
                        self.window[p] = max(self.window.get(p, 0.0), stalled)


class Soak:
    def __init__(self, args, kafka: PrivateKafka, pg: PrivatePostgres, azurite: PrivateAzurite, work: Path):
        self.args, self.kafka, self.pg, self.azurite, self.work = args, kafka, pg, azurite, work
        tag = uuid.uuid4().hex[:8]
        self.clock_file = work / "clock-offset"
        self.clock_file.write_text("0\n")
        azure = azurite.env
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("KAFKA_", "POSTGRES_", "DELTA_", "AZURE_"))},
            **azure,
            "KAFKA_BOOTSTRAP_SERVERS": kafka.bootstrap,
            "KAFKA_TOPIC": f"soak-{tag}",
            "KAFKA_GROUP_ID": f"soak-{tag}",
            "POSTGRES_HOST": "127.0.0.1",
            "POSTGRES_PORT": str(pg.port),
            "POSTGRES_DB": pg.settings_overrides["postgres_db"],
            "POSTGRES_USER": pg.settings_overrides["postgres_user"],
            "POSTGRES_PASSWORD": pg.settings_overrides["postgres_password"],
            "POSTGRES_SSLMODE": "disable",
            "DELTA_TABLE_URI": (
                f"abfss://{azure['AZURE_CONTAINER_NAME']}@{azure['AZURE_STORAGE_ACCOUNT_NAME']}"
                f".dfs.core.windows.net/soak-{tag}/prices"
            ),
            "FINPULSE_CLOCK_OFFSET_FILE": str(self.clock_file),
            "PYTHONUNBUFFERED": "1",
        }
        os.environ["AZURITE_BLOB_STORAGE_URL"] = azurite.url  # this process reads Delta too (monitor)
        self.settings = load_settings(
            kafka_bootstrap_servers=kafka.bootstrap,
            kafka_topic=self.env["KAFKA_TOPIC"],
            kafka_group_id=self.env["KAFKA_GROUP_ID"],
            delta_table_uri=self.env["DELTA_TABLE_URI"],
            azure_storage_account_name=azure["AZURE_STORAGE_ACCOUNT_NAME"],
            azure_storage_account_key=azure["AZURE_STORAGE_ACCOUNT_KEY"],
            azure_storage_use_emulator=True,
            postgres_sslmode="disable",
            **pg.settings_overrides,
        )
        self.ingest_log = work / "ingest.log"
        self.ingest: subprocess.Popen | None = None
        self.started = time.monotonic()
        self.faults: list[Fault] = []

    # ------------------------------------------------------------------ processes
    def finpulse(self, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "finpulse", *args],
            env=self.env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def start_ingest(self) -> None:
        out = self.ingest_log.open("a")
        self.ingest = subprocess.Popen(
            [sys.executable, "-m", "finpulse", "ingest", "--workers", str(self.args.workers)],
            env=self.env,
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        out.close()

    def workers(self) -> list[int]:
        assert self.ingest is not None
        deadline = time.monotonic() + 30
        while not (pids := children(self.ingest.pid)):
            if time.monotonic() > deadline:
                return []
            time.sleep(0.5)
        return pids

    def owned(self, pid: int) -> list[int]:
        """What the ingest log says `pid` owns now (its latest assignment or revocation line)."""
        owns: list[int] = []
        pattern = rf"^\S+ \S+ {pid} INFO finpulse.worker: .*partitions .*; owns \[(.*)\]"
        for found in re.findall(pattern, self.ingest_log.read_text(errors="replace"), re.M):
            owns = [int(p) for p in found.split(",") if p.strip()]
        return owns

    # ------------------------------------------------------------------ faults
    def fault(self, kind: str) -> Fault:
        f = Fault(kind, round(time.monotonic() - self.started, 1))
        assert self.ingest is not None
        if kind in ("kill_worker", "freeze_worker"):
            victims = self.workers()
            if victims:
                f.victim_pid = random.choice(victims)
                f.victim_partitions = self.owned(f.victim_pid)
        if kind == "kill_worker" and f.victim_pid:
            os.kill(f.victim_pid, signal.SIGKILL)
        elif kind == "freeze_worker" and f.victim_pid:
            os.kill(f.victim_pid, signal.SIGSTOP)
            time.sleep(FREEZE_S)
            os.kill(f.victim_pid, signal.SIGCONT)
        elif kind == "kill_ingest":
            f.victim_partitions = list(range(self.args.partitions))
            os.killpg(self.ingest.pid, signal.SIGKILL)
            self.ingest.wait()
            self.start_ingest()
        if kind in ("stop_postgres", "restart_broker", "stop_azurite"):
            f.victim_partitions = list(range(self.args.partitions))  # a service every partition needs
        if kind == "stop_postgres":
            self.pg.stop("immediate")
            time.sleep(OUTAGE_S)
            self.pg.start()
        elif kind == "restart_broker":
            self.kafka.kill()
            self.kafka.start()
        elif kind == "stop_azurite":
            self.azurite.stop()
            time.sleep(OUTAGE_S)
            self.azurite.start()
        elif kind == "clock_back":
            self.clock_file.write_text(f"{CLOCK_STEP_S}\n")
            time.sleep(30)
            self.clock_file.write_text("0\n")
        return f

    # ------------------------------------------------------------------ the run
    def run(self) -> dict:
        a = self.args
        init = self.finpulse("init", "--partitions", str(a.partitions))
        if init.returncode:
            raise SystemExit(f"finpulse init failed:\n{init.stdout}{init.stderr}")
        total = int(a.rate * a.minutes * 60)
        feed = subprocess.Popen(
            [sys.executable, "-m", "finpulse", "produce", "--count", str(total), "--rate", str(a.rate)],
            env=self.env,
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=(self.work / "produce.log").open("w"),
        )
        self.start_ingest()
        monitor = Monitor(self.settings, self.env, list(range(a.partitions)))
        monitor.start()
        rng = random.Random(a.seed)
        plan: list[str] = []
        end = self.started + a.minutes * 60
        log(f"{a.minutes:g} minutes, {a.rate:g} ticks/s, a fault every ~{a.every:g}s; work dir {self.work}")
        try:
            time.sleep(min(a.every, max(0.0, end - time.monotonic())))
            while time.monotonic() + a.every / 2 < end:
                if not plan:
                    plan = rng.sample(a.faults, len(a.faults))
                kind = plan.pop()
                monitor.open_window()  # the window runs from this fault to the next one
                f = self.fault(kind)
                time.sleep(max(0.0, self.started + f.at + a.every - time.monotonic()))
                stalls, f.samples = monitor.close_window()
                f.ended = round(time.monotonic() - self.started, 1)
                f.stall_victim_s = round(max((stalls.get(p, 0) for p in f.victim_partitions), default=0), 1)
                f.stall_others_s = round(
                    max((v for p, v in stalls.items() if p not in f.victim_partitions), default=0), 1
                )
                self.faults.append(f)
                log(
                    f"{kind}: longest stall {f.stall_victim_s:.1f}s on its partitions {f.victim_partitions}, "
                    f"{f.stall_others_s:.1f}s on the others ({f.samples} readings)"
                )
            produced_ok = feed.wait(timeout=CATCH_UP_S) == 0
            log("feed done; waiting for ingest to hold every tick")
            deadline = time.monotonic() + CATCH_UP_S
            caught_up = False
            while time.monotonic() < deadline:
                status = self.finpulse("status", "--json", timeout=120)
                if status.returncode == 0:
                    totals = json.loads(status.stdout)["totals"]
                    if totals["postgres_lag"] == 0 and totals["delta_lag"] == 0:
                        caught_up = True
                        break
                time.sleep(2)
        finally:
            monitor.stop.set()
            feed.kill()
            if self.ingest is not None and self.ingest.poll() is None:
                os.killpg(self.ingest.pid, signal.SIGTERM)
                try:
                    self.ingest.wait(120)
                except subprocess.TimeoutExpired:
                    os.killpg(self.ingest.pid, signal.SIGKILL)
        verify = self.finpulse("verify", timeout=1800)
        status = json.loads(self.finpulse("status", "--json").stdout)
        text = self.ingest_log.read_text(errors="replace")
        report = {
            "minutes": a.minutes,
            "rate": a.rate,
            "partitions": a.partitions,
            "workers": a.workers,
            "messages": status["totals"]["messages"],
            "produced_ok": produced_ok,
            "caught_up": caught_up,
            "verify_exit": verify.returncode,
            "verify": verify.stdout.strip().splitlines()[-2:],
            "faults": [asdict(f) for f in self.faults],
            "worker_restarts": len(re.findall(r"restarting in", text)),
            "fenced_sessions": len(re.findall(r"ended PostgreSQL sessions", text)),
            "compactions": len(re.findall(r"background compaction:", text)),
        }
        return report


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="scripts/soak", description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--minutes", type=float, default=10.0, help="how long the feed runs (default 10)")
    p.add_argument("--rate", type=float, default=2000.0, help="ticks per second of the feed (default 2000)")
    p.add_argument("--every", type=float, default=60.0, help="seconds between faults (default 60)")
    p.add_argument("--partitions", type=int, default=4)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument(
        "--faults", default=",".join(FAULTS), help=f"comma list of faults (default: all of {', '.join(FAULTS)})"
    )
    args = p.parse_args(argv)
    args.faults = [f for f in args.faults.split(",") if f]
    unknown = set(args.faults) - set(FAULTS)
    if unknown:
        p.error(f"unknown faults: {', '.join(sorted(unknown))}")
    out_dir = ROOT / ".stack" / "soak"
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    work = out_dir / stamp
    work.mkdir()

    def stop(signum, _frame):  # SIGTERM / Ctrl+C: the private services are still stopped
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, stop)
    with ExitStack() as stack:
        log("starting private Kafka, PostgreSQL and Azurite")
        kafka = stack.enter_context(running(PrivateKafka))
        pg = stack.enter_context(running(PrivatePostgres))
        azurite = stack.enter_context(running(PrivateAzurite))
        report = Soak(args, kafka, pg, azurite, work).run()
    (work / "report.json").write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))
    ok = report["verify_exit"] == 0 and report["caught_up"]
    log(f"{'exact' if ok else 'NOT EXACT'}: verify exit {report['verify_exit']}; report {work / 'report.json'}")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
