"""What a direct order asks for beyond its symbol, side and size: its type, prices, algo and time in
force, described once (``Terms``) and checked once, so the Python API, the CLI and the HTTP API send the
same thing and refuse the same mistakes in the same words. Pure: the gate checks what needs TWS (the
listing's order types, TWS's clock for a GTD), the broker translates ``Terms`` into ib_insync's Order.

The types are TWS's own codes (``STP LMT``...), so the broker sends them as they are; a listing's
contract details name them a little differently (``STPLMT``), which ``listing_codes`` maps.
"""

import datetime as dt
import math
from dataclasses import dataclass
from enum import StrEnum
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from .errors import InputError
from .validate import positive_price


class OrderType(StrEnum):
    MARKET = "MKT"
    LIMIT = "LMT"
    STOP = "STP"
    STOP_LIMIT = "STP LMT"
    TRAIL = "TRAIL"
    TRAIL_LIMIT = "TRAIL LIMIT"
    MOC = "MOC"  # market on close
    LOC = "LOC"  # limit on close


LIMITED = (OrderType.LIMIT, OrderType.STOP_LIMIT, OrderType.LOC)  # types with a limit price of their own
STOPS = (OrderType.STOP, OrderType.STOP_LIMIT)
TRAILS = (OrderType.TRAIL, OrderType.TRAIL_LIMIT)
ON_CLOSE = (OrderType.MOC, OrderType.LOC)
ADAPTIVE_PRIORITIES = ("patient", "normal", "urgent")
TIFS = ("DAY", "GTC", "GTD")
GOOD_TILL_FORM = "YYYYMMDD HH:MM:SS Zone, e.g. \"20261231 16:00:00 US/Eastern\""
# How a contract's orderTypes list names a type, where it differs from the type's code.
LISTING_NAMES = {OrderType.STOP_LIMIT: "STPLMT", OrderType.TRAIL_LIMIT: "TRAILLMT"}


def listing_name(kind: OrderType) -> str:
    """How a contract's orderTypes list names an order type (STPLMT for STP LMT)."""
    return LISTING_NAMES.get(kind, str(kind))


@dataclass(frozen=True)
class Terms:
    """An order's type and everything that goes with it; checked when made, so one that exists is one
    TWS can take as far as qdibkr can tell without TWS. Field names are the Python API's keywords
    (the HTTP API and the CLI rename them for their users)."""

    type: OrderType = OrderType.MARKET
    limit: float | None = None
    stop: float | None = None  # a stop's trigger; a trailing stop's first stop price, if given
    trail_amount: float | None = None  # a trailing stop's distance from the best price, in money...
    trail_percent: float | None = None  # ...or in percent of it
    limit_offset: float | None = None  # a trailing limit's limit, this far beyond its stop
    adaptive: str | None = None  # IB's Adaptive algo at this priority
    outside_rth: bool = False
    tif: str = "DAY"
    good_till: str | None = None  # a GTD order's end, as TWS reads it

    def __post_init__(self):
        kind = self.type
        _price(self.limit, "limit", needed=kind in LIMITED, kind=kind)
        _price(self.stop, "stop", needed=kind in STOPS, kind=kind, allowed=kind in STOPS + TRAILS)
        self._check_trail()
        if self.limit_offset is not None and kind != OrderType.TRAIL_LIMIT:
            raise InputError("limit_offset", f"only a trailing limit order takes a limit offset, not {kind}")
        if kind == OrderType.TRAIL_LIMIT and not _non_negative(self.limit_offset):
            raise InputError("limit_offset", f"{self.limit_offset!r}: a trailing limit order needs a limit offset "
                                             f">= 0 (how far its limit lies beyond its stop)")
        if self.adaptive is not None:
            if self.adaptive not in ADAPTIVE_PRIORITIES:
                raise InputError("adaptive", f"{self.adaptive!r} is not a priority; use "
                                             f"{', '.join(ADAPTIVE_PRIORITIES)}")
            if kind not in (OrderType.MARKET, OrderType.LIMIT):
                raise InputError("adaptive", f"the Adaptive algo works on market and limit orders, not {kind}")
        if not isinstance(self.outside_rth, bool):
            raise InputError("outside_rth", f"{self.outside_rth!r} must be true or false")
        if self.outside_rth and kind not in (OrderType.LIMIT, OrderType.STOP_LIMIT):
            raise InputError("outside_rth", f"only a limit or stop-limit order may trade outside regular hours, "
                                            f"not {kind}")
        self._check_tif()

    def _check_trail(self):
        amount, percent = self.trail_amount, self.trail_percent
        if self.type not in TRAILS:
            if amount is not None or percent is not None:
                raise InputError("trail_amount" if amount is not None else "trail_percent",
                                 f"only a trailing stop takes a trail, not {self.type}")
            return
        if (amount is None) == (percent is None):
            raise InputError("trail_amount", "a trailing stop needs exactly one of a trail amount or a trail "
                                             "percent")
        if amount is not None and not positive_price(amount):
            raise InputError("trail_amount", f"{amount!r} must be a positive amount of money")
        if percent is not None and not (positive_price(percent) and percent < 100):
            raise InputError("trail_percent", f"{percent!r} must be a percentage above 0 and below 100")

    def _check_tif(self):
        if self.tif not in TIFS:
            raise InputError("tif", f"{self.tif!r} is not a time in force; use {', '.join(TIFS)}")
        if self.type in ON_CLOSE and self.tif != "DAY":
            raise InputError("tif", f"a {self.type} order is good for the day only; use DAY")
        if self.tif == "GTD":
            good_till_instant(self.good_till)
        elif self.good_till is not None:
            raise InputError("good_till", "only a GTD order takes a good-till time; use tif GTD")

    @property
    def listing_codes(self) -> tuple[str, ...]:
        """What a contract's orderTypes list must name for a listing to take this order."""
        return (listing_name(self.type),) + (("ALGO",) if self.adaptive else ())

    @property
    def reference_price(self) -> float | None:
        """The price an order's notional is measured at, where the order names one: its limit, else its
        stop (a stop trades near it once elected). Kept simple: a trailing stop without a first stop
        price, a market order and a MOC are measured at the quote."""
        return self.limit if self.limit is not None else self.stop


