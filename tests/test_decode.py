"""Decoding: canonical ticks, every kind of bad input, and never raising on anything."""

from __future__ import annotations

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from support.samples import BAD, NOW_MS, tick

from finpulse import feeds
from finpulse.decode import Decoder, Messages


def msgs(*values, timestamps=None) -> Messages:
    n = len(values)
    return Messages(list(values), [0] * n, list(range(n)), timestamps or [NOW_MS] * n)


def test_canonical_batch_takes_the_fast_path_with_exact_values():
    out = Decoder().decode(msgs(tick(), tick(symbol="btc-usd", price=43000.25, side="Buy")))
    assert out.rejects == [] and out.skipped == 0
    rows = out.ticks.to_pylist()
    assert [r["symbol"] for r in rows] == ["AAPL", "BTC-USD"]
    assert rows[1]["price"] == 43000.25 and rows[1]["side"] == "buy" and rows[0]["exchange"] == "NASDAQ"
    assert rows[0]["timestamp_ms"] == NOW_MS and rows[0]["trade_time"].timestamp() * 1000 == NOW_MS
    assert [r["kafka_offset"] for r in rows] == [0, 1]


def test_careful_path_gives_the_same_rows_as_the_fast_path():
    values = [tick(symbol=f"s{i}", price=1 + i / 7, size=i) for i in range(50)]
    d = Decoder()
    assert d.decode(msgs(*values)).ticks.equals(d.careful(msgs(*values)).ticks)


def test_numbers_as_strings_are_parsed_exactly():
    out = Decoder().decode(msgs(tick(price="0.1", size="3", timestamp_ms=str(NOW_MS))))
    row = out.ticks.to_pylist()[0]
    assert row["price"] == 0.1 and row["size"] == 3.0 and row["timestamp_ms"] == NOW_MS


@pytest.mark.parametrize("name", BAD)
def test_malformed_input_is_rejected_with_its_reason_and_bytes(name):
    value, reason = BAD[name]
    out = Decoder().decode(msgs(tick(), value))
    assert out.ticks.num_rows == 1, "the good message beside it still lands"
    [rej] = out.rejects
    assert reason in rej.reason
    assert rej.raw == value and rej.offset == 1 and rej.partition == 0


@pytest.mark.parametrize("value", [tick(timestamp_ms=...), tick(timestamp_ms=None)], ids=["absent", "null"])
def test_a_canonical_tick_without_time_lands_with_the_record_time(value):
    out = Decoder().decode(msgs(value, timestamps=[NOW_MS + 5]))
    [row] = out.ticks.to_pylist()
    assert row["broker_time"] is True and row["timestamp_ms"] == NOW_MS + 5 and out.rejects == []


def test_decoding_depends_on_the_record_time_not_the_clock():
    """A tick stamped 2040 is fine in a record of 2040, and a day ahead of a 2023 record it is not:
    the verdict is the same whenever (and by whichever process) the bytes are decoded."""
    later_ms = 2_220_000_000_000  # 2040
    value = tick(timestamp_ms=later_ms)
    d = Decoder()
    assert d.decode(msgs(value, timestamps=[later_ms])).ticks.num_rows == 1
    assert d.careful(msgs(value, timestamps=[later_ms])).ticks.num_rows == 1
    early = d.decode(msgs(value, timestamps=[NOW_MS]))
    assert early.ticks.num_rows == 0 and "after its Kafka record time" in early.rejects[0].reason
    edge = [tick(timestamp_ms=NOW_MS + 86_400_000), tick(timestamp_ms=NOW_MS + 86_400_001)]
    assert d.decode(msgs(*edge)).ticks.column("kafka_offset").to_pylist() == [0]
    # a record without a usable time of its own: only the absolute ceiling (year 9999) applies
    assert d.decode(msgs(value, timestamps=[-1])).ticks.num_rows == 1
    assert d.decode(msgs(tick(timestamp_ms=300_000_000_000_000), timestamps=[-1])).ticks.num_rows == 0


def test_reasons_are_one_bounded_line_without_nul():
    key = "\u0000\n" * 5000
    out = Decoder().decode(msgs(orjson.dumps({key: 1}), orjson.dumps({"symbol": "A" * 100_000, "price": 1})))
    for rej in out.rejects:
        assert "\x00" not in rej.reason and "\n" not in rej.reason
        assert len(rej.reason) <= 500 and rej.reason.isprintable()


