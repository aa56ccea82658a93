"""What the commands print: plain data in, text on a rich Console out, nothing returned.

cli.py parses flags and calls a stage, then one of these. Tests and scripts grep these lines:
change their text only on purpose.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

if TYPE_CHECKING:
    from finpulse.replay import Report, Span
    from finpulse.show import Landed
    from finpulse.verify import Repair, Verdict

# Columns of a table written to a pipe (scripts, logs), where rich would otherwise assume 80.
PIPED_WIDTH = 120


def print_table(out: Console, table: Table) -> None:
    """On a terminal, its width; piped output goes to scripts and logs: 120 columns, not rich's 80."""
    (out if out.is_terminal else Console(width=max(out.width, PIPED_WIDTH))).print(table)


def progress_line(err: Console, who: str, text: str) -> None:
    """One line of progress of long work, on stderr."""
    err.print(f"{who}: {text}", highlight=False, markup=False)


def print_json(out: Console, data: Any) -> None:
    """One JSON document on the console's file, exactly as json.dumps writes it (no markup)."""
    out.file.write(json.dumps(data, indent=2) + "\n")
    out.file.flush()


def _partitions(n: int) -> str:
    return f"{n} partition" + ("" if n == 1 else "s")


def _num(v: int | None) -> str:
    return "-" if v is None else f"{v:,}"


# ---------------------------------------------------------------------------- init, produce, ingest
def topic_ready(out: Console, topic: str, created: bool, partitions: int) -> None:
    """`partitions`: those asked for when created, those the topic has otherwise."""
    out.print(
        f"Kafka topic {topic}: {f'created with {partitions} partitions' if created else 'exists'}"
        + ("" if created else f" ({partitions} partitions)")
    )


def sinks_ready(out: Console, ensured: Iterable[tuple[str, bool]]) -> None:
    """What `init` made sure exists, each with whether it was created now."""
    for what, created in ensured:
        out.print(f"{what}: {'created' if created else 'exists'}")


def produced(out: Console, sent: int, topic: str, servers: str) -> None:
    out.print(f"sent {sent:,} ticks to {topic} on {servers}")


def ingested(out: Console, totals, workers: int, sinks: Iterable[str]) -> None:
    """`totals`: the supervisor's run totals (ticks, messages, elapsed, rows per sink, ...)."""
    t = totals
    if workers == 0:  # stopped while waiting for Kafka: no worker ever started
        out.print("stopped before Kafka answered: nothing was ingested")
        return
    out.print(
        f"ingested {t.ticks:,} ticks from {t.messages:,} messages in {t.elapsed:.1f}s "
        f"({t.ticks / t.elapsed:,.0f} ticks/s) with {workers} workers: "
        + "".join(f"{sink} +{t.rows.get(sink, 0):,} rows, " for sink in sinks)
        + f"{t.rejected:,} rejected, {t.skipped:,} skipped, {t.restarts} restarts"
    )


# ---------------------------------------------------------------------------- show
def landed(out: Console, sinks: list[Landed], bars_of: str | None = None) -> None:
    """One table per sink, titled with where its rows are; `bars_of`'s bars from the sink keeping them."""
    from finpulse.show import SUMMARY_COLUMNS

    for item in sinks:
        title = (
            f"{item.sink}: {item.rows:,} rows"
            + (f", {item.rejected:,} rejected" if item.rejected is not None else "")
            + (f", {item.duplicates:,} re-sent trades removed" if item.duplicates else "")
            + f" in {item.where}"
        )
        t = Table(title=escape(title), title_justify="left")
        for col in SUMMARY_COLUMNS:
            t.add_column(col, justify="left" if col == "symbol" else "right")
        for sym, n, low, high, last, when in item.symbols:
            t.add_row(sym, f"{n:,}", f"{low:,.4f}", f"{high:,.4f}", f"{last:,.4f}", when.strftime("%Y-%m-%d %H:%M:%S"))
        out.print(t)
        if bars_of and item.bars is not None:
            _bars(out, item.sink, bars_of, item.bars)


def _bars(out: Console, sink: str, symbol: str, bars: list[tuple]) -> None:
    t = Table(title=escape(f"{sink}: 1-minute bars of {symbol.upper()}, newest first"), title_justify="left")
    for col in ("minute", "exchange", "open", "high", "low", "close", "volume", "trades", "vwap"):
        t.add_column(col, justify="left" if col in ("minute", "exchange") else "right")
    for _sym, venue, minute, o, h, low, c, v, n, vwap, _first, _last in bars:
        t.add_row(
            minute.strftime("%Y-%m-%d %H:%M"),
            venue or "-",
            *(f"{x:,.4f}" for x in (o, h, low, c)),
            f"{v:,.4f}",
            f"{n:,}",
            "-" if vwap is None else f"{vwap:,.4f}",
        )
    if not bars:
        out.print(f"{sink}: no 1-minute bars of {symbol.upper()}", highlight=False)
        return
    out.print(t)


