"""Dead-letter copies: values cut to the producer's size limit, bounded reasons, producer errors
that never stop a worker, and a DLQ topic with fewer partitions than the source."""

from __future__ import annotations

import threading
import time

import psycopg
import pytest
from confluent_kafka import Producer
from confluent_kafka.admin import AlterConfigOpType, ConfigEntry, ConfigResource, ResourceType
from support.cli import env_for, finpulse
from support.sinks import read_topic

from finpulse import source
from finpulse.config import load_settings
from finpulse.deadletter import MAX_VALUE_BYTES, MESSAGE_MAX_BYTES, QUEUE_WAIT_S, REASON_MAX_BYTES, DeadLetters
from finpulse.decode import Reject

MIB = 1 << 20


class _Recorder:
    """Stands in for the confluent_kafka Producer: keeps what would be produced."""

    def __init__(self):
        self.records: list[dict] = []

    def produce(self, topic, value=None, partition=None, headers=None, on_delivery=None):
        self.records.append({"topic": topic, "value": value, "partition": partition, "headers": dict(headers)})

    def poll(self, timeout=0):
        return 0

    def flush(self, timeout=0):
        return 0


def _dead_letters(partitions: int | None = None) -> DeadLetters:
    # nothing listens on port 1: these tests never reach a broker (partitions is set by hand)
    s = load_settings(kafka_bootstrap_servers="127.0.0.1:1", kafka_topic="src", dlq_topic="src-dlq")
    dl = DeadLetters(s)
    dl.partitions = partitions
    return dl


class _Full(_Recorder):
    """A producer whose queue never empties: the DLQ's partition leader is offline."""

    def produce(self, *args, **kwargs):
        raise BufferError("Local: Queue full")


def test_a_full_producer_queue_holds_a_worker_up_for_a_second_at_most_and_never_past_a_stop():
    """With the DLQ's leader offline and many rejects, send() looped on poll() for ever: the worker
    ignored SIGTERM and overran max.poll.interval.ms. Now it gives up on the copies after
    QUEUE_WAIT_S (they stay in prices_rejected), and at once once the worker is stopping."""
    dl = _dead_letters(partitions=1)
    dl.producer = _Full()
    rejects = [Reject(0, o, -1, "unknown", "bad", b"x", None) for o in range(500)]
    done = threading.Event()
    worker = threading.Thread(target=lambda: (dl.send(rejects), done.set()), daemon=True)
    began = time.monotonic()
    worker.start()
    assert done.wait(QUEUE_WAIT_S + 5), "send() still blocked on a full queue"
    assert time.monotonic() - began < QUEUE_WAIT_S + 1 and dl.failed == 500
    dl.stop.set()
    began = time.monotonic()
    dl.send(rejects)
    assert time.monotonic() - began < 0.5 and dl.failed == 1000