def test_an_unexpected_error_costs_one_message_and_names_the_exception(monkeypatch):
    real = feeds.parse

    def flaky(obj, *args):
        if isinstance(obj, dict) and obj.get("symbol") == "BOOM":
            raise ZeroDivisionError("a bug")
        return real(obj, *args)

    monkeypatch.setattr(feeds, "parse", flaky)
    out = Decoder().decode(msgs(tick(), tick(symbol="BOOM", price="1"), tick(symbol="ok")))
    assert out.ticks.num_rows == 2
    [rej] = out.rejects
    assert rej.offset == 1 and "ZeroDivisionError: a bug" in rej.reason and rej.raw is not None


def test_oversized_message_is_rejected_unread():
    big = tick(exchange="X" * 5000)
    out = Decoder(max_message_bytes=1024).decode(msgs(big))
    assert "over the 1024-byte limit" in out.rejects[0].reason


def test_a_bad_trade_in_a_frame_rejects_only_that_trade():
    frame = orjson.dumps([orjson.loads(tick()), orjson.loads(tick(price=-1)), orjson.loads(tick(symbol="msft"))])
    out = Decoder().decode(msgs(frame))
    assert [r["tick_index"] for r in out.ticks.to_pylist()] == [0, 2]
    assert [(r.tick_index, "not positive" in r.reason) for r in out.rejects] == [(1, True)]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=200), min_size=1, max_size=8))
def test_random_bytes_never_raise(values):
    out = Decoder().decode(msgs(*values))
    assert out.ticks.num_rows + len(out.rejects) + out.skipped >= len(values)


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=True)
    | st.text(max_size=20)
    | st.sampled_from(
        [
            "trade",
            "aggTrade",
            "match",
            "market_trades",
            "t",
            "T",
            "XT",
            "2024-06-10T16:00:00.123Z",
            "1718035200123",
            "67000.5",
            "buy",
            "B",
        ]
    )
    | st.integers(1_600_000_000_000, 1_800_000_000_000),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(
            st.sampled_from(
                [
                    "symbol",
                    "price",
                    "size",
                    "timestamp_ms",
                    "exchange",
                    "side",
                    "x",
                    "e",
                    "E",
                    "s",
                    "p",
                    "q",
                    "T",
                    "t",
                    "m",
                    "ev",
                    "sym",
                    "pair",
                    "type",
                    "product_id",
                    "channel",
                    "events",
                    "trades",
                    "data",
                    "stream",
                    "method",
                    "v",
                    "S",
                    "tks",
                    "ds",
                    "time",
                    "timestamp",
                    "qty",
                ]
            )
            | st.text(max_size=5),
            children,
            max_size=6,
        )
    ),
    max_leaves=30,
)


@settings(max_examples=300, deadline=None)
@given(st.lists(json_values, min_size=1, max_size=8), st.sampled_from([None, *feeds.names()]), st.booleans())
def test_random_json_never_raises(values, feed, strict):
    encoded = [orjson.dumps(v, option=orjson.OPT_NON_STR_KEYS) if _dumpable(v) else b"{}" for v in values]
    out = Decoder(feed=feed, strict=strict).decode(msgs(*encoded))
    accounted = {r.offset for r in out.rejects} | set(out.ticks.column("kafka_offset").to_pylist())
    assert len(accounted) + out.skipped >= len(values)


def _dumpable(v) -> bool:
    try:
        orjson.dumps(v, option=orjson.OPT_NON_STR_KEYS)
        return True
    except (orjson.JSONEncodeError, TypeError):
        return False


# ------------------------------------------------------------------ fast path = careful path
_text = st.text(alphabet=st.sampled_from('aAbZ09-/: \t"\\\x07\x7f\u00e9\u00df\u00a0\u2028'), max_size=8)
_number = st.one_of(
    st.floats(min_value=-10, max_value=1e6, allow_nan=False),
    st.integers(-5, 10**6),
    st.sampled_from([0, 1, 1.0, 0.0]),
    st.booleans(),
    st.sampled_from(["1.5", " 2 ", "abc", "1_0", "NaN"]),
)
canonical_ticks = st.fixed_dictionaries(
    {
        "symbol": st.one_of(st.sampled_from(["AAPL", "btc-usd", " msft ", "X" * 64, "X" * 65]), _text, st.just(None)),
        "price": st.one_of(st.floats(min_value=0.01, max_value=1e6), _number),
        "size": st.one_of(st.floats(min_value=0, max_value=1e6), _number),
        "timestamp_ms": st.one_of(
            st.integers(NOW_MS - 10**9, NOW_MS + 10**9),
            st.sampled_from([600_000_000_000, 2**62, -1]),
            st.floats(min_value=1.6e12, max_value=1.7e12),
            st.booleans(),
            st.just("1700000000000"),
        ),
    },
    optional={
        "exchange": st.one_of(st.sampled_from(["nasdaq", "NYSE", " arca ", "", "  "]), _text, st.none(), st.just(3)),
        "side": st.one_of(st.sampled_from(["buy", "Sell", " BUY ", "b", "ask", "x"]), _text, st.none()),
        "venue_id": st.one_of(st.integers(-(10**6), 10**6), _text),
    },
)


