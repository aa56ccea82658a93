"""The librdkafka settings every Kafka client FinPulse makes starts from: brokers, TLS and SASL.

Three layers, later ones winning: the defaults (bootstrap servers), the lines of KAFKA_CONFIG_FILE
(a Java-style client properties file, as Confluent Cloud, Event Hubs or MSK hand out), then the
named settings (KAFKA_SECURITY_PROTOCOL, KAFKA_SASL_*, KAFKA_SSL_*). Consumers, producers, the
admin client and the dead-letter producer all call client_config(), so none can miss a setting.

Java-only properties are translated where librdkafka has an equivalent (sasl.jaas.config's
username and password) and dropped where it has no use for them (serializers, schema registry);
a Java keystore or truststore stops with a line saying to use PEM files instead. No value read
here ever reaches a log line or an error message: only property names do.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from finpulse.errors import AccessRefused, ConfigError

if TYPE_CHECKING:
    from finpulse.config import Settings

log = logging.getLogger(__name__)

# librdkafka says every failed connection attempt, for every client and broker, several times a
# second while a broker restarts: one line per kind and REPEAT_WINDOW_S is plenty.
REPEAT_WINDOW_S = 10.0


class Repeats(logging.Filter):
    """Lets a log line through once per REPEAT_WINDOW_S; the next one that passes says how many like
    it were held back. Lines that differ only in their numbers (timings, ports) count as alike."""

    def __init__(self, window_s: float = REPEAT_WINDOW_S):
        super().__init__()
        self.window_s = window_s
        self._seen: dict[str, tuple[float, int]] = {}  # kind -> (when it last passed, held back since)
        self._lock = threading.Lock()

    def filter(self, record: logging.LogRecord) -> bool:
        kind = re.sub(r"\d+", "#", record.getMessage())
        now = time.monotonic()
        with self._lock:
            passed, held = self._seen.get(kind, (float("-inf"), 0))
            if now - passed < self.window_s:
                self._seen[kind] = (passed, held + 1)
                return False
            self._seen[kind] = (now, 0)
            if len(self._seen) > 1000:  # kinds are few; keep it bounded all the same
                self._seen = {kind: (now, 0)}
        if held:
            record.msg, record.args = f"{record.getMessage()} ({held} more like it in {self.window_s:.0f}s)", None
        return True


LIBRDKAFKA = logging.getLogger("librdkafka")
LIBRDKAFKA.addFilter(Repeats())

# Java client properties librdkafka does not know and FinPulse does not need.
JAVA_ONLY = (
    "client.dns.lookup",
    "key.serializer",
    "value.serializer",
    "key.deserializer",
    "value.deserializer",
    "schema.registry.",
    "basic.auth.",
    "sasl.login.callback.handler.class",
    "sasl.client.callback.handler.class",
    "ssl.truststore.type",
    "ssl.keystore.type",
)
# Java stores librdkafka cannot read: say what to use instead rather than fail later.
JAVA_STORES = {
    "ssl.truststore.location": "convert the truststore to a PEM file and set ssl.ca.location (KAFKA_SSL_CA_LOCATION)",
    "ssl.truststore.password": "convert the truststore to a PEM file and set ssl.ca.location (KAFKA_SSL_CA_LOCATION)",
}
_JAAS_OPTION = re.compile(r"""(\w+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|'((?:[^'\\]|\\.)*)'|([^\s;]+))""")


