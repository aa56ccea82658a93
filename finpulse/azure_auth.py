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
"""

from __future__ import annotations

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


def storage_options(s: Settings, uri: str) -> dict[str, str]:
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
    return options


def _reveal(secret) -> str:
    return secret.get_secret_value() if secret is not None else ""
