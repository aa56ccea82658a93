"""Issue #9, nothing a message can do stops ingestion: hostile messages (tests/support/hostile/) through
the decoder, and through the whole pipeline (Kafka -> `finpulse ingest --drain --strict` ->
PostgreSQL and Delta -> `finpulse verify --strict`). The pipeline's topic mixes in registry-framed
Avro, Protobuf and JSON Schema messages, valid and hostile (hostile/framed.py), FRAMED_SHARE of all.

FINPULSE_FUZZ_COUNT (default 3000), FINPULSE_FUZZ_SEED (default 9) and FINPULSE_FUZZ_TIMEOUT
(seconds for ingest and verify each, default 240) size the pipeline run; `scripts/fuzz` runs it big.
"""

from __future__ import annotations

import math
import os
import random
import re
import subprocess
import threading
import time
from pathlib import Path

import psycopg
import pytest
from support import hostile
from support.cli import env_for, finpulse
from support.hostile.framed import framed

from finpulse import encode, produce
from finpulse.decode import MAX_FUTURE_US, MIN_TIMESTAMP_US, Decoder, Messages

COUNT = int(os.environ.get("FINPULSE_FUZZ_COUNT", "3000"))
SEED = int(os.environ.get("FINPULSE_FUZZ_SEED", "9"))
TIMEOUT = float(os.environ.get("FINPULSE_FUZZ_TIMEOUT", "240"))
FRAMED_SHARE = 0.15
MAX_REASON_CHARS = 1000
COLUMNS = (
    "symbol",
    "price",
    "size",
    "timestamp_ms",
    "trade_time",
    "exchange",
    "side",
    "trade_id",
    "kafka_time",
    "broker_time",
    "kafka_partition",
    "kafka_offset",
    "tick_index",
)
KEY = slice(10, 13)
LAST_STORABLE_MS = 253_402_300_799_999  # 9999-12-31T23:59:59.999Z, the last instant both sinks hold  # kafka_partition, kafka_offset, tick_index


def show(label: str, value: bytes | None) -> str:
    """A message for a failure report: its label and its first bytes."""
    return (
        f"{label}: {value[:300]!r}{'...' if len(value) > 300 else ''} ({len(value)} bytes)"
        if value is not None
        else f"{label}: None"
    )


def reason_problem(reason: str) -> str | None:
    if not reason:
        return "an empty reason"
    if "\x00" in reason:
        return "a NUL character in the reason"
    if len(reason) > MAX_REASON_CHARS:
        return f"a reason of {len(reason)} characters"
    return None


