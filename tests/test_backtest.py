"""The vectorised backtest on small cases worked out by hand: every fill, commission and metric."""

import datetime as dt
import math

import numpy as np
import pandas as pd
import pytest

from qdibkr import InputError, parse_symbol
from qdibkr.backtest import backtest, heatmap, simulate, sweep, wide
from qdibkr.commissions import commission
from qdibkr.sim import catalogue
from qdibkr.sim.broker import commission_due
from qdibkr.strategies import orders, sma_crossover

NY = "America/New_York"


def days(n: int, zone: str = NY) -> pd.DatetimeIndex:
    return pd.bdate_range("2025-01-06", periods=n, tz=zone, name="time")


def prices(symbol_rows: dict[str, list], index) -> pd.DataFrame:
    return pd.DataFrame(symbol_rows, index=index, dtype=float)


def run(open_, close, targets, **settings):
    return simulate(prices(open_, close.index), close, prices(targets, close.index), **settings)


# ---------------------------------------------------------------- fills, commissions, metrics
def test_round_trip_filled_at_next_opens_with_us_commissions():
    close = prices({"AAPL": [10.5, 11.5, 12.5, 13.5, 14.5, 15.5]}, days(6))
    result = run({"AAPL": [10, 11, 12, 13, 14, 15]}, close, {"AAPL": [0, 1, 1, 0, 0, 0]},
                 cash=10_000, notional=1_000)
    trades = result.trades
    # Decided at bar 1's close (11.50): 1,000 buys floor(1000 / 11.5) = 86 shares, filled at bar 2's open.
    assert trades[["signal", "side", "quantity", "price", "value", "commission"]].values.tolist() == [
        ["open_long", "BUY", 86, 12.0, 1032.0, 1.0],   # 86 x 0.005 = 0.43: the USD 1 minimum
        # USD 1 + SEC fee 1,204 x 27.80 per million = 0.033 -> 0.04 + FINRA TAF 86 x 0.000166 = 0.014 -> 0.02
        ["close_long", "SELL", 86, 14.0, 1204.0, 1.06],
    ]
    assert list(trades["time"]) == [close.index[2], close.index[4]]
    assert list(trades["decided"]) == [close.index[1], close.index[3]]
    equity = [10_000, 10_000, 8_967 + 86 * 12.5, 8_967 + 86 * 13.5, 10_169.94, 10_169.94]
    assert result.equity.tolist() == pytest.approx(equity)
    assert result.cash.tolist() == pytest.approx([10_000, 10_000, 8_967, 8_967, 10_169.94, 10_169.94])
    assert result.positions["AAPL"].tolist() == [0, 0, 86, 86, 0, 0]

    m = result.metrics
    returns = np.diff(equity, prepend=10_000) / np.r_[10_000, equity[:-1]]
    assert m.fill == "next open" and m.bars == 6 and m.periods_per_year == 252
    assert m.total_return == pytest.approx(0.016994)
    assert m.cagr == pytest.approx(1.016994 ** (252 / 6) - 1)
    assert m.volatility == pytest.approx(returns.std(ddof=1) * math.sqrt(252))
    assert m.sharpe == pytest.approx(returns.mean() / returns.std(ddof=1) * math.sqrt(252))
    assert math.isnan(m.sortino)  # no losing bar
    assert m.max_drawdown == 0 and m.drawdown_peak is None and m.drawdown_trough is None
    assert (m.trades, m.round_trips, m.win_rate) == (2, 1, 1.0)
    assert result.round_trips["pnl"].tolist() == pytest.approx([1204 - 1032 - 2.06])
    assert m.exposure == pytest.approx(2 / 6)
    assert m.turnover == pytest.approx((1032 + 1204) / np.mean(equity) / (6 / 252))
    assert m.commissions == pytest.approx(2.06) and m.min_cash == 8_967
    assert m.final_equity == pytest.approx(10_169.94)


