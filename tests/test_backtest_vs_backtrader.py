"""qdibkr's backtest against backtrader: the same bars, strategy, fills and commissions give the same trades.

The bars are the simulated gateway's (two years of daily bars); backtrader runs the
reference SMA crossover of bench/backtest_bench.py, filling market orders at the next
open and charging ``qdibkr.commissions.commission`` through a backtrader CommInfo.
"""

import datetime as dt

import pandas as pd
import pytest

from bench.backtest_bench import backtrader_trades, our_trades, same_trades
from qdibkr.sim import catalogue
from qdibkr.sim.market import PriceModel
from qdibkr.symbols import parse_symbol

END = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc).timestamp()


def simulated_bars(symbols: list[str]) -> tuple[dict[str, pd.DataFrame], dict[str, int]]:
    """Daily bars of the simulator's price model, and the board lots of its catalogue."""
    model, bars, lots = PriceModel(seed=3), {}, {}
    for text in symbols:
        symbol = parse_symbol(text)
        [listing] = catalogue.find(symbol.ib_symbol, exchange="SEHK" if symbol.currency == "HKD" else "SMART")
        daily = model.bars(listing, END, "2 Y", "1 day")
        index = pd.DatetimeIndex([b.day for b in daily], name="time").tz_localize(listing.time_zone)
        bars[symbol.display] = pd.DataFrame(
            {field: [getattr(b, field) for b in daily] for field in ("open", "high", "low", "close", "volume")},
            index=index)
        lots[symbol.display] = listing.board_lot
    return bars, lots


@pytest.mark.parametrize("symbols, notional, unaffordable", [
    (["AAPL", "MSFT", "NVDA", "JPM"], 100_000, set()),  # USD 0.005 a share, at least USD 1: both occur
    # HKD 30,000 buys 1-3 board lots: 0.08% of the value, or the HKD 18 minimum; a lot of 700 costs more.
    (["1810.HK", "2800.HK", "9988.HK", "0700.HK"], 30_000, {"0700.HK"}),
])
def test_same_trades_as_backtrader(symbols, notional, unaffordable):
    bars, lots = simulated_bars(symbols)
    ours = our_trades(bars, fast=10, slow=30, notional=notional, lots=lots)
    theirs = backtrader_trades(bars, fast=10, slow=30, notional=notional, lots=lots)
    assert len(ours) >= 20 and set(ours["symbol"]) == set(bars) - unaffordable
    same_trades(ours, theirs)
