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
AllowDataLoss = Annotated[bool, typer.Option(
    "--allow-data-loss", help="When a sink's position lies outside the topic (a recreated topic, or messages "
    "retention deleted before they were ingested), go on from the earliest offset still held and record the "
    "gap instead of stopping (env FINPULSE_ALLOW_DATA_LOSS).", show_default=False)]
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
    max_inflight_bytes: Annotated[Optional[int], typer.Option(min=1 << 20, help="Pause consuming when this many bytes (estimated) wait for the sinks (env FINPULSE_MAX_INFLIGHT_BYTES, default 256 MiB).")] = None,
    sinks: Annotated[Optional[str], typer.Option(help="Write to all, postgres or delta (env FINPULSE_SINKS, default all).")] = None,
    drain: Annotated[bool, typer.Option("--drain", help="Stop after reaching the high watermarks seen at start.")] = False,
    format: Annotated[Optional[str], typer.Option("--format", help="Force one feed shape instead of detecting it per message: canonical, binance, coinbase, coinbase-advanced, alpaca, polygon, finnhub or kraken.")] = None,
    strict: Annotated[bool, typer.Option("--strict", help="Reject non-trade events instead of skipping them.")] = False,
    dlq_topic: Annotated[Optional[str], typer.Option(help="Also send rejected messages to this Kafka topic, created if absent (env FINPULSE_DLQ_TOPIC).")] = None,
    allow_data_loss: AllowDataLoss = False,
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
                 max_inflight_bytes=max_inflight_bytes, allow_data_loss=allow_data_loss or None,
                 kafka_topic=topic, kafka_bootstrap_servers=bootstrap_servers, delta_table_uri=delta_uri)
    result = supervisor.run(s, drain=drain, feed=format, strict=strict, console=err)
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


# ------------------------------------------------------------------ replay, status, verify
Partitions = Annotated[Optional[list[int]], typer.Option(
    "--partition", "-p", min=0, help="Only this partition; repeat for several (default: every partition).")]
FromOffset = Annotated[Optional[int], typer.Option(
    min=0, help="Start at this offset in each chosen partition (older than the oldest retained: from there).")]
ToOffset = Annotated[Optional[int], typer.Option(
    min=1, help="Stop before this offset (exclusive) in each chosen partition (default: the high watermark now).")]
FromTime = Annotated[Optional[str], typer.Option(
    help="Start at each partition's first message stamped at or after this time: ISO-8601 (UTC unless it "
    "names an offset) or epoch milliseconds.")]
ToTime = Annotated[Optional[str], typer.Option(
    help="Stop before each partition's first message stamped at or after this time (exclusive).")]
SinkChoice = Annotated[Optional[str], typer.Option(
    "--sink", "--sinks", help="all, postgres or delta (env FINPULSE_SINKS, default all).")]
Feed = Annotated[Optional[str], typer.Option(
    "--format", help="Decode with one feed shape, as `ingest --format` did (default: detect per message).")]
Strict = Annotated[bool, typer.Option("--strict", help="Reject non-trade events, as `ingest --strict` did.")]


def _print_table(table) -> None:
    """On a terminal, its width; piped output goes to scripts and logs: 120 columns, not rich's 80."""
    (out if out.is_terminal else Console(width=max(out.width, 120))).print(table)


def _partitions(n: int) -> str:
    return f"{n} partition" + ("" if n == 1 else "s")


def _spans(s: Settings, partition, from_offset, to_offset, from_timestamp, to_timestamp, feed, start_required: bool):
    """Validated range flags -> spans per partition (bad combinations: one ConfigError line)."""
    from finpulse import feeds
    from finpulse.errors import ConfigError
    from finpulse.replay import Bound, parse_time, plan

    if feed is not None and feed not in feeds.names():
        raise ConfigError(f"--format: unknown feed {feed!r}; choose one of: {', '.join(feeds.names())}")
    if from_offset is not None and from_timestamp is not None:
        raise ConfigError("give --from-offset or --from-timestamp, not both")
    if to_offset is not None and to_timestamp is not None:
        raise ConfigError("give --to-offset or --to-timestamp, not both")
    if start_required and from_offset is None and from_timestamp is None:
        raise ConfigError("say where to start: --from-offset N (0 for everything retained) or --from-timestamp T")
    start = Bound(from_offset, parse_time(from_timestamp, "--from-timestamp") if from_timestamp else None)
    end = Bound(to_offset, parse_time(to_timestamp, "--to-timestamp") if to_timestamp else None)
    if start.offset is not None and end.offset is not None and end.offset <= start.offset:
        raise ConfigError(f"--to-offset {end.offset} is exclusive: it must be greater than --from-offset {start.offset}")
    if start.timestamp_ms is not None and end.timestamp_ms is not None and end.timestamp_ms <= start.timestamp_ms:
        raise ConfigError("--to-timestamp is exclusive: it must be later than --from-timestamp")
    return plan(s, partition, start, end)


