"""The options several `finpulse` commands share, each naming the variable it overrides, and the
checks of flag values (--format, offset and time ranges) in one place."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from finpulse.config import Settings
from finpulse.errors import ConfigError

# Options shared by several commands; each names the variable it overrides.
Topic = Annotated[Optional[str], typer.Option("--topic", help="Kafka topic (env KAFKA_TOPIC, default raw_prices)")]
Bootstrap = Annotated[
    Optional[str],
    typer.Option("--bootstrap-servers", help="Kafka brokers (env KAFKA_BOOTSTRAP_SERVERS, default localhost:29092)"),
]
KafkaConfig = Annotated[
    Optional[Path],
    typer.Option(
        "--kafka-config",
        help="Kafka client properties file (Java style, as Confluent Cloud, Event Hubs or MSK give it): "
        "security.protocol, sasl.*, ssl.* ... Named KAFKA_* settings win over its lines (env KAFKA_CONFIG_FILE).",
        show_default=False,
    ),
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
MappingFile = Annotated[
    Optional[Path],
    typer.Option(
        "--mapping",
        help="Field mapping (TOML) for records of no known feed shape, JSON or from the schema registry: which "
        "field is the symbol, price, size, time... (env FINPULSE_MAPPING; docs/feeds.md#field-mappings).",
        show_default=False,
    ),
]

# The options of where things are, shared by most commands: the flag's parameter name -> its type
# and the setting it overrides. A command takes the ones it needs with `@connection(...)`.
_WHERE: dict[str, tuple[Any, str]] = {
    "topic": (Topic, "kafka_topic"),
    "bootstrap_servers": (Bootstrap, "kafka_bootstrap_servers"),
    "kafka_config": (KafkaConfig, "kafka_config_file"),
    "delta_uri": (DeltaUri, "delta_table_uri"),
    "mapping": (MappingFile, "mapping_file"),
}
KAFKA = ("topic", "bootstrap_servers", "kafka_config")
DELTA = ("delta_uri",)
DECODING = ("mapping",)


def connection(*names: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Give a command the shared options `names` (KAFKA, DELTA); it receives what they set as
    `where`, the settings they override (None: not given), to pass on to load_settings."""

    def add(command: Callable[..., Any]) -> Callable[..., Any]:
        own = inspect.signature(command, eval_str=True)
        params = [p for name, p in own.parameters.items() if name != "where"]
        params += [
            inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=_WHERE[name][0])
            for name in names
        ]

        @functools.wraps(command)
        def run(**given: Any) -> Any:
            where = {_WHERE[name][1]: given.pop(name) for name in names}
            return command(where=where, **given)

        run.__signature__ = own.replace(parameters=params)  # type: ignore[attr-defined]
        run.__annotations__ = {p.name: p.annotation for p in params}  # evaluated: typer reads them as they are
        return run

    return add


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


# ------------------------------------------------------------------ validation of flag values
def feed_choice(name: str | None) -> str | None:
    """The one check of `--format` (ingest, replay, verify): a known feed name, or None to detect per message."""
    from finpulse import feeds

    if name is not None and name not in feeds.names():
        raise ConfigError(f"--format: unknown feed {name!r}; choose one of: {', '.join(feeds.names())}")
    return name


def range_spans(s: Settings, partition, from_offset, to_offset, from_timestamp, to_timestamp, start_required: bool):
    """Validated range flags -> spans per partition (bad combinations: one ConfigError line)."""
    from finpulse.replay import Bound, parse_time, plan

    if from_offset is not None and from_timestamp is not None:
        raise ConfigError("give --from-offset or --from-timestamp, not both")
    if to_offset is not None and to_timestamp is not None:
        raise ConfigError("give --to-offset or --to-timestamp, not both")
    if start_required and from_offset is None and from_timestamp is None:
        raise ConfigError("say where to start: --from-offset N (0 for everything retained) or --from-timestamp T")
    start = Bound(from_offset, parse_time(from_timestamp, "--from-timestamp") if from_timestamp else None)
    end = Bound(to_offset, parse_time(to_timestamp, "--to-timestamp") if to_timestamp else None)
    if start.offset is not None and end.offset is not None and end.offset <= start.offset:
        raise ConfigError(
            f"--to-offset {end.offset} is exclusive: it must be greater than --from-offset {start.offset}"
        )
    if start.timestamp_ms is not None and end.timestamp_ms is not None and end.timestamp_ms <= start.timestamp_ms:
        raise ConfigError("--to-timestamp is exclusive: it must be later than --from-timestamp")
    return plan(s, partition, start, end)
