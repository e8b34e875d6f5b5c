"""IB's fixed-pricing commissions on US and Hong Kong stocks.

One function, used by both the simulated gateway (what a paper fill costs) and
the backtest (what a simulated fill costs), so that a backtest pays exactly what
the simulator charges for the same order.
"""


def commission(currency: str, quantity: float, value: float) -> float:
    """An order's total commission once ``quantity`` shares worth ``value`` have filled.

    US (USD): 0.005 per share, at least USD 1, at most 1% of the value.
    Hong Kong (HKD): 0.08% of the value, at least HKD 18. Rounded to the cent, by Python's
    ``round`` whatever number types come in (NumPy's rounds some half cents the other way).
    """
    quantity, value = float(quantity), float(value)
    if currency == "HKD":
        return round(max(18.0, 0.0008 * value), 2)
    return round(min(max(1.0, 0.005 * quantity), 0.01 * value), 2)
