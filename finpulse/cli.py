"""The `finpulse` command: flags -> Settings, errors -> one line and an exit code. Nothing else."""

from __future__ import annotations

import functools
import logging
import os
import sys
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.console import Console

from finpulse import logformat, views
from finpulse import sinks as registry
from finpulse.cli_options import (
    DECODING,
    DELTA,
    KAFKA,
    AllowDataLoss,
    Feed,
    FromOffset,
    FromTime,
    Partitions,
    SinkChoice,
    Strict,
    ToOffset,
    ToTime,
    connection,
    feed_choice,
    range_spans,
)
from finpulse.config import Settings, load_settings
from finpulse.errors import FinpulseError
from finpulse.kafka_config import bootstrap as kafka_bootstrap
from finpulse.kafka_config import file_properties
from finpulse.logformat import LogFormat

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


@app.callback()
def _root(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.")] = False,
    log_format: Annotated[
        LogFormat,
        typer.Option(
            "--log-format",
            envvar="FINPULSE_LOG_FORMAT",
            help="Log lines on stderr: text, or json (one object per line: time, level, logger, process, message).",
        ),
    ] = LogFormat.text,
) -> None:
    logformat.setup(verbose, log_format, err)


def settings(where: dict[str, Any] | None, **overrides: Any) -> Settings:
    """Settings from the environment, .env and the flags (`where`: the shared ones, cli_options.
    connection), with the sinks and the Kafka client file they name checked."""
    s = load_settings(**(where or {}), **overrides)
    # checked where they live, but at once: one clear line before any work
    registry.chosen(s)  # FINPULSE_SINKS / --sinks names kinds of sink
    file_properties(s)  # KAFKA_CONFIG_FILE can be read and holds no Java-only store
    return s


@app.command()
@connection(*KAFKA, *DELTA)
def init(
    partitions: Annotated[int, typer.Option(min=1, max=1000, help="Partitions of a newly created topic.")] = 4,
    where: dict[str, Any] | None = None,
) -> None:
    """Create the Kafka topic, the PostgreSQL tables and the Delta table, where absent."""
    from finpulse import source
    from finpulse.sinks import prepare_sinks

    s = settings(
        where,
    )
    created = source.create_topic(s, partitions)
    views.topic_ready(out, s.kafka_topic, created, partitions if created else len(source.partitions(s)))
    for ensured in prepare_sinks(s).values():
        views.sinks_ready(out, ensured)