@app.command()
def replay(
    partition: Partitions = None,
    from_offset: FromOffset = None,
    to_offset: ToOffset = None,
    from_timestamp: FromTime = None,
    to_timestamp: ToTime = None,
    sink: SinkChoice = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Only say how many messages each partition would read.")] = False,
    format: Feed = None,
    strict: Strict = False,
    allow_data_loss: AllowDataLoss = False,
    topic: Topic = None,
    bootstrap_servers: Bootstrap = None,
    delta_uri: DeltaUri = None,
) -> None:
    """Read a bounded range of the topic again and write what the sinks lack, then exit.

    Idempotent: rows already present (same partition, offset, tick_index) are not written again. Below a sink's position only missing rows are inserted; at or above it rows go through the normal guarded write, and only when the range reaches down to the position. Safe next to a running `finpulse ingest`.
    """
    from finpulse import replay as replaying

    s = settings(sinks=sink, kafka_topic=topic, kafka_bootstrap_servers=bootstrap_servers, delta_table_uri=delta_uri,
                 allow_data_loss=allow_data_loss or None)
    spans = _spans(s, partition, from_offset, to_offset, from_timestamp, to_timestamp, format, start_required=True)
    total = sum(sp.size for sp in spans)
    if dry_run:
        try:
            held = replaying.positions(s, [sp.partition for sp in spans])
        except FinpulseError as exc:  # the counts come from Kafka alone; positions are a courtesy
            held = {}
            err.print(f"sink positions unavailable: {exc}", highlight=False, markup=False)
        for sp in spans:
            where = "".join(f"; {name} at {h[sp.partition]:,}" if sp.partition in h else f"; {name} holds nothing"
                            for name, h in held.items())
            out.print(f"partition {sp.partition}: {sp.size:,} messages, offsets {sp.start:,} up to {sp.end:,} "
                      f"(exclusive){where}", highlight=False)
        out.print(f"dry run: would read {total:,} messages from {_partitions(len(spans))} of {s.kafka_topic}; "
                  "nothing written", highlight=False)
        return
    report = replaying.run(s, spans, format, strict, console=err)
    for name, tally in report.sinks.items():
        for p, left in sorted(tally.left.items()):
            at = "holds nothing of it" if left.position is None else f"is at {left.position:,}"
            out.print(f"{name}: partition {p} offsets {left.start:,} up to {left.end:,} left to `finpulse ingest`: "
                      f"the sink {at}, and writing them would skip the offsets in between", highlight=False)
    added = "; ".join(f"{name} +{t.rows:,} rows" + (f", +{t.rejects:,} rejects" if name == "postgres" else "")
                      for name, t in report.sinks.items())
    out.print(f"replayed {report.messages:,} messages from {_partitions(len(spans))} of {s.kafka_topic} in "
              f"{report.elapsed:.1f}s: {added}", highlight=False)


@app.command()
def status(
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object on stdout, keys as in docs/operations.md.")] = False,
    topic: Topic = None,
    bootstrap_servers: Bootstrap = None,
    delta_uri: DeltaUri = None,
) -> None:
    """Per partition: watermarks, the group's committed offset (KAFKA_GROUP_ID), each sink's position and lag."""
    import json

    from rich.table import Table

    from finpulse import status as stat

    s = settings(kafka_topic=topic, kafka_bootstrap_servers=bootstrap_servers, delta_table_uri=delta_uri)
    st = stat.collect(s)
    data = st.as_json()
    if as_json:
        typer.echo(json.dumps(data, indent=2))
    else:
        def num(v) -> str:
            return "-" if v is None else f"{v:,}"

        d = data["delta"]
        t = Table(title=f"{s.kafka_topic} (group {s.kafka_group_id}); Delta version {num(d['version'])}, "
                  f"{num(d['files'])} files, {num(d['bytes'])} bytes", title_justify="left", show_edge=False)
        columns = ["partition", "low", "high", "committed", "postgres", "lag", "delta", "lag", "rejected"]
        keys = ["partition", "low", "high", "committed", "postgres_position", "postgres_lag", "delta_position",
                "delta_lag", "rejected"]
        for col in columns:
            t.add_column(col, justify="right")
        for row in [*data["partitions"], {"partition": "total", **data["totals"]}]:
            t.add_row(*(str(row[k]) if k == "partition" else num(row.get(k)) for k in keys))
        _print_table(t)
        for g in data["gaps"]:
            out.print(f"gap accepted with --allow-data-loss: partition {g['partition']} offsets "
                      f"{g['from_offset']:,} up to {g['to_offset']:,} ({g['reason']})", highlight=False)
    if st.errors:  # shown above as far as possible; each reason on stderr, the first sets the exit code
        first, *others = st.errors.values()
        for exc in others:
            err.print(f"[bold red]error:[/] {exc}", highlight=False)
        raise first