def read_properties(path: Path) -> dict[str, str]:
    """A Java .properties file: `key=value`, `key: value` or `key value` lines, `#`/`!` comments,
    a trailing backslash continues a line."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"KAFKA_CONFIG_FILE {path}: cannot read it ({exc.strerror})") from None
    props: dict[str, str] = {}
    pending = ""
    for number, raw in enumerate(text.splitlines(), 1):
        line = pending + raw.strip() if pending else raw.strip()
        if not pending and (not line or line[0] in "#!"):
            continue
        if line.endswith("\\") and not line.endswith("\\\\"):
            pending = line[:-1]
            continue
        pending = ""
        match = re.match(r"([^=:\s]+)\s*[=:\s]\s*(.*)$", line)
        if match is None:
            raise ConfigError(f"KAFKA_CONFIG_FILE {path}, line {number}: expected key=value")
        props[match.group(1)] = match.group(2)
    return props


def translate(props: dict[str, str], origin: str) -> dict[str, str]:
    """Java client properties -> librdkafka properties (see the module's docstring)."""
    out: dict[str, str] = {}
    for key, value in props.items():
        if key in JAVA_STORES:
            raise ConfigError(f"{origin}: {key} is a Java keystore setting librdkafka cannot use; {JAVA_STORES[key]}")
        if key.startswith(JAVA_ONLY):
            log.debug("%s: %s is Java-only; ignored", origin, key)
            continue
        if key == "sasl.jaas.config":
            options = {
                m.group(1): next(g for g in m.groups()[1:] if g is not None) for m in _JAAS_OPTION.finditer(value)
            }
            for name in ("username", "password"):
                if name in options:
                    out[f"sasl.{name}"] = options[name]
            continue
        out[key] = value
    return out


def file_properties(settings: Settings) -> dict[str, str]:
    if settings.kafka_config_file is None:
        return {}
    path = settings.kafka_config_file
    return translate(read_properties(path), f"KAFKA_CONFIG_FILE {path}")


def client_config(settings: Settings) -> dict[str, Any]:
    """librdkafka settings for any client: brokers, the config file's lines, the named settings."""
    named = {
        "security.protocol": settings.kafka_security_protocol,
        "sasl.mechanism": settings.kafka_sasl_mechanism,
        "sasl.username": settings.kafka_sasl_username,
        "sasl.password": settings.kafka_sasl_password.get_secret_value() if settings.kafka_sasl_password else None,
        "ssl.ca.location": settings.kafka_ssl_ca_location,
        "ssl.certificate.location": settings.kafka_ssl_certificate_location,
        "ssl.key.location": settings.kafka_ssl_key_location,
        "ssl.key.password": settings.kafka_ssl_key_password.get_secret_value()
        if settings.kafka_ssl_key_password
        else None,
    }
    config: dict[str, Any] = {
        **file_properties(settings),
        **{k: v for k, v in named.items() if v is not None},
        # the file's bootstrap.servers counts when KAFKA_BOOTSTRAP_SERVERS is not set
        "bootstrap.servers": bootstrap(settings),
        "logger": LIBRDKAFKA,
    }
    if "sasl.mechanism" in config and "sasl.mechanisms" in config:
        del config["sasl.mechanisms"]  # librdkafka's alias: the named setting wins
    return config


def bootstrap(settings: Settings) -> str:
    """The brokers: KAFKA_BOOTSTRAP_SERVERS (or --bootstrap-servers) when set, else the
    bootstrap.servers line of KAFKA_CONFIG_FILE, else the default (the local broker)."""
    if "kafka_bootstrap_servers" in settings.model_fields_set:
        return settings.kafka_bootstrap_servers
    return file_bootstrap(settings.kafka_config_file) or settings.kafka_bootstrap_servers


def file_bootstrap(path: str | Path | None) -> str | None:
    """bootstrap.servers of a KAFKA_CONFIG_FILE, for Settings (None: no file, or no such line)."""
    if not path:
        return None
    return read_properties(Path(path)).get("bootstrap.servers")


def refusal(settings: Settings, error: Any) -> AccessRefused | None:
    """A ConfigError when `error` (a KafkaError) says the broker refused who we are or we refused
    its certificate: wrong credentials, an untrusted CA, a missing ACL. None for anything a retry
    may heal. The message names the settings to check, never their values."""
    name = error.name() if hasattr(error, "name") else ""
    text = error.str() if hasattr(error, "str") else str(error)
    where = f"Kafka at {bootstrap(settings)}"
    lowered = text.lower()
    if name in ("_AUTHENTICATION", "SASL_AUTHENTICATION_FAILED") or "sasl authentication" in lowered:
        return AccessRefused(
            f"{where} refused the credentials ({_short(text)}): check KAFKA_SASL_MECHANISM, "
            "KAFKA_SASL_USERNAME and KAFKA_SASL_PASSWORD (or KAFKA_CONFIG_FILE)"
        )
    if name == "_SSL" or "certificate verify failed" in lowered or "ssl handshake failed" in lowered:
        return AccessRefused(
            f"{where}: TLS handshake failed ({_short(text)}): check KAFKA_SSL_CA_LOCATION names the CA "
            "that signed the broker's certificate, and KAFKA_SECURITY_PROTOCOL"
        )
    if name in ("TOPIC_AUTHORIZATION_FAILED", "GROUP_AUTHORIZATION_FAILED", "CLUSTER_AUTHORIZATION_FAILED"):
        return AccessRefused(
            f"{where}: not authorized ({_short(text)}): grant this principal the ACLs docs/security.md lists (Describe and Read on the topic, Read on the group for ingest)"
        )
    return None


def _short(text: str) -> str:
    """librdkafka's reason without the broker list prefix, on one line."""
    text = re.sub(r"^\S+://\S+: ", "", " ".join(text.split()))  # "sasl_ssl://host:port/bootstrap: "
    text = re.sub(r" \(after \d+ms in state \w+\)", "", text)
    return text if len(text) <= 160 else text[:157] + "..."