@app.command()
@connection(*KAFKA)
def produce(
    count: Annotated[int, typer.Option(min=0, help="How many ticks to send.")] = 1000,
    rate: Annotated[
        Optional[float], typer.Option(min=0.001, help="Ticks per second (default: as fast as possible).")
    ] = None,
    symbols: Annotated[
        Optional[str], typer.Option(help="Comma-separated symbols (default: 16 stocks, crypto and FX pairs).")
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed of the random walk; equal seeds give equal ticks.")] = 7,
    trade_ids: Annotated[
        bool,
        typer.Option(
            "--trade-ids", help="Give each tick a trade_id, consecutive per symbol (implied by the two rates below)."
        ),
    ] = False,
    first_trade_id: Annotated[int, typer.Option(min=0, help="Each symbol's first trade id.")] = 1,
    duplicate_rate: Annotated[
        float,
        typer.Option(
            min=0.0,
            max=1.0,
            help="After this fraction of the trades, re-send one of the last 1,000 (same trade id and time) as a new message.",
        ),
    ] = 0.0,
    drop_rate: Annotated[
        float,
        typer.Option(min=0.0, max=1.0, help="Skip this fraction of the trades (their ids go missing: sequence gaps)."),
    ] = 0.0,
    interval_us: Annotated[
        int,
        typer.Option(min=1, help="Trade time between consecutive ticks, µs (86400 for a day of 1M ticks)."),
    ] = 100,
    start: Annotated[
        Optional[str],
        typer.Option(
            help="Trade time of the first tick: ISO-8601 (UTC unless it names an offset) or epoch ms (default: now). "
            "Past days land in their own day partitions of prices_raw."
        ),
    ] = None,
    fmt: Annotated[
        str,
        typer.Option(
            "--format",
            help="json (canonical), or avro, protobuf, json-schema: the schema registry's wire format "
            "(registers the tick's schema under <topic>-value; SCHEMA_REGISTRY_URL).",
        ),
    ] = "json",
    schema_id_header: Annotated[
        bool,
        typer.Option(
            "--schema-id-header",
            help="With a registry format: the schema id in the __value_schema_id header, not before the payload.",
        ),
    ] = False,
    subject: Annotated[
        Optional[str],
        typer.Option(
            help="Registry subject of the schema (default <topic>-value). A subject holds one schema type: "
            "give each format its own to mix formats on one topic.",
        ),
    ] = None,
    where: dict[str, Any] | None = None,
) -> None:
    """Send synthetic ticks (a seeded random walk, keyed by symbol) to the topic, as JSON or as Avro, Protobuf or JSON Schema through the schema registry.

    With trade ids, re-sent and missing trades on request."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from finpulse import encode as encoding
    from finpulse import produce as producing
    from finpulse import registry as schema_registry
    from finpulse import source
    from finpulse.replay import parse_time

    s = settings(where)
    start_ms = parse_time(start, "--start") if start is not None else None
    syms = tuple(x.strip() for x in symbols.split(",") if x.strip()) if symbols else producing.DEFAULT_SYMBOLS
    if not syms:
        raise typer.BadParameter("give at least one symbol", param_hint="--symbols")
    if fmt not in encoding.FORMATS:
        raise typer.BadParameter(f"{fmt!r}: one of {', '.join(encoding.FORMATS)}", param_hint="--format")
    if schema_id_header and fmt == "json":
        raise typer.BadParameter(
            "needs a registry format (avro, protobuf, json-schema)", param_hint="--schema-id-header"
        )
    source.partitions(s)  # a missing topic or broker is one clear line, not a 30 s delivery timeout
    if fmt != "json":
        schema_registry.check(s)  # a missing or refusing registry: one line before any tick
    stream = encoding.encoded(
        s,
        producing.ticks(
            count,
            syms,
            seed,
            trade_ids=trade_ids,
            first_trade_id=first_trade_id,
            duplicate_rate=duplicate_rate,
            drop_rate=drop_rate,
            interval_us=interval_us,
            start_ms=start_ms,
        ),
        fmt,
        header=schema_id_header,
        subject_name=subject,
    )
    show = err.is_terminal and count >= 10_000
    with Progress(
        TextColumn("producing"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(), console=err, disable=not show
    ) as bar:
        task = bar.add_task("produce", total=count)
        sent = producing.send(s, stream, rate, on_progress=lambda n: bar.advance(task, n))
    views.produced(out, sent, s.kafka_topic, kafka_bootstrap(s))


@app.command()
@connection(*KAFKA, *DELTA, *DECODING)
def ingest(
    workers: Annotated[
        Optional[int],
        typer.Option(min=1, max=256, help="Worker processes (env FINPULSE_WORKERS; default: one per partition)."),
    ] = None,
    batch_size: Annotated[
        Optional[int],
        typer.Option(
            min=1, help="Ticks that trigger a flush; more that piled up join it (env FINPULSE_BATCH_SIZE, default 5)."
        ),
    ] = None,
    linger_ms: Annotated[
        Optional[int],
        typer.Option(min=0, help="Flush a partial batch after this long (env FINPULSE_LINGER_MS, default 100)."),
    ] = None,
    max_inflight_ticks: Annotated[
        Optional[int],
        typer.Option(
            min=1000,
            help="Pause consuming when this many ticks wait for the sinks (env FINPULSE_MAX_INFLIGHT_TICKS, default 250,000).",
        ),
    ] = None,
    max_inflight_bytes: Annotated[
        Optional[int],
        typer.Option(
            min=1 << 20,
            help="Pause consuming when this many bytes (estimated) wait for the sinks (env FINPULSE_MAX_INFLIGHT_BYTES, default 256 MiB).",
        ),
    ] = None,
    sinks: Annotated[
        Optional[str], typer.Option(help="Write to all, postgres or delta (env FINPULSE_SINKS, default all).")
    ] = None,
    drain: Annotated[
        bool, typer.Option("--drain", help="Stop after reaching the high watermarks seen at start.")
    ] = False,
    format: Annotated[
        Optional[str],
        typer.Option(
            "--format",
            help="Force one feed shape instead of detecting it per message: canonical, binance, coinbase, coinbase-advanced, alpaca, polygon, finnhub or kraken.",
        ),
    ] = None,
    strict: Annotated[bool, typer.Option("--strict", help="Reject non-trade events instead of skipping them.")] = False,
    dlq_topic: Annotated[
        Optional[str],
        typer.Option(
            help="Also send rejected messages to this Kafka topic, created if absent (env FINPULSE_DLQ_TOPIC)."
        ),
    ] = None,
    metrics_port: Annotated[
        Optional[int],
        typer.Option(
            min=0,
            max=65535,
            help="Serve Prometheus metrics, /healthz and /readyz on this port, 0 for a free one (env FINPULSE_METRICS_PORT; default off).",
        ),
    ] = None,
    metrics_host: Annotated[
        Optional[str],
        typer.Option(
            help="Address the metrics server binds (env FINPULSE_METRICS_HOST; default 0.0.0.0, every interface; 127.0.0.1 for this host only).",
        ),
    ] = None,
    keep_duplicates: Annotated[
        bool,
        typer.Option(
            "--keep-duplicates",
            help="Also record each re-sent trade removed as a row of prices_duplicates, with its lineage (env FINPULSE_KEEP_DUPLICATES).",
        ),
    ] = False,
    dedup_window: Annotated[
        Optional[str],
        typer.Option(
            help="A trade id seen within this much trade time before is a re-send and lands nowhere; 0 turns "
            "duplicate removal and gap tracking off (env FINPULSE_DEDUP_WINDOW, default 24h).",
        ),
    ] = None,
    allow_data_loss: AllowDataLoss = False,
    where: dict[str, Any] | None = None,
) -> None:
    """Consume the topic with one process per partition into PostgreSQL and Delta, exactly once.

    Exactly once per trade too: a trade whose (exchange, symbol, trade_id) already landed is a
    duplicate (a re-send, an A/B feed) and is counted, not stored; holes in a symbol's consecutive
    trade ids are recorded as sequence gaps (docs/feeds.md#trade-ids)."""
    from finpulse import supervisor

    feed = feed_choice(format)
    s = settings(
        where,
        dlq_topic=dlq_topic,
        sinks=sinks,
        workers=workers,
        batch_size=batch_size,
        linger_ms=linger_ms,
        max_inflight_ticks=max_inflight_ticks,
        max_inflight_bytes=max_inflight_bytes,
        metrics_port=metrics_port,
        metrics_host=metrics_host,
        allow_data_loss=allow_data_loss or None,
        keep_duplicates=keep_duplicates or None,
        dedup_window_s=dedup_window,
    )
    live = None if logformat.is_json() else err  # json: progress as log lines, not a live table
    result = supervisor.run(s, drain=drain, feed=feed, strict=strict, console=live)
    views.ingested(out, result.totals, result.workers, registry.chosen(s))


@app.command()
@connection(*DELTA)
def show(
    limit: Annotated[
        Optional[int],
        typer.Option(min=1, max=1000, help="Symbols to list, busiest first (default 10; with --json every symbol)."),
    ] = None,
    as_json: Annotated[
        bool,
        typer.Option("--json", help="One JSON object on stdout: each sink's rows, per-symbol summary and bars."),
    ] = False,
    bars: Annotated[
        Optional[str],
        typer.Option(
            "--bars", metavar="SYMBOL", help="Also show this symbol's latest 1-minute bars (PostgreSQL's prices_1m)."
        ),
    ] = None,
    where: dict[str, Any] | None = None,
) -> None:
    """Show what landed: rows in each sink, a per-symbol summary from both, and 1-minute bars."""
    from finpulse import show as showing

    s = settings(where)
    landed = showing.landed(s, limit if limit is not None or as_json else showing.TABLE_LIMIT, bars)
    if as_json:
        views.print_json(out, showing.as_json(landed))
    else:
        views.landed(out, landed, bars)


@app.command()
@connection(*KAFKA, *DELTA, *DECODING)
def replay(
    partition: Partitions = None,
    from_offset: FromOffset = None,
    to_offset: ToOffset = None,
    from_timestamp: FromTime = None,
    to_timestamp: ToTime = None,
    sink: SinkChoice = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Only say how many messages each partition would read.")
    ] = False,
    format: Feed = None,
    strict: Strict = False,
    allow_data_loss: AllowDataLoss = False,
    where: dict[str, Any] | None = None,
) -> None:
    """Read a bounded range of the topic again and write what the sinks lack, then exit.

    Idempotent: rows already present (same partition, offset, tick_index) are not written again. Below a sink's position only missing rows are inserted; at or above it rows go through the normal guarded write, and only when the range reaches down to the position. Safe next to a running `finpulse ingest`.
    """
    from finpulse import replay as replaying

    feed = feed_choice(format)
    s = settings(
        where,
        sinks=sink,
        allow_data_loss=allow_data_loss or None,
    )
    spans = range_spans(s, partition, from_offset, to_offset, from_timestamp, to_timestamp, start_required=True)
    if dry_run:
        try:
            held = replaying.positions(s, [sp.partition for sp in spans])
        except FinpulseError as exc:  # the counts come from Kafka alone; positions are a courtesy
            held = {}
            views.positions_unavailable(err, exc)
        views.dry_run(out, spans, held, s.kafka_topic)
        return
    report = replaying.run(s, spans, feed, strict, console=err)
    views.replayed(out, report, len(spans), s.kafka_topic)


@app.command()
@connection(*DELTA)
def maintain(
    target_file_mb: Annotated[
        int, typer.Option(min=1, max=4096, help="Compact each date partition's small files toward this size.")
    ] = 128,
    vacuum_retention_hours: Annotated[
        int,
        typer.Option(
            min=168,
            help="Delta's vacuum keeps files removed less than this long ago (Delta's minimum and default: 7 days).",
        ),
    ] = 168,
    retention_hours: Annotated[
        Optional[int], typer.Option(min=168, hidden=True, help="The old name of --vacuum-retention-hours.")
    ] = None,
    pg_retention_days: Annotated[
        Optional[int],
        typer.Option(
            min=0,
            help="Drop prices_raw's days older than this many days, each only once Delta holds every row of it "
            "(env FINPULSE_PG_RETENTION_DAYS; default 0: keep every day).",
        ),
    ] = None,
    pg_days_ahead: Annotated[
        Optional[int],
        typer.Option(
            min=1,
            max=366,
            help="Days of prices_raw partitions to keep made ahead (env FINPULSE_PG_DAYS_AHEAD, default 7).",
        ),
    ] = None,
    bars_retention_days: Annotated[
        Optional[int],
        typer.Option(
            min=0,
            help="Delete 1-minute bars older than this many days (env FINPULSE_BARS_RETENTION_DAYS; default 0: keep).",
        ),
    ] = None,
    sinks: SinkChoice = None,
    where: dict[str, Any] | None = None,
) -> None:
    """Keep the tables fast and the hot store small: compact Delta's small files per date partition
    (waiting while another process compacts the table), checkpoint, clean expired log entries and
    vacuum; make PostgreSQL's coming day partitions, move the default partition's rows into their
    days, drop days past --pg-retention-days that Delta holds (run as the tables' owner). Safe next
    to a running ingest. Exit 1 when retention kept a day Delta does not hold yet."""
    from finpulse import maintain as maintaining

    s = settings(
        where,
        sinks=sinks,
        pg_retention_days=pg_retention_days,
        pg_days_ahead=pg_days_ahead,
        bars_retention_days=bars_retention_days,
    )
    if retention_hours is not None:  # kept one release for scripts that use it
        err.print("--retention-hours is now --vacuum-retention-hours; the old name goes in the next release")
        vacuum_retention_hours = retention_hours
    done = maintaining.run(s, target_file_mb << 20, vacuum_retention_hours)
    refused = maintaining.days_kept(done)
    views.maintained(out, done)
    if refused:
        raise typer.Exit(1)


@app.command()
@connection(*DELTA)
def migrate(
    keep_old: Annotated[
        bool, typer.Option("--keep-old", help="Keep the old prices_raw, renamed prices_raw_unpartitioned.")
    ] = False,
    chunk_offsets: Annotated[
        int, typer.Option(min=1, help="Offsets of one Kafka partition copied per transaction (a kill loses one).")
    ] = 1_000_000,  # migrate.CHUNK_OFFSETS
    sinks: SinkChoice = None,
    where: dict[str, Any] | None = None,
) -> None:
    """Bring tables an earlier release made to this one's layout: an unpartitioned prices_raw becomes
    partitioned by day (its rows copied in chunks while ingest goes on, then a short lock to catch up
    and swap; resumable after a kill), and Delta gains this release's columns. Run as the owner."""
    from finpulse import sinks as registry_

    s = settings(where, sinks=sinks)
    for name in registry_.chosen(s):
        say = functools.partial(views.progress_line, err, name)
        for line in registry_.KINDS[name].migrate(s, keep_old, chunk_offsets, say):
            out.print(f"{name}: {line}", highlight=False)


@app.command()
@connection(*KAFKA, *DELTA)
def status(
    as_json: Annotated[
        bool, typer.Option("--json", help="One JSON object on stdout, keys as in docs/operations.md.")
    ] = False,
    where: dict[str, Any] | None = None,
) -> None:
    """Per partition: watermarks, the group's committed offset (KAFKA_GROUP_ID), each sink's position and lag."""
    from finpulse import status as stat

    s = settings(
        where,
    )
    st = stat.collect(s)
    if as_json:
        views.print_json(out, st.as_json())
    else:
        views.status(out, st.as_json(), s.kafka_topic, s.kafka_group_id, st.headlines())
    if st.errors:  # shown above as far as possible; each reason on stderr, the first sets the exit code
        first, *others = st.errors.values()
        for exc in others:
            err.print(f"[bold red]error:[/] {exc}", highlight=False)
        raise first


@app.command()
@connection(*KAFKA, *DELTA, *DECODING)
def verify(
    partition: Partitions = None,
    from_offset: FromOffset = None,
    to_offset: ToOffset = None,
    from_timestamp: FromTime = None,
    to_timestamp: ToTime = None,
    sink: SinkChoice = None,
    repair: Annotated[
        bool,
        typer.Option(
            "--repair", help="Replay the ranges with missing keys into the sink that lacks them, then verify again."
        ),
    ] = False,
    show: Annotated[
        int, typer.Option(min=0, help="How many missing / duplicated / unexpected keys to list per sink.")
    ] = 10,
    window: Annotated[
        int, typer.Option(min=1000, help="Offsets compared at once per partition (bounds memory).")
    ] = 500_000,
    format: Feed = None,
    strict: Strict = False,
    where: dict[str, Any] | None = None,
) -> None:
    """Reconcile the sinks with the topic key by key (default: everything retained).

    Exit code 0: every sink holds exactly the topic's keys (PostgreSQL as rows or rejects, Delta as rows); 1: differences found (missing, duplicated or unexpected keys); 2-4: could not check (configuration, a service down, a table that cannot be read).
    """
    from finpulse import verify as verifying

    feed = feed_choice(format)
    s = settings(
        where,
        sinks=sink,
    )
    spans = range_spans(s, partition, from_offset, to_offset, from_timestamp, to_timestamp, start_required=False)
    verdict = verifying.run(s, spans, feed, strict, samples=show, window=window, console=err)
    views.verdict(out, s.kafka_topic, verdict)
    if repair and not verdict.exact:
        for name, report in verifying.repair(s, verdict, feed, strict, console=err).items():
            views.repaired(out, name, report)
        verdict = verifying.run(s, spans, feed, strict, samples=show, window=window, console=err)
        views.verdict(out, s.kafka_topic, verdict)
    if not verdict.exact:
        raise typer.Exit(1)


mapping_app = typer.Typer(
    help="Field mappings: records of no known feed shape read by naming their fields (docs/feeds.md#field-mappings).",
    no_args_is_help=True,
)
app.add_typer(mapping_app, name="mapping")


@mapping_app.command("check")
@connection(*KAFKA)
def mapping_check(
    file: Annotated[Path, typer.Argument(help="The mapping (TOML) to try.", show_default=False)],
    sample: Annotated[int, typer.Option(min=1, max=10_000, help="Messages to decode, the oldest retained first.")] = 20,
    partition: Partitions = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object on stdout: rows and rejects.")] = False,
    where: dict[str, Any] | None = None,
) -> None:
    """Decode messages of the topic with a mapping and print the rows they would land as, or why they would not.

    Writes nothing. Exit code 0: every sampled message decoded; 1: some would be rejects (their reasons are
    listed); 2-4: the mapping, the topic or the registry could not be read."""
    from finpulse import mapping_check as checking

    s = settings(where, mapping_file=file)
    result = checking.run(s, sample, partition)
    if as_json:
        views.print_json(out, result.as_json())
    else:
        views.mapping_checked(out, str(file), result)
    if result.rejects:
        raise typer.Exit(1)


def main() -> None:
    code = 0
    try:
        app(prog_name="finpulse")
    except SystemExit as exc:  # typer ends every command this way
        if isinstance(exc.code, str):
            err.print(exc.code, highlight=False, markup=False)
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except FinpulseError as exc:
        err.print(f"[bold red]error:[/] {exc}", highlight=False)
        code = exc.exit_code
    except KeyboardInterrupt:
        err.print("interrupted")
        code = 130
    _leave(code)


def _leave(code: int) -> None:
    """Exit with `code`, skipping the interpreter's teardown: delta-rs can abort it ("terminate called
    without an active exception", delta-rs #2184) after a command that read a table, which turned a
    finished `show` or `status` into exit -6. The command is done: its output is flushed first and
    its workers were joined, so nothing is lost by not tearing down."""
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe (`finpulse show | head`)
            pass
    os._exit(code)
