"""Avro, Protobuf and JSON Schema through the schema registry, against the stack's registry and broker:
each lands exactly as its JSON twin; a mixed topic lands all; bad frames are rejects with the schema
id; a wrong password stops at start in one line; a registry outage pauses and loses nothing; a new
schema version mid-topic; a field mapping of Avro decimal and timestamp-micros."""

from __future__ import annotations

import datetime as dt
import decimal
import random
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import orjson
import psycopg
import pytest
from support import ROOT
from support.cli import env_for, finish, finpulse, start_ingest
from support.registry import PrivateRegistry, free_port
from support.sinks import delta_rows, pg_count, pg_rows
from support.stack import fresh_stack

from finpulse import encode, produce, registry
from finpulse.decode import Decoder, Messages
from finpulse.schema import TICKS

pytestmark = [pytest.mark.kafka, pytest.mark.postgres, pytest.mark.registry, pytest.mark.slow]

# every column of a row but kafka_time (each message of a twin pair is sent at its own time)
COLUMNS = tuple(f.name for f in TICKS if f.name != "kafka_time")
START = 1_765_000_000_000  # a fixed trade time: the twins' rows are equal to the µs


def _ticks(count: int, seed: int = 11) -> list[dict]:
    return list(produce.ticks(count, seed=seed, trade_ids=True, start_ms=START))


def _rejects(s) -> list[tuple[int, str, bytes]]:
    with psycopg.connect(s.postgres_conninfo()) as conn:
        rows = conn.execute("SELECT kafka_offset, reason, raw FROM prices_rejected").fetchall()
    return [(o, r, bytes(raw) if raw is not None else b"") for o, r, raw in rows]


def _wait(what: str, ok, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not ok():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout:.0f}s")
        time.sleep(0.5)


@pytest.mark.parametrize(
    "fmt,header",
    [("avro", False), ("avro", True), ("protobuf", False), ("json-schema", False)],
    ids=["avro", "avro-id-header", "protobuf", "json-schema"],
)
def test_a_registry_format_lands_exactly_as_its_json_twin(isolated, schema_registry, fmt, header):
    ticks = _ticks(300)
    with fresh_stack(prefix="twin") as twin:
        produce.send(twin, encode.encoded(twin, iter(ticks), "json"))
        produce.send(isolated, encode.encoded(isolated, iter(ticks), fmt, header=header))
        # one after the other: two drains at once on two cores starve the suite's other tests
        outs = [finish(start_ingest(env_for(s), "--drain", "--workers", "2"), timeout=180) for s in (isolated, twin)]
        assert "0 rejected" in outs[0], outs[0][-2000:]
        for read in (pg_rows, delta_rows):
            framed, plain = sorted(read(isolated, COLUMNS)), sorted(read(twin, COLUMNS))
            assert len(framed) == 300
            assert framed == plain, f"{read.__name__}: {fmt} rows differ from JSON's"
    if header:  # a guid names no subject: status finds the subject and version that hold its schema
        in_use = orjson.loads(finpulse("status", "--json", env=env_for(isolated)).stdout)["schema_registry"]["in_use"]
        assert in_use and all(f"{isolated.kafka_topic}-value v1 (guid " in w for w in in_use.values()), in_use


def test_a_topic_of_json_avro_and_protobuf_lands_every_message(isolated, schema_registry):
    ticks = _ticks(300, seed=5)
    avro = encode.serializer(isolated, "avro", subject_name=f"{isolated.kafka_topic}-avro")
    proto = encode.serializer(isolated, "protobuf", subject_name=f"{isolated.kafka_topic}-protobuf")
    coders = [lambda t: orjson.dumps(t), avro, proto]
    produce.send(isolated, iter([(t["symbol"].encode(), coders[i % 3](t)) for i, t in enumerate(ticks)]))
    out = finpulse("ingest", "--drain", "--workers", "2", env=env_for(isolated)).stdout
    assert "ingested 300 ticks from 300 messages" in out, out
    values = ("symbol", "price", "size", "timestamp_ms", "exchange", "trade_id")
    expected = sorted(tuple(str(t[c]) if c == "trade_id" else t[c] for c in values) for t in ticks)
    assert sorted(pg_rows(isolated, values)) == expected
    assert sorted(delta_rows(isolated, values)) == expected
    st = orjson.loads(finpulse("status", "--json", env=env_for(isolated)).stdout)
    in_use = st["schema_registry"]["in_use"]
    assert set(in_use) == {"0", "1", "2", "3"}
    assert all(w == "plain JSON" or "-avro v1" in w or "-protobuf v1" in w for w in in_use.values()), in_use