# ------------------------------------------------------------------------- the decoder alone
@pytest.mark.parametrize("strict", [False, True], ids=["default", "strict"])
def test_decoder_never_raises_and_accounts_for_every_message(strict):
    generated = list(hostile.messages(SEED, 2000))
    labels = [label for label, _ in generated]
    values = [value for _, value in generated]
    now_ms = int(time.time() * 1000)
    rng = random.Random(SEED)
    stamps = [rng.choice([now_ms, now_ms, now_ms, -1, 86_400_000]) for _ in values]  # -1: no Kafka timestamp
    decoder = Decoder(strict=strict)
    failures: list[str] = []

    def decode(indexes: range):
        msgs = Messages([values[i] for i in indexes], [0] * len(indexes), list(indexes), [stamps[i] for i in indexes])
        try:
            return decoder.decode(msgs)
        except Exception as exc:  # noqa: BLE001 - the point: nothing may escape
            failures.append(f"{type(exc).__name__}: {exc} on " + "; ".join(show(labels[i], values[i]) for i in indexes))
            return None

    # one message at a time: each yields ticks, a reject or a skip (never a skip under --strict)
    singles = {}
    for i in range(len(values)):
        out = decode(range(i, i + 1))
        if out is None:
            continue
        singles[i] = out
        if not (out.ticks.num_rows or out.rejects or out.skipped):
            failures.append(f"nothing came of {show(labels[i], values[i])}")
        if strict and out.skipped:
            failures.append(f"skipped under strict: {show(labels[i], values[i])}")
        for r in out.rejects:
            problem = reason_problem(r.reason)
            if problem:
                failures.append(f"{problem} ({r.reason[:120]!r}) for {show(labels[i], values[i])}")
            if r.raw != values[i] or r.offset != i:
                failures.append(f"reject lost its raw bytes or offset: {show(labels[i], values[i])}")
        if labels[i].startswith("broken:") and (out.ticks.num_rows or [r.tick_index for r in out.rejects] != [-1]):
            failures.append(f"broken message not rejected whole: {show(labels[i], values[i])}")
        if labels[i].startswith("valid:") and (out.rejects or not out.ticks.num_rows):
            failures.append(
                f"valid message did not land: {show(labels[i], values[i])}: {[r.reason for r in out.rejects]}"
            )
    assert not failures, f"{len(failures)} failures, first ones:\n" + "\n".join(failures[:15])

    # batches, as a worker decodes them (fast path, halves, careful path): the same ticks and rejects
    batch_ticks, batch_rejects, batch_skipped = [], [], 0
    for start in range(0, len(values), 500):
        out = decode(range(start, min(start + 500, len(values))))
        if out is not None:
            batch_ticks += out.ticks.to_pylist()
            batch_rejects += [(r.offset, r.tick_index, r.feed, r.reason) for r in out.rejects]
            batch_skipped += out.skipped
    assert not failures, f"{len(failures)} failures, first ones:\n" + "\n".join(failures[:15])
    single_ticks = [t for i in sorted(singles) for t in singles[i].ticks.to_pylist()]
    single_rejects = [(r.offset, r.tick_index, r.feed, r.reason) for i in sorted(singles) for r in singles[i].rejects]
    # (the fast path may take a message alone that, in a batch with odd ones, goes the careful way)
    alone = {(t["kafka_offset"], t["tick_index"]): t for t in single_ticks}
    together = {(t["kafka_offset"], t["tick_index"]): t for t in batch_ticks}
    differ = sorted(
        {k[0] for k in alone.keys() ^ together.keys()}
        | {k[0] for k in alone.keys() & together.keys() if alone[k] != together[k]}
    )
    assert not differ, f"{len(differ)} messages decode differently alone and in a batch:\n" + "\n".join(
        f"{show(labels[i], values[i])}\n  alone: {[(t['symbol'], t['exchange'], t['side']) for t in singles[i].ticks.to_pylist()]}"
        f" {[r.reason for r in singles[i].rejects]}\n  in a batch: "
        f"{[(t['symbol'], t['exchange'], t['side']) for t in batch_ticks if t['kafka_offset'] == i]}"
        f" {[r[3] for r in batch_rejects if r[0] == i]}"
        for i in differ[:6]
    )
    assert sorted(batch_rejects) == sorted(single_rejects)
    assert batch_skipped == sum(out.skipped for out in singles.values())

    # every tick is one both sinks can store, no later than a day after a usable record time
    def ceiling_ms(i: int) -> int:
        return stamps[i] + MAX_FUTURE_US // 1000 if stamps[i] == now_ms else LAST_STORABLE_MS

    bad = [
        t
        for t in single_ticks
        if not (
            t["symbol"]
            and t["symbol"].isprintable()
            and math.isfinite(t["price"])
            and t["price"] > 0
            and math.isfinite(t["size"])
            and t["size"] >= 0
            and MIN_TIMESTAMP_US // 1000 <= t["timestamp_ms"] <= ceiling_ms(t["kafka_offset"])
        )
        or any("\x00" in (t[c] or "") for c in ("symbol", "exchange", "side"))
    ]
    assert not bad, f"{len(bad)} ticks no sink should take, e.g. {bad[:3]} from " + "; ".join(
        show(labels[t["kafka_offset"]], values[t["kafka_offset"]]) for t in bad[:3]
    )
    assert len(single_ticks) > 500 and len(single_rejects) > 500, (len(single_ticks), len(single_rejects))


# ------------------------------------------------------------------------- the whole pipeline
def produce_all(settings, values: list[bytes | None], rng: random.Random) -> list[tuple[int, int]]:
    """Send every value to the topic, spread over its partitions; (partition, offset) of each."""
    from confluent_kafka import Producer
    from confluent_kafka.admin import AlterConfigOpType, ConfigEntry, ConfigResource, ResourceType

    from finpulse import source

    # room for the over-1-MiB messages, which the ingester must reject rather than never see
    topic = ConfigResource(
        ResourceType.TOPIC,
        settings.kafka_topic,
        incremental_configs=[
            ConfigEntry("max.message.bytes", str(8 * hostile.MIB), incremental_operation=AlterConfigOpType.SET)
        ],
    )
    client = source.admin(settings)  # kept alive until the change is acknowledged
    for future in client.incremental_alter_configs([topic]).values():
        future.result(timeout=30)
    partitions = source.partitions(settings)

    producer = Producer(
        {
            "bootstrap.servers": settings.kafka_bootstrap_servers,
            "linger.ms": 20,
            "compression.type": "lz4",
            "enable.idempotence": True,
            "message.max.bytes": 8 * hostile.MIB,
        }
    )
    positions: list[tuple[int, int] | None] = [None] * len(values)
    errors: list[str] = []

    def delivered(i, err, msg):
        if err is not None:
            errors.append(f"message {i}: {err.str()}")
        else:
            positions[i] = (msg.partition(), msg.offset())

    now_ms = int(time.time() * 1000)
    for i, value in enumerate(values):
        pick = rng.random()
        # most records carry a recent time; some the producer's default (now); a few 1970 (out of range)
        stamp = (
            {"timestamp": now_ms - rng.randrange(3_600_000)}
            if pick < 0.8
            else {}
            if pick < 0.95
            else {"timestamp": 86_400_000}
        )
        key = rng.choice([None, b"k%d" % (i % 13), b"\x00\xff"])
        while True:
            try:
                producer.produce(
                    settings.kafka_topic,
                    value=value,
                    key=key,
                    partition=rng.choice(partitions),
                    on_delivery=lambda err, msg, i=i: delivered(i, err, msg),
                    **stamp,
                )
                break
            except BufferError:
                producer.poll(0.05)
        producer.poll(0)
    assert producer.flush(120) == 0, "messages still unsent after 120 s"
    assert not errors, errors[:5]
    assert None not in positions
    return positions


