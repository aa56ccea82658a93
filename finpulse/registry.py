"""The schema registry, as FinPulse reaches it: confluent-kafka's SchemaRegistryClient built from the
settings, and its errors as FinPulse's.

Where it is and how to sign in, later ones winning: the lines of KAFKA_CONFIG_FILE that Confluent
Cloud hands out (`schema.registry.url`, `basic.auth.user.info`, with
`basic.auth.credentials.source=USER_INFO`), then the named settings SCHEMA_REGISTRY_URL,
SCHEMA_REGISTRY_BASIC_AUTH_USER_INFO (user:password) and SCHEMA_REGISTRY_SSL_CA_LOCATION /
_CERTIFICATE_LOCATION / _KEY_LOCATION. No secret reaches a log line or an error: a URL is shown
without its user info, and the registry's own messages are quoted only for 4xx answers about a
schema, never for sign-in.

Two kinds of failure (STYLE 17): a registry that cannot be reached or answers 5xx is "not now"
(ServiceUnavailable: the worker pauses and retries); a wrong password or a refused certificate is
AccessRefused (one line at start); an id it does not know is the message's problem (a reject).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

from finpulse.errors import AccessRefused, ConfigError, ServiceUnavailable

if TYPE_CHECKING:
    from confluent_kafka.schema_registry import SchemaRegistryClient

    from finpulse.config import Settings

# Each request gets this long; the client's own retries are off: the worker's backoff retries,
# still reporting and serving its group, instead of a call that sleeps for tens of seconds.
TIMEOUT_S = 5


class Unknown(Exception):
    """The registry answered: no such schema (HTTP 404)."""


def configured(settings: Settings) -> bool:
    return _conf(settings) is not None


def _conf(settings: Settings) -> dict[str, Any] | None:
    from finpulse.kafka_config import read_properties

    props: dict[str, str] = {}
    if settings.kafka_config_file is not None:
        props = read_properties(settings.kafka_config_file)
    url = settings.schema_registry_url or props.get("schema.registry.url")
    if not url:
        return None
    conf: dict[str, Any] = {"url": url, "timeout": TIMEOUT_S, "max.retries": 0}
    user_info = settings.schema_registry_basic_auth_user_info
    if user_info is not None:
        conf["basic.auth.user.info"] = user_info.get_secret_value()
    elif props.get("basic.auth.user.info"):
        conf["basic.auth.user.info"] = props["basic.auth.user.info"]
    for name, value in (
        ("ssl.ca.location", settings.schema_registry_ssl_ca_location),
        ("ssl.certificate.location", settings.schema_registry_ssl_certificate_location),
        ("ssl.key.location", settings.schema_registry_ssl_key_location),
    ):
        if value:
            conf[name] = value
    return conf


def shown(url: str) -> str:
    """`url` without user info, for a person."""
    parts = urlsplit(url.split(",")[0])
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def where(settings: Settings) -> str | None:
    conf = _conf(settings)
    return None if conf is None else shown(conf["url"])


# One client per registry and sign-in for the process: it keeps its HTTP connections and its caches
# of schemas by id and of registrations, which every decoder, serializer and check then shares.
_clients: dict[tuple, SchemaRegistryClient] = {}


def client(settings: Settings) -> SchemaRegistryClient:
    """The client of the configured registry (ConfigError when none is, or its settings are wrong)."""
    conf = _conf(settings)
    key = tuple(sorted(conf.items())) if conf is not None else ()
    found = _clients.get(key)
    if found is None:
        found = _clients[key] = _new_client(conf)
    return found


def _new_client(conf: dict[str, Any] | None) -> SchemaRegistryClient:
    from confluent_kafka.schema_registry import SchemaRegistryClient

    if conf is None:
        raise ConfigError(
            "no schema registry is configured: set SCHEMA_REGISTRY_URL (or schema.registry.url in KAFKA_CONFIG_FILE)"
        )
    try:
        return SchemaRegistryClient(conf)
    except (ValueError, TypeError, OSError) as exc:
        raise ConfigError(
            f"schema registry settings ({shown(conf['url'])}): {_clean(str(exc), conf)}; check SCHEMA_REGISTRY_*"
        ) from None


def call(settings_where: str, what: str, fn, *args, **kwargs):
    """`fn(*args)` of the client, its failures as FinPulse's (Unknown for a 404)."""
    try:  # the HTTP client confluent-kafka's registry client uses: httpx2 where it is, else httpx
        import httpx2 as httpx
    except ImportError:  # pragma: no cover
        import httpx  # type: ignore[no-redef]
    from confluent_kafka.schema_registry.error import SchemaRegistryError

    try:
        return fn(*args, **kwargs)
    except SchemaRegistryError as exc:
        status = exc.http_status_code
        if status == 404:
            raise Unknown(exc.error_message) from None
        if status in (401, 403):
            raise AccessRefused(
                f"the schema registry at {settings_where} refused the sign-in ({status}) while {what}: check "
                "SCHEMA_REGISTRY_BASIC_AUTH_USER_INFO (or basic.auth.user.info in KAFKA_CONFIG_FILE)"
            ) from None
        if status >= 500 or status in (408, 429) or status < 0:
            raise ServiceUnavailable(
                f"the schema registry at {settings_where} answered {status} while {what}"
            ) from None
        raise ServiceUnavailable(
            f"the schema registry at {settings_where} answered {status} while {what}: {exc.error_message[:200]}"
        ) from None
    except httpx.ConnectError as exc:
        if "CERTIFICATE_VERIFY_FAILED" in str(exc) or "certificate verify failed" in str(exc):
            raise AccessRefused(
                f"TLS to the schema registry at {settings_where} failed while {what}: its certificate is not trusted; "
                "set SCHEMA_REGISTRY_SSL_CA_LOCATION to the CA that signed it"
            ) from None
        raise ServiceUnavailable(f"the schema registry at {settings_where} cannot be reached while {what}") from None
    except (httpx.TransportError, OSError):
        raise ServiceUnavailable(f"the schema registry at {settings_where} cannot be reached while {what}") from None


def check(settings: Settings) -> None:
    """At start: the registry answers and takes our sign-in (AccessRefused in one line if not;
    ServiceUnavailable while it is down)."""
    sr = client(settings)
    call(where(settings) or "", "checking the sign-in", sr.get_subjects)


def _clean(text: str, conf: dict[str, Any]) -> str:
    secret = conf.get("basic.auth.user.info")
    if secret:
        text = text.replace(secret, "***").replace(secret.split(":", 1)[-1], "***")
    return text
