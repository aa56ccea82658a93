"""The one mapping of delta-rs (and object_store) errors to FinPulse's, for every Delta module:
a store that refused our credentials is AccessRefused (no retry heals it), anything else
ServiceUnavailable (retry later); one line either way, as delta-rs adds an HTTP trace."""

from __future__ import annotations

from finpulse.errors import AccessRefused, FinpulseError, ServiceUnavailable, first_line

# object_store's words when the storage refused who we are: no retry heals it.
_STORE_REFUSALS = ("lacked the necessary privileges", "403 Forbidden", "401 Unauthorized", "AuthenticationFailed")


def unavailable(uri: str, what: str, exc: BaseException) -> FinpulseError:
    """A delta-rs error as FinPulse's: AccessRefused when the store refused our credentials,
    ServiceUnavailable (retry later) otherwise; one line either way (delta-rs adds an HTTP trace)."""
    text = str(exc)
    if any(r in text for r in _STORE_REFUSALS):
        return AccessRefused(
            f"storage refused access to the Delta table {uri} while {what} ({first_line(exc)}): check the "
            "Azure credentials (AZURE_STORAGE_SAS_TOKEN, AZURE_STORAGE_ACCOUNT_KEY or the identity in use) "
            "and their permissions"
        )
    return ServiceUnavailable(f"Delta table {uri}: {what} failed: {first_line(exc)}")
