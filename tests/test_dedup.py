"""The trade window (finpulse/dedup): re-sent trades, sequence gaps, and the promise everything else
rests on: the same messages give the same answers however they are cut into batches, and a window
rebuilt from a snapshot answers as the one that never stopped. No services needed."""

from __future__ import annotations

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from finpulse.config import load_settings
from finpulse.decode import Decoder
from finpulse.dedup import CHECKPOINT_OFFSETS, TradeWindow, dump, load
from finpulse.dedup.state import BadSnapshot
from finpulse.records import Messages

T0_MS = 1_700_000_000_000
DECODER = Decoder()


def messages(trades: list[tuple], first_offset: int = 0) -> Messages:
    """Canonical ticks of (symbol, trade_id, ms after T0) tuples, one message each, partition 0."""
    values = [
        orjson.dumps({"symbol": s, "price": 1.0, "size": 1.0, "timestamp_ms": T0_MS + ms, "trade_id": tid})
        for s, tid, ms in trades
    ]
    n = len(values)
    return Messages(values, [0] * n, list(range(first_offset, first_offset + n)), [T0_MS + 10**9] * n)


def window(**over) -> TradeWindow:
    return TradeWindow(load_settings(**over))


def run(w: TradeWindow, msgs: Messages, cuts: list[int]):
    """Feed `msgs` to `w` in batches ending at `cuts`; (offsets kept, gap events, duplicates)."""
    kept, gaps, duplicates = [], [], 0
    bounds = [0, *sorted(set(c for c in cuts if 0 < c < len(msgs))), len(msgs)]
    for a, b in zip(bounds, bounds[1:]):
        part = Messages(msgs.values[a:b], msgs.partitions[a:b], msgs.offsets[a:b], msgs.timestamps[a:b])
        found = w.apply(DECODER.decode(part), part)
        kept += found.decoded.ticks.column("kafka_offset").to_pylist()
        gaps += found.gaps
        duplicates += found.duplicates.num_rows
        assert sum(found.duplicates_by_exchange.values()) == found.duplicates.num_rows
    return kept, sorted(gaps, key=repr), duplicates


# A stream of trades over two symbols: mostly the next id, sometimes a jump (dropped trades), a
# step back (a late or re-sent trade) or a text id; times mostly forward, sometimes back.
step = st.tuples(
    st.sampled_from(["A", "B"]),
    st.one_of(
        st.just(1).map(lambda d: ("next", d)),
        st.integers(2, 6).map(lambda d: ("jump", d)),
        st.integers(1, 40).map(lambda d: ("back", d)),
        st.sampled_from(["u-1", "u-2", "x9y"]).map(lambda t: ("text", t)),
    ),
    st.integers(-50, 400),
)


def stream(steps) -> list[tuple]:
    nxt, ms, out = {"A": 1, "B": 1000}, 0, []
    for sym, (kind, v), dt in steps:
        ms = max(0, ms + dt)
        if kind == "text":
            out.append((sym, v, ms))
        elif kind == "back":
            out.append((sym, max(1, nxt[sym] - v), ms))
        else:
            nxt[sym] += v - 1
            out.append((sym, nxt[sym], ms))
            nxt[sym] += 1
    return out


@settings(max_examples=60, deadline=None)
@given(st.lists(step, min_size=1, max_size=150), st.lists(st.integers(1, 149), max_size=8))
def test_the_answers_do_not_depend_on_how_the_messages_are_cut(steps, cuts):
    msgs = messages(stream(steps))
    whole = run(window(sequence_reorder_ms=300), msgs, [])
    assert run(window(sequence_reorder_ms=300), msgs, cuts) == whole


@settings(max_examples=60, deadline=None)
@given(st.lists(step, min_size=2, max_size=150), st.integers(1, 149))
def test_a_window_restored_from_its_snapshot_answers_as_the_one_that_went_on(steps, cut):
    msgs = messages(stream(steps))
    cut = min(cut, len(msgs) - 1)
    went_on = window(sequence_reorder_ms=300)
    expected = run(went_on, msgs, [cut])
    first = window(sequence_reorder_ms=300)
    head = Messages(msgs.values[:cut], msgs.partitions[:cut], msgs.offsets[:cut], msgs.timestamps[:cut])
    a = run(first, head, [])
    restored = window(sequence_reorder_ms=300)
    restored.partitions[0] = load(dump(first.partitions[0]), restored.window_us, restored.reorder_us, 10**6)
    tail = Messages(msgs.values[cut:], msgs.partitions[cut:], msgs.offsets[cut:], msgs.timestamps[cut:])
    b = run(restored, tail, [])
    assert a[0] + b[0] == expected[0]
    assert sorted(a[1] + b[1], key=repr) == expected[1]
    assert dump(restored.partitions[0]) == dump(went_on.partitions[0])


@settings(max_examples=60, deadline=None)
@given(st.lists(step, min_size=1, max_size=200))
def test_a_trade_is_a_duplicate_exactly_when_its_id_was_seen_before(steps):
    trades = stream(steps)
    seen, expected = set(), []
    for offset, (sym, tid, _) in enumerate(trades):
        if (sym, str(tid)) not in seen:
            expected.append(offset)
        seen.add((sym, str(tid)))
    kept, _, duplicates = run(window(), messages(trades), [])
    assert kept == expected
    assert duplicates == len(trades) - len(expected)


