"""When each listing trades, on the simulated clock: the exchange's sessions, or always (an opt-in).

TWS accepts an order at any hour but places it at the exchange only inside its
session: until then it stays ``PreSubmitted`` and TWS warns (error 399) when it
will be placed. A market order trades in the regular session only; a limit
order with ``outsideRth`` set may also trade in the US pre-market (04:00-09:30
New York) and post-market (16:00-20:00). Hong Kong has no extended hours, and
its lunch break (12:00-13:00) is closed. Holidays and half days come from the
exchange calendars (``catalogue.session_table``).

A trading *window* is a stretch of time without a break: a US regular session,
a US extended day (04:00-20:00), or one half of a Hong Kong session. While a
listing is outside every window of its extended day its quotes stand still at
the last price (``market_time``), as TWS's do overnight.

``Sessions(always_open=True)`` is the old around-the-clock market, for offline
play at any hour: every order may trade at once and quotes never stand still.
DAY orders expire at the session's close in both modes.
"""

import datetime as dt
from functools import lru_cache
from zoneinfo import ZoneInfo

import numpy as np

from .catalogue import CATALOGUE, Listing, session_table, time_zone_id

# TWS's 399 warning, as a live paper IB Gateway (server version 225) sent it for a DAY limit order
# placed at 16:45 New York, after openOrder and orderStatus PreSubmitted:
# "Order Message:\nBUY 1 AAPL NASDAQ.NMS\nWarning: Your order will not be placed at the exchange until
# 2026-08-25 09:30:00 US/Eastern." (github.com/ThomasMarcelis/ibkr-go,
# testdata/transcripts/api_conditions_matrix_aapl.txt). TWS names the time in its own zone ids, as in
# contract details ("US/Eastern"; no Hong Kong capture was found: "Hongkong", its contract details' id).
# The venue as TWS prints it in an order message ("BUY 33 AAPL NASDAQ.NMS", "BUY 65 SPY ARCA").
TWS_VENUES = {"NASDAQ": "NASDAQ.NMS"}
ORDER_MESSAGE = 399
US_CALENDAR = "XNYS"


@lru_cache(maxsize=None)
def windows(calendar: str, extended: bool) -> tuple[np.ndarray, np.ndarray]:
    """Sorted (starts, ends) of every trading window of a calendar, epoch seconds: regular
    sessions split at the lunch break, or with ``extended`` the whole extended day where the
    exchange has one (elsewhere extended hours are the regular ones)."""
    table = session_table(calendar)
    if extended and not np.array_equal(table.ext_open, table.open):
        return table.ext_open, table.ext_close
    has_break = ~np.isnan(table.break_start)
    starts = np.concatenate([table.open, table.break_end[has_break]])
    ends = np.concatenate([np.where(has_break, table.break_start, table.close), table.close[has_break]])
    order = np.argsort(starts)
    starts, ends = starts[order], ends[order]
    starts.setflags(write=False)
    ends.setflags(write=False)
    return starts, ends


def _window(listing: Listing, t: float, extended: bool) -> tuple[int, np.ndarray, np.ndarray]:
    """Index of the last window that started at or before ``t`` (-1 if none), and the windows."""
    starts, ends = windows(listing.calendar, extended)
    return int(np.searchsorted(starts, t, side="right")) - 1, starts, ends


def extended_hours(order_type: str, outside_rth: bool) -> bool:
    """Whether an order may trade outside regular hours: one with outsideRth set that trades at a
    limit (a limit, or a stop or trailing stop that elects one), as IB allows in the US pre- and
    post-market (TWS ignores the flag on market orders, which wait for the regular session)."""
    return outside_rth and order_type in ("LMT", "STP LMT", "TRAIL LIMIT")


