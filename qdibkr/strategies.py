"""Strategies, and the orders they imply: the code a backtest tests is the code that trades.

A strategy is a plain function of bar data for many symbols at once::

    strategy(close: DataFrame, **params) -> DataFrame of target units

``close`` has a row per bar (exchange-local times, oldest first) and a column
per symbol, NaN where a symbol has no bar. The answer has the same shape: how
many *units* of each symbol to hold once that bar has closed, a whole number
0, 1, 2, ... (long only; NaN means unchanged).

Sizing: one unit is ``notional`` worth of shares at the close, rounded down to
whole board lots, fixed when a position opens: at the first bar of a stretch of
targets above 0 at which a unit buys at least one lot (until then, as when a
unit is too dear, nothing is held). Adds and reductions trade whole units of
that size, so a position is always its units times its unit size.

``orders`` turns the shares to hold into the four signal types the runner
executes: 0 -> n shares ``open_long`` (BUY), n -> more ``add_long`` (BUY),
n -> fewer ``reduce_long`` (SELL), n -> 0 ``close_long`` (SELL). They depend
only on the bars, never on what happened to be filled, so the backtest
(``qdibkr.backtest``) and a live notebook that recomputes the orders on fresh
bars and emits the last bar's (``qdibkr.emit``) agree.
"""

import numpy as np
import pandas as pd

from .errors import InputError
from .model import SignalType

ORDER_COLUMNS = ["time", "symbol", "signal", "side", "quantity", "price", "units"]


def sma_crossover(close: pd.DataFrame, fast: int = 20, slow: int = 50) -> pd.DataFrame:
    """Long one unit while the ``fast``-bar simple moving average of the close is above the
    ``slow``-bar one, flat otherwise (and until both averages exist). Averages run over each
    symbol's own bars, so a gap in one symbol does not disturb the others."""
    if not 0 < fast < slow:
        raise InputError("fast", f"the fast average ({fast}) must be shorter than the slow one ({slow}), both positive")

    def one(prices: pd.Series) -> pd.Series:
        prices = prices.dropna()
        above = prices.rolling(fast).mean() > prices.rolling(slow).mean()
        return above.astype(float)

    return close.apply(one).reindex(close.index)


def target_units(targets: pd.DataFrame, close: pd.DataFrame) -> pd.DataFrame:
    """A strategy's targets checked and aligned to ``close``: whole units >= 0, held (carried
    forward) through bars where a symbol has no price, 0 before its first target."""
    units = targets.reindex(index=close.index, columns=close.columns).where(close.notna())
    if (units < 0).any().any():
        raise InputError("targets", "a target below 0 units means short selling, which is not supported")
    if (units % 1 > 0).any().any():
        raise InputError("targets", "targets must be whole units (0, 1, 2, ...)")
    return units.ffill().fillna(0.0)


def target_shares(units: pd.DataFrame, close: pd.DataFrame, notional: float,
                  lots: dict[str, int] | None = None) -> pd.DataFrame:
    """Shares to hold after each bar: units times the unit size fixed when the position opened
    (see the module's notes on sizing)."""
    lot = pd.Series(lots or {}, dtype=float).reindex(close.columns).fillna(1.0)
    per_unit = np.floor(notional / (close * lot)) * lot  # one unit's shares at each close
    long = units > 0
    sized = long & (per_unit > 0)
    # Bars so far within each stretch of long targets at which a unit buys a lot: the first fixes the size.
    seen = sized.cumsum()
    stretch_start = long & ~long.shift(fill_value=False)
    in_stretch = seen - (seen - sized).where(stretch_start).ffill()
    unit_size = per_unit.where(sized & (in_stretch == 1)).ffill()
    return (units * unit_size).where(in_stretch >= 1, 0.0)


def orders(targets: pd.DataFrame, close: pd.DataFrame, *, notional: float,
           lots: dict[str, int] | None = None) -> pd.DataFrame:
    """The orders a strategy's targets imply, one row per (bar, symbol) where the shares to hold
    change: time (the bar that decided), symbol, signal, side, quantity (shares), price (the
    close that sized it) and units (the target after it)."""
    units = target_units(targets, close)
    shares = target_shares(units, close, notional, lots).to_numpy()
    change = np.diff(shares, axis=0, prepend=0.0)
    rows, cols = np.nonzero(change)
    after = shares[rows, cols]
    before = after - change[rows, cols]
    signal = np.select([before == 0, after == 0, after > before], ["open_long", "close_long", "add_long"],
                       "reduce_long")
    return pd.DataFrame({
        "time": close.index[rows],
        "symbol": close.columns[cols],
        "signal": signal,
        "side": [SignalType(s).side.value for s in signal],
        "quantity": np.abs(change[rows, cols]),
        "price": close.to_numpy()[rows, cols],
        "units": units.to_numpy()[rows, cols],
    }, columns=ORDER_COLUMNS)
