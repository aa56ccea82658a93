"""Resume's checks of the sinks against the topic before anything is read: here, that the tables
belong to the topic at all (two topics' keys collide in them)."""

from __future__ import annotations

import pytest
from deltalake import write_deltalake
from support.cli import env_for, finpulse
from support.rules import span
from support.sinks import pg_count

from finpulse import source
from finpulse.errors import SinkRejected
from finpulse.sinks.delta import DeltaSink
from finpulse.sinks.delta.table import PARTITION_BY, create_table, with_partition_columns

pytestmark = [pytest.mark.postgres]


@pytest.mark.kafka
@pytest.mark.slow
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


def test_a_delta_table_records_its_topic_and_refuses_another(tmp_path, isolated):
    a = DeltaSink.from_settings(isolated)
    a.own_topic([0])  # a new table: recorded
    a.write(span(0, 0, 10))
    a.own_topic([0])  # its own again: fine
    b = DeltaSink(isolated.delta_uri, {}, "another-topic")
    with pytest.raises(SinkRejected, match="another topic than 'another-topic'"):
        b.own_topic([0])


def test_a_table_from_an_earlier_release_is_claimed_only_by_the_topic_of_its_positions(tmp_path, isolated):
    """No record of the topic yet (written before it existed): positions of this topic make it
    this topic's; rows without them are another's."""
    with_positions = DeltaSink(str(tmp_path / "old"), {}, "t1")
    create_table(with_positions.uri, {})
    with_positions.write(span(0, 0, 10))  # positions of t1, no record of the topic
    with_positions.own_topic([0])
    rows_only = str(tmp_path / "rows")
    create_table(rows_only, {})
    write_deltalake(rows_only, with_partition_columns(span(0, 0, 10).ticks), mode="append", partition_by=PARTITION_BY)
    with pytest.raises(SinkRejected):
        DeltaSink(rows_only, {}, "t1").own_topic([0])
