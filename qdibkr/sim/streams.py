"""Subscriptions that stream as simulated time passes: real-time bars, tick-by-tick
data, market depth and P&L.

Each stream remembers what it last sent; the server calls ``update(now)`` on every
market pass and sends the messages it returns, so a client that subscribes to
none of these costs the market pass nothing. Every figure comes from the price
model or the broker, the same ones quotes, bars and fills come from.

A jump of simulated time (``SimGateway.advance``) sends at most the last
``CATCH_UP_SECONDS`` of bars and ticks: TWS's clock never jumps, and a day of
one-second ticks would flood the client.
"""

import math
import time
from collections.abc import Callable

from . import messages as msg
from .catalogue import Listing
from .market import PriceModel, Tops

CATCH_UP_SECONDS = 300
REAL_TIME_BAR_SECONDS = 5
PNL_INTERVAL = 1.0

# Exchanges that smart (consolidated) depth names as quoting each level: one per level.
US_DEPTH_EXCHANGES = ("NSDQ", "ARCA", "BATS", "EDGX", "IEX", "NYSE", "MEMX", "BYX", "EDGEA", "PEARL")


class RealTimeBars:
    """reqRealTimeBars: each 5-second bar once it is complete, the very bar that
    reqHistoricalData's "5 secs" bars show for that interval; like those, none
    outside the sessions (regular hours with ``use_rth``, else extended hours)."""

    def __init__(self, req_id: int, listing: Listing, what: str, use_rth: bool, model: PriceModel, now: float):
        self.req_id, self.listing, self.what, self.use_rth, self.model = req_id, listing, what, use_rth, model
        self.next_end = (math.floor(now / REAL_TIME_BAR_SECONDS) + 1) * REAL_TIME_BAR_SECONDS

    def update(self, now: float) -> list[list]:
        end = math.floor(now / REAL_TIME_BAR_SECONDS) * REAL_TIME_BAR_SECONDS
        if end < self.next_end:
            return []
        start = max(self.next_end - REAL_TIME_BAR_SECONDS, end - CATCH_UP_SECONDS)
        self.next_end = end + REAL_TIME_BAR_SECONDS
        bars = self.model.bars(self.listing, end, f"{end - start} S", "5 secs", self.use_rth, self.what)
        return [msg.real_time_bar(self.req_id, bar) for bar in bars]


class TickByTick:
    """reqTickByTickData: the top of book second by second, a tick whenever what the
    tick type shows changes. "Last" and "AllLast" report the quote's last trade
    (price and size, on the listing's primary exchange), "BidAsk" the bid and ask
    with their sizes (prices only with ``ignore_size``), "MidPoint" their middle.
    The current tick is sent on subscribing, as TWS does."""

    def __init__(self, req_id: int, listing: Listing, tick_type: int, ignore_size: bool, model: PriceModel,
                 now: float):
        self.req_id, self.listing, self.tick_type, self.ignore_size, self.model = (
            req_id, listing, tick_type, ignore_size, model)
        self.last_second = math.floor(now) - 1
        self.last_shown = None

    def update(self, now: float) -> list[list]:
        second = math.floor(now)
        if second <= self.last_second:
            return []
        tops = self.model.tops(self.listing, max(self.last_second + 1, second - CATCH_UP_SECONDS + 1), second)
        self.last_second = second
        out = []
        for i, t in enumerate(tops.time):
            shown, message = self.tick(tops, i, t)
            if shown != self.last_shown:
                self.last_shown = shown
                out.append(message)
        return out

    def tick(self, tops: Tops, i: int, t: int) -> tuple[tuple, list]:
        """What this tick type shows at second ``i`` of ``tops``, and its message."""
        if self.tick_type == msg.TICK_BY_TICK_TYPES["BidAsk"]:
            bid, ask, bid_size, ask_size = tops.bid[i], tops.ask[i], tops.bid_size[i], tops.ask_size[i]
            shown = (bid, ask) if self.ignore_size else (bid, ask, bid_size, ask_size)
            return shown, msg.tick_by_tick_bid_ask(self.req_id, t, bid, ask, bid_size, ask_size)
        if self.tick_type == msg.TICK_BY_TICK_TYPES["MidPoint"]:
            midpoint = round((tops.bid[i] + tops.ask[i]) / 2, 6)
            return (midpoint,), msg.tick_by_tick_midpoint(self.req_id, t, midpoint)
        price, size = tops.last[i], tops.last_size[i]
        return (price, size), msg.tick_by_tick_last(self.req_id, self.tick_type, t, price, size,
                                                   self.listing.primary_exchange)


class MarketDepth:
    """reqMktDepth: ``rows`` levels a side of the book the broker's orders sweep,
    inserted on subscribing and updated as they change. Smart depth (consolidated
    across exchanges) names the exchange quoting each level; exchange depth does not."""

    def __init__(self, req_id: int, listing: Listing, rows: int, smart: bool, model: PriceModel):
        self.req_id, self.listing, self.rows, self.smart, self.model = req_id, listing, rows, smart, model
        self.sent: dict[int, list[tuple[float, int]]] = {msg.ASK_SIDE: [], msg.BID_SIDE: []}

    def update(self, now: float) -> list[list]:
        out = []
        for side, name in ((msg.ASK_SIDE, "ASK"), (msg.BID_SIDE, "BID")):
            levels = list(self.model.book_side(self.listing, now, name, self.rows))
            sent = self.sent[side]
            for position, (price, size) in enumerate(levels):
                if position < len(sent) and sent[position] == (price, size):
                    continue
                operation = msg.UPDATE if position < len(sent) else msg.INSERT
                out.append(self.message(position, operation, side, price, size))
            self.sent[side] = levels
        return out

    def message(self, position: int, operation: int, side: int, price: float, size: int) -> list:
        if not self.smart:
            return msg.mkt_depth(self.req_id, position, operation, side, price, size)
        exchange = self.listing.primary_exchange if self.listing.currency == "HKD" else US_DEPTH_EXCHANGES[position]
        return msg.mkt_depth_l2(self.req_id, position, exchange, operation, side, price, size)


class PnL:
    """reqPnL and reqPnLSingle: the figures on subscribing, then whenever they have
    changed, at most once a second of wall time, as TWS sends them."""

    def __init__(self, figures: Callable[[], object], encode: Callable[[object], list]):
        self.figures, self.encode = figures, encode
        self.sent = None
        self.due = -math.inf

    def update(self, now: float) -> list[list]:
        wall = time.monotonic()
        if wall < self.due:
            return []
        figures = self.figures()
        if figures == self.sent:
            return []
        self.sent, self.due = figures, wall + PNL_INTERVAL
        return [self.encode(figures)]
