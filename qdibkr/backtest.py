"""Vectorised backtests: a strategy over bars for many symbols, with the simulator's commissions.

::

    from qdibkr.backtest import backtest
    from qdibkr.strategies import sma_crossover
    result = backtest(bars, sma_crossover, fast=20, slow=50, cash=1_000_000, notional=100_000)
    result.metrics, result.trades, result.plot_equity()

``bars`` maps symbols to DataFrames with ``open`` and ``close`` columns, as
``qdibkr.bars.fetch`` returns them; the symbols share one currency. How it trades:

- The strategy sees the closes and answers target units (see
  ``qdibkr.strategies``); ``strategies.orders`` turns those into orders, each
  decided at a bar's close: the same orders a live run emits.
- Fills: at the symbol's next bar's open (``fill="open"``, the default), or at
  the deciding bar's close (``fill="close"``); the result states which. An order
  decided on a symbol's last bar has no next bar: it is listed in ``pending``.
- An order fills whole at that price (no slippage) and pays
  ``qdibkr.commissions.commission``: IB's fixed pricing plus the fees it passes
  on, at the rates in force on the fill's date, as the simulated gateway charges.
- Cash is not checked: orders follow the sizing rule and cash may go below
  zero (``metrics.min_cash`` shows whether it did).
- Positions are valued at each bar's close (a symbol without a bar keeps its
  last close).

Everything runs on whole arrays (bars x symbols); Python loops only over orders
(for the commission) and over parameter combinations in ``sweep``.
"""

import itertools
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import numpy as np
import pandas as pd

from .commissions import commission
from .errors import InputError
from .strategies import orders
from .symbols import parse_symbol

FILLS = ("open", "close")
TRADING_DAYS = 252  # sessions per year, for annualising
TRADE_COLUMNS = ["time", "symbol", "signal", "side", "quantity", "price", "value", "commission", "decided"]
ROUND_TRIP_COLUMNS = ["symbol", "opened", "closed", "bought", "pnl", "return"]


@dataclass(frozen=True)
class Metrics:
    """Figures of one backtest. Returns are fractions (0.1 is 10%); times are bar times.

    Annualised figures count ``periods_per_year`` bars a year; the risk-free rate is 0.
    ``drawdown_peak`` is None when the peak before the worst drawdown was the starting
    cash, ``drawdown_recovery`` None when equity never climbed back to that peak.
    Figures that one bar or no trade leaves undefined are NaN.
    """

    fill: str  # "next open" or "close"
    start: pd.Timestamp
    end: pd.Timestamp
    bars: int
    periods_per_year: float
    final_equity: float
    total_return: float
    cagr: float
    volatility: float  # of per-bar returns, annualised
    sharpe: float
    sortino: float  # mean return over the root mean square of the negative returns
    max_drawdown: float  # the deepest fall from a running peak, <= 0
    drawdown_peak: pd.Timestamp | None
    drawdown_trough: pd.Timestamp | None
    drawdown_recovery: pd.Timestamp | None
    trades: int  # fills
    round_trips: int  # positions opened and closed again
    win_rate: float  # of round trips, by P&L net of commissions
    exposure: float  # share of bars with any position held
    turnover: float  # value traded per year over the mean equity
    commissions: float
    min_cash: float


