import pytest
from pydantic import ValidationError

from finpulse.config import Settings, load_settings
from finpulse.errors import ConfigError
from finpulse.sinks.delta.azure import storage_options


@pytest.fixture
def clean_env(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # no .env here
    for var in (
        "KAFKA_TOPIC",
        "POSTGRES_PASSWORD",
        "POSTGRES_PORT",
        "DELTA_TABLE_URI",
        "AZURE_STORAGE_ACCOUNT_NAME",
        "AZURE_STORAGE_ACCOUNT_KEY",
        "AZURE_STORAGE_USE_EMULATOR",
        "FINPULSE_BATCH_SIZE",
    ):
        monkeypatch.delenv(var, raising=False)
    return monkeypatch


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