def test_a_large_reject_is_cut_to_fit_with_its_length_in_a_header_and_the_reason_is_bounded():
    dl = _dead_letters(partitions=1)
    dl.producer = _Recorder()
    big = b"{" + b"x" * (3 * MIB)
    reason = "\u00e9" * 3000  # 6000 bytes of two-byte characters
    dl.send([Reject(3, 17, -1, "unknown", reason, big, None), Reject(2, 5, 1, "binance", "bad price", b"{}", None)])
    cut, small = dl.producer.records
    assert len(cut["value"]) == MAX_VALUE_BYTES < MESSAGE_MAX_BYTES and cut["value"] == big[:MAX_VALUE_BYTES]
    assert cut["headers"]["finpulse.truncated"] == str(len(big)).encode()
    assert len(cut["headers"]["finpulse.reason"]) <= REASON_MAX_BYTES
    assert cut["headers"]["finpulse.reason"].decode() == "\u00e9" * (REASON_MAX_BYTES // 2)
    assert cut["headers"]["finpulse.source"] == b"src/3/17"
    assert small["value"] == b"{}" and "finpulse.truncated" not in small["headers"]
    assert small["headers"]["finpulse.reason"] == b"bad price" and small["headers"]["finpulse.tick_index"] == b"1"
    assert {r["partition"] for r in dl.producer.records} == {0}  # 3 % 1, 2 % 1


def test_dead_letter_partition_is_the_source_partition_modulo_the_dlq_count():
    dl = _dead_letters(partitions=3)
    dl.producer = _Recorder()
    dl.send([Reject(p, 0, -1, "unknown", "bad", b"x", None) for p in range(7)])
    assert [r["partition"] for r in dl.producer.records] == [0, 1, 2, 0, 1, 2, 0]


def test_a_producer_error_is_logged_and_counted_never_raised(caplog):
    dl = _dead_letters(partitions=1)  # the real librdkafka producer, which refuses this locally
    too_big = b"y" * (MESSAGE_MAX_BYTES + 1)
    dl._produce(Reject(0, 9, -1, "unknown", "bad", too_big, None), too_big, [], 0, time.monotonic() + 1)
    assert dl.failed == 1
    assert "not sent to src-dlq" in caplog.text and "src/0/9" in caplog.text
    dl.close(timeout=1)


@pytest.mark.kafka
@pytest.mark.postgres
@pytest.mark.slow
def test_rejects_reach_a_one_partition_dlq_and_a_huge_one_arrives_truncated(isolated):
    s = isolated
    dlq = f"{s.kafka_topic}-dlq"
    dlq_settings = s.model_copy(update={"kafka_topic": dlq})
    assert source.create_topic(dlq_settings, 1)  # made beforehand, with 1 partition; the source has 4
    client = source.admin(s)
    try:
        # the source topic (and our producer) must take a 1.5 MiB message; the DLQ keeps its defaults
        resource = ConfigResource(
            ResourceType.TOPIC,
            s.kafka_topic,
            incremental_configs=[
                ConfigEntry("max.message.bytes", str(4 * MIB), incremental_operation=AlterConfigOpType.SET)
            ],
        )
        client.incremental_alter_configs([resource])[resource].result(timeout=30)

        huge = b'{"symbol": "A", "price": ' + b"9" * int(1.5 * MIB)  # broken JSON, 1.5 MiB
        bad = {p: [b"\xff not utf-8 %d" % p, b'{"symbol": "A"}'] for p in range(4)}
        bad[2].append(huge)
        good = [b'{"symbol":"A","price":1,"size":1,"timestamp_ms":1700000000000}'] * 20
        p = Producer({"bootstrap.servers": s.kafka_bootstrap_servers, "message.max.bytes": 4 * MIB})
        errors = []
        for part in range(4):
            for value in good[:10] + bad[part] + good[10:]:
                p.produce(
                    s.kafka_topic,
                    value=value,
                    partition=part,
                    on_delivery=lambda err, _m: err is not None and errors.append(err.str()),
                )
        assert p.flush(30) == 0 and errors == []

        env = env_for(s, FINPULSE_BATCH_SIZE="10", FINPULSE_MAX_MESSAGE_BYTES=str(4 * MIB))
        out = finpulse("ingest", "--drain", "--dlq-topic", dlq, env=env)
        assert "not sent" not in out.stdout + out.stderr and "not delivered" not in out.stdout + out.stderr

        expected = [v for vs in bad.values() for v in vs]
        with psycopg.connect(s.postgres_conninfo()) as conn:  # the exactly-once record keeps every byte
            raws = sorted(bytes(r[0]) for r in conn.execute("SELECT raw FROM prices_rejected").fetchall())
        assert raws == sorted(expected)

        seen = read_topic(s, dlq, len(expected))

        assert len(seen) == len(expected), f"{len(seen)} of {len(expected)} dead letters arrived"
        assert {part for part, _, _ in seen} == {0}
        sources = sorted(h["finpulse.source"].decode().split("/")[1] for _, _, h in seen)
        assert sources == sorted(str(part) for part, vs in bad.items() for _ in vs)
        truncated = [(v, h) for _, v, h in seen if "finpulse.truncated" in h]
        assert len(truncated) == 1
        value, headers = truncated[0]
        assert headers["finpulse.truncated"] == str(len(huge)).encode()
        assert len(value) == MAX_VALUE_BYTES and huge.startswith(value)
        assert sorted(v for _, v, h in seen if "finpulse.truncated" not in h) == sorted(
            v for v in expected if v is not huge
        )
        assert all(0 < len(h["finpulse.reason"]) <= REASON_MAX_BYTES for _, _, h in seen)
    finally:
        client.delete_topics([dlq])[dlq].result(timeout=30)
