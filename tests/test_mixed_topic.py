"""A topic holding every feed shape, non-trade events and every malformed kind, interleaved."""

from __future__ import annotations

import random
import re

import orjson
import psycopg
import pytest
from support.cli import env_for, finpulse
from support.samples import BAD, EXPECTED, NON_TRADE, fixture

from finpulse import produce

pytestmark = [pytest.mark.kafka, pytest.mark.postgres, pytest.mark.slow]

ROUNDS = 40  # each trade fixture and non-trade event appears this many times
COLUMNS = ("symbol", "price", "size", "timestamp_ms", "exchange", "side", "tick_index")


def test_mixed_topic_lands_every_trade_once_and_rejects_every_bad_message(isolated):
    trades = [(name, fixture(name)) for name in EXPECTED] * ROUNDS
    events = [orjson.dumps(item["message"]) for item in NON_TRADE] * ROUNDS
    bad = list(BAD.items())
    messages = (
        [("trade", name, v) for name, v in trades]
        + [("event", "", v) for v in events]
        + [("bad", name, value) for name, (value, _) in bad]
    )
    random.Random(42).shuffle(messages)
    produce.send(isolated, iter([(b"key-%d" % (i % 11), v) for i, (_, _, v) in enumerate(messages)]))

    # every fixture is sent ROUNDS times, under keys that spread its copies over the partitions: the
    # trade window is off here (this test is about shapes, one row per trade in each message);
    # re-sent trades are test_trades.py's
    env = env_for(isolated, FINPULSE_BATCH_SIZE="100", FINPULSE_DEDUP_WINDOW="0")
    out = finpulse("ingest", "--drain", "--workers", "2", env=env).stdout
    ticks, msgs, rejected, skipped, restarts = map(
        lambda x: int(x.replace(",", "")),
        re.search(
            r"ingested ([\d,]+) ticks from ([\d,]+) messages.* ([\d,]+) rejected, ([\d,]+) skipped, (\d+) restarts", out
        ).groups(),
    )

    # EXPECTED rows: symbol, price, size, timestamp_ms, trade_time µs, exchange, side, tick_index
    expected_rows = sorted([row[:4] + row[5:] for _, rows in EXPECTED.values() for row in rows] * ROUNDS)
    # alpaca_stocks carries one quote among its trades: skipped inside the frame
    assert (msgs, ticks, rejected, skipped, restarts) == (
        len(messages),
        len(expected_rows),
        len(bad),
        ROUNDS * (len(NON_TRADE) + 1),
        0,
    )

    with psycopg.connect(isolated.postgres_conninfo()) as conn:
        pg = conn.execute(f"SELECT {', '.join(COLUMNS)} FROM prices_raw").fetchall()
        rejects = conn.execute("SELECT kafka_offset, reason, raw FROM prices_rejected").fetchall()
    from deltalake import DeltaTable

    table = DeltaTable(isolated.delta_uri).to_pyarrow_dataset().to_table(columns=list(COLUMNS))
    delta = list(zip(*(table.column(c).to_pylist() for c in COLUMNS)))
    assert sorted(map(tuple, pg)) == expected_rows
    assert sorted(delta) == expected_rows

    by_bytes = {(bytes(raw) if raw is not None else None): reason for _, reason, raw in rejects}
    for name, (value, reason) in bad:
        assert reason in by_bytes[value], f"{name}: {by_bytes.get(value)!r}"
