"""Plain helpers shared by the test modules (no fixtures: those live in tests/conftest.py).

- `support.cli`: run the real `finpulse` CLI (`finpulse`, `env_for`, `start_ingest`, `finish`)
- `support.sinks`: read both sinks back and compare with what was produced
- `support.group`: another member of an ingest's consumer group (rebalances on demand)
- `support.metrics`: an ingest run with `--metrics-port`, and the samples of its /metrics
- `support.samples`: sample messages (feed fixtures, malformed messages) used by several test files
- `support.hostile`: a seeded generator of hostile Kafka messages, for fuzzing the pipeline
- `support.private`: private PostgreSQL, Kafka and Azurite instances, for the faults suite

Test modules import from here, never from conftest or from another test module.
"""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
"""The repository root."""