def test_unknown_ids_and_corrupt_payloads_are_rejects_naming_the_schema(isolated, schema_registry):
    ticks = _ticks(20, seed=3)
    avro = encode.serializer(isolated, "avro")
    good = [avro(t) for t in ticks]
    avro_id = int.from_bytes(good[0][1:5], "big")
    jschema = encode.serializer(isolated, "json-schema", subject_name=f"{isolated.kafka_topic}-js")
    js_frame = jschema(ticks[0])
    js_id = int.from_bytes(js_frame[1:5], "big")
    proto = encode.serializer(isolated, "protobuf", subject_name=f"{isolated.kafka_topic}-pb")
    pb_id = int.from_bytes(proto(ticks[0])[1:5], "big")
    bad = {
        "unknown id": (b"\x00" + (987_654).to_bytes(4, "big") + b"\x02ab", "schema id 987654 is unknown"),
        "truncated avro": (good[1][:9], f"payload does not match schema id {avro_id}"),
        "avro with bytes after it": (good[2] + b"\xff\xff", f"schema id {avro_id}"),
        "short frame": (b"\x00\x00\x01", "fewer than a zero byte and a 4-byte schema id"),
        "protobuf garbage": (b"\x00" + pb_id.to_bytes(4, "big") + b"\x00\xff\xff\xff\xff", f"schema id {pb_id}"),
        "json schema refuses": (
            js_frame[:5] + orjson.dumps({"symbol": "X", "size": 1.0}),
            "JSON schema refuses",
        ),
    }
    messages = [(b"k", v) for v in good[3:]] + [(b"k", v) for v, _ in bad.values()]
    produce.send(isolated, iter(messages))
    out = finpulse("ingest", "--drain", "--workers", "1", env=env_for(isolated)).stdout
    assert f"{len(bad)} rejected" in out, out
    assert pg_count(isolated) == len(good) - 3
    by_raw = {raw: reason for _, reason, raw in _rejects(isolated)}
    for name, (value, reason) in bad.items():
        assert value in by_raw, f"{name}: its raw bytes are not kept"
        assert reason in by_raw[value], f"{name}: {by_raw[value]!r}"
    assert f"schema id {js_id}" in by_raw[bad["json schema refuses"][0]]


def _secured() -> dict[str, str]:
    """The secured registry's settings from .stack/secure.env (scripts/services up)."""
    found = {}
    for line in (ROOT / ".stack" / "secure.env").read_text().splitlines():
        if line.startswith("SCHEMA_REGISTRY_"):
            key, _, value = line.partition("=")
            found[key] = value
    assert "SCHEMA_REGISTRY_BASIC_AUTH_USER_INFO" in found, "secure.env has no registry sign-in"
    return found