# ---------------------------------------------------------------------------- replay
def positions_unavailable(err: Console, reason: object) -> None:
    err.print(f"sink positions unavailable: {reason}", highlight=False, markup=False)


def dry_run(out: Console, spans: list[Span], held: dict[str, dict[int, int]], topic: str) -> None:
    for sp in spans:
        where = "".join(
            f"; {name} at {h[sp.partition]:,}" if sp.partition in h else f"; {name} holds nothing"
            for name, h in held.items()
        )
        out.print(
            f"partition {sp.partition}: {sp.size:,} messages, offsets {sp.start:,} up to {sp.end:,} (exclusive){where}",
            highlight=False,
        )
    total = sum(sp.size for sp in spans)
    out.print(
        f"dry run: would read {total:,} messages from {_partitions(len(spans))} of {topic}; nothing written",
        highlight=False,
    )


def replayed(out: Console, report: Report, partitions: int, topic: str) -> None:
    for name, tally in report.sinks.items():
        for p, left in sorted(tally.left.items()):
            at = "holds nothing of it" if left.position is None else f"is at {left.position:,}"
            out.print(
                f"{name}: partition {p} offsets {left.start:,} up to {left.end:,} left to `finpulse ingest`: "
                f"the sink {at}, and writing them would skip the offsets in between",
                highlight=False,
            )
    added = "; ".join(
        f"{name} +{t.rows:,} rows" + (f", +{t.rejects:,} rejects" if t.keeps_rejects else "")
        for name, t in report.sinks.items()
    )
    out.print(
        f"replayed {report.messages:,} messages from {_partitions(partitions)} of {topic} in "
        f"{report.elapsed:.1f}s: {added}",
        highlight=False,
    )


# ---------------------------------------------------------------------------- maintain
def maintained(out: Console, done: dict[str, dict]) -> None:
    for name, report in done.items():
        kept = report.pop("retention", None)
        if kept is not None:
            for day, rows in kept.dropped:
                out.print(f"{name}: dropped the day {day} ({rows:,} rows; the Delta table holds them)", highlight=False)
            for day, why in kept.kept:
                out.print(f"{name}: kept the day {day} and the days after it: {why}", highlight=False, markup=False)
            if not kept.dropped and not kept.kept:
                out.print(f"{name}: no day past the retention to drop", highlight=False)
        if "before" not in report:  # a sink with nothing to compact: say what it did
            if report:
                out.print(f"{name}: {', '.join(f'{k} {v}' for k, v in report.items())}", highlight=False)
            continue
        before, after = report["before"], report["after"]
        out.print(
            f"{name}: compacted {report['files_removed']:,} files into {report['files_added']:,} in "
            f"{report['partitions']:,} date partitions; checkpoint at version {report['checkpoint']:,}; "
            f"vacuumed {report['vacuumed']:,} files; live files {before['files']:,} -> {after['files']:,} "
            f"({before['small_files']:,} -> {after['small_files']:,} small)"
            + (
                f"; removed {report['duplicates_removed']:,} rows a concurrent compaction had doubled"
                if report.get("duplicates_removed")
                else ""
            ),
            highlight=False,
        )


# ---------------------------------------------------------------------------- status
def status(out: Console, data: dict, topic: str, group_id: str, headlines: dict[str, str]) -> None:
    """`data`: Status.as_json(), so the table and `status --json` never disagree; `headlines`: per
    sink, its line for a person (Status.headlines)."""
    sinks = list(headlines)
    t = Table(
        title="; ".join([f"{topic} (group {group_id})", *(h for h in headlines.values() if h)]),
        title_justify="left",
        show_edge=False,
    )
    keys = [
        "partition",
        "low",
        "high",
        "committed",
        *(f"{s}_{k}" for s in sinks for k in ("position", "lag")),
        "rejected",
        "duplicates",
    ]
    columns = [
        "partition",
        "low",
        "high",
        "committed",
        *(c for s in sinks for c in (s, "lag")),
        "rejected",
        "duplicates",
    ]
    for col in columns:
        t.add_column(col, justify="right")
    for row in [*data["partitions"], {"partition": "total", **data["totals"]}]:
        t.add_row(*(str(row[k]) if k == "partition" else _num(row.get(k)) for k in keys))
    print_table(out, t)
    for g in data.get("gaps", []):
        out.print(
            f"gap accepted with --allow-data-loss: partition {g['partition']} offsets "
            f"{g['from_offset']:,} up to {g['to_offset']:,} ({g['reason']})",
            highlight=False,
        )
    for g in data.get("sequence_gaps", []):
        state = f"filled {g['filled_at']}" if g["filled_at"] else f"{g['missing']:,} missing"
        out.print(
            f"sequence gap: {g['exchange'] or '-'} {g['symbol']} trade ids {g['from_id']}-{g['to_id']} "
            f"(partition {g['partition']}, seen {g['first_seen_at']}): {state}",
            highlight=False,
            markup=False,
        )
    for sink, rules in data.get("rules", {}).items():
        out.print(
            f"{sink} table rules (ticks they refuse become rejects in every sink): {'; '.join(rules)}",
            highlight=False,
            markup=False,
        )
    registry = data.get("schema_registry")
    if registry:
        subjects = registry.get("subjects") or {}
        listed = ", ".join(f"{n} v{v['latest_version']} ({v['type']}, id {v['id']})" for n, v in subjects.items())
        out.print(
            f"schema registry {registry['url']}: {listed or 'no subject of this topic'}", highlight=False, markup=False
        )
        for partition, what in (registry.get("in_use") or {}).items():
            if what:
                out.print(f"  partition {partition}: newest message written with {what}", highlight=False, markup=False)


