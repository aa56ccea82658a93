"""Coinbase Advanced Trade websocket: the `market_trades` channel.

One message: {"channel", "client_id", "timestamp" (the frame's time, not used), "sequence_num",
"events": [{"type": "snapshot" | "update", "trades": [...]}]}; each trade has product_id, price
and size (decimal text), side ("BUY" / "SELL", published as the taker's side, kept as is), time
(ISO-8601, up to ns digits) and trade_id (numeric text, consecutive per product). Trades are numbered across events in order (tick_index).
Every other channel (heartbeats, subscriptions, ticker, level2, candles, status, ...) is skipped.
"""

from __future__ import annotations

from typing import Any

from finpulse.feeds.fields import keys_seen, kind, not_this, number, side_word, symbol, trade_ident, trade_time
from finpulse.feeds.model import Feed, Invalid, Parsed, Trade, frame

NAME = "coinbase-advanced"
EXCHANGE = "COINBASE"
TRADE_CHANNEL = "market_trades"


def _trade(obj: Any) -> Trade:
    if not isinstance(obj, dict):
        raise Invalid(f"a trade must be an object, got {kind(obj)}", NAME)
    return Trade(
        symbol(obj, "product_id", NAME),
        number(obj, "price", NAME),
        number(obj, "size", NAME),
        trade_time(obj, "time", "auto", NAME),
        None,
        side_word(obj.get("side")),
        trade_ident(obj, "trade_id", NAME),
    )


def parse(obj: Any) -> Parsed:
    if not matches(obj):
        raise not_this(NAME, obj, "an object with channel and an events array")
    channel = obj["channel"]
    if channel != TRADE_CHANNEL:
        return Parsed(NAME, None, EXCHANGE, f"coinbase-advanced {channel} message")
    trades: list = []
    for i, event in enumerate(obj["events"]):
        if not isinstance(event, dict) or not isinstance(event.get("trades"), list):
            raise Invalid(f"events[{i}] is {keys_seen(event)}, not an object with a trades array", NAME)
        trades.extend(event["trades"])
    return frame(FEED, trades, _trade, "market_trades message")


def matches(obj: Any) -> bool:
    return isinstance(obj, dict) and isinstance(obj.get("channel"), str) and isinstance(obj.get("events"), list)


FEED = Feed(NAME, EXCHANGE, matches, parse)
