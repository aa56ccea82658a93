"""How the Delta sink signs in to Azure (sinks/delta/azure.py): each way in becomes delta-rs options;
two ways, or a missing part, are one clear error with no secret in it."""

from __future__ import annotations

import pytest
from support.env import SECRET, clean_env

from finpulse.config import load_settings
from finpulse.errors import ConfigError
from finpulse.sinks.delta.azure import storage_options

AZURE = "abfss://delta-lake@acct.dfs.core.windows.net/prices"


@pytest.fixture
def env(monkeypatch, tmp_path):
    return clean_env(monkeypatch, tmp_path)


@pytest.mark.parametrize(
    "given, expected",
    [
        ({"AZURE_STORAGE_ACCOUNT_KEY": "k"}, {"account_key": "k"}),
        ({"AZURE_STORAGE_SAS_TOKEN": "?sv=2021&sig=x"}, {"sas_token": "sv=2021&sig=x"}),
        (
            {"AZURE_CLIENT_ID": "app", "AZURE_CLIENT_SECRET": "pw", "AZURE_TENANT_ID": "t"},
            {"client_id": "app", "client_secret": "pw", "tenant_id": "t"},
        ),
        (
            {"AZURE_CLIENT_ID": "app", "AZURE_TENANT_ID": "t", "AZURE_FEDERATED_TOKEN_FILE": "/var/run/token"},
            {"client_id": "app", "tenant_id": "t", "federated_token_file": "/var/run/token"},
        ),
        ({"AZURE_USE_MANAGED_IDENTITY": "true"}, {}),
        ({"AZURE_USE_MANAGED_IDENTITY": "true", "AZURE_CLIENT_ID": "uami"}, {"client_id": "uami"}),
    ],
    ids=["key", "sas", "service-principal", "workload-identity", "managed-identity", "user-assigned-identity"],
)
def test_each_azure_way_in_becomes_delta_rs_options(env, given, expected):
    env.setenv("AZURE_STORAGE_ACCOUNT_NAME", "acct")
    for k, v in given.items():
        env.setenv(k, v)
    s = load_settings()
    assert s.delta_uri == AZURE  # any way in makes Azure the default location
    assert storage_options(s) == {"account_name": "acct", **expected}


def test_two_azure_ways_or_a_missing_part_are_clear_errors(env):
    env.setenv("AZURE_STORAGE_ACCOUNT_NAME", "acct")
    env.setenv("AZURE_STORAGE_ACCOUNT_KEY", SECRET)
    env.setenv("AZURE_STORAGE_SAS_TOKEN", SECRET)
    with pytest.raises(ConfigError, match="account key.*SAS token") as err:
        storage_options(load_settings())
    assert SECRET not in str(err.value)
    env.delenv("AZURE_STORAGE_ACCOUNT_KEY")
    env.delenv("AZURE_STORAGE_SAS_TOKEN")
    env.setenv("AZURE_CLIENT_SECRET", SECRET)
    with pytest.raises(ConfigError, match="AZURE_CLIENT_ID, AZURE_TENANT_ID not set") as err:
        storage_options(load_settings(delta_table_uri=AZURE))
    assert SECRET not in str(err.value)