def run(*args: str, env: dict[str, str]) -> tuple[subprocess.CompletedProcess, float]:
    """`finpulse ARGS` within TIMEOUT seconds. A watchdog ends the run's processes (the CLI and the
    workers it spawned, which hold its output pipes open) when time is up, and the test fails."""
    expired = threading.Event()

    def watchdog() -> None:
        expired.set()
        _end_processes_of(env["KAFKA_TOPIC"])

    timer = threading.Timer(TIMEOUT, watchdog)
    timer.start()
    started = time.monotonic()
    try:
        proc = finpulse(*args, env=env, check=False, timeout=TIMEOUT + 60)
    finally:
        timer.cancel()
    took = time.monotonic() - started
    if expired.is_set():
        pytest.fail(
            f"finpulse {' '.join(args)} still running after {TIMEOUT:.0f}s\n"
            f"{proc.stdout[-3000:]}\n{proc.stderr[-8000:]}"
        )
    return proc, took


def _end_processes_of(topic: str) -> None:
    """Kill, by pid, the processes this test started (their environment names its unique topic)."""
    marker = f"KAFKA_TOPIC={topic}".encode()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                if marker in (entry / "environ").read_bytes().split(b"\x00"):
                    os.kill(int(entry.name), 9)
            except (OSError, ValueError):
                pass


def framed_messages(settings, count: int) -> list[tuple[str, bytes]]:
    """`count` hostile framed messages, from frames the registry's own serializers wrote (one subject
    per format, as a topic of several formats needs)."""
    topic = settings.kafka_topic
    sources = list(produce.ticks(60, seed=SEED, trade_ids=True))
    frames = (
        [("avro", encode.serializer(settings, "avro")(t)) for t in sources[:20]]
        + [("protobuf", encode.serializer(settings, "protobuf", subject_name=f"{topic}-pb")(t)) for t in sources[20:40]]
        + [
            ("json-schema", encode.serializer(settings, "json-schema", subject_name=f"{topic}-js")(t))
            for t in sources[40:]
        ]
    )
    return list(framed(random.Random(SEED + 2), frames, count))  # type: ignore[arg-type]


