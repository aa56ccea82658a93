"""The Kestra flows in flows/: their structure against Kestra's documented flow format, and their
wiring into compose.yaml. Kestra itself cannot run here, so this is what can be checked."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from support import ROOT

FLOWS = sorted((ROOT / "flows").glob("*.yml"))
# Kestra: id and namespace are required; an id is letters, digits, '.', '_' or '-'; a namespace
# dot-separated; every task and trigger has an id and a fully qualified plugin type.
ID = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9._-]*$")
NAMESPACE = re.compile(r"^[a-z0-9][a-z0-9_-]*(\.[a-z0-9][a-z0-9_-]*)*$")
KNOWN_TYPES = {
    "io.kestra.plugin.scripts.shell.Commands",
    "io.kestra.plugin.scripts.runner.docker.Docker",
    "io.kestra.plugin.core.trigger.Schedule",
    "io.kestra.plugin.core.log.Log",
}
CRON_RANGES = [(0, 59), (0, 23), (1, 31), (1, 12), (0, 7)]  # minute hour day month weekday


def load(path: Path) -> dict:
    flow = yaml.safe_load(path.read_text())
    assert isinstance(flow, dict), f"{path.name}: a flow is a YAML mapping"
    return flow


def cron_ok(expr: str) -> bool:
    fields = expr.split()
    if len(fields) != 5:
        return False
    for field, (low, high) in zip(fields, CRON_RANGES):
        for part in field.split(","):
            base, _, step = part.partition("/")
            if step and not step.isdigit():
                return False
            if base == "*":
                continue
            bounds = base.split("-")
            if not all(b.isdigit() and low <= int(b) <= high for b in bounds) or len(bounds) > 2:
                return False
    return True


def test_there_is_a_maintain_and_a_verify_flow():
    assert {p.name for p in FLOWS} == {"finpulse.maintain.yml", "finpulse.verify.yml"}


@pytest.mark.parametrize("path", FLOWS, ids=lambda p: p.name)
def test_each_flow_follows_kestras_flow_format(path: Path):
    flow = load(path)
    assert ID.match(flow["id"]) and NAMESPACE.match(flow["namespace"])
    assert path.name == f"{flow['namespace']}.{flow['id']}.yml", "Kestra's <namespace>.<id>.yml file name"
    assert set(flow) <= {"id", "namespace", "description", "labels", "variables", "tasks", "errors", "triggers"}
    tasks = flow["tasks"] + flow.get("errors", [])
    assert flow["tasks"] and all(ID.match(t["id"]) for t in tasks)
    assert len({t["id"] for t in tasks}) == len(tasks), "task ids are unique within a flow"
    for task in tasks:
        assert task["type"] in KNOWN_TYPES, task["type"]
        if task["type"].endswith("shell.Commands"):
            assert task["commands"] and task["taskRunner"]["type"] in KNOWN_TYPES and task["containerImage"]
    [trigger] = flow["triggers"]
    assert trigger["type"] == "io.kestra.plugin.core.trigger.Schedule" and cron_ok(trigger["cron"]), trigger


def test_the_flows_run_maintain_on_a_schedule_and_verify_daily_failing_visibly():
    maintain, verify = (load(ROOT / "flows" / f"finpulse.{name}.yml") for name in ("maintain", "verify"))
    assert maintain["tasks"][0]["commands"] == ["finpulse maintain"]
    assert "FINPULSE_PG_RETENTION_DAYS" in maintain["tasks"][0]["env"], "the retention step runs with it"
    assert verify["tasks"][0]["commands"] == ["finpulse verify"]
    assert not verify["tasks"][0].get("allowFailure"), "a gap must fail the execution"
    assert verify["errors"][0]["level"] == "ERROR"
    hour = verify["triggers"][0]["cron"].split()
    assert hour[2:] == ["*", "*", "*"] and hour[0].isdigit() and hour[1].isdigit(), "once a day"


def test_compose_loads_the_flows_and_gives_them_every_variable_they_use():
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())
    kestra = compose["services"]["kestra"]
    assert "--flow-path /app/flows" in kestra["command"]
    assert "./flows:/app/flows:ro" in kestra["volumes"]
    given = {k.removeprefix("ENV_").lower() for k in kestra["environment"] if k.startswith("ENV_")}
    used = {m for path in FLOWS for m in re.findall(r"envs\.(\w+)", path.read_text())}
    assert used and used <= given, used - given
    settings = (ROOT / ".env.example").read_text() + (ROOT / "finpulse" / "config.py").read_text()
    for path in FLOWS:
        for name in load(path)["tasks"][0]["env"]:
            assert name in settings or name == "AZURITE_BLOB_STORAGE_URL", f"{name} is no finpulse setting"
