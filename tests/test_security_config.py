"""Security settings without services: what reaches librdkafka, libpq and delta-rs, and that no
secret ever shows in a repr, an error or the CLI's help."""

from __future__ import annotations

import logging
import time

import pytest
from psycopg.conninfo import conninfo_to_dict

from finpulse import deadletter, produce, source, topic
from finpulse.config import load_settings
from finpulse.errors import ConfigError
from finpulse.kafka_config import bootstrap, client_config, read_properties, refusal
from finpulse.sinks.delta.azure import storage_options

SECRET = "s3cr3t-Do-Not-Print"

CONFLUENT_STYLE = f"""\
# Required connection configs for Kafka producer, consumer, and admin
bootstrap.servers=pkc-abc12.westeurope.azure.confluent.cloud:9092
security.protocol=SASL_SSL
sasl.mechanisms=PLAIN
sasl.jaas.config=org.apache.kafka.common.security.plain.PlainLoginModule required \\
    username='APIKEY42' password='{SECRET}';
! Java-only lines FinPulse drops
client.dns.lookup=use_all_dns_ips
schema.registry.url=https://psrc-1.westeurope.azure.confluent.cloud
basic.auth.user.info=KEY:{SECRET}
session.timeout.ms: 45000
"""

SECURITY_VARS = (
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


@pytest.fixture
def env(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # no .env here
    for var in SECURITY_VARS:
        monkeypatch.delenv(var, raising=False)
    return monkeypatch


@pytest.fixture
def confluent_file(tmp_path):
    path = tmp_path / "client.properties"
    path.write_text(CONFLUENT_STYLE)
    return path


def test_a_confluent_cloud_properties_file_becomes_librdkafka_settings(env, confluent_file):
    env.setenv("KAFKA_CONFIG_FILE", str(confluent_file))
    s = load_settings()
    assert bootstrap(s) == "pkc-abc12.westeurope.azure.confluent.cloud:9092"
    config = client_config(s)
    assert config["security.protocol"] == "SASL_SSL"
    assert config["sasl.mechanisms"] == "PLAIN"
    assert (config["sasl.username"], config["sasl.password"]) == ("APIKEY42", SECRET)
    assert config["session.timeout.ms"] == "45000"  # `key: value` lines count too
    assert not any(k.startswith(("schema.registry", "basic.auth", "client.dns", "sasl.jaas")) for k in config)
    assert SECRET not in repr(s)


def test_named_settings_win_over_the_file(env, confluent_file):
    env.setenv("KAFKA_CONFIG_FILE", str(confluent_file))
    env.setenv("KAFKA_BOOTSTRAP_SERVERS", "broker:9093")
    env.setenv("KAFKA_SASL_MECHANISM", "scram-sha-512")
    env.setenv("KAFKA_SASL_PASSWORD", "other")
    config = client_config(load_settings())
    assert config["bootstrap.servers"] == "broker:9093"
    assert config["sasl.mechanism"] == "SCRAM-SHA-512" and "sasl.mechanisms" not in config
    assert config["sasl.password"] == "other" and config["sasl.username"] == "APIKEY42"


def test_a_java_truststore_says_to_use_pem(env, tmp_path):
    path = tmp_path / "jks.properties"
    path.write_text(f"ssl.truststore.location=/etc/kafka/trust.jks\nssl.truststore.password={SECRET}\n")
    env.setenv("KAFKA_CONFIG_FILE", str(path))
    with pytest.raises(ConfigError, match="ssl.ca.location") as err:
        client_config(load_settings())
    assert SECRET not in str(err.value)


def test_unreadable_or_malformed_files_are_one_line(env, tmp_path):
    with pytest.raises(ConfigError, match="cannot read"):
        client_config(load_settings(kafka_config_file=tmp_path / "missing.properties"))
    bad = tmp_path / "bad.properties"
    bad.write_text(f"=novalue {SECRET}\n")
    with pytest.raises(ConfigError, match="line 1") as err:
        read_properties(bad)
    assert SECRET not in str(err.value)


def test_every_client_gets_the_security_settings(env, monkeypatch):
    """Producers, the dead-letter producer, admin, outsiders and the group consumer."""
    seen: list[dict] = []

    class Recorder:
        def __init__(self, config):
            seen.append(config)

        def __getattr__(self, _name):
            return lambda *a, **k: None

    s = load_settings(
        kafka_security_protocol="SASL_SSL",
        kafka_sasl_mechanism="SCRAM-SHA-512",
        kafka_sasl_username="finpulse",
        kafka_sasl_password=SECRET,
        kafka_ssl_ca_location="/ca.pem",
        dlq_topic="dead",
    )
    for module in (produce, deadletter, topic, source):
        for name in ("Producer", "Consumer", "AdminClient"):
            if hasattr(module, name):
                monkeypatch.setattr(module, name, Recorder)
    produce.producer(s)
    deadletter.DeadLetters(s)
    topic.admin(s)
    topic.outsider(s, "probe")
    source.consumer(s, print, print, print)
    assert len(seen) == 5
    for config in seen:
        assert config["security.protocol"] == "SASL_SSL" and config["sasl.password"] == SECRET
        assert config["ssl.ca.location"] == "/ca.pem"


class _Err:
    def __init__(self, name: str, text: str):
        self._name, self._text = name, text

    def name(self) -> str:
        return self._name

    def str(self) -> str:
        return self._text


def test_refusals_name_the_settings_to_check(env):
    s = load_settings(kafka_bootstrap_servers="localhost:29094")
    auth = refusal(
        s,
        _Err(
            "_AUTHENTICATION", "sasl_ssl://localhost:29094/bootstrap: SASL authentication error: Authentication failed"
        ),
    )
    assert auth is not None and "KAFKA_SASL_PASSWORD" in str(auth) and "\n" not in str(auth)
    tls = refusal(s, _Err("_SSL", "SSL handshake failed: certificate verify failed"))
    assert tls is not None and "KAFKA_SSL_CA_LOCATION" in str(tls)
    assert refusal(s, _Err("_TRANSPORT", "Connection refused")) is None  # a retry may heal it


def test_postgres_tls_keepalives_and_statement_timeout(env):
    s = load_settings(
        postgres_password=SECRET, postgres_sslmode="verify-full", postgres_sslrootcert="/ca.pem", postgres_host="db"
    )
    info = conninfo_to_dict(s.postgres_conninfo())
    assert (info["sslmode"], info["sslrootcert"], info["host"]) == ("verify-full", "/ca.pem", "db")
    assert info["keepalives"] == "1" and int(info["keepalives_idle"]) > 0 and int(info["tcp_user_timeout"]) > 0
    assert "statement_timeout=120000" in info["options"]
    assert SECRET not in s.postgres_display() and SECRET not in repr(s)


def test_one_postgres_url_replaces_the_parts(env):
    env.setenv("POSTGRES_URL", f"postgresql://app:{SECRET}@pg.example.com:6432/ticks?sslmode=require")
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


def test_an_extra_env_file_is_read_over_dotenv(env, tmp_path):
    (tmp_path / ".env").write_text("KAFKA_TOPIC=from-dotenv\nKAFKA_GROUP_ID=g1\n")
    secure = tmp_path / "secure.env"
    secure.write_text(f"KAFKA_TOPIC=from-secure\nKAFKA_SASL_PASSWORD={SECRET}\n")
    env.setenv("FINPULSE_ENV_FILE", str(secure))
    s = load_settings()
    assert (s.kafka_topic, s.kafka_group_id) == ("from-secure", "g1")
    assert s.kafka_sasl_password is not None and s.kafka_sasl_password.get_secret_value() == SECRET
    env.setenv("FINPULSE_ENV_FILE", str(tmp_path / "nope.env"))
    with pytest.raises(ConfigError, match="FINPULSE_ENV_FILE"):
        load_settings()


def test_librdkafka_lines_that_repeat_are_let_through_once_per_window(caplog):
    """A broker restart made every worker log each failed connection attempt, many times a second."""
    from finpulse.kafka_config import Repeats

    logger = logging.getLogger("test.repeats")
    logger.addFilter(Repeats(window_s=60))
    try:
        with caplog.at_level(logging.ERROR, logger="test.repeats"):
            for ms in range(50):
                logger.error("FAIL [c#consumer-1]: Connect to 127.0.0.1:4242 failed (after %dms in state CONNECT)", ms)
            logger.error("another line")
    finally:
        logger.filters.clear()
    assert [r.getMessage() for r in caplog.records] == [
        "FAIL [c#consumer-1]: Connect to 127.0.0.1:4242 failed (after 0ms in state CONNECT)",
        "another line",
    ]


def test_the_next_line_let_through_counts_those_held_back(caplog):
    from finpulse.kafka_config import Repeats

    logger = logging.getLogger("test.repeats.count")
    logger.addFilter(Repeats(window_s=0.05))
    try:
        with caplog.at_level(logging.ERROR, logger="test.repeats.count"):
            for port in range(5):
                logger.error("Connect to 127.0.0.1:%d failed", port)
            time.sleep(0.1)
            logger.error("Connect to 127.0.0.1:9 failed")
    finally:
        logger.filters.clear()
    assert [r.getMessage() for r in caplog.records] == [
        "Connect to 127.0.0.1:0 failed",
        "Connect to 127.0.0.1:9 failed (4 more like it in 0s)",
    ]