def test_fill_at_close_and_the_worst_drawdown_with_its_dates():
    close = prices({"MSFT": [10, 8, 9, 12, 11]}, days(5))
    result = run({"MSFT": [9, 9, 9, 9, 9]}, close, {"MSFT": [1, 1, 1, 1, 0]}, cash=10_000, notional=1_000,
                 fill="close")
    assert result.trades[["signal", "quantity", "price", "commission"]].values.tolist() == [
        ["open_long", 100, 10.0, 1.0], ["close_long", 100, 11.0, 1.06]]  # the sale: SEC fee 0.04, TAF 0.02
    assert result.equity.tolist() == pytest.approx([9_999, 9_799, 9_899, 10_199, 10_097.94])
    m = result.metrics
    assert m.fill == "close"
    assert m.max_drawdown == pytest.approx(9_799 / 10_000 - 1)
    assert m.drawdown_peak is None  # the peak was the starting cash
    assert m.drawdown_trough == close.index[1] and m.drawdown_recovery == close.index[3]
    assert result.drawdown.iloc[-1] == pytest.approx(10_097.94 / 10_199 - 1)
    path = np.array([10_000, 9_999, 9_799, 9_899, 10_199, 10_097.94])  # starting cash, then each bar
    returns = np.diff(path) / path[:-1]
    downside = math.sqrt(np.mean(np.minimum(returns, 0) ** 2))
    assert m.sortino == pytest.approx(returns.mean() / downside * math.sqrt(252))


def test_hk_board_lots_and_the_hkd_18_minimum():
    close = prices({"0005.HK": [5.0, 5.2, 5.3, 5.1], "0700.HK": [380, 390, 400, 410]}, days(4, "Asia/Hong_Kong"))
    opens = {"0005.HK": [5.0, 5.1, 5.2, 5.0], "0700.HK": [380, 385, 395, 405]}
    lots = {s: catalogue.find(parse_symbol(s).ib_symbol, exchange="SEHK")[0].board_lot for s in close}
    assert lots == {"0005.HK": 400, "0700.HK": 100}
    result = run(opens, close, {"0005.HK": [1, 1, 1, 1], "0700.HK": [1, 1, 0, 0]}, cash=1_000_000,
                 notional=100_000, lots=lots)
    assert result.trades[["symbol", "signal", "quantity", "price", "value", "commission"]].values.tolist() == [
        # floor(100,000 / (5 x 400)) = 50 lots; 0.08% of 102,000 = 81.60, stamp duty 102,
        # SFC levy 0.0027% = 2.754 -> 2.75, AFRC levy 0.00015% = 0.153 -> 0.15
        ["0005.HK", "open_long", 20_000, 5.1, 102_000.0, 186.5],
        # floor(100,000 / (380 x 100)) = 2 lots; 61.60 + 77 + 2.079 -> 2.08 + 0.1155 -> 0.12
        ["0700.HK", "open_long", 200, 385.0, 77_000.0, 140.8],
        # sales pay the same: 64.80 + 81 + 2.187 -> 2.19 + 0.1215 -> 0.12
        ["0700.HK", "close_long", 200, 405.0, 81_000.0, 148.11],
    ]
    small = run({"0005.HK": [5.0, 5.25]}, close.iloc[:2, :1], {"0005.HK": [1, 1]}, notional=5_000, lots=lots)
    # 0.08% = 3.36 < HKD 18; stamp duty 4.2 rounds up to 5; levies 0.11 and 0.01
    assert small.trades[["quantity", "value", "commission"]].values.tolist() == [[800, 4_200.0, 23.12]]


def test_commissions_are_the_simulated_gateways():
    aapl, tencent = catalogue.find("AAPL")[0], catalogue.find("700", exchange="SEHK")[0]
    now = dt.datetime(2026, 6, 1, 15, tzinfo=dt.timezone.utc).timestamp()
    for listing, quantity, value in [(aapl, 10, 2_000.0), (aapl, 1_000, 200_000.0), (aapl, 3, 50.0),
                                     (tencent, 100, 40_000.0), (tencent, 10_000, 4_000_000.0)]:
        for side in ("BUY", "SELL"):
            assert commission_due(listing, side, quantity, value, now) == \
                commission(listing.currency, side, quantity, value, dt.date(2026, 6, 1))
    assert commission("USD", "BUY", 3, 50.0, dt.date(2026, 6, 1)) == 0.5  # at most 1% of the value
    # The rates of the trade's date in the exchange's zone: 02:00 UTC on 4 April 2026 is still 3 April in
    # New York, before the SEC fee of USD 20.60 per million (4.12 on this sale) came in.
    april_4_utc = dt.datetime(2026, 4, 4, 2, tzinfo=dt.timezone.utc).timestamp()
    assert commission_due(aapl, "SELL", 1_000, 200_000.0, april_4_utc) == 5.0 + 0.2  # commission + TAF