@dataclass(frozen=True)
class Result:
    """A backtest's trades, holdings and equity at each bar, and its metrics."""

    metrics: Metrics
    trades: pd.DataFrame = field(repr=False)  # every fill: TRADE_COLUMNS ("decided": the bar that decided)
    pending: pd.DataFrame = field(repr=False)  # orders decided on a symbol's last bar, not filled
    round_trips: pd.DataFrame = field(repr=False)  # ROUND_TRIP_COLUMNS; "closed" NaT while still open
    positions: pd.DataFrame = field(repr=False)  # shares held after each bar
    cash: pd.Series = field(repr=False)
    equity: pd.Series = field(repr=False)
    drawdown: pd.Series = field(repr=False)
    close: pd.DataFrame = field(repr=False)  # the prices the strategy saw, for the plots

    def plot_signals(self, symbol: str):
        """A symbol's close with its buys (^) and sells (v) at their fill prices; a matplotlib Figure."""
        from matplotlib.figure import Figure

        if symbol not in self.close.columns:
            raise InputError("symbol", f"{symbol!r} is not in this backtest; it has {', '.join(self.close.columns)}")
        fig = Figure(figsize=(10, 4), layout="constrained")
        ax = fig.subplots()
        ax.plot(self.close.index, self.close[symbol], color="0.3", linewidth=1, label="close")
        mine = self.trades[self.trades["symbol"] == symbol]
        for side, marker, color in (("BUY", "^", "tab:green"), ("SELL", "v", "tab:red")):
            done = mine[mine["side"] == side]
            ax.scatter(done["time"], done["price"], marker=marker, color=color, s=50, zorder=3, label=side.lower())
        ax.set_title(f"{symbol}: fills at the {self.metrics.fill}")
        ax.legend(loc="best")
        return fig

    def plot_equity(self):
        """Equity above, drawdown below; a matplotlib Figure."""
        from matplotlib.figure import Figure

        fig = Figure(figsize=(10, 6), layout="constrained")
        top, bottom = fig.subplots(2, 1, sharex=True, height_ratios=[2, 1])
        top.plot(self.equity.index, self.equity, color="tab:blue")
        m = self.metrics
        top.set_title(f"equity: total return {m.total_return:.1%}, Sharpe {m.sharpe:.2f}, fills at the {m.fill}")
        bottom.fill_between(self.drawdown.index, self.drawdown, 0, color="tab:red", alpha=0.4)
        bottom.set_title(f"drawdown: worst {m.max_drawdown:.1%}")
        return fig


def wide(bars: dict[str, pd.DataFrame], column: str = "close") -> pd.DataFrame:
    """One column of every symbol's bars side by side: a row per bar time, NaN where a symbol has none."""
    return pd.DataFrame({symbol: frame[column] for symbol, frame in bars.items()}).sort_index()


def backtest(bars: dict[str, pd.DataFrame], strategy: Callable[..., pd.DataFrame], *,
             cash: float = 1_000_000.0, notional: float = 100_000.0, lots: dict[str, int] | None = None,
             fill: str = "open", periods_per_year: float | None = None, **params) -> Result:
    """Run ``strategy(close, **params)`` over ``bars`` and trade its orders (see the module's notes)."""
    close = wide(bars, "close")
    return simulate(wide(bars, "open"), close, strategy(close, **params), cash=cash, notional=notional,
                    lots=lots, fill=fill, periods_per_year=periods_per_year)


def sweep(bars: dict[str, pd.DataFrame], strategy: Callable[..., pd.DataFrame], grid: dict[str, list],
          **settings) -> pd.DataFrame:
    """Backtest every combination of the ``grid``'s parameter values; a row of metrics each,
    indexed by the parameters. Combinations the strategy refuses (InputError, e.g. a fast
    average not shorter than the slow one) are left out. ``settings`` go to ``simulate``."""
    open_, close = wide(bars, "open"), wide(bars, "close")
    names = list(grid)
    rows = []
    for values in itertools.product(*grid.values()):
        params = dict(zip(names, values))
        try:
            targets = strategy(close, **params)
        except InputError:
            continue
        rows.append({**params, **asdict(simulate(open_, close, targets, **settings).metrics)})
    return pd.DataFrame(rows, columns=names + list(Metrics.__dataclass_fields__)).set_index(names)


def heatmap(table: pd.DataFrame, x: str, y: str, metric: str = "sharpe"):
    """A metric of a two-parameter ``sweep`` as a coloured grid with the values written in; a Figure."""
    from matplotlib.figure import Figure

    grid = table.reset_index().pivot(index=y, columns=x, values=metric)
    fig = Figure(figsize=(1.2 * len(grid.columns) + 2, 0.8 * len(grid.index) + 1.5), layout="constrained")
    ax = fig.subplots()
    image = ax.imshow(grid.to_numpy(dtype=float), cmap="RdYlGn", aspect="auto", origin="lower")
    ax.set_xticks(range(len(grid.columns)), [str(v) for v in grid.columns])
    ax.set_yticks(range(len(grid.index)), [str(v) for v in grid.index])
    ax.set_xlabel(x)
    ax.set_ylabel(y)
    for (i, j), value in np.ndenumerate(grid.to_numpy(dtype=float)):
        if not math.isnan(value):
            ax.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=8)
    fig.colorbar(image, ax=ax, label=metric)
    ax.set_title(f"{metric} by {x} and {y}")
    return fig