def test_a_wrong_registry_password_stops_ingest_at_start_in_one_line(isolated, schema_registry):
    secured = _secured()
    secret = "not-the-password-4711"
    env = env_for(isolated, **{**secured, "SCHEMA_REGISTRY_BASIC_AUTH_USER_INFO": f"finpulse:{secret}"})
    run = finpulse("ingest", "--drain", env=env, check=False, timeout=120)
    assert run.returncode not in (0, 1), run.stdout + run.stderr
    errors = [line for line in run.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, run.stderr
    assert "refused the sign-in (401)" in errors[0] and "https://localhost:8082" in errors[0], errors[0]
    assert secret not in run.stdout + run.stderr
    # the right password, over TLS from the local CA, is taken
    good = finpulse("status", "--json", env=env_for(isolated, **secured)).stdout
    assert orjson.loads(good)["schema_registry"]["url"] == "https://localhost:8082"


def test_the_registry_lines_of_a_kafka_properties_file_are_used(isolated, schema_registry, tmp_path: Path):
    """Confluent Cloud hands out one properties file for Kafka and its registry: its schema.registry.url
    and basic.auth.user.info lines reach the registry client (and never librdkafka)."""
    secured = _secured()
    props = tmp_path / "client.properties"
    props.write_text(
        f"bootstrap.servers={isolated.kafka_bootstrap_servers}\n"
        f"schema.registry.url={secured['SCHEMA_REGISTRY_URL']}\n"
        "basic.auth.credentials.source=USER_INFO\n"
        f"basic.auth.user.info={secured['SCHEMA_REGISTRY_BASIC_AUTH_USER_INFO']}\n"
    )
    env = env_for(
        isolated,
        KAFKA_CONFIG_FILE=str(props),
        SCHEMA_REGISTRY_SSL_CA_LOCATION=secured["SCHEMA_REGISTRY_SSL_CA_LOCATION"],
    )
    del env["SCHEMA_REGISTRY_URL"]
    # run where no .env names the stack's plain registry: the properties file alone says where it is
    run = subprocess.run(
        [sys.executable, "-m", "finpulse", "status", "--json"], env=env, cwd=tmp_path, capture_output=True, text=True
    )
    assert run.returncode == 0, run.stderr
    st = orjson.loads(run.stdout)
    assert st["schema_registry"]["url"] == "https://localhost:8082" and "schema_registry" not in st["errors"], st
    password = secured["SCHEMA_REGISTRY_BASIC_AUTH_USER_INFO"].split(":", 1)[1]
    assert password not in run.stdout + run.stderr


AVRO_V2 = {
    **encode.AVRO_TICK,
    "fields": [*encode.AVRO_TICK["fields"], {"name": "venue_seq", "type": ["null", "long"], "default": None}],
}


def test_a_registry_down_for_30s_pauses_and_loses_nothing_and_a_new_version_lands(isolated, tmp_path):
    from confluent_kafka.schema_registry.avro import AvroSerializer
    from confluent_kafka.serialization import MessageField, SerializationContext

    private = PrivateRegistry(tmp_path / "schemas.json")
    private.start()
    try:
        s = isolated.model_copy(update={"schema_registry_url": private.url})
        ticks = _ticks(2000, seed=8)
        v1 = encode.serializer(s, "avro")
        produce.send(s, iter([(t["symbol"].encode(), v1(t)) for t in ticks[:1000]]))
        port = free_port()
        env = env_for(s, FINPULSE_BATCH_SIZE="100", FINPULSE_METRICS_PORT=str(port))
        run = start_ingest(env)
        try:
            _wait("the first 1,000 rows", lambda: pg_count(s) == 1000, 120)
            # v2 adds an optional field: registered now, its messages sent while the registry is down
            ctx = SerializationContext(s.kafka_topic, MessageField.VALUE)
            v2 = AvroSerializer(registry.client(s), orjson.dumps(AVRO_V2).decode())
            v2({**encode.avro_record(ticks[1000]), "venue_seq": 1}, ctx)
            private.stop()
            v2_messages = [
                (t["symbol"].encode(), v2({**encode.avro_record(t), "venue_seq": i}, ctx))
                for i, t in enumerate(ticks[1000:])
            ]
            produce.send(s, iter(v2_messages))
            time.sleep(30)
            assert pg_count(s) == 1000, "rows landed that the registry was needed for"
            assert pg_count(s, "prices_rejected") == 0, "a registry outage made rejects"
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5)
                raise AssertionError("/readyz said ready while the registry was down")
            except urllib.error.HTTPError as exc:
                assert exc.code == 503 and b"decoder down" in exc.read()
            private.start()
            _wait("the 1,000 rows of v2", lambda: pg_count(s) == 2000, 120)
        finally:
            run.send_signal(2)
            out = finish(run, timeout=120)
        assert "cannot be reached" in out, out[-3000:]
        assert pg_count(s, "prices_rejected") == 0
        values = ("symbol", "price", "size", "timestamp_ms", "trade_id")
        expected = sorted(tuple(str(t[c]) if c == "trade_id" else t[c] for c in values) for t in ticks)
        assert sorted(pg_rows(s, values)) == expected
        assert sorted(delta_rows(s, values)) == expected
    finally:
        private.stop()


