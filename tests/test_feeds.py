"""Feed shapes: every fixture to its exact rows, detection, --format, non-trade events, times,
duplicate keys and bad trades inside multi-trade frames. No services needed."""

from __future__ import annotations

import copy

import orjson
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from support.samples import EXPECTED, EXPECTED_COLUMNS, FIXTURES, NON_TRADE, T0, TRADE_IDS, fixture, tick

from finpulse import feeds
from finpulse.decode import Decoder, Messages
from finpulse.feeds.fields import epoch_us

KAFKA_MS = 1_718_035_299_000  # the Kafka record time of every test message, after all trade times


def decode(*values: bytes | None, feed: str | None = None, strict: bool = False, kafka_ms: int = KAFKA_MS):
    n = len(values)
    return Decoder(feed=feed, strict=strict).decode(Messages(list(values), [0] * n, list(range(n)), [kafka_ms] * n))


def rows(out) -> list[tuple]:
    batch = out.ticks.set_column(4, "trade_time", out.ticks.column("trade_time").cast(pa.int64()))
    return [tuple(r[c] for c in EXPECTED_COLUMNS) for r in batch.to_pylist()]


def test_every_feed_has_a_fixture_and_a_stable_name():
    assert feeds.names() == [
        "canonical",
        "binance",
        "coinbase",
        "coinbase-advanced",
        "alpaca",
        "polygon",
        "finnhub",
        "kraken",
    ]
    assert {feed for feed, _ in EXPECTED.values()} == set(feeds.names())
    assert {p.stem for p in FIXTURES.glob("*.json")} == set(EXPECTED) | {"non_trade"}


@pytest.mark.parametrize("name", EXPECTED)
def test_fixture_decodes_to_exact_rows(name):
    out = decode(fixture(name))
    assert out.rejects == []
    assert rows(out) == EXPECTED[name][1]
    assert not any(out.ticks.column("broker_time").to_pylist())
    assert out.skipped == (1 if name == "alpaca_stocks" else 0)  # the quote beside the trades


@pytest.mark.parametrize("name", EXPECTED)
def test_every_feed_that_numbers_its_trades_gives_the_trade_id(name):
    out = decode(fixture(name))
    assert out.ticks.column("trade_id").to_pylist() == TRADE_IDS[name]
    assert out.ticks.column("kafka_time").cast(pa.int64()).to_pylist() == [KAFKA_MS * 1000] * out.ticks.num_rows


@pytest.mark.parametrize("trade_id, stored", [(42, "42"), (-7, "-7"), (" T-9 ", "T-9"), ("", None), (None, None)])
def test_a_canonical_trade_id_is_text_on_the_fast_and_careful_paths_alike(trade_id, stored):
    values = [tick(trade_id=trade_id, timestamp_ms=1_700_000_000_000 + i) for i in range(300)]
    msgs = Messages(values, [0] * 300, list(range(300)), [1_700_000_000_500] * 300)
    decoder = Decoder()
    careful = decoder.careful(msgs)
    assert careful.ticks.column("trade_id").to_pylist() == [stored] * 300
    fast = decoder.fast(msgs)
    if fast is not None:  # where the fast path takes the batch, it gives the same rows
        assert fast.ticks.equals(careful.ticks)
    assert decoder.decode(msgs).ticks.equals(careful.ticks)


def test_an_integer_trade_id_batch_takes_the_fast_path():
    values = [tick(trade_id=1000 + i, timestamp_ms=1_700_000_000_000 + i) for i in range(300)]
    fast = Decoder().fast(Messages(values, [0] * 300, list(range(300)), [1_700_000_000_500] * 300))
    assert fast is not None and fast.ticks.column("trade_id").to_pylist() == [str(1000 + i) for i in range(300)]


def test_a_record_without_a_timestamp_has_no_kafka_time():
    out = decode(tick(timestamp_ms=1_700_000_000_000), kafka_ms=-1)
    assert out.ticks.column("kafka_time").to_pylist() == [None]