@settings(max_examples=500, deadline=None)
@given(st.lists(canonical_ticks, min_size=1, max_size=5))
def test_fast_path_commits_only_to_rows_the_careful_path_writes(ticks):
    m = msgs(*[orjson.dumps(t) for t in ticks])
    fast = Decoder().fast(m)
    careful = Decoder().careful(m)
    if fast is not None:
        assert careful.rejects == [] and careful.skipped == 0
        assert fast.ticks.equals(careful.ticks)
    out = Decoder().decode(m)
    assert out.ticks.equals(careful.ticks) and out.rejects == careful.rejects


def test_fast_path_takes_plain_batches():
    m = msgs(tick(), tick(symbol="btc-usd", side=" Sell "), tick(exchange=...))
    assert Decoder().fast(m) is not None


# ------------------------------------------------------------------ duplicate keys, exactly
def _key(name: str, escaped: bool) -> str:
    return '"' + (f"\\u{ord(name[0]):04x}{name[1:]}" if escaped else name) + '"'


_scalar_texts = st.sampled_from(
    ["1", "-2.5e3", "true", "null", '"x"', '"a\\"b"', '"\\u0022"', '"\\u0022\\u0022"', '""', '"price"']
)


def _objects(children):
    def encode(members):
        names = [name for name, _, _ in members]
        text = "{" + ",".join(f"{_key(name, esc)}:{child[0]}" for name, esc, child in members) + "}"
        return text, len(set(names)) < len(names) or any(child[1] for _, _, child in members)

    return st.lists(st.tuples(st.sampled_from(["a", "b", "price", "symbol"]), st.booleans(), children), max_size=4).map(
        encode
    )


def _arrays(children):
    return st.lists(children, max_size=3).map(
        lambda items: ("[" + ",".join(t for t, _ in items) + "]", any(d for _, d in items))
    )


json_with_duplicates = st.recursive(
    _scalar_texts.map(lambda t: (t, False)), lambda children: _objects(children) | _arrays(children), max_leaves=12
)


@settings(max_examples=500, deadline=None)
@given(json_with_duplicates)
def test_duplicate_keys_are_found_exactly(case):
    text, has_duplicate = case
    out = Decoder().decode(msgs(text.encode()))
    reasons = [r.reason for r in out.rejects]
    assert any(r.startswith("duplicate key") for r in reasons) == has_duplicate, (text, reasons)


def test_one_odd_message_in_a_large_batch_keeps_every_row_and_order():
    values = [tick(symbol=f"s{i % 50}", price=1 + i, size=i) for i in range(5000)]
    values[3333] = tick(price="abc")
    values[100] = tick(price="2.5")  # valid, but only the careful path reads numbers in text
    out = Decoder().decode(msgs(*values))
    assert out.ticks.num_rows == 4999
    assert out.ticks.column("kafka_offset").to_pylist() == [i for i in range(5000) if i != 3333]
    assert [r.offset for r in out.rejects] == [3333]
    assert out.ticks.column("price").to_pylist()[100] == 2.5


def test_a_wire_format_that_cannot_decode_now_raises_instead_of_rejecting():
    """A decoder that needs the network (a schema registry) and cannot reach it: "not now" goes up to
    the caller to retry; only bytes that will never decode become rejects."""
    from finpulse.decode.wire import JsonWire, Undecodable
    from finpulse.errors import ServiceUnavailable

    class Unreachable(JsonWire):
        def values(self, value, headers=None):
            if value == b"later":
                raise ServiceUnavailable("registry unreachable")
            if value == b"never":
                raise Undecodable("schema id 7 is not in the registry")
            return super().values(value)

    decoder = Decoder(wire=Unreachable())
    msgs = Messages(
        [b"never", b'{"symbol":"A","price":1,"size":1,"timestamp_ms":1700000000000}'], [0, 0], [0, 1], [0, 0]
    )
    decoded = decoder.decode(msgs)
    assert decoded.ticks.num_rows == 1 and [r.reason for r in decoded.rejects] == ["schema id 7 is not in the registry"]
    with pytest.raises(ServiceUnavailable):
        decoder.decode(Messages([b"later"], [0], [2], [0]))