FX_V1 = {
    "type": "record",
    "name": "FxTrade",
    "fields": [
        {"name": "ticker", "type": "string"},
        {"name": "px", "type": {"type": "bytes", "logicalType": "decimal", "precision": 18, "scale": 6}},
        {"name": "qty", "type": "double"},
        {"name": "ts", "type": {"type": "long", "logicalType": "timestamp-micros"}},
        {"name": "venue", "type": ["null", "string"], "default": None},
        {"name": "tid", "type": ["null", "string"], "default": None},
    ],
}
FX_V2 = {**FX_V1, "fields": [f for f in FX_V1["fields"] if f["name"] != "px"]}  # drops the mapped price


def test_a_mapping_reads_avro_decimal_and_timestamp_micros_and_a_dropped_field_is_a_reject(
    isolated, schema_registry, tmp_path: Path
):
    from confluent_kafka.schema_registry.avro import AvroSerializer
    from confluent_kafka.serialization import MessageField, SerializationContext

    subject = f"{isolated.kafka_topic}-fx"
    mapping = tmp_path / "mapping.toml"
    mapping.write_text(
        f'[subjects."{subject}"]\nsymbol = "ticker"\nprice = "px"\nsize = "qty"\ntime = "ts"\n'
        'exchange = "venue"\ntrade_id = "tid"\nexchange_default = "FXALL"\n'
    )
    client = registry.client(isolated)
    strategy = {"subject.name.strategy": lambda _ctx, _name: subject}
    v1 = AvroSerializer(client, orjson.dumps(FX_V1).decode(), conf=strategy)
    v2 = AvroSerializer(client, orjson.dumps(FX_V2).decode(), conf=strategy)
    ctx = SerializationContext(isolated.kafka_topic, MessageField.VALUE)
    moment = dt.datetime(2026, 3, 2, 14, 30, 5, 123456, tzinfo=dt.UTC)
    records = [
        {"ticker": "EURUSD", "px": decimal.Decimal("1.084215"), "qty": 1e6, "ts": moment, "venue": None, "tid": "a1"},
        {"ticker": "GBPUSD", "px": decimal.Decimal("1.262001"), "qty": 5e5, "ts": moment, "venue": "EBS", "tid": "a2"},
    ]
    framed = [v1(r, ctx) for r in records]
    dropped = v2({k: v for k, v in records[0].items() if k != "px"}, ctx)
    v2_id = int.from_bytes(dropped[1:5], "big")
    produce.send(isolated, iter([(b"fx", v) for v in [*framed, dropped]]))

    check = finpulse("mapping", "check", str(mapping), "--sample", "10", "--json", env=env_for(isolated), check=False)
    assert check.returncode == 1, check.stdout + check.stderr
    seen = orjson.loads(check.stdout)
    assert [r["symbol"] for r in seen["rows"]] == ["EURUSD", "GBPUSD"]
    (reject,) = seen["rejects"]
    assert f"schema id {v2_id}" in reject["reason"] and "'px'" in reject["reason"], reject

    env = env_for(isolated, FINPULSE_MAPPING=str(mapping))
    out = finpulse("ingest", "--drain", "--workers", "1", env=env).stdout
    assert "1 rejected" in out, out
    cols = ("symbol", "price", "size", "trade_time", "exchange", "trade_id")
    rows = sorted(pg_rows(isolated, cols))
    assert rows == [
        ("EURUSD", 1.084215, 1e6, moment, "FXALL", "a1"),
        ("GBPUSD", 1.262001, 5e5, moment, "EBS", "a2"),
    ]
    assert sorted(delta_rows(isolated, cols)) == rows
    ((_, reason, _),) = _rejects(isolated)
    assert f"schema id {v2_id}" in reason and "no field 'px'" in reason and "as price" in reason, reason
    st = orjson.loads(finpulse("status", "--json", env=env).stdout)
    assert st["schema_registry"]["subjects"][subject]["latest_version"] == 2


