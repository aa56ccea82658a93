"""Fixtures that use the real local stack (`scripts/services up`). A service that cannot be
reached fails the test with what to run; it never skips.

Only fixtures (and the order files run in) live here; the helpers test modules import are in
`tests/support/`."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from support import ROOT
from support.durations import SLOW_FILES
from support.stack import fresh_stack

from finpulse import source
from finpulse.config import Settings, load_settings
from finpulse.errors import ConfigError, ServiceUnavailable

AZURITE_ACCOUNT = "devstoreaccount1"
# Azurite's published development key (the same for every Azurite install).
AZURITE_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
AZURITE_PORT = 10000

os.chdir(ROOT)  # Settings read .env from the working directory, as the CLI does


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The slowest files first, each file's tests in their own order. pytest-xdist's `--dist
    loadfile` hands whole files to its processes in collection order: alphabetically, the long
    files (faults, registry, resume...) came last and ran on alone after the rest had finished."""
    items.sort(key=lambda item: -SLOW_FILES.get(item.path.name, 0))


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


@pytest.fixture(scope="session")
def schema_registry(base_settings: Settings) -> Settings:
    """The stack's schema registry (SCHEMA_REGISTRY_URL, which `scripts/services up` writes into .env)."""
    from finpulse import registry

    if not registry.configured(base_settings):
        pytest.fail("SCHEMA_REGISTRY_URL is not set; `scripts/services up` writes it into .env", pytrace=False)
    try:
        registry.check(base_settings)
    except ServiceUnavailable as exc:
        _unreachable("The schema registry", str(exc))
    return base_settings


@pytest.fixture
def isolated(kafka: Settings, postgres: Settings, tmp_path: Path) -> Iterator[Settings]:
    """A fresh topic (4 partitions), consumer group, PostgreSQL schema and local Delta table for one
    test (support.stack.fresh_stack): no rebalance of one test waits for a member another left."""
    with fresh_stack(delta_table_uri=str(tmp_path / "delta" / "prices")) as s:
        yield s
