"""What landed: row counts and a per-symbol summary from each sink, side by side."""

from __future__ import annotations

from dataclasses import dataclass

import psycopg
from deltalake import DeltaTable
from deltalake.exceptions import TableNotFoundError

from finpulse.config import Settings
from finpulse.errors import ConfigError, ServiceUnavailable
from finpulse.schema import PRICES_TABLE, REJECTS_TABLE

SUMMARY_COLUMNS = ("symbol", "ticks", "low", "high", "last_price", "last_time")


@dataclass(frozen=True)
class Landed:
    sink: str
    rows: int
    rejected: int | None  # only PostgreSQL keeps rejects
    symbols: list[tuple]  # SUMMARY_COLUMNS, busiest symbols first


def from_postgres(settings: Settings, limit: int) -> Landed:
    try:
        with psycopg.connect(settings.postgres_conninfo()) as conn:
            rows = conn.execute(f"SELECT count(*) FROM {PRICES_TABLE}").fetchone()[0]
            rejected = conn.execute(f"SELECT count(*) FROM {REJECTS_TABLE}").fetchone()[0]
            symbols = conn.execute(
                f"""SELECT symbol, count(*), min(price), max(price),
                           (array_agg(price ORDER BY trade_time DESC))[1], max(trade_time)
                    FROM {PRICES_TABLE} GROUP BY symbol ORDER BY count(*) DESC, symbol LIMIT %s""",
                (limit,),
            ).fetchall()
    except psycopg.errors.UndefinedTable:
        raise ConfigError("the PostgreSQL tables do not exist yet: run `finpulse init`") from None
    except psycopg.OperationalError as exc:
        raise ServiceUnavailable(f"PostgreSQL at {settings.postgres_display()}: {exc}") from None
    return Landed("postgres", rows, rejected, [tuple(r) for r in symbols])


def from_delta(settings: Settings, limit: int) -> Landed:
    try:
        dt = DeltaTable(settings.delta_uri, storage_options=settings.delta_storage_options)
    except TableNotFoundError:
        raise ConfigError(f"no Delta table at {settings.delta_uri}: run `finpulse init`") from None
    table = dt.to_pyarrow_dataset().to_table(columns=["symbol", "price", "trade_time"])
    if table.num_rows == 0:
        return Landed("delta", 0, None, [])
    grouped = table.group_by("symbol").aggregate(
        [("price", "count"), ("price", "min"), ("price", "max"), ("trade_time", "max")])
    latest = table.sort_by([("trade_time", "descending")])
    last = latest.group_by("symbol", use_threads=False).aggregate([("price", "first")])
    merged = grouped.join(last, "symbol")
    merged = merged.sort_by([("price_count", "descending"), ("symbol", "ascending")]).slice(0, limit)
    symbols = list(zip(*(merged.column(c).to_pylist() for c in
                         ("symbol", "price_count", "price_min", "price_max", "price_first", "trade_time_max"))))
    return Landed("delta", table.num_rows, None, symbols)


def landed(settings: Settings, limit: int = 10) -> list[Landed]:
    return [from_postgres(settings, limit), from_delta(settings, limit)]
