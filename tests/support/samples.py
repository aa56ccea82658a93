"""Sample messages shared by several test files: the feed fixtures with the exact rows each decodes
to, non-trade events, and one message of every malformed kind with the reason it is rejected for."""

from __future__ import annotations

from pathlib import Path

import orjson

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "feeds"
T0 = 1_718_035_200_000_000  # 2024-06-10T16:00:00Z in µs, the fixtures' base time

EXPECTED_COLUMNS = ("symbol", "price", "size", "timestamp_ms", "trade_time", "exchange", "side", "tick_index")
# fixture -> (detected feed, rows as EXPECTED_COLUMNS, trade_time in epoch µs)
EXPECTED = {
    "canonical": ("canonical", [("AAPL", 193.12, 100.0, 1718035200123, T0 + 123_000, "NASDAQ", "buy", 0)]),
    "canonical_frame": (
        "canonical",
        [
            ("MSFT", 427.88, 25.0, 1718035200250, T0 + 250_000, "NYSE", None, 0),
            ("BTC-USD", 67318.22, 0.0125, 1718035200251, T0 + 251_000, None, "sell", 1),
        ],
    ),
    "binance_trade": ("binance", [("BTCUSDT", 67321.45, 0.0015, 1718035200456, T0 + 456_000, "BINANCE", "sell", 0)]),
    "binance_aggtrade": ("binance", [("ETHUSDT", 3687.12, 1.254, 1718035201001, T0 + 1_001_000, "BINANCE", "buy", 0)]),
    "binance_combined_us": ("binance", [("SOLUSDT", 160.07, 12.5, 1718035202311, T0 + 2_311_456, "BINANCE", "buy", 0)]),
    "coinbase_match": (
        "coinbase",
        [("BTC-USD", 67318.22, 0.0125, 1718035203141, T0 + 3_141_592, "COINBASE", "buy", 0)],
    ),
    "coinbase_advanced": (
        "coinbase-advanced",
        [
            ("ETH-USD", 3686.91, 0.5, 1718035204499, T0 + 4_499_123, "COINBASE", "buy", 0),
            ("ETH-USD", 3686.9, 0.0213, 1718035204499, T0 + 4_499_123, "COINBASE", "sell", 1),
            ("BTC-USD", 67317.01, 0.00004125, 1718035204500, T0 + 4_500_000, "COINBASE", "sell", 2),
        ],
    ),
    "alpaca_stocks": (
        "alpaca",
        [  # element 1 is a quote: skipped, and the MSFT trade keeps index 2
            ("AAPL", 193.12, 100.0, 1718035205123, T0 + 5_123_456, "V", None, 0),
            ("MSFT", 427.87, 5.0, 1718035205200, T0 + 5_200_100, "D", None, 2),
        ],
    ),
    "alpaca_crypto": ("alpaca", [("BTC/USD", 67305.1, 0.00421, 1718035206712, T0 + 6_712_345, "ALPACA", "sell", 0)]),
    "polygon_stocks": (
        "polygon",
        [
            ("MSFT", 427.88, 100.0, 1718035207123, T0 + 7_123_000, "4", None, 0),
            ("AAPL", 193.115, 0.25, 1718035207124, T0 + 7_124_000, "11", None, 1),
        ],
    ),
    "polygon_crypto": ("polygon", [("BTC-USD", 67310.5, 0.0125, 1718035208456, T0 + 8_456_000, "1", None, 0)]),
    "finnhub": (
        "finnhub",
        [
            ("BINANCE:BTCUSDT", 67312.01, 0.0034, 1718035209001, T0 + 9_001_000, "FINNHUB", None, 0),
            ("AAPL", 193.1, 25.0, 1718035209015, T0 + 9_015_000, "FINNHUB", None, 1),
        ],
    ),
    "kraken": (
        "kraken",
        [
            ("BTC/USD", 67299.9, 0.01872, 1718035210271, T0 + 10_271_839, "KRAKEN", "sell", 0),
            ("BTC/USD", 67300.0, 0.5, 1718035210271, T0 + 10_271_901, "KRAKEN", "buy", 1),
        ],
    ),
}
# fixture -> the trade_id of each row, as the venue sent it (Binance aggTrade ids keep an "a")
TRADE_IDS = {
    "canonical": [None],
    "canonical_frame": [None, None],
    "binance_trade": ["3636519017"],
    "binance_aggtrade": ["a1502201789"],
    "binance_combined_us": ["612003541"],
    "coinbase_match": ["672410571"],
    "coinbase_advanced": ["672410580", "672410581", "93251782"],
    "alpaca_stocks": ["52983525029461", "71675574231832"],
    "alpaca_crypto": ["7143520977419452871"],
    "polygon_stocks": ["52983525033527", "52983525033528"],
    "polygon_crypto": ["565219453"],
    "finnhub": [None, None],  # Finnhub sends no trade id
    "kraken": ["75413291", "75413292"],
}
NON_TRADE = orjson.loads((FIXTURES / "non_trade.json").read_bytes())