@pytest.mark.parametrize("name", EXPECTED)
def test_detection_picks_the_feed(name):
    assert feeds.detect(orjson.loads(fixture(name))).name == EXPECTED[name][0]


@pytest.mark.parametrize("name", EXPECTED)
def test_forcing_the_right_feed_gives_the_same_rows(name):
    out = decode(fixture(name), feed=EXPECTED[name][0])
    assert out.rejects == [] and rows(out) == EXPECTED[name][1]


@pytest.mark.parametrize("name,forced", [(n, f) for n in EXPECTED for f in feeds.names() if f != EXPECTED[n][0]])
def test_forcing_the_wrong_feed_rejects_with_a_reason(name, forced):
    out = decode(fixture(name), feed=forced)
    assert out.ticks.num_rows == 0 and out.skipped == 0 and out.rejects
    for rej in out.rejects:
        assert rej.feed == forced and rej.raw == fixture(name)
        # canonical reads field by field; the others first check that the message is theirs
        assert ("missing symbol" if forced == "canonical" else f"not the {forced} shape: got ") in rej.reason


def test_the_same_keys_mean_different_things_per_feed():
    # "T": Binance trade time (a number), Alpaca message type; "s": Binance/Finnhub symbol, Alpaca/Polygon
    # size; "t": Binance trade id, Alpaca/Polygon/Finnhub time; "p"/"q": Binance price/quantity, Polygon q
    # is a sequence number.
    binance, alpaca, polygon = (orjson.loads(fixture(n)) for n in ("binance_trade", "alpaca_crypto", "polygon_stocks"))
    assert isinstance(binance["T"], int) and isinstance(binance["t"], int) and isinstance(alpaca[0]["T"], str)
    assert rows(decode(fixture("binance_trade")))[0][:3] == ("BTCUSDT", 67321.45, 0.0015)
    assert rows(decode(fixture("alpaca_crypto")))[0][:3] == ("BTC/USD", 67305.1, 0.00421)
    assert polygon[0]["q"] == 1276435 and rows(decode(fixture("polygon_stocks")))[0][2] == 100.0


# ----------------------------------------------------------------------------------- non-trade events
@pytest.mark.parametrize("item", NON_TRADE, ids=lambda i: f"{i['feed']}-{str(i['message'])[:40]}")
def test_non_trade_events_are_skipped_and_rejected_under_strict(item):
    raw = orjson.dumps(item["message"])
    assert feeds.detect(item["message"]).name == item["feed"]
    out = decode(raw)
    assert (out.ticks.num_rows, out.rejects, out.skipped) == (0, [], 1)
    assert decode(raw, feed=item["feed"]).skipped == 1
    [rej] = decode(raw, strict=True).rejects
    assert rej.feed == item["feed"] and rej.tick_index == -1
    assert rej.reason.startswith("not a trade event (") and "--strict" in rej.reason


def test_a_non_trade_element_beside_trades_is_rejected_in_its_slot_under_strict():
    out = decode(fixture("alpaca_stocks"), strict=True)
    assert [r[-1] for r in rows(out)] == [0, 2]
    [rej] = out.rejects
    assert rej.tick_index == 1 and "alpaca q message" in rej.reason and out.skipped == 0


def test_a_frame_without_trades_is_one_skipped_event():
    empty = orjson.dumps(
        {
            "channel": "market_trades",
            "client_id": "",
            "timestamp": "2024-06-10T16:00:00Z",
            "sequence_num": 3,
            "events": [{"type": "update", "trades": []}],
        }
    )
    assert decode(empty).skipped == 1
    assert decode(orjson.dumps({"type": "trade", "data": []})).skipped == 1


# ----------------------------------------------------------------------------------- sides
@pytest.mark.parametrize("maker,taker", [("sell", "buy"), ("buy", "sell")])
def test_coinbase_side_is_the_makers_so_the_row_has_the_opposite(maker, taker):
    msg = orjson.loads(fixture("coinbase_match")) | {"side": maker}
    assert rows(decode(orjson.dumps(msg)))[0][6] == taker


