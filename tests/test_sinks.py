"""The sink registry: a kind of sink is a module and one line in KINDS, and what lists the sinks
(status, show, the metrics, FINPULSE_SINKS) finds a new one without being told."""

from __future__ import annotations

import pytest
from prometheus_client.parser import text_string_to_metric_families
from support.rules import span
from support.third_sink import MemorySink

from finpulse import show, sinks, status
from finpulse.config import load_settings
from finpulse.errors import ConfigError
from finpulse.metrics import Exporter
from finpulse.progress import Totals, WorkerStats


def test_finpulse_sinks_takes_all_or_a_comma_list_of_kinds():
    assert sinks.chosen(load_settings(sinks="all")) == ("postgres", "delta")
    assert sinks.chosen(load_settings(sinks=" Delta , postgres")) == ("postgres", "delta")
    assert sinks.chosen(load_settings(sinks="delta")) == ("delta",)
    with pytest.raises(ConfigError, match="'kafka' is not a sink: choose all, or one or more of postgres, delta"):
        sinks.chosen(load_settings(sinks="delta,kafka"))


@pytest.mark.kafka
@pytest.mark.postgres
def test_a_third_sink_is_a_module_and_a_registry_line(isolated, monkeypatch):
    monkeypatch.setitem(sinks.KINDS, MemorySink.name, MemorySink)  # the one registry line
    MemorySink().write(span(0, 0, 7))
    s = isolated.model_copy(update={"sinks": "all"})

    st = status.collect(s)
    data = st.as_json()
    assert data["memory"] == {"process": "this one", "rows": 7}
    assert [p["memory_position"] for p in data["partitions"]] == [7, None, None, None]
    assert "memory 7 rows" in st.headlines()["memory"]
    assert "memory_lag" in data["totals"] and "memory_position" in data["partitions"][0]

    landed = show.as_json(show.landed(s))
    assert landed["memory"] == {"rows": 7, "symbols": []}

    exporter = Exporter(sinks.chosen(s))
    totals = Totals()
    exporter.watch(totals, 1)
    totals.add(0, 1, WorkerStats(rows={"memory": 7}, partitions=[0]))
    samples = {
        (sample.name, sample.labels.get("sink")): sample.value
        for family in text_string_to_metric_families(exporter.metrics().decode())
        for sample in family.samples
    }
    assert samples[("finpulse_ticks_written_total", "memory")] == 7
    assert samples[("finpulse_sink_up", "memory")] == 1
