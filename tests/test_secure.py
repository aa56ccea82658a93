"""The main flows over the local stack's secured endpoints (`scripts/services up` writes
.stack/secure.env): Kafka over SASL_SSL with SCRAM-SHA-512, PostgreSQL with verify-full TLS, and
Delta on Azurite with a SAS token and no account key. And refusals: fast, one line, no secrets."""

from __future__ import annotations

import time
import uuid

import psycopg
import pytest
from support import ROOT
from support.cli import env_for, finpulse
from support.metrics import Run, get, scrape, series, value, wait_for
from support.sinks import assert_exactly_once, delta_rows, pg_count, pg_rows, produced
from support.stack import fresh_stack

from finpulse.config import Settings

SECURE_ENV = ROOT / ".stack" / "secure.env"
OTHER_CA = ROOT / ".stack" / "tls" / "other-ca.pem"

pytestmark = [pytest.mark.kafka, pytest.mark.postgres, pytest.mark.azurite]


@pytest.fixture(scope="session")
def secure() -> dict[str, str]:
    """The variables of .stack/secure.env."""
    if not SECURE_ENV.is_file():
        pytest.fail(f"{SECURE_ENV} is missing; `scripts/services up` writes it", pytrace=False)
    pairs = (line.split("=", 1) for line in SECURE_ENV.read_text().splitlines() if "=" in line and line[0] != "#")
    return {k.strip(): v.strip() for k, v in pairs}


@pytest.fixture
def secured(secure, kafka, postgres, azurite):
    """Settings for one test over the secured endpoints: its own topic, schema and Delta table on
    Azurite. Nothing is created here: the test's `finpulse init` does that over TLS."""
    tag = uuid.uuid4().hex[:10]
    table = f"abfss://delta-lake@devstoreaccount1.dfs.core.windows.net/secure-{tag}/prices"
    lower = {k.lower(): v for k, v in secure.items()}
    with fresh_stack(prefix="secure", create=False, delta_table_uri=table, **lower) as s:
        assert s.azure_storage_account_key is None and s.kafka_security_protocol == "SASL_SSL"
        yield s


def secure_env(s: Settings, secure: dict[str, str], **extra: str) -> dict[str, str]:
    return env_for(s, **{**secure, **extra})


def test_init_produce_ingest_replay_verify_over_tls_sasl_and_sas(secured, secure, tmp_path):
    env = secure_env(secured, secure)
    total = 6_000
    finpulse("init", env=env)
    finpulse("produce", "--count", str(total), env=env)
    run = Run(tmp_path, env, "--metrics-port", "0")
    try:  # the metrics of a run over the secured endpoints agree with what the sinks hold
        port = run.port()

        def landed() -> bool:
            samples = scrape(port)
            written = [value(samples, "finpulse_ticks_written_total", sink=k) for k in ("postgres", "delta")]
            lag = series(samples, "finpulse_lag_messages")
            return written == [total, total] and len(lag) == 8 and not any(lag.values())

        wait_for(landed, "every tick in both sinks, by the metrics", run=run)
        assert pg_count(secured) == len(delta_rows(secured)) == total
        assert get(port, "/readyz")[0] == 200
    finally:
        assert run.stop() == 0, run.tail()

    with psycopg.connect(secured.postgres_conninfo()) as conn:  # the test reads over TLS too
        assert conn.execute("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()").fetchone() == (True,)
    expected = produced(total)
    assert_exactly_once(pg_rows(secured), expected, "postgres over TLS")
    assert_exactly_once(delta_rows(secured), expected, "delta on azurite with a SAS token")
    assert finpulse("verify", env=env).returncode == 0

    # lose a slice of partition 0 in PostgreSQL; verify finds it, replay puts it back, over TLS
    with psycopg.connect(secured.postgres_conninfo(), autocommit=True) as conn:
        lost = conn.execute(
            "DELETE FROM prices_raw WHERE kafka_partition = 0 AND kafka_offset BETWEEN 10 AND 59"
        ).rowcount
    assert lost > 0
    assert finpulse("verify", env=env, check=False).returncode != 0
    finpulse("replay", "--partition", "0", "--from-offset", "0", "--sink", "postgres", env=env)
    assert finpulse("verify", env=env).returncode == 0
    assert_exactly_once(pg_rows(secured), expected, "postgres after replay")


def _refused(env: dict[str, str], secret: str, *args: str) -> str:
    """Run a command that must be refused: it ends by itself, quickly, with one line naming the
    settings to check and no secret; its stderr."""
    started = time.monotonic()
    run = finpulse(*args, env=env, check=False, timeout=60)
    took = time.monotonic() - started
    lines = [line for line in run.stderr.splitlines() if line.strip()]
    assert run.returncode == 2, f"exit {run.returncode} after {took:.1f}s:\n{run.stderr}"
    assert len(lines) == 1 and "Traceback" not in run.stderr, run.stderr
    assert secret not in run.stderr + run.stdout
    return lines[0]


def test_a_wrong_kafka_password_is_an_authentication_failure_at_once(secured, secure):
    wrong = "not-the-password-" + uuid.uuid4().hex[:6]
    env = secure_env(secured, secure, KAFKA_SASL_PASSWORD=wrong)
    for args in (("init",), ("ingest", "--drain"), ("produce", "--count", "10")):
        line = _refused(env, wrong, *args)
        assert "refused the credentials" in line and "KAFKA_SASL_PASSWORD" in line, line


def test_an_untrusted_ca_is_refused_by_kafka_and_postgresql(secured, secure):
    assert OTHER_CA.is_file(), "scripts/services up creates .stack/tls/other-ca.pem"
    env = secure_env(secured, secure, KAFKA_SSL_CA_LOCATION=str(OTHER_CA))
    line = _refused(env, secure["KAFKA_SASL_PASSWORD"], "init")
    assert "TLS handshake failed" in line and "KAFKA_SSL_CA_LOCATION" in line, line

    env = secure_env(secured, secure, POSTGRES_SSLROOTCERT=str(OTHER_CA))
    finpulse("init", env=secure_env(secured, secure))  # Kafka is fine; PostgreSQL refuses next
    line = _refused(env, secure["KAFKA_SASL_PASSWORD"], "ingest", "--drain")
    assert "POSTGRES_SSLROOTCERT" in line and "certificate verify failed" in line, line


def test_a_sas_token_works_beside_an_empty_account_key_and_keys_finpulse_does_not_read(secured, secure):
    """Docker's env_file and Kubernetes turn .env.example's blank `AZURE_STORAGE_ACCOUNT_KEY=` into an
    empty variable; delta-rs read it from the environment and signed with an empty key, so a valid
    SAS token was refused. An account key under a name FinPulse does not read did the same."""
    env = secure_env(secured, secure, AZURE_STORAGE_ACCOUNT_KEY="", AZURE_STORAGE_ACCESS_KEY="bm90LXRoZS1rZXk=")
    finpulse("init", env=env)
    finpulse("produce", "--count", "300", env=env)
    finpulse("ingest", "--drain", "--sinks", "delta", env=env, timeout=180)
    assert len(delta_rows(secured)) == 300


def test_a_sas_token_azurite_does_not_accept_is_refused_at_once(secured, secure):
    token = secure["AZURE_STORAGE_SAS_TOKEN"]
    forged = token[: token.index("sig=") + 4] + "Zm9yZ2Vk"  # a signature the account key did not make
    env = secure_env(secured, secure, AZURE_STORAGE_SAS_TOKEN=forged)
    line = _refused(env, "Zm9yZ2Vk", "init")
    assert "storage refused access" in line and "AZURE_STORAGE_SAS_TOKEN" in line, line
