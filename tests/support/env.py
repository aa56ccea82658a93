"""A process environment without any of FinPulse's settings, for tests of how settings are read."""

from __future__ import annotations

import pytest

SECRET = "s3cr3t-Do-Not-Print"  # a secret no output may ever show

SETTINGS_VARS = (
    "KAFKA_TOPIC",
    "POSTGRES_PORT",
    "FINPULSE_BATCH_SIZE",
    "FINPULSE_SINKS",
    "KAFKA_BOOTSTRAP_SERVERS",
    "KAFKA_SECURITY_PROTOCOL",
    "KAFKA_SASL_MECHANISM",
    "KAFKA_SASL_USERNAME",
    "KAFKA_SASL_PASSWORD",
    "KAFKA_SSL_CA_LOCATION",
    "KAFKA_SSL_CERTIFICATE_LOCATION",
    "KAFKA_SSL_KEY_LOCATION",
    "KAFKA_SSL_KEY_PASSWORD",
    "KAFKA_CONFIG_FILE",
    "POSTGRES_URL",
    "POSTGRES_PASSWORD",
    "POSTGRES_SSLMODE",
    "POSTGRES_SSLROOTCERT",
    "DELTA_TABLE_URI",
    "AZURE_STORAGE_ACCOUNT_NAME",
    "AZURE_STORAGE_ACCOUNT_KEY",
    "AZURE_STORAGE_SAS_TOKEN",
    "AZURE_CLIENT_ID",
    "AZURE_CLIENT_SECRET",
    "AZURE_TENANT_ID",
    "AZURE_FEDERATED_TOKEN_FILE",
    "AZURE_USE_MANAGED_IDENTITY",
    "AZURE_STORAGE_USE_EMULATOR",
    "FINPULSE_ENV_FILE",
)


def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path) -> pytest.MonkeyPatch:
    """No setting from the environment, and no .env (the working directory is `tmp_path`)."""
    monkeypatch.chdir(tmp_path)
    for var in SETTINGS_VARS:
        monkeypatch.delenv(var, raising=False)
    return monkeypatch