def test_adds_and_reductions_trade_whole_units_of_the_opening_size():
    close = prices({"AAPL": [10, 20, 25, 40, 50]}, days(5))
    wanted = orders(prices({"AAPL": [1, 2, 3, 1, 0]}, close.index), close, notional=1_000)
    assert wanted[["signal", "side", "quantity", "units"]].values.tolist() == [
        ["open_long", "BUY", 100, 1], ["add_long", "BUY", 100, 2], ["add_long", "BUY", 100, 3],
        ["reduce_long", "SELL", 200, 1], ["close_long", "SELL", 100, 0]]
    assert wanted["price"].tolist() == [10, 20, 25, 40, 50]  # the closes that decided


def test_a_unit_worth_less_than_a_board_lot_waits_for_a_bar_where_it_buys_one():
    close = prices({"0700.HK": [450, 410, 390, 420, 380]}, days(5, "Asia/Hong_Kong"))
    wanted = orders(prices({"0700.HK": [1, 2, 2, 0, 1]}, close.index), close, notional=40_000,
                    lots={"0700.HK": 100})
    # HKD 40,000 buys no lot of 100 at 450 or 410; at 390 one, and the target is then 2 units.
    assert wanted[["time", "signal", "quantity", "units"]].values.tolist() == [
        [close.index[2], "open_long", 200, 2], [close.index[3], "close_long", 200, 0],
        [close.index[4], "open_long", 100, 1]]


# ---------------------------------------------------------------- edge cases
def test_no_trades():
    close = prices({"AAPL": [10, 11, 12]}, days(3))
    result = run({"AAPL": [10, 11, 12]}, close, {"AAPL": [0, 0, 0]}, cash=5_000)
    m = result.metrics
    assert result.trades.empty and result.round_trips.empty and result.pending.empty
    assert result.equity.tolist() == [5_000] * 3
    assert (m.total_return, m.cagr, m.volatility, m.max_drawdown, m.exposure, m.turnover) == (0, 0, 0, 0, 0, 0)
    assert math.isnan(m.sharpe) and math.isnan(m.sortino) and math.isnan(m.win_rate)


def test_one_bar_and_a_signal_on_the_last_bar():
    close = prices({"AAPL": [10.0]}, days(1))
    at_open = run({"AAPL": [10.0]}, close, {"AAPL": [1]}, cash=5_000, notional=1_000)
    assert at_open.trades.empty
    assert at_open.pending[["signal", "quantity"]].values.tolist() == [["open_long", 100]]
    assert math.isnan(at_open.metrics.volatility) and math.isnan(at_open.metrics.sharpe)
    at_close = run({"AAPL": [10.0]}, close, {"AAPL": [1]}, cash=5_000, notional=1_000, fill="close")
    assert at_close.pending.empty and at_close.trades["quantity"].tolist() == [100]
    assert at_close.equity.tolist() == [4_999]  # the commission

    close = prices({"AAPL": [10, 11, 12]}, days(3))
    last = run({"AAPL": [10, 11, 12]}, close, {"AAPL": [1, 1, 0]}, cash=5_000, notional=1_000)
    assert last.trades["signal"].tolist() == ["open_long"]
    assert last.pending["signal"].tolist() == ["close_long"] and last.positions["AAPL"].iloc[-1] == 100