def good_till_instant(text) -> float:
    """POSIX seconds of a GTD order's end, written as TWS reads it: YYYYMMDD HH:MM:SS Zone."""
    parts = text.split() if isinstance(text, str) else []
    try:
        if len(parts) != 3:
            raise ValueError
        moment = dt.datetime.strptime(" ".join(parts[:2]), "%Y%m%d %H:%M:%S")
        return moment.replace(tzinfo=ZoneInfo(parts[2])).timestamp()
    except (ValueError, ZoneInfoNotFoundError):
        raise InputError("good_till", f"{text!r}: a GTD order needs its end as {GOOD_TILL_FORM}") from None


def terms(order_type: str | None = None, *, limit: float | None = None, stop: float | None = None,
          trail_amount: float | None = None, trail_percent: float | None = None,
          limit_offset: float | None = None, at_close: bool = False, adaptive: str | None = None,
          tif: str = "DAY", **rest) -> Terms:
    """The terms of an order; without ``order_type``, the type its prices imply: a trail makes a
    trailing stop (a trailing limit with ``limit_offset``), a stop a stop (a stop-limit with ``limit``),
    ``at_close`` a MOC (a LOC with ``limit``), ``limit`` alone a limit order, nothing a market order."""
    if order_type is None:
        trailing = trail_amount is not None or trail_percent is not None
        kind = (OrderType.TRAIL_LIMIT if limit_offset is not None else OrderType.TRAIL) if trailing \
            else (OrderType.LOC if limit is not None else OrderType.MOC) if at_close \
            else (OrderType.STOP_LIMIT if limit is not None else OrderType.STOP) if stop is not None \
            else OrderType.LIMIT if limit is not None else OrderType.MARKET
    elif order_type in OrderType.__members__.values():
        kind = OrderType(order_type)
    else:
        raise InputError("order_type", f"{order_type!r} is not an order type; use one of {', '.join(OrderType)}")
    return Terms(kind, limit=limit, stop=stop, trail_amount=trail_amount, trail_percent=trail_percent,
                 limit_offset=limit_offset, adaptive=adaptive.lower() if isinstance(adaptive, str) else adaptive,
                 tif=tif.upper() if isinstance(tif, str) else tif, **rest)


def _price(value, field: str, *, needed: bool, kind: OrderType, allowed: bool | None = None):
    if value is None:
        if needed:
            raise InputError(field, f"a {kind} order needs a {field} price")
    elif not (needed if allowed is None else allowed):
        raise InputError(field, f"a {kind} order takes no {field} price")
    elif not positive_price(value):
        raise InputError(field, f"{value!r} must be a positive {field} price")


def _non_negative(value) -> bool:
    return not isinstance(value, bool) and isinstance(value, (int, float)) and 0 <= value < math.inf
