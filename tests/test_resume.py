"""Resume's checks of the sinks against the topic before anything is read (resume.py): the tables
belong to the topic at all (two topics' keys collide in them), and data loss (Spark's
failOnDataLoss): a recreated topic and a retention gap stop ingest and replay with one line, and
--allow-data-loss goes on and records the gap."""

from __future__ import annotations

import json
import time

import pytest
from confluent_kafka import TopicPartition
from support.cli import env_for, finpulse
from support.sinks import pg_count

from finpulse import source

pytestmark = [pytest.mark.kafka, pytest.mark.postgres, pytest.mark.slow]


def recreate(s) -> None:
    client = source.admin(s)
    client.delete_topics([s.kafka_topic])[s.kafka_topic].result(timeout=30)
    deadline = time.monotonic() + 60
    while True:  # deletion completes in the background; creating too early fails with "marked for deletion"
        try:
            if source.create_topic(s, 4):
                return
        except Exception:  # noqa: BLE001 - retried until the deadline
            pass
        assert time.monotonic() < deadline, "topic could not be recreated"
        time.sleep(0.5)


def test_a_retention_gap_is_refused_then_accepted_and_reported(isolated):
    env = env_for(isolated, FINPULSE_BATCH_SIZE="100")
    finpulse("produce", "--count", "2000", env=env)
    finpulse("ingest", "--drain", env=env, timeout=180)
    finpulse("produce", "--count", "2000", "--seed", "8", env=env)
    marks = source.watermarks(isolated)
    # retention deletes messages nobody ingested yet: everything but the last 10 of each partition
    cut = [TopicPartition(isolated.kafka_topic, p, high - 10) for p, (_, high) in marks.items()]
    client = source.admin(isolated)  # keep a reference: the futures die with their client
    for fut in client.delete_records(cut).values():
        fut.result(timeout=30)

    refused = finpulse("ingest", "--drain", env=env, check=False, timeout=180)
    assert refused.returncode == 6, refused.stderr
    line = refused.stderr.strip().splitlines()[-1]
    assert f"data loss on topic {isolated.kafka_topic}" in line and "deleted by retention" in line
    assert "--allow-data-loss" in line and "partition 0" in line
    rows = pg_count(isolated)
    assert rows == 2000, "nothing was written"
    replay = finpulse("replay", "--from-offset", "0", env=env, check=False, timeout=180)
    assert replay.returncode == 6 and "data loss" in replay.stderr

    finpulse("ingest", "--drain", "--allow-data-loss", env=env, timeout=180)
    assert pg_count(isolated) == 2000 + 40  # the last 10 of each partition
    status = json.loads(finpulse("status", "--json", env=env).stdout)
    assert sorted((g["partition"], g["reason"]) for g in status["gaps"]) == [(p, "retention") for p in range(4)]
    assert all(g["to_offset"] == marks[g["partition"]][1] - 10 for g in status["gaps"])
    verified = finpulse("verify", env=env, timeout=180).stdout
    assert "gap accepted with --allow-data-loss: partition 0" in verified
    # accepted once: the next run goes on without a word
    finpulse("ingest", "--drain", env=env, timeout=180)


def test_a_recreated_topic_is_refused_then_accepted_without_touching_old_rows(isolated):
    env = env_for(isolated, FINPULSE_BATCH_SIZE="100")
    finpulse("produce", "--count", "2000", env=env)
    finpulse("ingest", "--drain", env=env, timeout=180)
    recreate(isolated)
    finpulse("produce", "--count", "40", env=env)  # the new topic ends below the old positions

    refused = finpulse("ingest", "--drain", env=env, check=False, timeout=180)
    assert refused.returncode == 6, refused.stderr
    line = refused.stderr.strip().splitlines()[-1]
    assert "deleted and recreated" in line and "POSTGRES_SCHEMA" in line

    finpulse("ingest", "--drain", "--allow-data-loss", env=env, timeout=180)
    assert pg_count(isolated) == 2000, "the old topic's rows are kept, never deleted"
    status = json.loads(finpulse("status", "--json", env=env).stdout)
    assert {g["reason"] for g in status["gaps"]} == {"recreated"}
    finpulse("verify", env=env, timeout=180)
    finpulse("ingest", "--drain", env=env, timeout=180)  # accepted once: no second refusal


def test_a_recreated_topic_is_detected_by_its_id_after_it_grew_past_the_old_positions(isolated):
    env = env_for(isolated, FINPULSE_BATCH_SIZE="100")
    finpulse("produce", "--count", "40", env=env)
    finpulse("ingest", "--drain", env=env, timeout=180)
    recreate(isolated)
    finpulse("produce", "--count", "2000", env=env)
    refused = finpulse("ingest", "--drain", env=env, check=False, timeout=180)
    assert refused.returncode == 6 and "its topic id changed" in refused.stderr, refused.stderr


def test_a_second_topic_pointed_at_the_same_tables_is_refused_in_one_line(isolated):
    """KAFKA_TOPIC changed, tables not: the second topic's offsets are the first's keys. Ingest
    stalled for ever on 23505 while Delta mixed both; now it stops at once, saying what to do."""
    env = env_for(isolated)
    finpulse("produce", "--count", "2000", env=env)
    finpulse("ingest", "--drain", env=env)
    other = isolated.model_copy(update={"kafka_topic": isolated.kafka_topic + "-b"})
    source.create_topic(other, 4)
    try:
        env_b = env_for(other)
        finpulse("produce", "--count", "500", env=env_b)
        for sinks, says in (("all", "POSTGRES_SCHEMA"), ("delta", "DELTA_TABLE_URI")):
            refused = finpulse("ingest", "--drain", "--sinks", sinks, env=env_b, check=False, timeout=120)
            assert refused.returncode == 4, refused.stdout + refused.stderr
            assert f"{isolated.kafka_topic!r}" in refused.stderr or "another topic" in refused.stderr
            assert says in refused.stderr
        assert pg_count(isolated) == 2000
    finally:
        client = source.admin(other)  # keep a reference: the future dies with its client
        client.delete_topics([other.kafka_topic])[other.kafka_topic].result(timeout=30)
