"""Checks of what a user types for an order or a signal, each raising an ``InputError`` that names the
field and the fix. Pure: shared by every face (through ``ibkr.IBKR`` and ``signals.emit``)."""

import math

from .errors import InputError
from .model import Side

TIFS = ("DAY", "GTC")


def positive_price(value) -> bool:
    """A price TWS can take: a finite number above 0 (infinity reaches TWS as 'Infinite', a malformed
    order it refuses with error 320; True is no price even if Python counts it as 1)."""
    return not isinstance(value, bool) and isinstance(value, (int, float)) and 0 < value < math.inf


def side(value) -> Side:
    text = (value or "").strip().upper() if isinstance(value, str) else ""
    if text not in Side.__members__:
        raise InputError("side", f"{value!r} is not a side; use buy or sell")
    return Side(text)


def quantity(value) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0 \
            or not float(value).is_integer():
        raise InputError("quantity", f"{value!r} must be a positive whole number of shares")
    return int(value)


def limit_price(value, field: str = "limit") -> float | None:
    if value is not None and not positive_price(value):
        raise InputError(field, f"{value!r} must be a positive limit price (or None for a market order)")
    return None if value is None else float(value)


def tif(value) -> str:
    text = (value or "DAY").upper()
    if text not in TIFS:
        raise InputError("tif", f"{value!r} is not a time in force; use DAY or GTC")
    return text