# ------------------------------------------------------------------ the simulation

def simulate(open_: pd.DataFrame, close: pd.DataFrame, targets: pd.DataFrame, *, cash: float = 1_000_000.0,
             notional: float = 100_000.0, lots: dict[str, int] | None = None, fill: str = "open",
             periods_per_year: float | None = None) -> Result:
    """Trade the orders that ``targets`` imply over these prices (rows: bars; columns: symbols)."""
    if fill not in FILLS:
        raise InputError("fill", f"{fill!r} is not a fill convention; use one of {', '.join(FILLS)}")
    if close.empty:
        raise InputError("bars", "there are no bars to backtest")
    currency = _currency(close.columns)
    open_ = open_.reindex(index=close.index, columns=close.columns)
    wanted = orders(targets, close, notional=notional, lots=lots)
    n_bars = len(close)
    decided = close.index.get_indexer(wanted["time"])
    cols = close.columns.get_indexer(wanted["symbol"])
    if fill == "open":
        at = _next_bar(open_.notna().to_numpy())[decided, cols]
        prices = open_.to_numpy()
    else:
        at = decided
        prices = close.to_numpy()
    filled = at < n_bars
    at, cols = at[filled], cols[filled]
    done = wanted[filled]
    quantity = done["quantity"].to_numpy()
    price = prices[at, cols]
    value = quantity * price
    sides = done["side"].to_numpy()
    trade_days = close.index[at].date  # the bars are in the exchange's zone: each fill's local trade date
    fees = np.array([commission(currency, s, q, v, d) for s, q, v, d in zip(sides, quantity, value, trade_days)],
                    dtype=float)
    trades = pd.DataFrame({
        "time": close.index[at], "symbol": done["symbol"].to_numpy(), "signal": done["signal"].to_numpy(),
        "side": sides, "quantity": quantity, "price": price, "value": value,
        "commission": fees, "decided": done["time"].array,
    }, columns=TRADE_COLUMNS)

    signed = np.where(sides == "BUY", quantity, -quantity)
    fills = np.zeros(close.shape)
    fills[at, cols] = signed  # one order per (bar, symbol) at most
    positions = np.cumsum(fills, axis=0)
    flows = np.zeros(n_bars)
    np.add.at(flows, at, -signed * price - fees)
    cash_curve = cash + np.cumsum(flows)
    marks = np.nan_to_num(close.ffill().to_numpy())
    equity = pd.Series(cash_curve + (positions * marks).sum(axis=1), index=close.index, name="equity")
    peak = np.maximum.accumulate(np.r_[cash, equity.to_numpy()])[1:]
    drawdown = pd.Series(equity.to_numpy() / peak - 1, index=close.index, name="drawdown")

    positions = pd.DataFrame(positions, index=close.index, columns=close.columns)
    round_trips = _round_trips(trades)
    ppy = periods_per_year or _periods_per_year(close.index)
    metrics = _metrics(fill, cash, equity, peak, drawdown, positions, trades, round_trips, ppy, cash_curve)
    return Result(metrics=metrics, trades=trades, pending=wanted[~filled].reset_index(drop=True),
                  round_trips=round_trips, positions=positions,
                  cash=pd.Series(cash_curve, index=close.index, name="cash"), equity=equity,
                  drawdown=drawdown, close=close)


def _currency(symbols) -> str:
    currencies = {parse_symbol(s).currency for s in symbols}
    if len(currencies) > 1:
        raise InputError("bars", f"the symbols trade in {', '.join(sorted(currencies))}; backtest one currency "
                                 f"at a time (US and Hong Kong stocks separately)")
    return currencies.pop() if currencies else "USD"