@pytest.mark.parametrize("buyer_is_maker,side", [(True, "sell"), (False, "buy"), ("true", None)])
def test_binance_m_is_buyer_is_maker(buyer_is_maker, side):
    msg = orjson.loads(fixture("binance_trade")) | {"m": buyer_is_maker}
    assert rows(decode(orjson.dumps(msg)))[0][6] == side


def test_last_match_is_a_trade_too():
    msg = orjson.loads(fixture("coinbase_match")) | {"type": "last_match"}
    assert len(rows(decode(orjson.dumps(msg)))) == 1


# ----------------------------------------------------------------------------------- times
@pytest.mark.parametrize(
    "text,us",
    [
        ("2024-06-10T16:00:00Z", T0),
        ("2024-06-10T16:00:00.1Z", T0 + 100_000),
        ("2024-06-10T16:00:00.123456Z", T0 + 123_456),
        ("2024-06-10T16:00:00.123456789Z", T0 + 123_456),  # nanoseconds: truncated to the µs
        ("2024-06-10T16:00:00.999999999Z", T0 + 999_999),
        ("2024-06-10T18:00:00.5+02:00", T0 + 500_000),
        ("2024-06-10T11:30:00.000001-0430", T0 + 1),
        ("2024-06-10T21:00:00+05", T0),
        ("2024-06-10 16:00:00,25Z", T0 + 250_000),
        ("2024-06-10t16:00:00z", T0),
        ("2024-06-10T16:00:00", T0),  # no zone: UTC
        (" 2024-06-10T16:00:00Z ", T0),
    ],
)
def test_iso_times_with_fractions_and_offsets(text, us):
    assert epoch_us(text, "ms", "test", "t") == us  # text is read as ISO whatever the numeric unit


@pytest.mark.parametrize(
    "text,reason",
    [
        ("2024-13-10T16:00:00Z", "is not a valid time"),
        ("2024-06-10T16:00:00.1234567890Z", "neither a number nor ISO-8601"),
        ("yesterday", "neither a number nor ISO-8601"),
    ],
)
def test_bad_time_text_is_invalid(text, reason):
    with pytest.raises(feeds.Invalid, match=reason):
        epoch_us(text, "auto", "test", "t")


@pytest.mark.parametrize(
    "value",
    [
        1718035200,
        1718035200.123456,
        1718035200123,
        1718035200123.456,
        1718035200123456,
        1718035200123456789,
        "1718035200123",
        "1718035200.123456",
    ],
)
def test_auto_unit_reads_seconds_ms_us_and_ns_off_the_magnitude(value):
    got = epoch_us(value, "auto", "test", "t")
    assert got == (
        T0 if value == 1718035200 else T0 + 123_000 if value in (1718035200123, "1718035200123") else T0 + 123_456
    )


@pytest.mark.parametrize("value,unit", [(1718035200, "s"), (1718035200000, "ms"), (T0, "us"), (T0 * 1000, "ns")])
def test_explicit_units(value, unit):
    assert epoch_us(value, unit, "test", "t") == T0


@pytest.mark.parametrize("t", [1718035209, 1718035209001, 1718035209001234, 1718035209001234567, "1718035209001"])
def test_a_feed_time_in_any_unit_lands_as_the_same_instant(t):
    msg = {"type": "trade", "data": [{"s": "AAPL", "p": 193.1, "v": 1, "t": t}]}
    [row] = rows(decode(orjson.dumps(msg)))
    assert row[3] == 1718035209001 or t == 1718035209
    assert row[4] == {1718035209: T0 + 9_000_000, 1718035209001: T0 + 9_001_000, "1718035209001": T0 + 9_001_000}.get(
        t, T0 + 9_001_234
    )


