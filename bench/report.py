"""Print one table from a pytest-benchmark JSON file: ticks/s, ratio to the naive design,
fraction of the slowest raw limit, freshness, peak worker RSS.

    python bench/report.py .stack/bench/latest.json [--markdown]
"""

from __future__ import annotations

import json
import sys


def rows(path: str) -> tuple[list[list[str]], list[str]]:
    benches = [b for b in json.load(open(path))["benchmarks"]]
    info = [b["extra_info"] | {"name": b["name"]} for b in benches]
    naive = next((i["ticks_per_s"] for i in info if i.get("design") == "naive"), None)
    limits = {i["stage"]: i["ticks_per_s"] for i in info if i.get("kind") == "limit"}

    def limit_for(sinks: str) -> tuple[str, int] | None:
        stages = ["kafka"] + (["postgres", "delta"] if sinks == "all" else [sinks])
        known = [(s, limits[s]) for s in stages if s in limits]
        return min(known, key=lambda x: x[1]) if known else None

    table = []
    order = {
        "end-to-end": 0,
        "transport": 1,
        "trades": 2,
        "format": 2,
        "stage": 3,
        "limit": 4,
        "freshness": 5,
        "memory": 6,
        "hot store": 7,
    }
    for i in sorted(
        info,
        key=lambda i: (
            order.get(i.get("kind"), 9),
            i.get("design") != "finpulse",
            str(i.get("sinks")),
            i.get("workers", 0),
            i.get("batch_size", 0),
        ),
    ):
        kind = i.get("kind", "")
        what = {
            "end-to-end": f"{i.get('design')} drain: batch {i.get('batch_size')}, {i.get('workers')} worker(s), sinks {i.get('sinks')}",
            "stage": f"stage {i.get('stage', i.get('feed', ''))}"
            + (f" ({i['indexes']})" if "indexes" in i else "")
            + (f" ({i['table']})" if "table" in i else "")
            + (f" feed {i['feed']}" if "feed" in i else ""),
            "limit": f"limit {i.get('stage')}",
            "transport": f"drain over {i.get('transport')} Kafka and PostgreSQL: batch 5, 2 workers, sinks all",
            "trades": f"drain with trade ids ({i.get('trades')}): batch 5, 2 workers, sinks all",
            "format": f"drain of {i.get('format')} ticks: batch 5, 2 workers, sinks all",
        }.get(kind, _decode_label(i) if "feed" in i else i["name"])
        if kind == "hot store":
            table.append(
                [
                    f"hot store, {i['layout']} ({i['days']} days of {i['rows_per_day']:,} rows)",
                    "",
                    "",
                    "",
                    f"bars of a day {i['bars_of_a_day_ms']} ms, ticks of an hour {i['ticks_of_an_hour_ms']} ms",
                    f"drop a day {i['drop_a_day_ms']} ms",
                ]
            )
            continue
        if kind == "memory":
            table.append(
                [
                    f"trade window holding {i['ids']:,} text ids",
                    "",
                    "",
                    "",
                    "",
                    f"{i['held_mib']} MiB held ({i['peak_mib_while_adding']} MiB peak), snapshot {i['snapshot_mib']} MiB",
                ]
            )
            continue
        if kind == "freshness":
            table.append(
                [
                    f"freshness at {i['rate']:,} ticks/s, batch {i['batch_size']}",
                    "",
                    "",
                    "",
                    f"pg {i['freshness_p50_ms_postgres']:.0f}/{i['freshness_p99_ms_postgres']:.0f} ms, "
                    f"delta {i['freshness_p50_ms_delta']:.0f}/{i['freshness_p99_ms_delta']:.0f} ms",
                    "",
                ]
            )
            continue
        tps = i.get("ticks_per_s")
        ratio = (
            f"{tps / naive:,.0f}x" if naive and tps and kind == "end-to-end" and i.get("design") == "finpulse" else ""
        )
        lim = limit_for(i.get("sinks", "all")) if kind == "end-to-end" and i.get("design") == "finpulse" else None
        frac = f"{tps / lim[1]:.0%} of {lim[0]}" if lim and tps else ""
        rss = f"{i['peak_rss_mib']:.0f} MiB" if i.get("peak_rss_mib") else ""
        table.append([what, f"{tps:,}" if tps else "", ratio, frac, "", rss])
    transports = {i["transport"]: i["ticks_per_s"] for i in info if i.get("kind") == "transport"}
    if {"plaintext", "secured"} <= transports.keys():
        ratio = transports["secured"] / transports["plaintext"]
        table.append(["secured / plaintext drain (SASL_SSL + TLS vs open)", "", f"{ratio:.2f}x", "", "", ""])
    hot = {i["table"]: i["ticks_per_s"] for i in info if i.get("stage") == "postgres hot store"}
    if len(hot) == 2:
        ratio = hot["day partitions + bars"] / hot["unpartitioned, no bars"]
        table.append(["PostgreSQL write: day partitions + bars / one table, no bars", "", f"{ratio:.2f}x", "", "", ""])
    trades = {i["trades"]: i["ticks_per_s"] for i in info if i.get("kind") == "trades"}
    if {"window on", "window off"} <= trades.keys():
        ratio = trades["window on"] / trades["window off"]
        table.append(["trade window on / off drain (re-sent trades removed vs not)", "", f"{ratio:.2f}x", "", "", ""])
    formats = {i["format"]: i["ticks_per_s"] for i in info if i.get("kind") == "format"}
    if {"json", "avro"} <= formats.keys():
        ratio = formats["avro"] / formats["json"]
        table.append(["drain: Avro through the registry / canonical JSON", "", f"{ratio:.2f}x", "", "", ""])
    decodes = {i["format"]: i["ticks_per_s"] for i in info if i.get("kind") == "stage" and "format" in i}
    for fmt in ("avro", "protobuf"):
        if {"json", fmt} <= decodes.keys():
            ratio = decodes[fmt] / decodes["json"]
            table.append([f"stage decode: {fmt} / canonical JSON", "", f"{ratio:.2f}x", "", "", ""])
    header = ["benchmark", "ticks/s", "vs naive", "of slowest limit", "freshness p50/p99", "peak worker RSS"]
    return table, header


def _decode_label(i: dict) -> str:
    if i.get("shape") == "baseline":
        return "stage decode: bare orjson.loads + Arrow (baseline)"
    ratio = f", {i['vs_baseline']:.2f}x baseline time" if "vs_baseline" in i else ""
    return f"stage decode: {i.get('shape', i['feed'])}{ratio}"


def render(table: list[list[str]], header: list[str], markdown: bool) -> str:
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(r) + " |" for r in table]
        return "\n".join(lines)
    widths = [max(len(str(r[c])) for r in table + [header]) for c in range(len(header))]

    def fmt(r):
        return "  ".join(str(v).ljust(w) if c == 0 else str(v).rjust(w) for c, (v, w) in enumerate(zip(r, widths)))

    return "\n".join([fmt(header), "  ".join("-" * w for w in widths)] + [fmt(r) for r in table])


if __name__ == "__main__":
    table, header = rows(sys.argv[1])
    print(render(table, header, "--markdown" in sys.argv))