class Sessions:
    """The trading hours the simulated broker and market data obey."""

    def __init__(self, always_open: bool = False):
        self.always_open = always_open

    def may_trade(self, listing: Listing, t: float, extended: bool = False) -> bool:
        """Whether an order (with ``extended``: one that may trade outside regular hours) trades at ``t``."""
        if self.always_open:
            return True
        i, _, ends = _window(listing, t, extended)
        return i >= 0 and t < ends[i]

    def next_open(self, listing: Listing, t: float, extended: bool = False) -> float | None:
        """When such an order may next trade: ``t`` itself when it may now, None past the calendars' end."""
        if self.may_trade(listing, t, extended):
            return t
        i, starts, _ = _window(listing, t, extended)
        return float(starts[i + 1]) if i + 1 < len(starts) else None

    def window_start(self, listing: Listing, t: float, extended: bool = False) -> float:
        """When the trading window that holds ``t`` opened (``t`` itself outside any, or always open):
        a resting limit is checked against the price path from there, never across a closed market."""
        if self.always_open:
            return -np.inf
        i, starts, ends = _window(listing, t, extended)
        return float(starts[i]) if i >= 0 and t < ends[i] else t

    def market_time(self, listing: Listing, t: float) -> float:
        """The instant whose prices a quote shows at ``t``: ``t`` while the listing trades (in its
        extended hours too), else the end of its last window: quotes stand still while closed."""
        if self.always_open:
            return t
        i, _, ends = _window(listing, t, extended=True)
        return t if i < 0 else min(t, float(ends[i]))

    def describe(self, now: float) -> str:
        """The mode and each exchange's state at ``now``, for ``qdibkr sim`` to print: which is
        open, and when each closed one opens next (regular hours)."""
        clock = dt.datetime.fromtimestamp(now, dt.timezone.utc).strftime("%a %Y-%m-%d %H:%M:%S UTC")
        if self.always_open:
            return (f"simulated clock {clock}; always open (--always-open): orders trade at any hour (a runner "
                    f"still holds signals outside the exchanges' hours unless its [risk] outside_hours = \"send\")")
        one_per_calendar = {}
        for listing in CATALOGUE:
            one_per_calendar.setdefault(listing.calendar, listing)
        states = []
        for listing in one_per_calendar.values():
            name = f"{listing.calendar} ({listing.currency})"
            opens = self.next_open(listing, now)
            if opens == now:
                states.append(f"{name} open")
            elif opens is not None:
                local = dt.datetime.fromtimestamp(opens, ZoneInfo(listing.time_zone))
                states.append(f"{name} closed, opens {local:%a %Y-%m-%d %H:%M} {listing.time_zone}")
        hint = "" if all(state.endswith(" open") for state in states) else " (--always-open trades at any hour)"
        return f"simulated clock {clock}; trading sessions as the exchanges': " + "; ".join(states) + hint

    @staticmethod
    def day_close(listing: Listing, t: float, extended: bool = False) -> float:
        """When a DAY order placed at ``t`` expires: the close of the session under way, or of the
        next one when placed after the close (the end of the post-market with ``extended``)."""
        table = session_table(listing.calendar)
        closes = table.ext_close if extended else table.close
        return float(closes[int(np.searchsorted(closes, t, side="right"))])

    @staticmethod
    def deferral_warning(listing: Listing, action: str, quantity: int, opens: float) -> str:
        """TWS's error 399 text for an order it accepts but holds until its session opens (see
        ORDER_MESSAGE above for the capture; older TWS wrote "your" in lower case)."""
        zone = listing.time_zone
        when = dt.datetime.fromtimestamp(opens, ZoneInfo(zone)).strftime("%Y-%m-%d %H:%M:%S")
        venue = TWS_VENUES.get(listing.primary_exchange, listing.primary_exchange)
        return (f"Order Message:\n{action} {quantity} {listing.symbol} {venue}\n"
                f"Warning: Your order will not be placed at the exchange until {when} {time_zone_id(listing)}.")


def us_session_start(now: float) -> float:
    """Where to start a simulated clock so the US market is open: ``now`` in its regular session,
    else 30 minutes after the last session opened (sooner before an early close). The demo and the
    notebooks start there, so that they trade on any day and at any hour, and say so."""
    listing = next(listing for listing in CATALOGUE if listing.calendar == US_CALENDAR)
    sessions = Sessions()
    if sessions.may_trade(listing, now):
        return now
    table = session_table(US_CALENDAR)
    last = int(np.searchsorted(table.open, now, side="right")) - 1
    opened, closes = float(table.open[last]), float(table.close[last])
    return min(opened + 30 * 60, (opened + closes) / 2)


def describe_start(start: float, now: float) -> str:
    """Says where a clock started by ``us_session_start`` stands, for the user to read."""
    local = dt.datetime.fromtimestamp(start, ZoneInfo("America/New_York"))
    if start == now:
        return f"the US market is open now ({local:%a %Y-%m-%d %H:%M} New York): the simulated clock runs from now"
    return (f"the US market is closed now: the simulated clock starts inside its last session, "
            f"at {local:%a %Y-%m-%d %H:%M} New York, and runs on from there")