@pytest.mark.kafka
@pytest.mark.postgres
@pytest.mark.registry
@pytest.mark.slow
def test_hostile_topic_drains_strictly_into_identical_sinks(isolated, schema_registry):
    n_framed = int(COUNT * FRAMED_SHARE)
    generated = list(hostile.messages(SEED, COUNT - n_framed)) + framed_messages(isolated, n_framed)
    random.Random(SEED + 3).shuffle(generated)
    labels = [label for label, _ in generated]
    values = [value for _, value in generated]
    positions = produce_all(isolated, values, random.Random(SEED + 1))
    index = {pos: i for i, pos in enumerate(positions)}
    # generated messages share trade ids: re-sent trades are kept as rows of prices_duplicates, so
    # every message is still accounted for (rows, duplicates, rejects) and nothing is dropped unseen
    env = env_for(isolated, FINPULSE_KEEP_DUPLICATES="true")

    proc, took = run("ingest", "--drain", "--strict", env=env)
    assert proc.returncode == 0, f"ingest exited {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-8000:]}"
    summary = re.search(
        r"ingested ([\d,]+) ticks from ([\d,]+) messages.* ([\d,]+) rejected, ([\d,]+) skipped, "
        r"(\d+) restarts",
        proc.stdout,
    )
    assert summary, proc.stdout[-3000:]
    ticks, msgs, rejected, skipped, restarts = (int(x.replace(",", "")) for x in summary.groups())

    with psycopg.connect(isolated.postgres_conninfo()) as conn:
        pg = conn.execute(f"SELECT {', '.join(COLUMNS)} FROM prices_raw").fetchall()
        rejects = conn.execute(
            "SELECT kafka_partition, kafka_offset, tick_index, feed, reason, raw FROM prices_rejected"
        ).fetchall()
        duplicates = conn.execute(f"SELECT {', '.join(COLUMNS)} FROM prices_duplicates").fetchall()
        orphans = conn.execute(
            "SELECT count(*) FROM prices_duplicates d WHERE NOT EXISTS (SELECT 1 FROM prices_raw r WHERE "
            "r.kafka_partition = d.kafka_partition AND r.exchange IS NOT DISTINCT FROM d.exchange "
            "AND r.symbol = d.symbol AND r.trade_id = d.trade_id "
            "AND (r.kafka_offset, r.tick_index) < (d.kafka_offset, d.tick_index))"
        ).fetchone()[0]
    from deltalake import DeltaTable

    table = DeltaTable(isolated.delta_uri).to_pyarrow_table(columns=list(COLUMNS))
    delta = list(zip(*(table.column(c).to_pylist() for c in COLUMNS)))

    assert orphans == 0, "duplicates whose trade never landed before them"
    landed = {r[KEY][:2] for r in pg} | {r[KEY][:2] for r in duplicates}
    rejected_at = {r[:2] for r in rejects}
    print(
        f"\nfuzz: {COUNT:,} messages ({n_framed:,} framed; {sum(len(v or b'') for v in values):,} bytes, seed {SEED}), "
        f"{len(pg):,} ticks from {len(landed):,} messages, {len(rejects):,} rejects in {len(rejected_at):,} "
        f"messages; ingest {took:.1f}s"
    )

    assert (msgs, skipped, restarts) == (COUNT, 0, 0), proc.stdout[-3000:] + proc.stderr[-8000:]
    assert (ticks, rejected) == (len(pg), len(rejects))

    # every message is rows, rejects or both (a frame with good and bad trades); nothing else is there
    missing = [i for i, pos in enumerate(positions) if pos not in landed and pos not in rejected_at]
    assert not missing, f"{len(missing)} messages neither landed nor rejected:\n" + "\n".join(
        show(labels[i], values[i]) for i in missing[:10]
    )
    assert (landed | rejected_at) <= set(index), "rows or rejects for messages never produced"
    unlanded = [
        i
        for i, label in enumerate(labels)
        if label.startswith("valid:") and (positions[i] not in landed or positions[i] in rejected_at)
    ]
    assert not unlanded, "valid messages that did not land whole:\n" + "\n".join(
        show(labels[i], values[i]) for i in unlanded[:10]
    )

    whole = {r[:2] for r in rejects if r[2] == -1}
    broken = [
        i
        for i, label in enumerate(labels)
        if label.startswith("broken:") and (positions[i] in landed or positions[i] not in whole)
    ]
    assert not broken, "broken messages not rejected whole:\n" + "\n".join(
        show(labels[i], values[i]) for i in broken[:10]
    )

    bad_rejects = []
    for partition, offset, _tick_index, feed, reason, raw in rejects:
        i = index[(partition, offset)]
        raw = bytes(raw) if raw is not None else None
        problem = reason_problem(reason) or (None if raw == values[i] else "raw bytes differ from those produced")
        if problem:
            bad_rejects.append(f"{problem}: [{feed}] {reason[:200]!r} for {show(labels[i], values[i])}")
    assert not bad_rejects, f"{len(bad_rejects)} bad rejects:\n" + "\n".join(bad_rejects[:10])

    # both sinks hold the very same ticks, each once
    pg_sorted = sorted(map(tuple, pg), key=lambda r: r[KEY])
    delta_sorted = sorted(delta, key=lambda r: r[KEY])
    assert len({r[KEY] for r in delta_sorted}) == len(delta_sorted), "duplicate keys in Delta"
    assert len(delta_sorted) == len(pg_sorted), f"Delta {len(delta_sorted)} ticks, PostgreSQL {len(pg_sorted)}"
    differ = [(a, b) for a, b in zip(pg_sorted, delta_sorted) if a != b]
    assert not differ, f"{len(differ)} ticks differ between PostgreSQL and Delta, e.g. {differ[:3]}"
    assert len(pg) > COUNT // 10 and len(rejects) > COUNT // 10, "the fuzz landed too little to prove anything"

    verified, took = run("verify", "--strict", env=env)
    assert verified.returncode == 0, (
        f"verify --strict exited {verified.returncode} after {took:.0f}s\n"
        f"{verified.stdout[-4000:]}\n{verified.stderr[-4000:]}"
    )
