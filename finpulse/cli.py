"""The `finpulse` command: flags -> Settings, errors -> one line and an exit code. Nothing else."""

from __future__ import annotations

import logging
import sys
from typing import Annotated, Optional

import typer
from rich.console import Console

from finpulse.config import Settings, load_settings
from finpulse.errors import FinpulseError

app = typer.Typer(
    help="Land every Kafka tick exactly once in PostgreSQL (prices_raw) and Delta Lake (prices).\n\n"
    "Configuration comes from the environment and .env (see .env.example); each flag overrides it.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
err = Console(stderr=True, soft_wrap=True)  # an error is one line, however narrow the terminal
out = Console(soft_wrap=True)

# Options shared by several commands; each names the variable it overrides.
Topic = Annotated[Optional[str], typer.Option("--topic", help="Kafka topic (env KAFKA_TOPIC, default raw_prices)")]
Bootstrap = Annotated[Optional[str], typer.Option(
    "--bootstrap-servers", help="Kafka brokers (env KAFKA_BOOTSTRAP_SERVERS, default localhost:29092)")]
DeltaUri = Annotated[Optional[str], typer.Option(
    "--delta-uri", help="Delta table: a path or abfss:// URI (env DELTA_TABLE_URI)")]


def _setup_logging(verbose: bool) -> None:
    handler: logging.Handler
    if sys.stderr.isatty():
        from rich.logging import RichHandler

        handler = RichHandler(console=err, show_path=False, markup=False)
        handler.setFormatter(logging.Formatter("[%(process)d] %(message)s"))
    else:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(process)d %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    logging.getLogger("librdkafka").setLevel(logging.WARNING)


@app.callback()
def _root(verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.")] = False) -> None:
    _setup_logging(verbose)


def settings(**overrides) -> Settings:
    return load_settings(**overrides)


@app.command()
def init(
    partitions: Annotated[int, typer.Option(min=1, max=1000, help="Partitions of a newly created topic.")] = 4,
    topic: Topic = None,
    bootstrap_servers: Bootstrap = None,
    delta_uri: DeltaUri = None,
) -> None:
    """Create the Kafka topic, the PostgreSQL tables and the Delta table, where absent."""
    from finpulse import source
    from finpulse.sinks.delta import create_table
    from finpulse.sinks.postgres import create_tables

    s = settings(kafka_topic=topic, kafka_bootstrap_servers=bootstrap_servers, delta_table_uri=delta_uri)
    created = source.create_topic(s, partitions)
    out.print(f"Kafka topic {s.kafka_topic}: {'created with %d partitions' % partitions if created else 'exists'}"
              + ("" if created else f" ({len(source.partitions(s))} partitions)"))
    made = create_tables(s.postgres_conninfo(), s.postgres_schema)
    for table in ("prices_raw", "prices_rejected", "finpulse_offsets"):
        out.print(f"PostgreSQL table {s.postgres_schema}.{table} at {s.postgres_display()}: "
                  f"{'created' if table in made else 'exists'}")
    out.print(f"Delta table {s.delta_uri}: {'created' if create_table(s.delta_uri, s.delta_storage_options) else 'exists'}")


@app.command()
def produce(
    count: Annotated[int, typer.Option(min=0, help="How many ticks to send.")] = 1000,
    rate: Annotated[Optional[float], typer.Option(min=0.001, help="Ticks per second (default: as fast as possible).")] = None,
    symbols: Annotated[Optional[str], typer.Option(help="Comma-separated symbols (default: 16 stocks, crypto and FX pairs).")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the random walk; equal seeds give equal ticks.")] = 7,
    topic: Topic = None,
    bootstrap_servers: Bootstrap = None,
) -> None:
    """Send synthetic ticks (a seeded random walk, keyed by symbol) to the topic."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from finpulse import produce as producing
    from finpulse import source

    s = settings(kafka_topic=topic, kafka_bootstrap_servers=bootstrap_servers)
    syms = tuple(x.strip() for x in symbols.split(",") if x.strip()) if symbols else producing.DEFAULT_SYMBOLS
    if not syms:
        raise typer.BadParameter("give at least one symbol", param_hint="--symbols")
    source.partitions(s)  # a missing topic or broker is one clear line, not a 30 s delivery timeout
    stream = producing.encoded(producing.ticks(count, syms, seed))
    show = err.is_terminal and count >= 10_000
    with Progress(TextColumn("producing"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  console=err, disable=not show) as bar:
        task = bar.add_task("produce", total=count)
        sent = producing.send(s, stream, rate, on_progress=lambda n: bar.advance(task, n))
    out.print(f"sent {sent:,} ticks to {s.kafka_topic} on {s.kafka_bootstrap_servers}")


@app.command()
def ingest(
    workers: Annotated[Optional[int], typer.Option(min=1, max=256, help="Worker processes (env FINPULSE_WORKERS; default: one per partition).")] = None,
    batch_size: Annotated[Optional[int], typer.Option(min=1, help="Ticks that trigger a flush; more that piled up join it (env FINPULSE_BATCH_SIZE, default 5).")] = None,
    linger_ms: Annotated[Optional[int], typer.Option(min=0, help="Flush a partial batch after this long (env FINPULSE_LINGER_MS, default 100).")] = None,
    max_inflight_ticks: Annotated[Optional[int], typer.Option(min=1000, help="Pause consuming when this many ticks wait for the sinks (env FINPULSE_MAX_INFLIGHT_TICKS).")] = None,
    sinks: Annotated[Optional[str], typer.Option(help="Write to all, postgres or delta (env FINPULSE_SINKS, default all).")] = None,
    drain: Annotated[bool, typer.Option("--drain", help="Stop after reaching the high watermarks seen at start.")] = False,
    format: Annotated[Optional[str], typer.Option("--format", help="Force one feed shape instead of detecting it per message.")] = None,
    strict: Annotated[bool, typer.Option("--strict", help="Reject non-trade events instead of skipping them.")] = False,
    dlq_topic: Annotated[Optional[str], typer.Option(help="Also send rejected messages to this Kafka topic, created if absent (env FINPULSE_DLQ_TOPIC).")] = None,
    topic: Topic = None,
    bootstrap_servers: Bootstrap = None,
    delta_uri: DeltaUri = None,
) -> None:
    """Consume the topic with one process per partition into PostgreSQL and Delta, exactly once."""
    from finpulse import feeds, supervisor

    if format is not None and format not in feeds.names():
        raise typer.BadParameter(f"unknown feed {format!r}; choose one of: {', '.join(feeds.names())}",
                                 param_hint="--format")
    s = settings(dlq_topic=dlq_topic, sinks=sinks, workers=workers, batch_size=batch_size, linger_ms=linger_ms, max_inflight_ticks=max_inflight_ticks,
                 kafka_topic=topic, kafka_bootstrap_servers=bootstrap_servers, delta_table_uri=delta_uri)
    result = supervisor.run(s, drain=drain, feed=format, strict=strict)
    t = result.totals
    out.print(
        f"ingested {t.ticks:,} ticks from {t.messages:,} messages in {t.elapsed:.1f}s "
        f"({t.ticks / t.elapsed:,.0f} ticks/s) with {result.workers} workers: "
        + "".join(f"{sink} +{t.rows.get(sink, 0):,} rows, " for sink in s.sink_names)
        + f"{t.rejected:,} rejected, {t.skipped:,} skipped, {t.restarts} restarts"
    )


@app.command()
def show(
    limit: Annotated[int, typer.Option(min=1, max=1000, help="Symbols to list, busiest first.")] = 10,
    delta_uri: DeltaUri = None,
) -> None:
    """Show what landed: rows in each sink and a per-symbol summary from both."""
    from rich.markup import escape
    from rich.table import Table

    from finpulse import show as showing

    s = settings(delta_table_uri=delta_uri)
    for landed in showing.landed(s, limit):
        where = s.postgres_display() + f" ({s.postgres_schema}.prices_raw)" if landed.sink == "postgres" else s.delta_uri
        title = f"{landed.sink}: {landed.rows:,} rows" + (
            f", {landed.rejected:,} rejected" if landed.rejected is not None else "") + f" in {where}"
        t = Table(title=escape(title), title_justify="left")
        for col in showing.SUMMARY_COLUMNS:
            t.add_column(col, justify="left" if col == "symbol" else "right")
        for sym, n, low, high, last, when in landed.symbols:
            t.add_row(sym, f"{n:,}", f"{low:,.4f}", f"{high:,.4f}", f"{last:,.4f}", when.strftime("%Y-%m-%d %H:%M:%S"))
        out.print(t)


def main() -> None:
    try:
        app(prog_name="finpulse")
    except FinpulseError as exc:
        err.print(f"[bold red]error:[/] {exc}", highlight=False)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        err.print("interrupted")
        sys.exit(130)