def test_ticks_without_a_trade_id_are_never_duplicates():
    values = [orjson.dumps({"symbol": "A", "price": 1.0, "size": 1.0, "timestamp_ms": T0_MS}) for _ in range(5)]
    msgs = Messages(values, [0] * 5, list(range(5)), [T0_MS] * 5)
    found = window().apply(DECODER.decode(msgs), msgs)
    assert found.decoded.ticks.num_rows == 5 and found.duplicates.num_rows == 0


def test_the_same_id_of_another_symbol_exchange_or_partition_is_another_trade():
    values = [
        orjson.dumps({"symbol": s, "price": 1.0, "size": 1.0, "timestamp_ms": T0_MS, "trade_id": 7, "exchange": e})
        for s, e in (("A", "X"), ("B", "X"), ("A", "Y"), ("A", "X"))
    ]
    msgs = Messages(values, [0, 0, 0, 1], [0, 1, 2, 0], [T0_MS] * 4)
    found = window().apply(DECODER.decode(msgs), msgs)
    assert found.duplicates.num_rows == 0


def test_dropped_ids_are_gaps_once_the_reorder_window_passed_and_a_late_one_fills_its_gap():
    # ids 1-3, 6 (4 and 5 dropped), 7, 5 a little later (reordered, not a gap), then 10 (8, 9
    # dropped), a trade 3 s later confirms that gap, and 9 arrives late: it fills part of it
    trades = [("A", 1, 0), ("A", 2, 1), ("A", 3, 2), ("A", 6, 3), ("A", 7, 4), ("A", 5, 500)]
    trades += [("A", 4, 600), ("A", 10, 700), ("A", 11, 3800), ("A", 9, 3900)]
    kept, gaps, duplicates = run(window(sequence_reorder_ms=2000), messages(trades), [])
    assert duplicates == 0 and kept == list(range(len(trades)))
    found = [g for g in gaps if g.filled is None]
    assert [(g.symbol, g.from_id, g.to_id, g.offset) for g in found] == [("A", 8, 9, 8)]  # seen at offset 8
    [fill] = [g for g in gaps if g.filled is not None]
    assert (fill.from_id, fill.to_id, fill.filled, fill.offset) == (8, 9, 9, 9)


def test_a_quiet_symbols_gap_is_found_at_the_next_checkpoint():
    trades = [("A", 1, 0), ("A", 5, 1)] + [("B", 100 + i, 10 + i) for i in range(3)]
    msgs = messages(trades)
    w = window(sequence_reorder_ms=2)
    run(w, msgs, [])
    late = messages([("B", 103, 100)], first_offset=CHECKPOINT_OFFSETS)  # the next block of offsets
    _, gaps, _ = run(w, late, [])
    # A traded no more, but the partition's trade time went past A's reorder window
    assert [(g.symbol, g.from_id, g.to_id, g.offset, g.tick_index) for g in gaps] == [
        ("A", 2, 4, CHECKPOINT_OFFSETS, -1)
    ]


def test_ids_older_than_the_window_are_forgotten_at_a_checkpoint():
    w = window(dedup_window_s="10s")
    run(w, messages([("A", "1-t", 0), ("B", 5, 0)]), [])
    run(w, messages([("C", 1, 60_000)], first_offset=CHECKPOINT_OFFSETS), [])  # a minute later
    # the checkpoint of the next block forgets what lies more than 10 s behind that minute
    later = messages([("A", "1-t", 60_001), ("B", 5, 60_001)], first_offset=2 * CHECKPOINT_OFFSETS)
    kept, _, duplicates = run(w, later, [])
    assert duplicates == 0 and len(kept) == 2


def test_text_ids_are_capped_at_the_newest():
    w = window(dedup_max_ids=1000)
    run(w, messages([("A", f"{i}-u", i) for i in range(3000)]), [])  # text: not a number
    run(w, messages([("A", "z", 5000)], first_offset=CHECKPOINT_OFFSETS), [])  # a checkpoint merges
    assert w.partitions[0].ids_held == 1000 + 1  # the newest 1000, and z (not merged yet)
    kept, _, _ = run(w, messages([("A", "2999-u", 5001), ("A", "0-u", 5002)], first_offset=CHECKPOINT_OFFSETS + 1), [])
    assert kept == [CHECKPOINT_OFFSETS + 2]  # 2999-u is held, 0-u was dropped by the cap


def test_memory_grows_with_gaps_not_with_trades():
    w = window()
    for block in range(20):  # 200k consecutive ids over 16 symbols, in one step per symbol and batch
        trades = [(f"S{i % 16}", 1 + block * 625 + i // 16, block * 10_000 + i // 16) for i in range(10_000)]
        run(w, messages(trades, first_offset=block * 10_000), [])
    assert w.partitions[0].holes == 0 and w.partitions[0].ids_held == 0
    assert len(dump(w.partitions[0])) < 4096


def test_a_snapshot_that_is_not_one_is_refused():
    with pytest.raises(BadSnapshot):
        load(b"not a snapshot", 1, 1, 1)
    good = dump(window().partitions.setdefault(0, window().fresh(0, 0)))
    with pytest.raises(BadSnapshot):
        load(good[:-3] + b"xyz" + b"0" * 16, 1, 1, 1)


def test_zero_window_turns_it_off():
    msgs = messages([("A", 1, 0), ("A", 1, 1)])
    found = window(dedup_window_s="0").apply(DECODER.decode(msgs), msgs)
    assert found.decoded.ticks.num_rows == 2 and not found.gaps