def test_a_gap_fills_at_the_symbols_next_bar_and_keeps_its_last_close():
    close = prices({"AAPL": [10, 10, 10, 10, 10], "MSFT": [20, 21, np.nan, np.nan, 24]}, days(5))
    opens = {"AAPL": [10] * 5, "MSFT": [20, 21, np.nan, np.nan, 23]}
    result = run(opens, close, {"AAPL": [0] * 5, "MSFT": [0, 1, np.nan, np.nan, 1]}, cash=10_000, notional=1_000)
    [fill] = result.trades.itertuples()
    assert (fill.time, fill.decided, fill.quantity, fill.price) == (close.index[4], close.index[1], 47, 23.0)
    assert result.equity.tolist() == pytest.approx([10_000] * 4 + [10_000 - 47 * 23 - 1 + 47 * 24])


def test_one_currency_at_a_time_and_no_short_targets():
    close = prices({"AAPL": [10, 11], "0700.HK": [380, 390]}, days(2))
    with pytest.raises(InputError, match="backtest one currency at a time"):
        run({"AAPL": [10, 11], "0700.HK": [380, 390]}, close, {"AAPL": [0, 1], "0700.HK": [0, 1]})
    with pytest.raises(InputError, match="short selling"):
        run({"AAPL": [10, 11]}, close[["AAPL"]], {"AAPL": [0, -1]})


# ---------------------------------------------------------------- the strategy, sweeps and plots
def test_sma_crossover_per_symbol_with_gaps():
    close = prices({"AAPL": [1, 2, 3, 2, 1, 2, 3], "MSFT": [1, 2, np.nan, 3, 2, 1, 2]}, days(7))
    targets = sma_crossover(close, fast=2, slow=3)
    # AAPL fast: -, 1.5, 2.5, 2.5, 1.5, 1.5, 2.5; slow: -, -, 2, 2.33, 2, 1.67, 2
    assert targets["AAPL"].tolist() == [0, 0, 1, 1, 0, 0, 1]
    # MSFT over its own bars 1, 2, 3, 2, 1, 2: fast 1.5, 2.5, 2.5, 1.5, 1.5 vs slow 2, 2.33, 2, 1.67
    assert targets["MSFT"].tolist()[:2] == [0, 0] and math.isnan(targets["MSFT"].iloc[2])
    assert targets["MSFT"].tolist()[3:] == [1, 1, 0, 0]
    with pytest.raises(InputError, match="must be shorter than the slow one"):
        sma_crossover(close, fast=5, slow=5)


def synthetic(symbols: list[str], n: int, seed: int = 7) -> dict[str, pd.DataFrame]:
    rng = np.random.default_rng(seed)
    out = {}
    for symbol in symbols:
        close = 50 * np.exp(np.cumsum(rng.normal(0, 0.02, n)))
        out[symbol] = pd.DataFrame({"open": close * np.exp(rng.normal(0, 0.005, n)), "close": close}, index=days(n))
    return out


def test_backtest_runs_the_strategy_and_sweep_tables_the_grid(tmp_path):
    bars = synthetic(["AAPL", "MSFT", "SPY"], 300)
    result = backtest(bars, sma_crossover, fast=5, slow=20, cash=100_000, notional=10_000)
    close = wide(bars)
    # What a live run would emit, bar by bar: the backtest filled exactly these, the last bar's pending.
    expected = orders(sma_crossover(close, fast=5, slow=20), close, notional=10_000)
    expected = expected[["time", "symbol", "signal", "quantity"]].values.tolist()
    filled = result.trades[["decided", "symbol", "signal", "quantity"]].values.tolist()
    pending = result.pending[["time", "symbol", "signal", "quantity"]].values.tolist()
    assert len(filled) > 20 and filled + pending == expected

    table = sweep(bars, sma_crossover, {"fast": [5, 20], "slow": [20, 50]}, cash=100_000, notional=10_000)
    assert list(table.index) == [(5, 20), (5, 50), (20, 50)]  # 20/20 is refused by the strategy
    assert table.loc[(5, 20), "sharpe"] == pytest.approx(result.metrics.sharpe)

    for figure, name in [(result.plot_signals("MSFT"), "signals"), (result.plot_equity(), "equity"),
                         (heatmap(table, "fast", "slow"), "heatmap")]:
        figure.savefig(tmp_path / f"{name}.png")
        assert (tmp_path / f"{name}.png").stat().st_size > 5_000
