"""Synthetic ticks: realistic, seeded starts per symbol; prices rounded to significant digits."""

from __future__ import annotations

from finpulse import produce


def first_prices(seed: int = 7, symbols=produce.DEFAULT_SYMBOLS, count: int = 5_000) -> dict[str, float]:
    first: dict[str, float] = {}
    for t in produce.ticks(count, symbols, seed=seed, start_ms=0):
        first.setdefault(t["symbol"], t["price"])
    return first


def test_known_symbols_start_near_their_market_level():
    for seed in (1, 7, 42):
        first = first_prices(seed)
        assert set(first) == set(produce.DEFAULT_SYMBOLS)
        assert 0.9 < first["EURUSD"] < 1.3
        assert 1.0 < first["GBPUSD"] < 1.5
        assert first["BTC-USD"] > 10_000
        assert 100 < first["USDJPY"] < 200
        assert 1_000 < first["ETH-USD"] < 10_000
        for sym, price in first.items():
            ref = produce.REFERENCE_PRICES[sym]
            assert 0.9 * ref < price < 1.1 * ref, (seed, sym, price)


def test_fx_keeps_five_decimals_and_every_price_six_significant_digits():
    prices = [t["price"] for t in produce.ticks(20_000, seed=3, start_ms=0)]
    assert all(p > 0 and float(f"{p:.6g}") == p for p in prices)
    fx = [t["price"] for t in produce.ticks(2_000, ("EURUSD",), seed=3, start_ms=0)]
    assert any(round(p, 4) != p for p in fx), "FX prices need their fifth decimal"
    assert produce.significant(1.1023449) == 1.10234 and produce.significant(60123.44) == 60123.4


def test_equal_seeds_give_equal_ticks_and_unknown_symbols_a_seeded_start():
    syms = ("EURUSD", "BTC-USD", "MADEUP", "other")
    a = list(produce.ticks(3_000, syms, seed=11, start_ms=0))
    assert a == list(produce.ticks(3_000, syms, seed=11, start_ms=0))
    assert a != list(produce.ticks(3_000, syms, seed=12, start_ms=0))
    first = first_prices(11, syms, 3_000)
    assert first == first_prices(11, syms, 3_000)
    assert 19 < first["MADEUP"] < 510 and 19 < first["other"] < 510
    assert first_prices(12, syms, 3_000)["MADEUP"] != first["MADEUP"]
