"""How FinPulse signs in to Azure Data Lake: one of five ways, turned into delta-rs storage options.

| way | settings | delta-rs (object_store) options |
| --- | --- | --- |
| account key | AZURE_STORAGE_ACCOUNT_KEY | account_key |
| SAS token | AZURE_STORAGE_SAS_TOKEN | sas_token |
| service principal | AZURE_CLIENT_ID, AZURE_CLIENT_SECRET, AZURE_TENANT_ID | client_id, client_secret, tenant_id |
| workload identity | AZURE_CLIENT_ID, AZURE_TENANT_ID, AZURE_FEDERATED_TOKEN_FILE | client_id, tenant_id, federated_token_file |
| managed identity | AZURE_USE_MANAGED_IDENTITY=true (AZURE_CLIENT_ID for a user-assigned one) | none: object_store asks the instance metadata endpoint |

Exactly one way may be set: two are a ConfigError naming both, so a forgotten key never silently
wins over the SAS token an operator meant to use.

delta-rs also reads `AZURE_*` variables from the process environment and adds them to the options
it is given: an account key found there is used even when the options carry a SAS token, and so
an empty `AZURE_STORAGE_ACCOUNT_KEY=` (what Docker's env_file and Kubernetes make of a blank line
in .env.example) made a valid SAS token be refused. So when FinPulse builds the options it removes
from this process's environment (and so from the workers it spawns) every credential variable
delta-rs would read: the options already carry the way FinPulse chose, and nothing else may add to
it. Empty `AZURE_*` variables go too: empty means unset, everywhere.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from finpulse.errors import ConfigError

if TYPE_CHECKING:
    from finpulse.config import Settings

WAYS = {
    "account key": ("AZURE_STORAGE_ACCOUNT_KEY",),
    "SAS token": ("AZURE_STORAGE_SAS_TOKEN",),
    "service principal": ("AZURE_CLIENT_ID", "AZURE_CLIENT_SECRET", "AZURE_TENANT_ID"),
    "workload identity": ("AZURE_CLIENT_ID", "AZURE_TENANT_ID", "AZURE_FEDERATED_TOKEN_FILE"),
    "managed identity": ("AZURE_USE_MANAGED_IDENTITY",),
}


def methods(s: Settings) -> list[str]:
    """The ways in that the settings name (their distinguishing variable is set)."""
    found = []
    if s.azure_storage_account_key is not None:
        found.append("account key")
    if s.azure_storage_sas_token is not None:
        found.append("SAS token")
    if s.azure_client_secret is not None:
        found.append("service principal")
    if s.azure_federated_token_file is not None:
        found.append("workload identity")
    if s.azure_use_managed_identity:
        found.append("managed identity")
    return found


# The environment variables delta-rs (object_store's Azure configuration) reads as credentials.
_CREDENTIAL_VARIABLES = (
    "AZURE_STORAGE_ACCOUNT_KEY",
    "AZURE_STORAGE_ACCESS_KEY",
    "AZURE_STORAGE_MASTER_KEY",
    "AZURE_STORAGE_SAS_KEY",
    "AZURE_STORAGE_SAS_TOKEN",
    "AZURE_STORAGE_TOKEN",
    "AZURE_STORAGE_CLIENT_ID",
    "AZURE_CLIENT_ID",
    "AZURE_STORAGE_CLIENT_SECRET",
    "AZURE_CLIENT_SECRET",
    "AZURE_STORAGE_TENANT_ID",
    "AZURE_STORAGE_AUTHORITY_ID",
    "AZURE_TENANT_ID",
    "AZURE_AUTHORITY_ID",
    "AZURE_FEDERATED_TOKEN_FILE",
    "AZURE_USE_AZURE_CLI",
)
# Where a managed identity is asked for a token: kept for that way (App Service, Arc set them).
_IDENTITY_VARIABLES = ("AZURE_MSI_ENDPOINT", "AZURE_IDENTITY_ENDPOINT", "AZURE_OBJECT_ID", "AZURE_MSI_RESOURCE_ID")


def isolate_environment(way: str) -> None:
    """Remove what delta-rs would add to FinPulse's choice from this process's environment: every
    credential variable (the options carry the chosen way's values), the identity endpoint ones
    unless the way is managed identity, and every empty AZURE_* variable."""
    drop = set(_CREDENTIAL_VARIABLES) | (set() if way == "managed identity" else set(_IDENTITY_VARIABLES))
    for name in [n for n in os.environ if n.startswith("AZURE_")]:
        if name in drop or not os.environ[name].strip():
            del os.environ[name]


AZURE_SCHEMES = ("abfss://", "abfs://", "az://", "azure://")


def storage_options(settings: Settings) -> dict[str, str]:
    """delta-rs storage options for the table settings.delta_uri names ({} for a local path)."""
    uri = settings.delta_uri
    return azure_options(settings, uri) if uri.startswith(AZURE_SCHEMES) else {}


def azure_options(s: Settings, uri: str) -> dict[str, str]:
    """delta-rs storage options for an Azure URI; ConfigError when the way in is missing,
    ambiguous or incomplete (the message names the variables, never their values)."""
    ways = methods(s)
    if not ways:
        raise ConfigError(
            f"DELTA_TABLE_URI is an Azure URI ({uri}) but no way to sign in is set: give "
            "AZURE_STORAGE_ACCOUNT_KEY, AZURE_STORAGE_SAS_TOKEN, a service principal (AZURE_CLIENT_ID, "
            "AZURE_CLIENT_SECRET, AZURE_TENANT_ID), workload identity (AZURE_FEDERATED_TOKEN_FILE) "
            "or AZURE_USE_MANAGED_IDENTITY=true"
        )
    if len(ways) > 1:
        names = " and ".join(f"{w} ({', '.join(WAYS[w])})" for w in ways)
        raise ConfigError(f"Azure: both {names} are set; keep one way to sign in")
    if not s.azure_storage_account_name:
        raise ConfigError(f"DELTA_TABLE_URI is an Azure URI ({uri}) but AZURE_STORAGE_ACCOUNT_NAME is not set")
    way = ways[0]
    missing = [v for v in WAYS[way] if getattr(s, v.lower()) in (None, "")]
    if missing:
        raise ConfigError(f"Azure {way}: {', '.join(missing)} not set")
    options: dict[str, str] = {"account_name": s.azure_storage_account_name}
    secret = {
        "account key": lambda: {"account_key": _reveal(s.azure_storage_account_key)},
        "SAS token": lambda: {"sas_token": _reveal(s.azure_storage_sas_token).lstrip("?")},
        "service principal": lambda: {
            "client_id": s.azure_client_id or "",
            "client_secret": _reveal(s.azure_client_secret),
            "tenant_id": s.azure_tenant_id or "",
        },
        "workload identity": lambda: {
            "client_id": s.azure_client_id or "",
            "tenant_id": s.azure_tenant_id or "",
            "federated_token_file": s.azure_federated_token_file or "",
        },
        "managed identity": lambda: {"client_id": s.azure_client_id} if s.azure_client_id else {},
    }[way]()
    options.update(secret)
    if s.azure_storage_use_emulator:
        options["use_emulator"] = "true"
    isolate_environment(way)
    return options


def _reveal(secret) -> str:
    return secret.get_secret_value() if secret is not None else ""