def test_fuzzed_framed_payloads_are_rows_or_rejects_never_a_failure(isolated, schema_registry):
    """Mutations of framed Avro, Protobuf and JSON Schema ticks through the real decoder: every message
    becomes rows or a reject with its reason; nothing raises, nothing is lost."""
    ticks = _ticks(50, seed=9)
    frames = (
        [encode.serializer(isolated, "avro")(t) for t in ticks[:20]]
        + [encode.serializer(isolated, "protobuf", subject_name=f"{isolated.kafka_topic}-pb")(t) for t in ticks[20:35]]
        + [encode.serializer(isolated, "json-schema", subject_name=f"{isolated.kafka_topic}-js")(t) for t in ticks[35:]]
    )
    rng = random.Random(2026)
    values = []
    for i in range(3000):
        b = bytearray(rng.choice(frames))
        op = i % 4
        if op == 0:
            for _ in range(rng.randint(1, 4)):
                b[rng.randrange(5, len(b))] = rng.randrange(256)
        elif op == 1:
            del b[rng.randrange(5, len(b)) :]
        elif op == 2:
            b += bytes(rng.randrange(256) for _ in range(rng.randint(1, 8)))
        else:
            b[1:5] = rng.randrange(1, 50).to_bytes(4, "big")
        values.append(bytes(b))
    decoder = Decoder.from_settings(isolated)
    n = len(values)
    decoded = decoder.decode(Messages(values, [0] * n, list(range(n)), [START] * n))
    rows_at = set(decoded.ticks.column("kafka_offset").to_pylist())
    rejects_at = {r.offset for r in decoded.rejects}
    assert rows_at | rejects_at == set(range(n)), "messages neither landed nor rejected"
    assert not rows_at & rejects_at
    assert all(r.reason and r.raw == values[r.offset] for r in decoded.rejects)
    assert len(rejects_at) > n // 4, "the mutations should break many frames"


@pytest.mark.parametrize("fmt", ["avro", "avro message by message", "protobuf"])
def test_framed_batches_take_the_fast_path_and_land_as_the_careful_path_would(isolated, schema_registry, fmt):
    ticks = _ticks(500, seed=4)
    ticks[7]["side"], ticks[9]["trade_id"] = "sell", None
    by_message = fmt == "avro message by message"
    fmt = fmt.split()[0]
    one = encode.serializer(isolated, fmt, subject_name=f"{isolated.kafka_topic}-{fmt}")
    values = [one(t) for t in ticks]
    n = len(values)
    msgs = Messages(values, [1] * n, list(range(n)), [START] * n)
    decoder = Decoder.from_settings(isolated.model_copy(update={"avro_batch_decode": not by_message}))
    fast = decoder.fast(msgs)
    assert fast is not None, "a batch of canonical framed ticks went the careful way"
    assert fast.ticks.to_pylist() == decoder.careful(msgs).ticks.to_pylist()
    (reader,) = decoder.wire.readers.values()  # type: ignore[attr-defined]
    assert (reader.batch is not None) == (fmt == "avro" and not by_message), "Avro read a batch at once or not"
    # one odd tick (a symbol the rules refuse) sends the batch the careful way, which rejects only it
    ticks[3]["symbol"] = " "
    values[3] = one(ticks[3])
    msgs = Messages(values, [1] * n, list(range(n)), [START] * n)
    assert decoder.fast(msgs) is None
    decoded = decoder.decode(msgs)
    assert decoded.ticks.num_rows == n - 1 and [r.offset for r in decoded.rejects] == [3]


