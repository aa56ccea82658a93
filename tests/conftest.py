"""Fixtures that use the real local stack (`scripts/services up`). A service that cannot be
reached fails the test with what to run; it never skips.

Only fixtures live here; the helpers test modules import are in `tests/support/`."""

from __future__ import annotations

import os
import socket
import uuid
from pathlib import Path

import psycopg
import pytest
from support import ROOT

from finpulse import source
from finpulse.config import Settings, load_settings
from finpulse.errors import ConfigError, ServiceUnavailable
from finpulse.sinks.delta.azure import storage_options
from finpulse.sinks.delta.table import create_table as create_delta_table
from finpulse.sinks.postgres.setup import create_tables

AZURITE_ACCOUNT = "devstoreaccount1"
# Azurite's published development key (the same for every Azurite install).
AZURITE_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
AZURITE_PORT = 10000

os.chdir(ROOT)  # Settings read .env from the working directory, as the CLI does


def _unreachable(what: str, detail: str) -> None:
    pytest.fail(f"{what} is not reachable ({detail}); start the local stack with `scripts/services up`", pytrace=False)


@pytest.fixture(scope="session")
def base_settings() -> Settings:
    return load_settings()


@pytest.fixture(scope="session")
def kafka(base_settings: Settings) -> Settings:
    try:
        source.partitions(base_settings, topic="finpulse-reachability-probe")
    except ConfigError:
        pass  # the broker answered: the probe topic just does not exist
    except ServiceUnavailable as exc:
        _unreachable("Kafka", str(exc))
    return base_settings


@pytest.fixture(scope="session")
def postgres(base_settings: Settings) -> Settings:
    try:
        psycopg.connect(base_settings.postgres_conninfo()).close()
    except psycopg.Error as exc:
        _unreachable("PostgreSQL", str(exc).strip())
    return base_settings


@pytest.fixture(scope="session")
def azurite() -> dict[str, str]:
    try:
        socket.create_connection(("127.0.0.1", AZURITE_PORT), timeout=3).close()
    except OSError as exc:
        _unreachable("Azurite", str(exc))
    return {
        "AZURE_STORAGE_ACCOUNT_NAME": AZURITE_ACCOUNT,
        "AZURE_STORAGE_ACCOUNT_KEY": AZURITE_KEY,
        "AZURE_STORAGE_USE_EMULATOR": "true",
    }


@pytest.fixture
def isolated(kafka: Settings, postgres: Settings, tmp_path: Path) -> Settings:
    """A fresh topic (4 partitions), consumer group, PostgreSQL schema and local Delta table for one
    test: no rebalance of one test waits for a member another test left behind."""
    tag = uuid.uuid4().hex[:10]
    s = load_settings(
        kafka_topic=f"test-{tag}",
        kafka_group_id=f"test-{tag}",
        postgres_schema=f"t_{tag}",
        delta_table_uri=str(tmp_path / "delta" / "prices"),
    )
    source.create_topic(s, 4)
    create_tables(s.postgres_conninfo(), s.postgres_schema)
    create_delta_table(s.delta_uri, storage_options(s))
    yield s
    with psycopg.connect(s.postgres_conninfo(), autocommit=True) as conn:
        conn.execute(f"DROP SCHEMA IF EXISTS {s.postgres_schema} CASCADE")
    client = source.admin(s)
    client.delete_topics([s.kafka_topic])[s.kafka_topic].result(timeout=30)