# ---------------------------------------------------------------------------- verify
def verdict(out: Console, topic: str, verdict: Verdict) -> None:
    t = Table(title=f"{topic}: what the topic holds, and rows in each sink", title_justify="left", show_edge=False)
    names = list(verdict.sinks)
    rejected = any(check.keeps_rejects for check in verdict.sinks.values())
    for col in ["partition", "offsets", "messages", "ticks", "rejects", *names] + (["rejected"] if rejected else []):
        t.add_column(col, justify="right")
    for c in verdict.partitions:
        t.add_row(
            str(c.partition),
            f"{c.start}-{c.end}",
            f"{c.messages:,}",
            f"{c.ticks:,}",
            f"{c.rejects:,}",
            *(f"{c.rows[n]:,}" for n in names),
            *([f"{c.rejected:,}"] if rejected else []),
        )
    print_table(out, t)
    for p, start, end, reason in verdict.gaps:
        out.print(
            f"gap accepted with --allow-data-loss: partition {p} offsets {start:,} up to {end:,} ({reason}); "
            "those messages were never ingested",
            highlight=False,
        )
    for name, check in verdict.sinks.items():
        n = check.counts
        pending = f" ({check.pending:,} at or above the sink's position: not ingested yet)" if check.pending else ""
        twice = f", {check.trades_twice:,} trades held twice" if check.trades_twice else ""
        twice += f", {check.bars_differing:,} 1-minute bars differ from its rows" if check.bars_differing else ""
        if check.horizon_us is not None:
            twice += f" (retention keeps trades from {_day(check.horizon_us)} on)"
        out.print(
            f"{name}: {n['missing']:,} missing{pending}, {n['duplicated']:,} duplicated, "
            f"{n['unexpected']:,} unexpected{twice}" + (" - exact" if check.exact else ""),
            highlight=False,
        )
        for kind, keys in check.samples.items():
            if keys:
                shown = ", ".join(f"({p}, {o}, {i})" for p, o, i in keys)
                more = f" and {n[kind] - len(keys):,} more" if n[kind] > len(keys) else ""
                out.print(f"  {kind} (partition, offset, tick_index): {shown}{more}", highlight=False, markup=False)


def _day(us: int) -> str:
    import datetime as dt

    return (dt.datetime(1970, 1, 1, tzinfo=dt.UTC) + dt.timedelta(microseconds=us)).date().isoformat()


def repaired(out: Console, name: str, repair: Repair) -> None:
    parts = []
    if repair.duplicates_removed:
        parts.append(f"removed {repair.duplicates_removed:,} duplicated rows")
    if repair.replayed is not None:
        tally = repair.replayed.sinks[name]
        parts.append(
            f"replayed {repair.replayed.messages:,} messages, +{tally.rows:,} rows"
            + (f", +{tally.rejects:,} rejects" if tally.keeps_rejects else "")
            + (f"; {len(tally.left)} partitions left to `finpulse ingest`" if tally.left else "")
        )
    if repair.bars_rebuilt:
        parts.append(f"rebuilt {repair.bars_rebuilt:,} 1-minute bars from the rows")
    out.print(f"repair {name}: {'; '.join(parts) or 'nothing to do'}", highlight=False)


# ---------------------------------------------------------------------------- mapping check
def mapping_checked(out: Console, path: str, checked) -> None:
    """`finpulse mapping check`: the rows a sample would land as, then why the others would not."""
    t = Table(title=f"{path}: {checked.messages:,} messages sampled", title_justify="left", show_edge=False)
    shown = ("kafka_partition", "kafka_offset", "symbol", "price", "size", "trade_time", "exchange", "side", "trade_id")
    for col in ("partition", "offset", *shown[2:]):
        t.add_column(col)
    for row in checked.rows:
        t.add_row(*("" if row[k] is None else str(row[k]) for k in shown))
    print_table(out, t)
    for r in checked.rejects:
        out.print(
            f"reject: partition {r['partition']} offset {r['offset']}: {r['reason']}", highlight=False, markup=False
        )
    out.print(
        f"{len(checked.rows):,} rows, {len(checked.rejects):,} rejects, {checked.skipped:,} non-trade events skipped",
        highlight=False,
    )
