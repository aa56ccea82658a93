"""What every Kafka client gets (kafka_config.py): the client properties file, the named settings over
it, refusals that name the settings to check, librdkafka's log lines; no secret ever shown."""

from __future__ import annotations

import logging
import time

import pytest
from support.env import SECRET, clean_env

from finpulse import deadletter, produce, source, topic
from finpulse.config import load_settings
from finpulse.errors import ConfigError
from finpulse.kafka_config import bootstrap, client_config, read_properties, refusal

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


@pytest.fixture
def env(monkeypatch, tmp_path):
    return clean_env(monkeypatch, tmp_path)


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
