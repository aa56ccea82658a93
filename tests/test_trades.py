"""Exactly once per trade, end to end against the real services: re-sent trades land once in both
sinks through kills, rebalances and replays, an A/B feed lands one copy, and dropped trade ids are
reported as exactly the gaps they left (finpulse/dedup, docs/feeds.md#trade-ids)."""

from __future__ import annotations

import json
import os
import random
import signal
import time

import orjson
import psycopg
import pytest
from support.cli import env_for, finish, finpulse, start_ingest
from support.sinks import delta_rows, pg_count

from finpulse import produce

pytestmark = [pytest.mark.kafka, pytest.mark.postgres, pytest.mark.slow]

TRADE = ("symbol", "trade_id", "kafka_partition", "kafka_offset", "tick_index")


def send(s, ticks: list[dict]) -> None:
    produce.send(s, ((t["symbol"].encode(), orjson.dumps(t)) for t in ticks))


def trades_of(ticks: list[dict]) -> set[tuple[str, str]]:
    return {(t["symbol"], str(t["trade_id"])) for t in ticks}


def pg_trades(s) -> list[tuple]:
    with psycopg.connect(s.postgres_conninfo()) as conn:
        return conn.execute(f"SELECT {', '.join(TRADE)} FROM prices_raw").fetchall()


def assert_each_trade_once(s, expected: set[tuple[str, str]]) -> None:
    pg, delta = sorted(pg_trades(s)), sorted(delta_rows(s, TRADE))
    assert pg == delta, "the two sinks hold different rows"
    ids = [(sym, tid) for sym, tid, *_ in pg]
    assert len(ids) == len(set(ids)), f"{len(ids) - len(set(ids))} trades landed twice"
    assert set(ids) == expected


def status(env) -> dict:
    return json.loads(finpulse("status", "--json", env=env).stdout)


def test_re_sent_trades_land_once_through_a_kill_a_rebalance_and_a_replay(isolated):
    env = env_for(isolated, FINPULSE_BATCH_SIZE="200")
    first = list(produce.ticks(40_000, trade_ids=True, duplicate_rate=0.05, seed=3))
    send(isolated, first)
    # a kill mid-run: the restarted ingest starts from the sinks' positions and the windows' snapshots
    proc = start_ingest(env, "--workers", "2")
    deadline = time.monotonic() + 60
    # killed at the first rows: the drain lands its backlog in batches of thousands, and on a busy box a
    # wait for a larger count could see it all land before the kill
    while pg_count(isolated) == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=10)
    assert 0 < pg_count(isolated) < 38_000, "the kill did not land mid-run"
    # re-sends of trades long landed, at later offsets, while nothing runs
    rng = random.Random(5)
    again = rng.sample(first, 1500)
    send(isolated, again)
    # two runs in one group: the second one's join moves partitions while re-sends are read
    one = start_ingest(env, "--workers", "1", "--drain")
    time.sleep(2)
    send(isolated, rng.sample(first, 1500))
    two = start_ingest(env, "--workers", "1", "--drain")
    finish(one), finish(two)
    finish(start_ingest(env, "--drain"))

    expected = trades_of(first)
    assert_each_trade_once(isolated, expected)
    sent = len(first) + 3000
    counted = status(env)["totals"]
    assert counted["duplicates"] == sent - len(expected)  # every re-send counted, once
    assert finpulse("verify", env=env).returncode == 0

    # a replay of everything decides the same way: nothing to add, nothing counted twice
    finpulse("replay", "--from-offset", "0", env=env)
    assert_each_trade_once(isolated, expected)
    assert status(env)["totals"]["duplicates"] == sent - len(expected)


def test_an_a_b_feed_lands_one_copy_of_each_trade(isolated):
    env = env_for(isolated, FINPULSE_KEEP_DUPLICATES="true")
    # two collectors of the same stream (same ids, same trades), each with its own delay
    a = list(produce.ticks(5_000, trade_ids=True, seed=11, start_ms=1_700_000_000_000))
    b = list(produce.ticks(5_000, trade_ids=True, seed=11, start_ms=1_700_000_000_000))
    mixed = []
    for x, y in zip(a, b):
        mixed += [x, y] if random.random() < 0.5 else [y, x]
    send(isolated, mixed)
    out = finish(start_ingest(env, "--drain"))
    assert "10,000 messages" in out
    assert_each_trade_once(isolated, trades_of(a))
    assert pg_count(isolated, "prices_duplicates") == 5_000  # --keep-duplicates: each copy, with its lineage
    assert status(env)["totals"]["duplicates"] == 5_000
    shown = json.loads(finpulse("show", "--json", env=env).stdout)
    assert shown["postgres"]["duplicates"] == 5_000 and shown["postgres"]["rows"] == 5_000


def test_dropped_ids_are_exactly_the_gaps_and_a_re_sent_one_fills_its_gap(isolated):
    env = env_for(isolated)
    # 1 ms of trade time per tick: the reorder window (2 s) passes while each symbol trades on
    ticks = list(produce.ticks(20_000, trade_ids=True, seed=4, interval_us=1000, start_ms=1_700_000_000_000))
    dropped = random.Random(9).sample(range(100, 17_000), 60)  # 3 s or more before the last trades
    gone = {(ticks[i]["symbol"], ticks[i]["trade_id"]) for i in dropped}
    send(isolated, [t for i, t in enumerate(ticks) if i not in set(dropped)])
    finish(start_ingest(env, "--drain"))
    with psycopg.connect(isolated.postgres_conninfo()) as conn:
        rows = conn.execute("SELECT symbol, from_id, to_id, missing FROM finpulse_sequence_gaps").fetchall()
    missing = {(sym, i) for sym, a, b, _ in rows for i in range(a, b + 1)}
    assert missing == gone  # exactly the ids that were never sent, each in one gap
    assert sum(n for *_, n in rows) == len(gone)

    late = ticks[dropped[0]]  # the trade a collector re-sends after its reconnect
    [before] = [n for sym, a, b, n in rows if sym == late["symbol"] and a <= late["trade_id"] <= b]
    send(isolated, [late])
    finish(start_ingest(env, "--drain"))
    query = (
        "SELECT missing, filled_at IS NOT NULL FROM finpulse_sequence_gaps "
        "WHERE symbol = %s AND %s BETWEEN from_id AND to_id"
    )
    with psycopg.connect(isolated.postgres_conninfo()) as conn:
        [(left, filled)] = conn.execute(query, (late["symbol"], late["trade_id"])).fetchall()
    assert (left, filled) == (before - 1, before == 1)
    assert status(env)["sequence_gaps"], "status lists the recent gaps"
    still_gone = gone - {(late["symbol"], late["trade_id"])}
    assert_each_trade_once(
        isolated, {(t["symbol"], str(t["trade_id"])) for t in ticks} - {(s, str(i)) for s, i in still_gone}
    )