def _next_bar(has_bar: np.ndarray) -> np.ndarray:
    """For each (row, column), the next row strictly below where the column has a bar;
    the number of rows where there is none."""
    n_rows = has_bar.shape[0]
    rows = np.where(has_bar, np.arange(n_rows)[:, None], n_rows)
    at_or_below = np.minimum.accumulate(rows[::-1], axis=0)[::-1]
    return np.vstack([at_or_below[1:], np.full((1, has_bar.shape[1]), n_rows)])


def _periods_per_year(index: pd.DatetimeIndex) -> float:
    """TRADING_DAYS times the bars per trading day: 252 for daily bars, about 1638 for half-hour US bars."""
    days = index.normalize().nunique()
    return TRADING_DAYS * len(index) / days if days else float(TRADING_DAYS)


def _round_trips(trades: pd.DataFrame) -> pd.DataFrame:
    """A row per position from open_long to close_long (or still open), with its P&L net of commissions."""
    if trades.empty:
        return pd.DataFrame(columns=ROUND_TRIP_COLUMNS)
    buy = trades["side"] == "BUY"
    legs = trades.assign(
        trip=(trades["signal"] == "open_long").groupby(trades["symbol"]).cumsum(),
        bought=trades["value"].where(buy, 0.0),
        flow=trades["value"].where(~buy, -trades["value"]) - trades["commission"])
    trips = legs.groupby(["symbol", "trip"], sort=False).agg(
        opened=("time", "first"), closed=("time", "last"), last=("signal", "last"),
        bought=("bought", "sum"), pnl=("flow", "sum")).reset_index()
    trips["closed"] = trips["closed"].where(trips["last"] == "close_long")
    trips["return"] = trips["pnl"] / trips["bought"]
    return trips[ROUND_TRIP_COLUMNS]


def _metrics(fill, cash, equity, peak, drawdown, positions, trades, round_trips, ppy, cash_curve) -> Metrics:
    values, drawdown = equity.to_numpy(), drawdown.to_numpy()
    returns = np.diff(values, prepend=cash) / np.r_[cash, values[:-1]]
    years = len(values) / ppy
    growth = values[-1] / cash
    std = returns.std(ddof=1) if len(returns) > 1 else math.nan
    downside = math.sqrt(np.mean(np.minimum(returns, 0.0) ** 2))
    annual = math.sqrt(ppy)

    trough = int(np.argmin(drawdown))
    peak_time = trough_time = recovery_time = None
    if drawdown[trough] < 0:
        peak_value = peak[trough]
        at_peak = np.flatnonzero(values[:trough] == peak_value)
        peak_time = equity.index[at_peak[-1]] if len(at_peak) else None
        recovered = np.flatnonzero(values[trough:] >= peak_value)
        recovery_time = equity.index[trough + recovered[0]] if len(recovered) else None
        trough_time = equity.index[trough]

    closed = round_trips[round_trips["closed"].notna()]
    return Metrics(
        fill="next open" if fill == "open" else "close",
        start=equity.index[0], end=equity.index[-1], bars=len(values), periods_per_year=ppy,
        final_equity=float(values[-1]), total_return=float(growth - 1),
        cagr=float(growth ** (1 / years) - 1) if growth > 0 else -1.0,
        volatility=float(std * annual),
        sharpe=float(returns.mean() / std * annual) if std > 0 else math.nan,
        sortino=float(returns.mean() / downside * annual) if downside > 0 else math.nan,
        max_drawdown=float(drawdown[trough]), drawdown_peak=peak_time, drawdown_trough=trough_time,
        drawdown_recovery=recovery_time,
        trades=len(trades), round_trips=len(closed),
        win_rate=float((closed["pnl"] > 0).mean()) if len(closed) else math.nan,
        exposure=float((positions != 0).any(axis=1).mean()),
        turnover=float(trades["value"].sum() / equity.mean() / years),
        commissions=float(trades["commission"].sum()), min_cash=float(cash_curve.min()))
