"""What landed: row counts and a per-symbol summary from each sink, side by side.

"Last" is the newest tick of a symbol in one total order, the same in both sinks: trade time,
then (kafka_partition, kafka_offset, tick_index), all descending. Ticks sharing a trade time
(a millisecond feed) would otherwise give each sink its own arbitrary last price.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone

import psycopg
from deltalake import DeltaTable
from deltalake.exceptions import TableNotFoundError

from finpulse.config import Settings
from finpulse.errors import ConfigError, ServiceUnavailable
from finpulse.schema import PRICES_TABLE, REJECTS_TABLE

SUMMARY_COLUMNS = ("symbol", "ticks", "low", "high", "last_price", "last_time")
# Symbols in the `finpulse show` table unless --limit says otherwise; a screenful.
TABLE_LIMIT = 10
# The total order that picks a symbol's last tick, newest first (see the module docstring).
LAST_ORDER = ("trade_time", "kafka_partition", "kafka_offset", "tick_index")
_PG_LAST = ", ".join(f"{column} DESC" for column in LAST_ORDER)


@dataclass(frozen=True)
class Landed:
    sink: str
    rows: int
    rejected: int | None  # only PostgreSQL keeps rejects
    symbols: list[tuple]  # SUMMARY_COLUMNS, busiest symbols first


def from_postgres(settings: Settings, limit: int | None) -> Landed:
    """`limit`: the busiest symbols to summarise, None for all."""
    try:
        with psycopg.connect(settings.postgres_conninfo()) as conn:
            rows = conn.execute(f"SELECT count(*) FROM {PRICES_TABLE}").fetchone()[0]
            rejected = conn.execute(f"SELECT count(*) FROM {REJECTS_TABLE}").fetchone()[0]
            symbols = conn.execute(
                f"""SELECT symbol, count(*), min(price), max(price),
                           (array_agg(price ORDER BY {_PG_LAST}))[1], max(trade_time)
                    FROM {PRICES_TABLE} GROUP BY symbol ORDER BY count(*) DESC, symbol LIMIT %s""",
                (limit,),
            ).fetchall()
    except psycopg.errors.UndefinedTable:
        raise ConfigError("the PostgreSQL tables do not exist yet: run `finpulse init`") from None
    except psycopg.OperationalError as exc:
        raise ServiceUnavailable(f"PostgreSQL at {settings.postgres_display()}: {exc}") from None
    return Landed("postgres", rows, rejected, [tuple(r) for r in symbols])


def from_delta(settings: Settings, limit: int | None) -> Landed:
    try:
        dt = DeltaTable(settings.delta_uri, storage_options=settings.delta_storage_options)
    except TableNotFoundError:
        raise ConfigError(f"no Delta table at {settings.delta_uri}: run `finpulse init`") from None
    table = dt.to_pyarrow_dataset().to_table(columns=["symbol", "price", *LAST_ORDER])
    if table.num_rows == 0:
        return Landed("delta", 0, None, [])
    grouped = table.group_by("symbol").aggregate(
        [("price", "count"), ("price", "min"), ("price", "max"), ("trade_time", "max")])
    latest = table.sort_by([(c, "descending") for c in LAST_ORDER])
    last = latest.group_by("symbol", use_threads=False).aggregate([("price", "first")])
    merged = grouped.join(last, "symbol")
    merged = merged.sort_by([("price_count", "descending"), ("symbol", "ascending")]).slice(0, limit)
    symbols = list(zip(*(merged.column(c).to_pylist() for c in
                         ("symbol", "price_count", "price_min", "price_max", "price_first", "trade_time_max"))))
    return Landed("delta", table.num_rows, None, symbols)


def landed(settings: Settings, limit: int | None = TABLE_LIMIT) -> list[Landed]:
    return [from_postgres(settings, limit), from_delta(settings, limit)]


def as_json(landed: list[Landed]) -> dict:
    """`finpulse show --json`: {sink: {"rows", "rejected" (PostgreSQL only), "symbols": [...]}}, each symbol
    an object keyed by SUMMARY_COLUMNS, last_time in ISO-8601 UTC."""
    doc: dict[str, dict] = {}
    for item in landed:
        entry: dict[str, object] = {"rows": item.rows}
        if item.rejected is not None:
            entry["rejected"] = item.rejected
        entry["symbols"] = [dict(zip(SUMMARY_COLUMNS, (sym, n, low, high, last, _utc(when))))
                            for sym, n, low, high, last, when in item.symbols]
        doc[item.sink] = entry
    return doc


def _utc(when: datetime) -> str:
    return when.astimezone(timezone.utc).isoformat(timespec="microseconds").replace("+00:00", "Z")
