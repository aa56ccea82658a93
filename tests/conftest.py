"""Fixtures that use the real local stack (`scripts/services up`). A service that cannot be
reached fails the test with what to run; it never skips."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import uuid
from pathlib import Path

import psycopg
import pytest

from finpulse import source
from finpulse.config import Settings, load_settings
from finpulse.errors import ConfigError, ServiceUnavailable
from finpulse.sinks.delta import create_table as create_delta_table
from finpulse.sinks.postgres import create_tables

ROOT = Path(__file__).resolve().parent.parent
AZURITE_ACCOUNT = "devstoreaccount1"
# Azurite's published development key (the same for every Azurite install).
AZURITE_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
AZURITE_PORT = 10000

os.chdir(ROOT)  # Settings read .env from the working directory, as the CLI does


def _unreachable(what: str, detail: str) -> None:
    pytest.fail(f"{what} is not reachable ({detail}); start the local stack with `scripts/services up`",
                pytrace=False)


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
    return {"AZURE_STORAGE_ACCOUNT_NAME": AZURITE_ACCOUNT, "AZURE_STORAGE_ACCOUNT_KEY": AZURITE_KEY,
            "AZURE_STORAGE_USE_EMULATOR": "true"}


@pytest.fixture
def isolated(kafka: Settings, postgres: Settings, tmp_path: Path) -> Settings:
    """A fresh topic (4 partitions), PostgreSQL schema and local Delta table for one test."""
    tag = uuid.uuid4().hex[:10]
    s = load_settings(kafka_topic=f"test-{tag}", postgres_schema=f"t_{tag}",
                      delta_table_uri=str(tmp_path / "delta" / "prices"))
    source.create_topic(s, 4)
    create_tables(s.postgres_conninfo(), s.postgres_schema)
    create_delta_table(s.delta_uri, s.delta_storage_options)
    yield s
    with psycopg.connect(s.postgres_conninfo(), autocommit=True) as conn:
        conn.execute(f"DROP SCHEMA IF EXISTS {s.postgres_schema} CASCADE")
    client = source.admin(s)
    client.delete_topics([s.kafka_topic])[s.kafka_topic].result(timeout=30)


def env_for(s: Settings, **extra: str) -> dict[str, str]:
    """Environment that makes a `finpulse` subprocess use the same topic, schema and table as `s`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KAFKA_", "POSTGRES_", "DELTA_", "AZURE_", "FINPULSE_"))}
    env.update(
        KAFKA_BOOTSTRAP_SERVERS=s.kafka_bootstrap_servers, KAFKA_TOPIC=s.kafka_topic, KAFKA_GROUP_ID=s.kafka_group_id,
        POSTGRES_HOST=s.postgres_host, POSTGRES_PORT=str(s.postgres_port), POSTGRES_DB=s.postgres_db,
        POSTGRES_USER=s.postgres_user, POSTGRES_SCHEMA=s.postgres_schema,
        POSTGRES_PASSWORD=s.postgres_password.get_secret_value() if s.postgres_password else "",
        DELTA_TABLE_URI=s.delta_uri, PYTHONUNBUFFERED="1",
    )
    env.update(extra)
    return env


def finpulse(*args: str, env: dict[str, str], check: bool = True, timeout: float = 300,
             **kw) -> subprocess.CompletedProcess:
    """Run the real CLI in a subprocess, as a user would."""
    proc = subprocess.run([sys.executable, "-m", "finpulse", *args], env=env, cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout, **kw)
    if check and proc.returncode != 0:
        raise AssertionError(f"finpulse {' '.join(args)} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc


# ---------------------------------------------------------------------------- reading the sinks
VALUE_COLUMNS = ("symbol", "price", "size", "timestamp_ms", "exchange")
KEY_COLUMNS = ("kafka_partition", "kafka_offset", "tick_index")


def pg_rows(s: Settings, columns=VALUE_COLUMNS + KEY_COLUMNS) -> list[tuple]:
    with psycopg.connect(s.postgres_conninfo()) as conn:
        return conn.execute(f"SELECT {', '.join(columns)} FROM prices_raw").fetchall()


def pg_count(s: Settings, table: str = "prices_raw") -> int:
    with psycopg.connect(s.postgres_conninfo()) as conn:
        return conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]


def delta_rows(s: Settings, columns=VALUE_COLUMNS + KEY_COLUMNS) -> list[tuple]:
    from deltalake import DeltaTable

    table = DeltaTable(s.delta_uri, storage_options=s.delta_storage_options).to_pyarrow_table(columns=list(columns))
    return list(zip(*(table.column(c).to_pylist() for c in columns)))


def produced(count: int, seed: int = 7) -> list[tuple]:
    """What `finpulse produce --count N --seed S` sent, as value tuples (order-free comparison)."""
    from finpulse.produce import ticks

    return [tuple(t[c] for c in VALUE_COLUMNS) for t in ticks(count, seed=seed, start_ms=0)]


def assert_exactly_once(rows: list[tuple], expected_values: list[tuple], where: str) -> None:
    keys = [r[len(VALUE_COLUMNS):] for r in rows]
    assert len(set(keys)) == len(keys), f"{where}: duplicate (partition, offset, tick_index) keys"
    assert len(rows) == len(expected_values), f"{where}: {len(rows)} rows, expected {len(expected_values)}"
    # produce stamps ticks from the wall clock; compare times relative to the first tick
    t = VALUE_COLUMNS.index("timestamp_ms")
    start = min(r[t] for r in rows)
    got = sorted(r[:t] + (r[t] - start,) + r[t + 1 : len(VALUE_COLUMNS)] for r in rows)
    assert got == sorted(expected_values), f"{where}: values differ from what was produced"