@app.command()
def verify(
    partition: Partitions = None,
    from_offset: FromOffset = None,
    to_offset: ToOffset = None,
    from_timestamp: FromTime = None,
    to_timestamp: ToTime = None,
    sink: SinkChoice = None,
    repair: Annotated[bool, typer.Option("--repair", help="Replay the ranges with missing keys into the sink that lacks them, then verify again.")] = False,
    show: Annotated[int, typer.Option(min=0, help="How many missing / duplicated / unexpected keys to list per sink.")] = 10,
    window: Annotated[int, typer.Option(min=1000, help="Offsets compared at once per partition (bounds memory).")] = 500_000,
    format: Feed = None,
    strict: Strict = False,
    topic: Topic = None,
    bootstrap_servers: Bootstrap = None,
    delta_uri: DeltaUri = None,
) -> None:
    """Reconcile the sinks with the topic key by key (default: everything retained).

    Exit code 0: every sink holds exactly the topic's keys (PostgreSQL as rows or rejects, Delta as rows); 1: differences found (missing, duplicated or unexpected keys); 2-4: could not check (configuration, a service down, a table that cannot be read).
    """
    from finpulse import verify as verifying

    s = settings(sinks=sink, kafka_topic=topic, kafka_bootstrap_servers=bootstrap_servers, delta_table_uri=delta_uri)
    spans = _spans(s, partition, from_offset, to_offset, from_timestamp, to_timestamp, format, start_required=False)
    verdict = verifying.run(s, spans, format, strict, samples=show, window=window, console=err)
    _print_verdict(s, verdict)
    if repair and not verdict.exact:
        for name, report in verifying.repair(s, verdict, format, strict, console=err).items():
            tally = report.sinks[name]
            out.print(f"repair {name}: replayed {report.messages:,} messages, +{tally.rows:,} rows"
                      + (f", +{tally.rejects:,} rejects" if name == "postgres" else "")
                      + (f"; {len(tally.left)} partitions left to `finpulse ingest`" if tally.left else ""),
                      highlight=False)
        verdict = verifying.run(s, spans, format, strict, samples=show, window=window, console=err)
        _print_verdict(s, verdict)
    if not verdict.exact:
        raise typer.Exit(1)


def _print_verdict(s: Settings, verdict) -> None:
    from rich.table import Table

    t = Table(title=f"{s.kafka_topic}: what the topic holds, and rows in each sink", title_justify="left",
              show_edge=False)
    names = list(verdict.sinks)
    for col in ["partition", "offsets", "messages", "ticks", "rejects", *names] + (
            ["rejected"] if "postgres" in names else []):
        t.add_column(col, justify="right")
    for c in verdict.partitions:
        t.add_row(str(c.partition), f"{c.start}-{c.end}", f"{c.messages:,}", f"{c.ticks:,}", f"{c.rejects:,}",
                  *(f"{c.rows[n]:,}" for n in names), *([f"{c.rejected:,}"] if "postgres" in names else []))
    _print_table(t)
    for p, start, end, reason in verdict.gaps:
        out.print(f"gap accepted with --allow-data-loss: partition {p} offsets {start:,} up to {end:,} ({reason}); "
                  "those messages were never ingested", highlight=False)
    for name, check in verdict.sinks.items():
        n = check.counts
        pending = f" ({check.pending:,} at or above the sink's position: not ingested yet)" if check.pending else ""
        out.print(f"{name}: {n['missing']:,} missing{pending}, {n['duplicated']:,} duplicated, "
                  f"{n['unexpected']:,} unexpected" + (" - exact" if check.exact else ""), highlight=False)
        for kind, keys in check.samples.items():
            if keys:
                shown = ", ".join(f"({p}, {o}, {i})" for p, o, i in keys)
                more = f" and {n[kind] - len(keys):,} more" if n[kind] > len(keys) else ""
                out.print(f"  {kind} (partition, offset, tick_index): {shown}{more}", highlight=False, markup=False)


def main() -> None:
    try:
        app(prog_name="finpulse")
    except FinpulseError as exc:
        err.print(f"[bold red]error:[/] {exc}", highlight=False)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        err.print("interrupted")
        sys.exit(130)
