"""Benchmark qdibkr's vectorised backtest against backtrader, on the same data and strategy.

Both engines run the SMA crossover over 100 symbols x 2,520 daily bars (ten
years of seeded synthetic prices): long one unit while the fast average is above
the slow one, a unit being USD 10,000 of shares at the deciding close, filled at
the next bar's open, paying the simulated gateway's commissions. The trade lists
must agree exactly (the script says so, or stops); the figures are each engine's
wall time (best of a few runs) and their ratio. backtrader is the reference
implementation that tests/test_backtest_vs_backtrader.py also checks against.

    python bench/backtest_bench.py [--symbols 100] [--bars 2520] [--repeat 3]

Prints the figures and writes them to bench/results/backtest_bench.json.
"""

import argparse
import itertools
import json
import math
import platform
import string
import time
from pathlib import Path

import numpy as np
import pandas as pd

from qdibkr.backtest import backtest
from qdibkr.commissions import commission
from qdibkr.strategies import sma_crossover
from qdibkr.symbols import parse_symbol

RESULTS = Path(__file__).parent / "results" / "backtest_bench.json"
FAST, SLOW = 20, 50
CASH, NOTIONAL = 1e9, 10_000.0  # cash enough that backtrader never refuses an order for margin
TRADE_COLUMNS = ["time", "symbol", "side", "quantity", "price", "commission"]


def synthetic_bars(symbols: int, bars: int, seed: int = 0) -> dict[str, pd.DataFrame]:
    """Seeded random-walk daily bars on business days, for tickers AAAA, AAAB, ..."""
    rng = np.random.default_rng(seed)
    index = pd.bdate_range("2015-01-05", periods=bars, tz="America/New_York", name="time")
    names = ["".join(letters) for letters in itertools.islice(itertools.product(string.ascii_uppercase, repeat=4),
                                                               symbols)]
    out = {}
    for name in names:
        close = 20 + 180 * rng.random() * np.exp(np.cumsum(rng.normal(0, 0.02, bars)))
        open_ = close * np.exp(rng.normal(0, 0.01, bars))
        out[name] = pd.DataFrame({"open": open_, "high": np.maximum(open_, close) * 1.01,
                                  "low": np.minimum(open_, close) * 0.99, "close": close,
                                  "volume": 1e6}, index=index)
    return out


def backtrader_trades(bars: dict[str, pd.DataFrame], *, fast: int, slow: int, notional: float,
                      lots: dict[str, int] | None = None, cash: float = CASH) -> pd.DataFrame:
    """The same strategy written for backtrader: buy one unit when flat and the fast SMA is
    above the slow one, close when it is not; market orders (filled at the next open)."""
    import backtrader as bt

    currency = parse_symbol(next(iter(bars))).currency
    lots = lots or {}

    class Fees(bt.CommInfoBase):
        params = (("stocklike", True), ("commtype", bt.CommInfoBase.COMM_FIXED))

        def _getcommission(self, size, price, pseudoexec):
            # The broker fills at the bar the feeds stand on; every symbol here trades on one calendar.
            day = bt.num2date(cerebro.datas[0].datetime[0]).date()
            return commission(currency, "BUY" if size > 0 else "SELL", abs(size), abs(size) * price, day)

    class SmaCrossover(bt.Strategy):
        def __init__(self):
            self.averages = [(bt.indicators.SMA(d.close, period=fast), bt.indicators.SMA(d.close, period=slow))
                             for d in self.datas]
            self.fills = []

        def next(self):
            for data, (fast_sma, slow_sma) in zip(self.datas, self.averages):
                held = self.getposition(data).size
                if not held and fast_sma[0] > slow_sma[0]:
                    lot = lots.get(data._name, 1)
                    size = math.floor(notional / (data.close[0] * lot)) * lot
                    if size:
                        self.buy(data=data, size=size)
                elif held and not fast_sma[0] > slow_sma[0]:
                    self.close(data=data)

        def notify_order(self, order):
            if order.status == order.Completed:
                self.fills.append((bt.num2date(order.executed.dt), order.data._name,
                                   "BUY" if order.isbuy() else "SELL", abs(order.executed.size),
                                   order.executed.price, order.executed.comm))

    cerebro = bt.Cerebro(stdstats=False)
    for symbol, frame in bars.items():
        cerebro.adddata(bt.feeds.PandasData(dataname=frame.tz_localize(None), openinterest=None), name=symbol)
    cerebro.broker.setcash(cash)
    cerebro.broker.addcommissioninfo(Fees())
    cerebro.addstrategy(SmaCrossover)
    [strategy] = cerebro.run()
    return _sorted(pd.DataFrame(strategy.fills, columns=TRADE_COLUMNS))


def our_trades(bars: dict[str, pd.DataFrame], *, fast: int, slow: int, notional: float,
               lots: dict[str, int] | None = None, cash: float = CASH) -> pd.DataFrame:
    """qdibkr's backtest of the same, its trades in backtrader's terms (naive exchange-local times)."""
    result = backtest(bars, sma_crossover, fast=fast, slow=slow, cash=cash, notional=notional, lots=lots)
    trades = result.trades[TRADE_COLUMNS].copy()
    trades["time"] = trades["time"].dt.tz_localize(None)
    return _sorted(trades)


def same_trades(ours: pd.DataFrame, theirs: pd.DataFrame):
    """Raise unless the trade lists agree: exactly, but for the last bit of a price (backtrader
    records a fill's price as an average, value over size)."""
    exact = [c for c in TRADE_COLUMNS if c != "price"]
    pd.testing.assert_frame_equal(ours[exact], theirs[exact], check_dtype=False, check_exact=True)
    np.testing.assert_allclose(ours["price"], theirs["price"], rtol=1e-12)


def _sorted(trades: pd.DataFrame) -> pd.DataFrame:
    return trades.sort_values(["time", "symbol"], kind="stable").reset_index(drop=True)


def best_time(run, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    return min(times)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--symbols", type=int, default=100)
    parser.add_argument("--bars", type=int, default=2520)
    parser.add_argument("--repeat", type=int, default=3, help="runs of each engine; the best counts")
    args = parser.parse_args()

    bars = synthetic_bars(args.symbols, args.bars)
    settings = dict(fast=FAST, slow=SLOW, notional=NOTIONAL)
    ours, theirs = our_trades(bars, **settings), backtrader_trades(bars, **settings)
    same_trades(ours, theirs)

    ours_seconds = best_time(lambda: backtest(bars, sma_crossover, fast=FAST, slow=SLOW, cash=CASH,
                                              notional=NOTIONAL), args.repeat)
    backtrader_seconds = best_time(lambda: backtrader_trades(bars, **settings), args.repeat)
    figures = {
        "symbols": args.symbols, "bars": args.bars, "strategy": f"sma_crossover {FAST}/{SLOW}",
        "trades": len(ours), "identical_trades": True,
        "qdibkr_seconds": ours_seconds, "backtrader_seconds": backtrader_seconds,
        "speedup": backtrader_seconds / ours_seconds,
        "python": platform.python_version(), "machine": platform.machine(),
    }
    for name, value in figures.items():
        print(f"{name:20} {value:.4g}" if isinstance(value, float) else f"{name:20} {value}")
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
