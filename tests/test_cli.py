"""The command line as a user meets it: help, bad values, init, produce."""

from __future__ import annotations

import pytest
from support.cli import env_for, finpulse

from finpulse import source

COMMANDS = ["init", "produce", "ingest", "show", "replay", "status", "verify"]


@pytest.mark.parametrize("command", [None, *COMMANDS])
def test_help_reads_well(command):
    args = [command, "--help"] if command else ["--help"]
    out = finpulse(*args, env={"PATH": "/usr/bin:/bin", "COLUMNS": "120"}).stdout
    assert "Usage: finpulse" in out
    if command is None:
        for c in COMMANDS:
            assert c in out
    assert "PASSWORD" not in out and "ACCOUNT_KEY" not in out


@pytest.mark.parametrize(
    "args, env, needle",
    [
        (["ingest", "--batch-size", "0"], {}, "--batch-size"),
        (["ingest", "--workers", "many"], {}, "--workers"),
        (["produce", "--count", "-1"], {}, "--count"),
        (["ingest", "--format", "nope"], {}, "unknown feed"),
        (["produce"], {"POSTGRES_PORT": "x", "FINPULSE_BATCH_SIZE": "0"}, "FINPULSE_BATCH_SIZE"),
        (["init"], {"POSTGRES_PASSWORD": "", "KAFKA_BOOTSTRAP_SERVERS": "localhost:1"}, "Kafka"),
    ],
)
def test_wrong_values_give_one_clear_error_not_a_traceback(args, env, needle, tmp_path):
    base = {"PATH": "/usr/bin:/bin", "COLUMNS": "200", "HOME": str(tmp_path)}
    proc = finpulse(*args, env={**base, **env}, check=False, timeout=60)
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr + proc.stdout
    assert needle in proc.stderr


def test_format_is_checked_in_one_place_with_one_message_and_exit_code_2(tmp_path):
    from finpulse import feeds

    base = {"PATH": "/usr/bin:/bin", "COLUMNS": "200", "HOME": str(tmp_path)}
    expected = f"error: --format: unknown feed 'nope'; choose one of: {', '.join(feeds.names())}\n"
    for args in (["ingest", "--drain"], ["replay", "--from-offset", "0"], ["verify"]):
        proc = finpulse(*args, "--format", "nope", env=base, check=False, timeout=60)
        assert (proc.returncode, proc.stderr, proc.stdout) == (2, expected, ""), args
    from finpulse.cli_options import feed_choice

    assert feed_choice(None) is None and feed_choice("kraken") == "kraken"


@pytest.mark.kafka
@pytest.mark.postgres
def test_init_is_idempotent_and_produce_fills_the_topic(isolated, tmp_path):
    env = env_for(isolated, DELTA_TABLE_URI=str(tmp_path / "fresh" / "prices"))
    client = source.admin(isolated)
    client.delete_topics([isolated.kafka_topic])[isolated.kafka_topic].result(timeout=30)

    first = finpulse("init", "--partitions", "4", env=env, timeout=120).stdout
    assert f"Kafka topic {isolated.kafka_topic}: created with 4 partitions" in first
    assert "Delta table" in first and "created" in first
    second = finpulse("init", env=env, timeout=120).stdout
    assert "created" not in second and second.count("exists") == 12  # the topic, 10 PostgreSQL tables, Delta

    finpulse("produce", "--count", "100000", env=env, timeout=120)
    highs = source.watermarks(isolated)
    assert len(highs) == 4
    assert sum(high - low for low, high in highs.values()) == 100_000
    assert all(high > 0 for _, high in highs.values()), "keys spread over every partition"


@pytest.mark.kafka
@pytest.mark.postgres
@pytest.mark.slow
def test_demo_script_runs_the_main_job_end_to_end(isolated):
    import subprocess

    from support import ROOT

    proc = subprocess.run(
        [str(ROOT / "scripts" / "demo"), "--ticks", "20000"],
        env=env_for(isolated),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "sent 20,000 ticks" in proc.stdout
    assert "ingested 20,000 ticks" in proc.stdout
    assert "postgres: 20,000 rows, 0 rejected" in proc.stdout
    assert "delta: 20,000 rows" in proc.stdout


def test_maintain_names_its_vacuum_retention_and_still_takes_the_old_name(isolated):
    env = env_for(isolated)
    shown = finpulse("maintain", "--help", env={**env, "COLUMNS": "200"}).stdout
    assert "--vacuum-retention-hours" in shown and "--retention-hours" not in shown.replace(
        "--vacuum-retention-hours", ""
    )
    old = finpulse("maintain", "--sinks", "delta", "--retention-hours", "200", env=env)
    assert "--vacuum-retention-hours" in old.stderr


def test_every_command_that_reaches_kafka_or_delta_takes_the_same_options():
    from typer.testing import CliRunner

    from finpulse.cli import app

    for command, flags in {
        "init": ("--topic", "--bootstrap-servers", "--kafka-config", "--delta-uri"),
        "produce": ("--topic", "--bootstrap-servers", "--kafka-config"),
        "ingest": ("--topic", "--bootstrap-servers", "--kafka-config", "--delta-uri"),
        "replay": ("--topic", "--bootstrap-servers", "--kafka-config", "--delta-uri"),
        "status": ("--topic", "--bootstrap-servers", "--kafka-config", "--delta-uri"),
        "verify": ("--topic", "--bootstrap-servers", "--kafka-config", "--delta-uri"),
        "show": ("--delta-uri",),
        "maintain": ("--delta-uri",),
    }.items():
        shown = CliRunner().invoke(app, [command, "--help"], terminal_width=200).stdout
        assert all(flag in shown for flag in flags), (command, shown)
        assert "KAFKA_TOPIC" in shown or "--topic" not in flags
