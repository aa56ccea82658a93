"""Where ticks land. Each sink writes rows and its own offsets in one atomic step."""

from __future__ import annotations

from finpulse.config import Settings
from finpulse.sinks.base import Sink


def open_sinks(settings: Settings, topic_id: str | None = None) -> list[Sink]:
    """The sinks `settings.sinks` names, PostgreSQL first. `topic_id`: Kafka's id of the topic,
    stored with every position they write (None: keep what is stored)."""
    from finpulse.sinks.delta import DeltaSink
    from finpulse.sinks.postgres import PostgresSink

    sinks: list[Sink] = []
    if "postgres" in settings.sink_names:
        sinks.append(PostgresSink(settings.postgres_conninfo(), settings.kafka_topic, topic_id))
    if "delta" in settings.sink_names:
        sinks.append(DeltaSink(settings.delta_uri, settings.delta_storage_options, settings.kafka_topic, topic_id))
    return sinks


def prepare_sinks(settings: Settings) -> None:
    """Tables of the chosen sinks exist (idempotent) and can take our rows (SinkRejected if not)."""
    from finpulse.sinks.delta import create_table
    from finpulse.sinks.postgres import create_tables

    if "postgres" in settings.sink_names:
        create_tables(settings.postgres_conninfo(), settings.postgres_schema)
    if "delta" in settings.sink_names:
        create_table(settings.delta_uri, settings.delta_storage_options)


__all__ = ["Sink", "open_sinks", "prepare_sinks"]