def test_iso_offsets_through_a_feed():
    msg = orjson.loads(fixture("kraken"))
    msg["data"][0]["timestamp"] = "2024-06-10T18:00:10.271839123+02:00"
    assert rows(decode(orjson.dumps(msg)))[0][4] == T0 + 10_271_839


def test_a_trade_without_time_takes_the_kafka_time():
    msg = orjson.loads(fixture("binance_trade"))
    del msg["T"]
    out = decode(orjson.dumps(msg))
    assert rows(out)[0][3] == KAFKA_MS and out.ticks.column("broker_time").to_pylist() == [True]
    [rej] = decode(orjson.dumps(msg), kafka_ms=-1).rejects
    assert "no time" in rej.reason and rej.tick_index == 0
    [rej] = decode(orjson.dumps(msg), kafka_ms=2**62).rejects  # a producer's clock gone wrong
    assert "Kafka record time" in rej.reason and "out of range" in rej.reason


# ----------------------------------------------------------------------------------- duplicate keys
DUPLICATES = {
    "canonical": (b'{"symbol":"AAPL","price":1.5,"size":1,"timestamp_ms":1718035200123,"price":2.5}', "price"),
    "canonical with equal values": (
        b'{"symbol":"AAPL","price":1.5,"size":1,"size":1,"timestamp_ms":1718035200123}',
        "size",
    ),
    "spelt with an escape": (
        b'{"symbol":"AAPL","price":1.5,"size":1,"timestamp_ms":1718035200123,"\\u0073ymbol":"X"}',
        "symbol",
    ),
    "escapes balancing the quote count": (
        b'{"symbol":"AAPL","price":1.5,"size":1,"timestamp_ms":1718035200123,"exchange":"A","exchange":"\\u0022\\u0022"}',
        "exchange",
    ),
    "binance": (fixture("binance_trade")[:-2] + b', "p": "1.00"}', "p"),
    "nested in a frame": (b'{"type":"trade","data":[{"s":"AAPL","p":1,"v":1,"t":1718035209001,"v":2}]}', "v"),
    "in an ignored field": (
        b'{"e":"trade","E":1,"s":"BTCUSDT","p":"1","q":"1","T":1718035200456,"M":true,"M":false}',
        "M",
    ),
}


@pytest.mark.parametrize("name", DUPLICATES)
def test_duplicate_keys_reject_the_message(name):
    value, key = DUPLICATES[name]
    good = fixture("canonical")
    out = decode(good, value, good)
    assert [r[0] for r in rows(out)] == ["AAPL", "AAPL"]
    [rej] = out.rejects
    assert rej.reason.startswith(f"duplicate key {key!r}") and rej.offset == 1 and rej.tick_index == -1
    assert rej.feed != "unknown"


@pytest.mark.parametrize(
    "value",
    [
        b'[{"symbol":"A","price":1,"size":1,"timestamp_ms":1718035200123},{"symbol":"B","price":1,"size":1,"timestamp_ms":1718035200123}]',
        b'{"symbol":"price","price":1,"size":1,"timestamp_ms":1718035200123,"exchange":"symbol"}',
        b'{"symbol":"A\\"B","price":1,"size":1,"timestamp_ms":1718035200123}',
        b'{"symbol":"\\u0041","price":1,"size":1,"timestamp_ms":1718035200123}',
    ],
)
def test_repeated_text_that_is_not_a_duplicate_key_is_fine(value):
    out = decode(value)
    assert out.rejects == [] and out.ticks.num_rows >= 1


# ----------------------------------------------------------------------------------- bad trades in frames
def _set(path: list, value):
    def edit(msg):
        target = msg
        for step in path[:-1]:
            target = target[step]
        if value is ...:
            del target[path[-1]]
        else:
            target[path[-1]] = value
        return msg

    return edit


