"""The options several `finpulse` commands share, each naming the variable it overrides."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

# Options shared by several commands; each names the variable it overrides.
Topic = Annotated[Optional[str], typer.Option("--topic", help="Kafka topic (env KAFKA_TOPIC, default raw_prices)")]
Bootstrap = Annotated[
    Optional[str],
    typer.Option("--bootstrap-servers", help="Kafka brokers (env KAFKA_BOOTSTRAP_SERVERS, default localhost:29092)"),
]
AllowDataLoss = Annotated[
    bool,
    typer.Option(
        "--allow-data-loss",
        help="When a sink's position lies outside the topic (a recreated topic, or messages "
        "retention deleted before they were ingested), go on from the earliest offset still held and record the "
        "gap instead of stopping (env FINPULSE_ALLOW_DATA_LOSS).",
        show_default=False,
    ),
]
DeltaUri = Annotated[
    Optional[str], typer.Option("--delta-uri", help="Delta table: a path or abfss:// URI (env DELTA_TABLE_URI)")
]

# ------------------------------------------------------------------ replay, status, verify
Partitions = Annotated[
    Optional[list[int]],
    typer.Option(
        "--partition", "-p", min=0, help="Only this partition; repeat for several (default: every partition)."
    ),
]
FromOffset = Annotated[
    Optional[int],
    typer.Option(
        min=0, help="Start at this offset in each chosen partition (older than the oldest retained: from there)."
    ),
]
ToOffset = Annotated[
    Optional[int],
    typer.Option(
        min=1, help="Stop before this offset (exclusive) in each chosen partition (default: the high watermark now)."
    ),
]
FromTime = Annotated[
    Optional[str],
    typer.Option(
        help="Start at each partition's first message stamped at or after this time: ISO-8601 (UTC unless it "
        "names an offset) or epoch milliseconds."
    ),
]
ToTime = Annotated[
    Optional[str],
    typer.Option(help="Stop before each partition's first message stamped at or after this time (exclusive)."),
]
SinkChoice = Annotated[
    Optional[str], typer.Option("--sink", "--sinks", help="all, postgres or delta (env FINPULSE_SINKS, default all).")
]
Feed = Annotated[
    Optional[str],
    typer.Option(
        "--format", help="Decode with one feed shape, as `ingest --format` did (default: detect per message)."
    ),
]
Strict = Annotated[bool, typer.Option("--strict", help="Reject non-trade events, as `ingest --strict` did.")]
