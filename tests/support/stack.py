"""A fresh stack for one test: a topic, consumer group, PostgreSQL schema and local Delta table of
its own on the running services, so no test sees another's rows or rebalances another's group."""

from __future__ import annotations

import shutil
import sys
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg

from finpulse import source
from finpulse.config import Settings, load_settings
from finpulse.sinks import prepare_sinks


@contextmanager
def fresh_stack(
    base: Settings | None = None,
    partitions: int = 4,
    prefix: str = "test",
    create: bool = True,
    own_topic: bool = True,
    **overrides: Any,
) -> Iterator[Settings]:
    """Settings on `base` (default: the environment and .env) with a topic, group, schema and Delta
    table named after a fresh tag; `overrides` win. `create`: make the topic (`partitions`) and the
    sinks' tables (prepare_sinks, what `finpulse init` makes); False leaves that to the test.
    `own_topic`: False keeps base's topic (a shared backlog) and neither makes nor deletes it.
    Afterwards the schema, the topic and the table's folder are removed, best effort (a private
    service that took them with it is not an error)."""
    tag = uuid.uuid4().hex[:10]
    folder = Path(tempfile.mkdtemp(prefix=f"finpulse-{prefix}-"))
    fields: dict[str, Any] = {
        "kafka_group_id": f"{prefix}-{tag}",
        "postgres_schema": f"{prefix.replace('-', '_')}_{tag}",
        "delta_table_uri": str(folder / "delta" / "prices"),
    }
    if own_topic:
        fields["kafka_topic"] = f"{prefix}-{tag}"
    if base is not None:
        fields = {**base.model_dump(exclude_unset=True), **fields}
    s = load_settings(**{**fields, **overrides})
    if create:
        if own_topic:
            source.create_topic(s, partitions)
        prepare_sinks(s)
    try:
        yield s
    finally:
        try:
            with psycopg.connect(s.postgres_conninfo(), autocommit=True, connect_timeout=5) as conn:
                conn.execute(f"DROP SCHEMA IF EXISTS {s.postgres_schema} CASCADE")
        except psycopg.Error as exc:
            print(f"cleanup: schema {s.postgres_schema} not dropped: {exc}", file=sys.stderr)
        if own_topic:
            try:
                client = source.admin(s)  # keep a reference: the futures die with their client
                client.delete_topics([s.kafka_topic])[s.kafka_topic].result(timeout=30)
            except Exception as exc:  # never made (create=False and refused), or its broker is gone
                print(f"cleanup: topic {s.kafka_topic} not deleted: {exc}", file=sys.stderr)
        shutil.rmtree(folder, ignore_errors=True)