BAD_TRADE = {  # fixture, edit, tick_index of the bad trade, reason
    "canonical_frame": (_set([1, "price"], -5), 1, "not positive"),
    "coinbase_advanced": (_set(["events", 0, "trades", 1, "price"], "abc"), 1, "price 'abc' is not a number"),
    "alpaca_stocks": (_set([2, "p"], ...), 2, "missing p"),
    "polygon_stocks": (_set([1, "t"], 5), 1, "before 1990"),
    "finnhub": (_set(["data", 1, "s"], " "), 1, "symbol is empty"),
    "kraken": (_set(["data", 0, "qty"], -1), 0, "negative"),
}


@pytest.mark.parametrize("name", BAD_TRADE)
def test_a_bad_trade_in_a_frame_rejects_only_that_trade(name):
    edit, index, reason = BAD_TRADE[name]
    msg = orjson.dumps(edit(copy.deepcopy(orjson.loads(fixture(name)))))
    out = decode(msg)
    feed, expected = EXPECTED[name]
    assert rows(out) == [r for r in expected if r[-1] != index]
    [rej] = out.rejects
    assert (rej.tick_index, rej.feed, rej.raw) == (index, feed, msg) and reason in rej.reason


def test_a_frame_element_that_is_not_an_object_is_rejected_in_its_slot():
    msg = orjson.loads(fixture("kraken"))
    msg["data"].insert(1, "oops")
    out = decode(orjson.dumps(msg))
    assert [r[-1] for r in rows(out)] == [0, 2]
    assert [(r.tick_index, "must be an object" in r.reason) for r in out.rejects] == [(1, True)]


# ----------------------------------------------------------------------------------- unknown shapes
@pytest.mark.parametrize(
    "value,reason",
    [
        (b'{"foo": 1, "bar": {"baz": 2}}', "no known feed shape has these keys: 'bar', 'foo'"),
        (b'[{"x": 1}]', "JSON array of no known feed shape (first element: keys 'x')"),
        (b"[1, 2]", "JSON array of no known feed shape (first element: int 1)"),
        (b"[]", "empty JSON array"),
        (b'{"e": "trade"}', "no known feed shape has these keys: 'e'"),  # a Binance event has E too
        (b'{"type": "match"}', "no known feed shape has these keys: 'type'"),
        (b'[{"T": "zz", "S": "AAPL"}]', "first element: keys 'S', 'T'"),  # not a type Alpaca documents
    ],
)
def test_unknown_shapes_name_what_was_seen(value, reason):
    [rej] = decode(value).rejects
    assert reason in rej.reason and rej.feed == "unknown" and rej.tick_index == -1


def test_a_wrapped_binance_event_of_another_shape_is_rejected():
    [rej] = decode(b'{"stream": "x@trade", "data": {"p": "1"}}').rejects
    assert "not a binance event in stream 'x@trade'" in rej.reason


# ----------------------------------------------------------------------------------- mutated fixtures
def _paths(value, prefix=()):
    yield prefix
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _paths(v, (*prefix, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _paths(v, (*prefix, i))


_FIXTURE_VALUES = {name: orjson.loads(fixture(name)) for name in EXPECTED}
_MUTATIONS = [(name, path) for name, value in _FIXTURE_VALUES.items() for path in _paths(value) if path]
_replacements = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12)
    | st.sampled_from(["", " ", "1.5", "-1", "1e400", "2024-06-10T16:00:00Z", "BUY", "t", "T"]),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=3), children, max_size=3),
    max_leaves=6,
)


@settings(max_examples=400, deadline=None)
@given(st.sampled_from(_MUTATIONS), _replacements, st.sampled_from([None, "drop"]), st.booleans())
def test_any_single_mutation_of_a_fixture_is_a_row_reject_or_skip(mutation, replacement, drop, strict):
    name, path = mutation
    msg = copy.deepcopy(_FIXTURE_VALUES[name])
    _set(list(path), ... if drop else replacement)(msg)
    raw = orjson.dumps(msg)
    out = decode(raw, strict=strict)
    assert out.ticks.num_rows + len(out.rejects) + out.skipped >= 1
    assert all(r.raw == raw and r.reason for r in out.rejects)
