"""`finpulse show`: both sinks summarised alike, `--json`, and one total order for "last"."""

from __future__ import annotations

import json
import time
from datetime import datetime

import orjson
import pytest
from support.cli import env_for, finpulse
from support.sinks import KEY_COLUMNS, delta_rows, pg_rows

from finpulse import produce

pytestmark = [pytest.mark.kafka, pytest.mark.postgres]


def show_json(env: dict[str, str], *args: str) -> dict:
    return json.loads(finpulse("show", "--json", *args, env=env).stdout)


def test_show_json_gives_each_sinks_per_symbol_summary(isolated):
    env = env_for(isolated)
    finpulse("produce", "--count", "3000", env=env)
    finpulse("ingest", "--drain", env=env)

    doc = show_json(env)
    assert set(doc) == {"postgres", "delta"}
    assert (doc["postgres"]["rows"], doc["postgres"]["rejected"], doc["delta"]["rows"]) == (3000, 0, 3000)
    assert "rejected" not in doc["delta"]
    pg, delta = doc["postgres"]["symbols"], doc["delta"]["symbols"]
    assert pg == delta, "both sinks hold the same rows, so the same summary"
    assert {s["symbol"] for s in pg} == set(produce.DEFAULT_SYMBOLS), "--json lists every symbol"
    assert sum(s["ticks"] for s in pg) == 3000
    assert [s["ticks"] for s in pg] == sorted((s["ticks"] for s in pg), reverse=True), "busiest first"
    for s in pg:
        assert list(s) == ["symbol", "ticks", "low", "high", "last_price", "last_time"]
        assert s["low"] <= s["last_price"] <= s["high"]
        assert s["last_time"].endswith("Z") and datetime.fromisoformat(s["last_time"])
    eurusd = next(s for s in pg if s["symbol"] == "EURUSD")
    assert 0.9 < eurusd["low"] <= eurusd["high"] < 1.3

    assert len(show_json(env, "--limit", "3")["delta"]["symbols"]) == 3
    table = finpulse("show", env={**env, "COLUMNS": "200"}).stdout
    assert "postgres: 3,000 rows, 0 rejected" in table and "delta: 3,000 rows" in table
    assert sum(table.count(f"│ {sym} ") for sym in produce.DEFAULT_SYMBOLS) == 2 * 10, "10 busiest per sink"


def test_last_price_is_the_same_in_both_sinks_when_ticks_share_a_millisecond(isolated):
    now = int(time.time() * 1000)

    def tick(symbol: str, price: float, ts: int) -> dict:
        return {"symbol": symbol, "price": price, "size": 1.0, "timestamp_ms": ts, "exchange": "TEST"}

    messages: list[tuple[bytes, bytes]] = []
    price = 100.0
    # TIE: every tick at the same millisecond, spread over partitions (keys) and frames (tick_index)
    for i in range(60):
        frame = [tick("TIE", price := price + 1, now) for _ in range(1 + i % 3)]
        messages.append((b"k%d" % (i % 7), orjson.dumps(frame if len(frame) > 1 else frame[0])))
    # NEWER: the latest trade time is sent first, so it wins over every higher offset
    messages.append((b"n0", orjson.dumps(tick("NEWER", 7.5, now + 5))))
    for i in range(30):
        messages.append((b"n%d" % (i % 5), orjson.dumps([tick("NEWER", 8.0 + i, now), tick("NEWER", 9.0 + i, now)])))
    produce.send(isolated, iter(messages))
    env = env_for(isolated)
    finpulse("ingest", "--drain", env=env)

    rows = pg_rows(isolated, ("symbol", "price", *KEY_COLUMNS))
    assert sorted(rows) == sorted(delta_rows(isolated, ("symbol", "price", *KEY_COLUMNS)))
    tie = [r for r in rows if r[0] == "TIE"]
    assert len({r[2] for r in tie}) > 1, "the TIE ticks should span several partitions"
    assert any(r[4] > 0 for r in tie), "and frames of several ticks"
    expected = max(tie, key=lambda r: r[2:])[1]  # highest (partition, offset, tick_index)

    doc = show_json(env)
    last = {sink: {s["symbol"]: s["last_price"] for s in doc[sink]["symbols"]} for sink in ("postgres", "delta")}
    assert last["postgres"]["TIE"] == last["delta"]["TIE"] == expected
    assert last["postgres"]["NEWER"] == last["delta"]["NEWER"] == 7.5
