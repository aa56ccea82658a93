"""Settings (config.py): defaults, the environment and .env under the flags, errors that name the
variable, secrets never shown, PostgreSQL's connection string."""

from __future__ import annotations

import pytest
from psycopg.conninfo import conninfo_to_dict
from pydantic import ValidationError
from support.env import SECRET
from support.env import clean_env as no_settings

from finpulse.config import Settings, load_settings
from finpulse.errors import ConfigError
from finpulse.sinks.delta.azure import storage_options


@pytest.fixture
def clean_env(monkeypatch, tmp_path):
    return no_settings(monkeypatch, tmp_path)


def test_defaults_are_the_original_projects(clean_env):
    s = load_settings()
    assert (s.kafka_topic, s.kafka_group_id, s.kafka_bootstrap_servers) == (
        "raw_prices",
        "finpulse-price-consumer",
        "localhost:29092",
    )
    assert (s.postgres_port, s.postgres_db, s.postgres_user, s.batch_size) == (5433, "finpulse", "finpulse", 5)
    assert s.delta_uri.endswith("data/delta/prices") and storage_options(s) == {}


def test_env_then_flags(clean_env):
    clean_env.setenv("FINPULSE_BATCH_SIZE", "50")
    clean_env.setenv("KAFKA_TOPIC", "ticks")
    assert load_settings().batch_size == 50
    assert load_settings(batch_size=7, kafka_topic=None).batch_size == 7
    assert load_settings(batch_size=7).kafka_topic == "ticks"


def test_malformed_value_names_the_variable(clean_env):
    clean_env.setenv("POSTGRES_PORT", "fivefour")
    with pytest.raises(ConfigError, match="POSTGRES_PORT"):
        load_settings()
    with pytest.raises(ConfigError, match="--batch-size"):
        load_settings(batch_size=0)


def test_missing_password_says_what_to_do(clean_env):
    with pytest.raises(ConfigError, match="POSTGRES_PASSWORD"):
        load_settings().postgres_conninfo()


def test_secrets_never_show(clean_env):
    clean_env.setenv("POSTGRES_PASSWORD", "hunter2-secret")
    clean_env.setenv("AZURE_STORAGE_ACCOUNT_KEY", "azure-secret-key")
    s = load_settings()
    assert "hunter2" not in repr(s) and "azure-secret" not in repr(s)
    assert "hunter2" not in s.postgres_display()
    clean_env.setenv("POSTGRES_PORT", "hunter2-secret")
    with pytest.raises(ConfigError) as err:
        load_settings()
    assert "hunter2" not in str(err.value)


def test_delta_uri_precedence(clean_env):
    clean_env.setenv("AZURE_STORAGE_ACCOUNT_NAME", "acct")
    clean_env.setenv("AZURE_STORAGE_ACCOUNT_KEY", "k")
    s = load_settings()
    assert s.delta_uri == "abfss://delta-lake@acct.dfs.core.windows.net/prices"
    assert storage_options(s) == {"account_name": "acct", "account_key": "k"}
    clean_env.setenv("DELTA_TABLE_URI", "/tmp/x")
    assert load_settings().delta_uri == "/tmp/x"


def test_azure_uri_without_credentials_is_a_clear_error(clean_env):
    s = load_settings(delta_table_uri="abfss://c@a.dfs.core.windows.net/prices")
    with pytest.raises(ConfigError, match="AZURE_STORAGE_ACCOUNT_KEY"):
        _ = storage_options(s)


def test_settings_are_frozen(clean_env):
    s = load_settings()
    with pytest.raises(ValidationError):
        s.batch_size = 9  # type: ignore[misc]
    assert isinstance(s, Settings)


def test_postgres_tls_keepalives_and_statement_timeout(clean_env):
    s = load_settings(
        postgres_password=SECRET, postgres_sslmode="verify-full", postgres_sslrootcert="/ca.pem", postgres_host="db"
    )
    info = conninfo_to_dict(s.postgres_conninfo())
    assert (info["sslmode"], info["sslrootcert"], info["host"]) == ("verify-full", "/ca.pem", "db")
    assert info["keepalives"] == "1" and int(info["keepalives_idle"]) > 0 and int(info["tcp_user_timeout"]) > 0
    assert "statement_timeout=120000" in info["options"]
    assert SECRET not in s.postgres_display() and SECRET not in repr(s)


def test_one_postgres_url_replaces_the_parts(clean_env):
    clean_env.setenv("POSTGRES_URL", f"postgresql://app:{SECRET}@pg.example.com:6432/ticks?sslmode=require")
    s = load_settings(postgres_sslrootcert="/ca.pem")
    info = conninfo_to_dict(s.postgres_conninfo())
    assert (info["host"], info["port"], info["dbname"], info["user"]) == ("pg.example.com", "6432", "ticks", "app")
    assert (info["password"], info["sslmode"], info["sslrootcert"]) == (SECRET, "require", "/ca.pem")
    assert s.postgres_display() == "postgresql://app@pg.example.com:6432/ticks"
    assert SECRET not in repr(s)
    with pytest.raises(ConfigError, match="POSTGRES_URL") as err:
        load_settings(postgres_url=f"mysql://a:{SECRET}@h/d").postgres_conninfo()
    assert SECRET not in str(err.value)


AZURE = "abfss://delta-lake@acct.dfs.core.windows.net/prices"


def test_an_extra_env_file_is_read_over_dotenv(clean_env, tmp_path):
    (tmp_path / ".env").write_text("KAFKA_TOPIC=from-dotenv\nKAFKA_GROUP_ID=g1\n")
    secure = tmp_path / "secure.env"
    secure.write_text(f"KAFKA_TOPIC=from-secure\nKAFKA_SASL_PASSWORD={SECRET}\n")
    clean_env.setenv("FINPULSE_ENV_FILE", str(secure))
    s = load_settings()
    assert (s.kafka_topic, s.kafka_group_id) == ("from-secure", "g1")
    assert s.kafka_sasl_password is not None and s.kafka_sasl_password.get_secret_value() == SECRET
    clean_env.setenv("FINPULSE_ENV_FILE", str(tmp_path / "nope.env"))
    with pytest.raises(ConfigError, match="FINPULSE_ENV_FILE"):
        load_settings()