def fixture(name: str) -> bytes:
    """The raw message of one feed fixture (a key of EXPECTED)."""
    return (FIXTURES / f"{name}.json").read_bytes()


# ---------------------------------------------------------------------------- canonical ticks
NOW_MS = 1_700_000_000_000


def tick(**over) -> bytes:
    """A canonical tick message; a keyword set to `...` leaves that key out."""
    base = {"symbol": "aapl ", "price": 189.5, "size": 100, "timestamp_ms": NOW_MS, "exchange": "nasdaq"}
    base.update(over)
    return orjson.dumps({k: v for k, v in base.items() if v is not ...})


# one of every malformed kind: name -> (message value, part of the reason it is rejected for)
BAD = {
    "not utf-8": (b"\xff\xfe{", "not UTF-8"),
    "truncated json": (b'{"symbol": "A", "price"', "not valid JSON"),
    "a number": (b"42", "not a trade object"),
    "a string": (b'"AAPL"', "not a trade object"),
    "null": (b"null", "null"),
    "empty object": (b"{}", "empty JSON object"),
    "tombstone": (None, "tombstone"),
    "missing symbol": (tick(symbol=...), "no known feed shape"),
    "missing price": (tick(price=...), "missing price"),
    "missing symbol and time": (tick(symbol=..., timestamp_ms=...), "no known feed shape"),
    "price is text": (tick(price="abc"), "price 'abc' is not a number"),
    "price is an object": (tick(price={"v": 1}), "price is an object"),
    "price is a boolean": (tick(price=True), "boolean"),
    "nan price": (b'{"symbol":"A","price":"NaN","size":1,"timestamp_ms":1700000000000}', "not finite"),
    "infinite price": (b'{"symbol":"A","price":"Infinity","size":1,"timestamp_ms":1700000000000}', "not finite"),
    "zero price": (tick(price=0), "not positive"),
    "negative price": (tick(price=-3), "not positive"),
    "negative size": (tick(size=-1), "negative"),
    "absurd price": (tick(price=1e300), "price 1e+300 is above 1e+15"),
    "absurd size": (tick(size=1e16), "size 1e+16 is above 1e+15"),
    "before 1990": (tick(timestamp_ms=600_000_000_000), "before 1990"),
    "far future": (tick(timestamp_ms=NOW_MS * 10), "more than a day after its Kafka record time"),
    "time overflows once scaled": (tick(timestamp_ms=1e306), "out of range for a time"),
    "time beyond 64 bits as text": (tick(timestamp_ms="9" * 30), "out of range for a time"),
    "time beyond 64 bits": (tick(timestamp_ms=2**64 - 1), "out of range for a time"),
    "price overflows as text": (tick(price="1e400"), "not finite"),
    "NUL in a key": (b'{"\\u0000": 1}', "no known feed shape has these keys: '\\x00'"),
    "NUL in the symbol": (tick(symbol="AA\u0000PL"), "'AA\\x00PL' contains control"),
    "NUL in the exchange": (tick(exchange="NY\u0000SE"), "exchange 'NY\\x00SE' contains control"),
    "escaped control char in the exchange": (
        b'{"symbol":"A","price":1,"size":1,"timestamp_ms":1700000000000,"exchange":"N\\u0007"}',
        "exchange 'N\\x07' contains control",
    ),
    "long exchange": (tick(exchange="X" * 65), "exchange is 65 characters, over 64"),
    "direction mark in the symbol": (tick(symbol="AAPL\u200f"), "non-printable"),
    "empty symbol": (tick(symbol="  "), "symbol is empty"),
    "long symbol": (tick(symbol="X" * 65), "over 64"),
    "control chars": (tick(symbol="AB\u0007"), "control or other non-printable characters"),
    "deep nesting": (b"[" * 100_000 + b"]" * 100_000, "not valid JSON"),
    "trade id is a float": (tick(trade_id=12.5), "trade_id is float 12.5, not a trade id"),
    "trade id is a boolean": (tick(trade_id=True), "trade_id is a boolean, not a trade id"),
    "trade id is an object": (tick(trade_id={"n": 1}), "trade_id is an object, not a trade id"),
    "long trade id": (tick(trade_id="X" * 65), "trade id is 65 characters, over 64"),
    "NUL in the trade id": (tick(trade_id="T\u0000"), "trade id 'T\\x00' contains control"),
}