def _fx_proto():
    """A Protobuf FX trade of other names: a Timestamp for its time, a DoubleValue wrapper for its rate."""
    from google.protobuf import descriptor_pb2, descriptor_pool, timestamp_pb2, wrappers_pb2
    from google.protobuf.message_factory import GetMessageClass

    F = descriptor_pb2.FieldDescriptorProto
    fd = descriptor_pb2.FileDescriptorProto(name="fx/trade.proto", package="fx", syntax="proto3")
    fd.dependency.extend(["google/protobuf/timestamp.proto", "google/protobuf/wrappers.proto"])
    msg = fd.message_type.add(name="FxTrade")
    msg.field.add(name="pair", number=1, type=F.TYPE_STRING, label=F.LABEL_OPTIONAL)
    msg.field.add(name="rate", number=2, type=F.TYPE_MESSAGE, type_name=".google.protobuf.DoubleValue")
    msg.field.add(name="amount", number=3, type=F.TYPE_DOUBLE, label=F.LABEL_OPTIONAL)
    msg.field.add(name="at", number=4, type=F.TYPE_MESSAGE, type_name=".google.protobuf.Timestamp")
    pool = descriptor_pool.DescriptorPool()
    for dep in (timestamp_pb2, wrappers_pb2):
        pool.AddSerializedFile(dep.DESCRIPTOR.serialized_pb)
    pool.Add(fd)
    return GetMessageClass(pool.FindMessageTypeByName("fx.FxTrade"))


def test_a_mapping_reads_protobuf_timestamps_and_wrappers(isolated, schema_registry, tmp_path: Path):
    from confluent_kafka.schema_registry.protobuf import ProtobufSerializer
    from confluent_kafka.serialization import MessageField, SerializationContext

    subject = f"{isolated.kafka_topic}-fxpb"
    mapping = tmp_path / "mapping.toml"
    mapping.write_text(
        f'[subjects."{subject}"]\nsymbol = "pair"\nprice = "rate"\nsize = "amount"\ntime = "at"\n'
        'exchange_default = "EBS"\n'
    )
    trade = _fx_proto()
    ser = ProtobufSerializer(
        trade,
        registry.client(isolated),
        conf={"subject.name.strategy": lambda _ctx, _name: subject, "use.deprecated.format": False},
    )
    ctx = SerializationContext(isolated.kafka_topic, MessageField.VALUE)
    moment = dt.datetime(2026, 3, 2, 14, 30, 5, 654321, tzinfo=dt.UTC)
    msg = trade(pair="USDJPY", amount=2e6)
    msg.rate.value = 151.237
    msg.at.FromDatetime(moment)
    unpriced = trade(pair="USDJPY", amount=1.0)  # no rate: a wrapper left unset is a missing price
    values = [ser(msg, ctx), ser(unpriced, ctx)]
    s = isolated.model_copy(update={"mapping_file": mapping})
    decoded = Decoder.from_settings(s).decode(Messages(values, [0, 0], [0, 1], [int(moment.timestamp() * 1000)] * 2))
    rows = decoded.ticks.select(["symbol", "price", "size", "trade_time", "exchange"]).to_pylist()
    assert rows == [{"symbol": "USDJPY", "price": 151.237, "size": 2e6, "trade_time": moment, "exchange": "EBS"}]
    (reject,) = decoded.rejects
    assert reject.offset == 1 and "rate" in reject.reason, reject.reason


def test_plain_json_with_headers_of_other_names_keeps_the_fast_path(isolated, schema_registry):
    """A producer's own headers (tracing, say) are no registry framing: with a registry configured,
    a batch of canonical JSON that carries them still decodes column by column."""
    values = [orjson.dumps(t) for t in _ticks(100, seed=6)]
    headers = [[("traceparent", b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")]] * 100
    msgs = Messages(values, [0] * 100, list(range(100)), [START] * 100, headers)
    decoder = Decoder.from_settings(isolated)
    fast = decoder.fast(msgs)
    assert fast is not None and fast.ticks.num_rows == 100
