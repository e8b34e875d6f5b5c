"""The simulated broker: accounts, orders, fills, positions and commissions.

Pure bookkeeping with no sockets. The server asks it to place, modify, cancel
and match orders; each call returns the events that happened, in the order TWS
reports them, and the server turns those events into protocol messages for the
clients concerned. Its state is plain data (``state``, and the ``changes`` each
call made) that state.py keeps on disk, so that a restarted simulator remembers
its accounts, positions, orders and executions.

Rules, chosen to match IB paper trading closely enough to catch real mistakes:
- Cash account per currency: a buy needs enough cash in the stock's currency,
  counting what open buy orders already reserve; there is no margin and no
  currency conversion.
- Long only: a sell may not exceed the position less what open sells reserve.
- HK quantities must be whole board lots.
- A limit price more than 10% through the market (a buy above or a sell below
  it) is refused, as TWS's precautionary price check does.
- Market orders sweep the book that market depth shows (``PriceModel.book_side``):
  the displayed size at the best price, then each next price on the ladder with
  its own size, for at most ``SWEEP_LEVELS`` levels per pass; what is left fills
  on later passes. Marketable limit orders do the same up to their limit. A
  resting limit fills at its limit price, up to the displayed size per pass,
  once the price path has crossed it.
- Commissions follow IB's fixed pricing plus the fees IB passes on (US: SEC fee
  and FINRA TAF on sales; HK: stamp duty and levies), as ``qdibkr.commissions``
  works them out on the order's cumulative size and value: each fill is charged
  the order's new total less what its earlier fills paid.
- Average cost includes commissions; realised P&L is net of them (as IB does).
- Order states as TWS reports them: an accepted order is PreSubmitted, then
  Submitted once it works at the exchange (a market order that fills at once
  goes straight to Filled); one refused with error 201 stays, Inactive.
- Orders trade in their listing's session only (``sessions.Sessions``): one
  placed while the market is closed is accepted and stays ``PreSubmitted``, with
  TWS's warning 399 saying when it will be placed, until the session opens; it
  is then ``Submitted`` and trades. Limit orders with ``outsideRth`` may trade
  in the US pre- and post-market. A resting limit is never filled by the price
  path of a closed market.
- DAY orders still open at the session's close (the post-market's end for an
  ``outsideRth`` limit) are cancelled; one placed after the close is good for
  the next session.
- Stop orders are simulated by IB and held, PreSubmitted, until elected (IB's order status
  reference: PreSubmitted is a simulated order type accepted and held until its election criteria
  are met, as https://docs.rs/ibapi/3.0.1/ibapi/orders/enum.OrderStatusKind.html restates it). They
  trigger on the last price, the default trigger method for US and HK stocks
  (https://interactivebrokers.github.io/tws-api/trigger_method_limit.html), here the model's mid
  path: a sell stop when it trades at or below the stop, a buy stop at or above. An elected STP or
  TRAIL is a market order and fills at the book then (a gap through the stop fills at the first
  price there, not at the stop); an elected STP LMT or TRAIL LIMIT is a limit order. A trailing
  stop ratchets with the best price seen (by auxPrice, or trailingPercent of the price) and reports
  it as trailStopPrice.
- MOC and LOC orders fill whole at the closing price when their session closes (a LOC only if
  that price is at or better than its limit; otherwise it is cancelled).
- The Adaptive algo (MKT and LMT only) works as its base order after a short delay that its
  adaptivePriority sets (ADAPTIVE_DELAYS).
- One-cancels-all groups: once one member fills, ocaType 1 cancels the others and ocaTypes 2
  and 3 reduce them by the shares filled (cancelled when nothing is left); cancelling one member
  cancels the group. The cancelled ones get orderStatus Cancelled and error 202, as a cancel does.
- Attached orders (parentId): an order with transmit=False is kept but not transmitted, and
  nothing is reported of it (ib_insync issues 346, 416), until an order of its family arrives
  with transmit=True; then all go out. A child waits, PreSubmitted, until its parent fills, then
  works for the shares the parent has filled; the children of a parent share an OCA group (named
  by the parent's permId: TWS renames it to a number, ib_insync issue 606) that reduces the others
  as one fills. Cancelling a parent that has not filled cancels its children. An order type the
  listing's orderTypes lack is refused with error 387.
- P&L as TWS's portfolio window (reqPnL, reqPnLSingle) reports it: unrealised
  since the position was opened, realised today, and daily P&L since the
  previous session's close (the quote's ``close``): positions held then count
  from that close, today's fills from their prices, commissions included.
"""

import datetime as dt
from dataclasses import asdict, dataclass, field, replace
from zoneinfo import ZoneInfo

from ..commissions import commission
from ..symbols import SIMULATOR_TAG
from . import catalogue
from .catalogue import Listing
from .market import PriceModel
from .sessions import ORDER_MESSAGE, Sessions, extended_hours

SWEEP_LEVELS = 10
PRICE_BAND = 0.10
USD_PER_HKD = 1 / 7.8
STOP_TYPES = ("STP", "STP LMT", "TRAIL", "TRAIL LIMIT")
ON_CLOSE_TYPES = ("MOC", "LOC")
# The order types served, each with its name in a contract's orderTypes list (contract details), which
# names what the listing takes
CONTRACT_ORDER_TYPES = {"MKT": "MKT", "LMT": "LMT", "STP": "STP", "STP LMT": "STPLMT", "TRAIL": "TRAIL",
                        "TRAIL LIMIT": "TRAILLMT", "MOC": "MOC", "LOC": "LOC"}
ORDER_TYPES = tuple(CONTRACT_ORDER_TYPES)
LIMITED_TYPES = ("LMT", "STP LMT", "LOC")  # types whose lmtPrice the client sets
TIME_IN_FORCE = ("DAY", "GTC", "GTD")
# Seconds the Adaptive algo takes before it works as its base order, by adaptivePriority: the
# simulator's stand-in for IB's patient working of the order.
ADAPTIVE_DELAYS = {"Urgent": 1.0, "Normal": 5.0, "Patient": 15.0}
BRACKET_OCA_TYPE = 3  # a bracket's children reduce one another as one fills
OPEN_STATUSES = ("PreSubmitted", "Submitted")
STATE_VERSION = 1


@dataclass
class OrderRequest:
    """What a client's placeOrder asks for, already read off the wire."""

    action: str
    quantity: float
    order_type: str
    limit_price: float | None
    tif: str
    account: str
    order_ref: str
    outside_rth: bool = False
    e_trade_only: bool = False  # ibapi 9.81 sets both by default; TWS refuses either (10268, 10269)
    firm_quote_only: bool = False
    aux_price: float | None = None  # the stop price, or a trailing stop's amount
    trail_stop_price: float | None = None
    trailing_percent: float | None = None
    lmt_price_offset: float | None = None  # a trailing limit's distance from its stop
    oca_group: str = ""
    oca_type: int = 0
    parent_id: int = 0
    transmit: bool = True
    algo_strategy: str = ""
    algo_params: dict = field(default_factory=dict)
    good_till_date: str = ""  # as the client wrote it, echoed back
    good_till: float | None = None  # the same instant, read by the server


@dataclass
class Order:
    client_id: int
    order_id: int
    perm_id: int
    account: str
    con_id: int
    action: str
    quantity: int
    order_type: str
    limit_price: float | None
    tif: str
    order_ref: str
    outside_rth: bool
    placed_at: float
    expires_at: float | None = None
    status: str = "PreSubmitted"  # accepted by TWS; Submitted once working at the exchange
    filled: int = 0
    avg_fill_price: float = 0.0
    last_fill_price: float = 0.0
    commission: float = 0.0
    completed_at: float | None = None
    completed_status: str = ""
    crossed_at: float = 0.0  # the path has been checked against the limit up to here
    aux_price: float | None = None
    trail_stop_price: float | None = None
    trailing_percent: float | None = None
    lmt_price_offset: float | None = None
    oca_group: str = ""
    oca_type: int = 0
    parent_id: int = 0
    transmitted: bool = True  # False: TWS keeps it, untransmitted, until its family is transmitted
    triggered: bool = False  # a stop that has been elected
    algo_strategy: str = ""
    algo_params: dict = field(default_factory=dict)
    good_till_date: str = ""
    active_from: float = 0.0  # an Adaptive order works as its base type from here
    full_quantity: int = 0  # a child's own size; it works for what its parent has filled, up to it

    @property
    def remaining(self) -> int:
        return self.quantity - self.filled

    @property
    def is_open(self) -> bool:
        return self.status in OPEN_STATUSES

    @property
    def listing(self) -> Listing:
        return catalogue.by_con_id(self.con_id)

    @property
    def extended(self) -> bool:
        """Whether it may trade outside regular hours (a limit order with outsideRth)."""
        return extended_hours(self.order_type, self.outside_rth)


@dataclass
class Execution:
    exec_id: str
    client_id: int
    order_id: int
    perm_id: int
    account: str
    con_id: int
    side: str  # BOT or SLD, as IB spells it
    shares: int
    price: float
    time: float
    cum_qty: int
    avg_price: float
    order_ref: str
    commission: float
    commission_currency: str
    realized_pnl: float | None  # None for a fill that opens or adds


@dataclass
class Position:
    account: str
    con_id: int
    quantity: int = 0
    avg_cost: float = 0.0
    realized_pnl: float = 0.0


@dataclass
class Account:
    account_id: str
    cash: dict[str, float]
    realized_pnl: dict[str, float] = field(default_factory=dict)


# Events, in the order the server must report them. Each holds a copy of the
# order as it was at that moment: one matching pass may fill an order several times.
@dataclass(frozen=True)
class OrderChanged:
    order: Order


@dataclass(frozen=True)
class Filled:
    order: Order
    execution: Execution


@dataclass(frozen=True)
class OrderWarning:
    """A warning TWS sends about an order it accepted (an error message on the order's id)."""

    order: Order
    code: int
    text: str


@dataclass(frozen=True)
class PositionChanged:
    account: str
    con_id: int


@dataclass(frozen=True)
class PnL:
    """A position's (or an account's) profit and loss, as reqPnLSingle reports it."""

    position: int
    daily: float
    unrealized: float
    realized: float  # today's
    value: float  # market value


class Rejection(Exception):
    """An order TWS would refuse; ``code`` and ``text`` are what the client is told.

    ``order`` is set when TWS took the order in before refusing it (error 201): it
    then exists, Inactive, and TWS reports it after the error (openOrder and
    orderStatus, as in https://github.com/erdewit/ib_insync/issues/554)."""

    def __init__(self, code: int, text: str):
        super().__init__(text)
        self.code = code
        self.text = text
        self.order: "Order | None" = None


def reject(reason: str) -> Rejection:
    return Rejection(201, f"Order rejected - reason:{reason}")


# Refusals that TWS words itself, with no order left behind: codes and texts as in
# https://interactivebrokers.github.io/tws-api/message_codes.html
OFF_TICK = (110, "The price does not conform to the minimum price variation for this contract.")
UNSUPPORTED_TYPE = (387, "Unsupported order type for this exchange and security type.")
# An order its OCA group cancelled is reported as a cancel is (orderStatus Cancelled, error 202).
OCA_CANCELLED = (202, "Order Canceled - reason:")
E_TRADE_ONLY = (10268, "The 'EtradeOnly' order attribute is not supported.")
FIRM_QUOTE_ONLY = (10269, "The 'firmQuoteOnly' order attribute is not supported.")


def commission_due(listing: Listing, side: str, quantity: int, value: float, now: float) -> float:
    """An order's total commission and fees once ``quantity`` shares worth ``value`` have filled, at ``now``
    (the rates in force on that day in the exchange's zone): what IB's commission reports add up to."""
    day = dt.datetime.fromtimestamp(now, ZoneInfo(listing.time_zone)).date()
    return commission(listing.currency, side, quantity, value, day)


def to_usd(amount: float, currency: str) -> float:
    return amount * USD_PER_HKD if currency == "HKD" else amount


class Broker:
    def __init__(self, accounts: list[str], model: PriceModel, clock, cash=None, sessions: Sessions | None = None):
        self.model = model
        self.clock = clock
        self.sessions = sessions or Sessions()
        cash = cash or {"USD": 1_000_000.0, "HKD": 1_000_000.0}
        self.accounts = {a: Account(a, dict(cash)) for a in accounts}
        self.orders: dict[tuple[int, int], Order] = {}
        self.positions: dict[tuple[str, int], Position] = {}
        self.executions: list[Execution] = []
        self.next_order_id = 1
        self.next_perm_id = 1_000_000_001
        self.dirty = False
        self._quotes = {}

    # ------------------------------------------------------------ queries
    def position(self, account: str, con_id: int) -> Position:
        """The account's position in the contract, zero if it never held one. Reading creates
        no row: a refused sale of a stock never held must leave no position-0 row in the portfolio."""
        return self.positions.get((account, con_id)) or Position(account, con_id)

    def held_positions(self, account: str | None = None) -> list[Position]:
        """Positions ever held: a row appears with the first fill, and a closed one stays, at
        zero, as TWS keeps reporting it."""
        return [p for p in self.positions.values() if account in (None, p.account)]

    def open_orders(self) -> list[Order]:
        """Open orders that have been transmitted: untransmitted ones are TWS's alone until then."""
        return [o for o in self.orders.values() if o.is_open and o.transmitted]

    def completed_orders(self) -> list[Order]:
        return [o for o in self.orders.values() if not o.is_open]

    def resolve_account(self, requested: str) -> str:
        if requested:
            if requested not in self.accounts:
                raise reject(f"account {requested} is not one of this login's accounts ({', '.join(self.accounts)})")
            return requested
        if len(self.accounts) > 1:
            raise Rejection(436, "You must specify an allocation (either a single account, group, or profile).")
        return next(iter(self.accounts))

    def quote(self, listing: Listing, t: float):
        """The model's quote, remembered for the instant: one order asks for it several times.
        While the listing's market is closed it stands still at the session's last prices."""
        t = self.sessions.market_time(listing, t)
        key = (listing.con_id, t)
        if key not in self._quotes:
            if len(self._quotes) > 256:
                self._quotes.clear()
            self._quotes[key] = self.model.quote(listing, t)
        return self._quotes[key]

    def mark_price(self, listing: Listing, t: float | None = None) -> float:
        t = self.sessions.market_time(listing, self.clock.now() if t is None else t)
        return catalogue.round_to_tick(listing, self.model.mid(listing, t))

    # ------------------------------------------------------------ orders
    def place(self, client_id: int, order_id: int, listing: Listing, request: OrderRequest) -> list:
        """A new order, or a modification when this client's order id is still open. One with
        transmit=False is kept and reported to no one until its family is transmitted."""
        existing = self.orders.get((client_id, order_id))
        if existing and not existing.is_open:
            raise (Rejection(104, "Can't modify a filled order.") if existing.status == "Filled"
                   else Rejection(103, "Duplicate order ID."))  # TWS's texts, message_codes.html
        account = self.resolve_account(request.account or (existing.account if existing else ""))
        now = self.clock.now()
        try:
            quantity = self._validate(client_id, listing, request, account, existing, now)
        except Rejection as r:
            if r.code == 201 and existing is None:  # taken in, then refused: it exists, Inactive
                order = self._new_order(client_id, order_id, listing, request, account, request.quantity, now)
                self._finish(order, "Inactive", "Rejected")
                r.order = replace(order)
            raise
        if existing:
            order = existing
            self._set_terms(order, listing, request, quantity, now)
        else:
            order = self._new_order(client_id, order_id, listing, request, account, quantity, now)
        self.dirty = True
        if not request.transmit and not (existing and existing.transmitted):
            # Kept by TWS and reported to no one: ib_insync's trade stays PendingSubmit, and a client
            # that reconnects is not told of it (ib_insync issues 346 and 416). A transmitted order
            # modified with transmit=False is simply modified.
            order.transmitted = False
            return [OrderChanged(replace(order))]
        events = []
        for member in self._untransmitted_family(order):
            member.transmitted = True
            events += self._begin(member, now)
        return events

    def _new_order(self, client_id: int, order_id: int, listing: Listing, request: OrderRequest, account: str,
                   quantity: float, now: float) -> Order:
        """Record a new order, PreSubmitted, with the next permId."""
        order = Order(
            client_id=client_id, order_id=order_id, perm_id=self.next_perm_id, account=account,
            con_id=listing.con_id, action=request.action, quantity=quantity, order_type=request.order_type,
            limit_price=None, tif=request.tif, order_ref=request.order_ref, outside_rth=request.outside_rth,
            placed_at=now, parent_id=request.parent_id)
        self._set_terms(order, listing, request, quantity, now)
        self.next_perm_id += 1
        self.orders[(client_id, order_id)] = order
        self.next_order_id = max(self.next_order_id, order_id + 1)
        self.dirty = True
        return order

    def _set_terms(self, order: Order, listing: Listing, request: OrderRequest, quantity: int, now: float):
        """What a placeOrder (new or a modification) sets: type, prices, size, time in force, group."""
        order.quantity = order.full_quantity = quantity
        order.order_type = request.order_type
        order.limit_price = request.limit_price if request.order_type in LIMITED_TYPES else None
        order.aux_price = request.aux_price if request.order_type in STOP_TYPES else None
        order.trailing_percent = request.trailing_percent if request.order_type.startswith("TRAIL") else None
        order.lmt_price_offset = request.lmt_price_offset if request.order_type == "TRAIL LIMIT" else None
        if order.order_type.startswith("TRAIL") and (request.trail_stop_price or not order.trail_stop_price):
            order.trail_stop_price = request.trail_stop_price or self._trail_start(order, listing, now)
            self._follow_limit(order, listing)
        order.tif = request.tif
        order.good_till_date = request.good_till_date
        order.outside_rth = request.outside_rth
        order.algo_strategy, order.algo_params = request.algo_strategy, dict(request.algo_params)
        priority = request.algo_params.get("adaptivePriority", "Normal")
        order.active_from = now + ADAPTIVE_DELAYS.get(priority, ADAPTIVE_DELAYS["Normal"]) if request.algo_strategy else 0.0
        order.oca_group, order.oca_type = request.oca_group, request.oca_type
        parent = self.orders.get((order.client_id, order.parent_id)) if order.parent_id else None
        if parent is not None:
            if not order.oca_group:
                order.oca_group, order.oca_type = str(parent.perm_id), order.oca_type or BRACKET_OCA_TYPE
            if parent.filled:
                order.quantity = min(quantity, parent.filled)
        order.expires_at = self._expiry(listing, order, request.good_till, now)
        order.crossed_at = now

    def _untransmitted_family(self, order: Order) -> list[Order]:
        """The orders a transmit=True order sends out: itself, and its parent and the parent's
        children still waiting to be transmitted, in the order they were placed."""
        root = self.orders[(order.client_id, order.parent_id)] if order.parent_id else order
        return [o for o in self.orders.values() if o.client_id == order.client_id and o.is_open
                and (o is root or o.parent_id == root.order_id) and (not o.transmitted or o is order)]

    def _begin(self, order: Order, now: float) -> list:
        """A transmitted order as TWS first reports it, then held until its session opens (with
        TWS's warning 399 saying when) or set working."""
        opens = self.sessions.next_open(order.listing, now, order.extended)
        if opens != now:
            order.status = "PreSubmitted"
            text = self.sessions.deferral_warning(order.listing, order.action, order.quantity, opens or now)
            return [OrderChanged(replace(order)), OrderWarning(replace(order), ORDER_MESSAGE, text)]
        return [OrderChanged(replace(order)), *self._work(order, now, placing=True)]

    def _submit(self, order: Order) -> list:
        """An accepted (PreSubmitted) order starts working at the exchange: Submitted."""
        order.status = "Submitted"
        self.dirty = True
        return [OrderChanged(replace(order))]

    def cancel(self, client_id: int, order_id: int) -> list:
        """Cancel an order, with the members of its OCA group and, for a parent nothing of
        which has filled, its children."""
        order = self.orders.get((client_id, order_id))
        if order is None:
            raise Rejection(10147, f"OrderId {order_id} that needs to be cancelled is not found.")
        if not order.is_open:
            raise Rejection(10148, f"OrderId {order_id} that needs to be cancelled cannot be cancelled, state: {order.status}.")
        followers = self._oca_members(order) + (self._children(order) if not order.filled else [])
        events = []
        for cancelled in {id(o): o for o in [order, *followers]}.values():
            cancelled.transmitted = True  # an untransmitted one is reported cancelled too: it was asked about
            self._finish(cancelled, "Cancelled", "Cancelled by Trader")
            events.append(OrderChanged(replace(cancelled)))
        return events

    def _waiting(self, order: Order) -> bool:
        """A child whose parent has not filled yet: it neither works nor holds back shares or cash."""
        parent = self.orders.get((order.client_id, order.parent_id)) if order.parent_id else None
        return parent is not None and not parent.filled

    def _children(self, order: Order) -> list[Order]:
        return [o for o in self.orders.values()
                if o.is_open and o.client_id == order.client_id and o.parent_id == order.order_id]

    def _oca_members(self, order: Order) -> list[Order]:
        """The other open orders of the order's one-cancels-all group."""
        if not order.oca_group:
            return []
        return [o for o in self.orders.values() if o is not order and o.is_open
                and o.account == order.account and o.oca_group == order.oca_group]

    def match(self) -> list:
        """One matching pass over every open order: expiries and the close's auction, orders whose
        session opened, stops elected, fills."""
        now = self.clock.now()
        events = []
        for order in self.open_orders():
            if not order.is_open:  # cancelled earlier in this pass, by its OCA group
                continue
            listing = order.listing
            if order.expires_at is not None and now >= order.expires_at:
                events += self._at_close(order) if order.order_type in ON_CLOSE_TYPES else self._expire(order)
            elif self.sessions.may_trade(listing, now, order.extended):
                order.crossed_at = max(order.crossed_at, self.sessions.window_start(listing, now, order.extended))
                events += self._work(order, now, placing=False)
        return events

    def _expire(self, order: Order) -> list:
        when = "at the close" if order.tif == "DAY" else f"at its goodTillDate {order.good_till_date}"
        self._finish(order, "Cancelled", f"Cancelled: {order.tif} order expired {when}")
        return [OrderChanged(replace(order))]

    def _work(self, order: Order, now: float, placing: bool) -> list:
        """Move a transmitted order on at ``now``, in its session: a child waits for its parent's
        fill, a stop for its election, an Adaptive order for its delay, an on-close order for the
        close; the rest match. ``placing``: it has just been placed (or elected, or modified)."""
        if self._waiting(order):
            return []
        events = []
        if order.order_type in STOP_TYPES and not order.triggered:
            events += self._watch_stop(order, now)
            if not order.triggered:
                return events
            placing = True
        if order.order_type in ON_CLOSE_TYPES:  # at the exchange for its closing auction, which match() runs
            return events + (self._submit(order) if order.status == "PreSubmitted" else [])
        if now < order.active_from:  # the Adaptive algo's delay
            return events
        if order.status == "PreSubmitted" and not placing:  # its session opened: placed at the exchange now
            return events + self._submit(order) + self._match_order(order, now, placing=True)
        events += self._match_order(order, now, placing)
        if order.status == "PreSubmitted":  # not filled at once: it rests, working at the exchange
            events += self._submit(order)
        return events

    def _watch_stop(self, order: Order, now: float) -> list:
        """Elect a stop the last price has reached since the last pass; else ratchet a trailing
        stop to the best price seen, and elect it if the price is already back through it."""
        listing = order.listing
        low, high = self.model.low_high(listing, order.crossed_at, now)
        order.crossed_at = now
        if not self._reached(order, low, high):
            if not order.order_type.startswith("TRAIL") or not self._ratchet(order, listing, low, high):
                return []
            price = self.model.mid(listing, now)
            if not self._reached(order, price, price):
                return [OrderChanged(replace(order))]  # the new trailStopPrice
        order.triggered = True
        self.dirty = True
        return []

    def _reached(self, order: Order, low: float, high: float) -> bool:
        stop = order.trail_stop_price if order.order_type.startswith("TRAIL") else order.aux_price
        return low <= stop + 1e-9 if order.action == "SELL" else high >= stop - 1e-9

    def _trail_start(self, order: Order, listing: Listing, now: float) -> float:
        """A trailing stop's first stop: its distance from the last price."""
        return self._trail_from(order, listing, self.model.mid(listing, self.sessions.market_time(listing, now)))

    def _trail_from(self, order: Order, listing: Listing, price: float) -> float:
        distance = order.aux_price if order.aux_price else price * (order.trailing_percent or 0) / 100
        return catalogue.round_to_tick(listing, price - distance if order.action == "SELL" else price + distance)

    def _ratchet(self, order: Order, listing: Listing, low: float, high: float) -> bool:
        """Move a trailing stop after the best price (the high for a sell, the low for a buy); True if it moved."""
        stop = self._trail_from(order, listing, high if order.action == "SELL" else low)
        better = stop > order.trail_stop_price if order.action == "SELL" else stop < order.trail_stop_price
        if better:
            order.trail_stop_price = stop
            self._follow_limit(order, listing)
            self.dirty = True
        return better

    @staticmethod
    def _follow_limit(order: Order, listing: Listing):
        """A trailing limit's limit price: its offset from the stop, on the far side."""
        if order.order_type == "TRAIL LIMIT" and order.trail_stop_price is not None:
            offset = order.lmt_price_offset or 0.0
            price = order.trail_stop_price - offset if order.action == "SELL" else order.trail_stop_price + offset
            order.limit_price = catalogue.round_to_tick(listing, price)

    def _at_close(self, order: Order) -> list:
        """An on-close order at its session's close: filled whole at the closing price, a LOC only
        if that price is at or better than its limit (else cancelled, as the auction leaves it)."""
        listing = order.listing
        price = self.mark_price(listing, order.expires_at)
        if order.limit_price is not None and not self._marketable(price, order.limit_price, order.action == "BUY"):
            self._finish(order, "Cancelled", "Cancelled: the closing price was through the limit")
            return [OrderChanged(replace(order))]
        return self._fill(order, listing, price, order.remaining, self.clock.now())

    def next_wakeup(self, now: float) -> float | None:
        """The next instant after ``now`` when an open order's fate may change without a price
        move: its session opens, an Adaptive delay ends or it expires (or, on close, fills). A
        clock that jumps steps through these."""
        times = []
        for order in self.open_orders():
            times.append(order.active_from)
            if order.expires_at is not None:
                times.append(order.expires_at)
            if not self.sessions.may_trade(order.listing, now, order.extended):
                times.append(self.sessions.next_open(order.listing, now, order.extended))
        later = [t for t in times if t is not None and t > now]
        return min(later) if later else None

    # ------------------------------------------------------------ rules
    def _validate(self, client_id: int, listing: Listing, request: OrderRequest, account: str,
                  existing: Order | None, now: float) -> int:
        if request.e_trade_only:
            raise Rejection(*E_TRADE_ONLY)
        if request.firm_quote_only:
            raise Rejection(*FIRM_QUOTE_ONLY)
        if request.action not in ("BUY", "SELL"):
            raise reject(f"action must be BUY or SELL, not {request.action!r}")
        if request.order_type not in ORDER_TYPES:
            raise reject(f"order type {request.order_type!r} is not supported by the simulated gateway "
                         f"(use one of {', '.join(ORDER_TYPES)})")
        if CONTRACT_ORDER_TYPES[request.order_type] not in listing.order_types.split(","):
            raise Rejection(*UNSUPPORTED_TYPE)  # not taken in: the listing's orderTypes lack it
        if request.tif not in TIME_IN_FORCE:
            raise reject(f"time in force {request.tif!r} is not supported by the simulated gateway (use DAY, GTC or GTD)")
        if request.tif == "GTD" and (request.good_till is None or request.good_till <= now):
            raise reject(f"a GTD order needs a goodTillDate in the future, not {request.good_till_date!r}")
        if request.order_type in ON_CLOSE_TYPES and request.tif != "DAY":
            raise reject(f"a {request.order_type} order is good for the day only (tif DAY)")
        self._validate_algo(listing, request)
        parent = self._validate_parent(client_id, request, existing)
        quantity = request.quantity
        if quantity <= 0 or quantity != int(quantity):
            raise reject(f"order quantity {quantity:g} must be a positive whole number of shares")
        quantity = int(quantity)
        if existing and quantity < existing.filled:
            raise reject(f"the new quantity {quantity} is below the {existing.filled} shares already filled")
        if listing.board_lot > 1 and quantity % listing.board_lot:
            raise reject(f"order size {quantity} is not a multiple of the board lot size {listing.board_lot} for {listing.symbol} on {listing.primary_exchange}")

        quote = self.quote(listing, now)
        self._validate_prices(listing, request, quote)
        group = request.oca_group or (str(parent.perm_id) if parent else "")
        others = [o for o in self.orders.values() if o.is_open and o is not existing and o.account == account
                  and not (group and o.oca_group == group)]
        new_open = quantity - (existing.filled if existing else 0)
        if request.action == "SELL":
            held = self.position(account, listing.con_id).quantity
            if parent is not None and parent.action == "BUY" and parent.con_id == listing.con_id:
                held += parent.remaining  # a bracket's exit sells what its entry will buy
            selling = self._committed([o for o in others if o.action == "SELL" and o.con_id == listing.con_id],
                                      lambda o: 0 if self._waiting(o) else o.remaining)
            if new_open > held - selling:
                raise reject(
                    f"short selling is not allowed in this account: selling {new_open} {listing.symbol} "
                    f"but only {held - selling} are held and not already being sold")
        else:
            price = request.limit_price if request.order_type in LIMITED_TYPES else quote.ask
            cost = new_open * price
            cost += commission_due(listing, "BUY", new_open, cost, now)
            reserved = self._committed([o for o in others if o.action == "BUY"
                                        and o.listing.currency == listing.currency],
                                       lambda o: self._reservation(o, now))
            available = self.accounts[account].cash.get(listing.currency, 0.0) - reserved
            if cost > available:
                raise reject(
                    f"insufficient cash: the order needs about {cost:,.2f} {listing.currency} "
                    f"but only {available:,.2f} {listing.currency} is available")
        return quantity

    @staticmethod
    def _committed(orders: list[Order], amount) -> float:
        """What open orders hold back: an OCA group's members count once, at the largest of them,
        since only one of them can trade."""
        groups: dict[str, float] = {}
        total = 0.0
        for o in orders:
            if o.oca_group:
                groups[o.oca_group] = max(groups.get(o.oca_group, 0.0), amount(o))
            else:
                total += amount(o)
        return total + sum(groups.values())

    @staticmethod
    def _validate_algo(listing: Listing, request: OrderRequest):
        if not request.algo_strategy:
            return
        if "ALGO" not in listing.order_types.split(","):
            raise reject(f"IB offers no algos for {listing.symbol} on {listing.primary_exchange}")
        if request.algo_strategy != "Adaptive":
            raise reject(f"algo strategy {request.algo_strategy!r} is not supported by the simulated gateway (use Adaptive)")
        if request.order_type not in ("MKT", "LMT"):
            raise reject(f"the Adaptive algo works on MKT and LMT orders, not {request.order_type}")
        priority = request.algo_params.get("adaptivePriority", "Normal")
        if priority not in ADAPTIVE_DELAYS:
            raise reject(f"adaptivePriority must be one of {', '.join(ADAPTIVE_DELAYS)}, not {priority!r}")

    def _validate_parent(self, client_id: int, request: OrderRequest, existing: Order | None) -> Order | None:
        """The open parent a child order names, if any."""
        if not request.parent_id:
            return None
        parent = self.orders.get((client_id, request.parent_id))
        if parent is None or (not parent.is_open and parent.status != "Filled"):
            raise reject(f"the parent order {request.parent_id} is not an open order of this client")
        return parent

    def _validate_prices(self, listing: Listing, request: OrderRequest, quote):
        """The limit and stop prices the order type needs: positive, on the tick ladder, and a
        limit order's within the precautionary band around the market."""
        kind = request.order_type
        if kind in LIMITED_TYPES:
            self._check_price(listing, request.limit_price, "a limit price")
        if kind in ("STP", "STP LMT"):
            self._check_price(listing, request.aux_price, "a stop price (auxPrice)")
        if kind.startswith("TRAIL"):
            if not (request.aux_price or request.trailing_percent) or (request.aux_price or 0) < 0 \
                    or (request.trailing_percent or 0) < 0:
                raise reject(f"a {kind} order needs a positive trailing amount (auxPrice) or trailingPercent")
            if request.aux_price and request.trailing_percent:
                raise reject(f"a {kind} order takes a trailing amount (auxPrice) or trailingPercent, not both")
        if kind == "TRAIL LIMIT" and (request.lmt_price_offset is None or request.lmt_price_offset < 0):
            raise reject("a TRAIL LIMIT order needs a limit price offset (lmtPriceOffset)")
        if kind == "LMT":
            price = request.limit_price
            if request.action == "BUY" and price > quote.ask * (1 + PRICE_BAND):
                raise reject(f"the limit price {price:g} is more than {PRICE_BAND:.0%} above the market ask {quote.ask:g}")
            if request.action == "SELL" and price < quote.bid * (1 - PRICE_BAND):
                raise reject(f"the limit price {price:g} is more than {PRICE_BAND:.0%} below the market bid {quote.bid:g}")

    @staticmethod
    def _check_price(listing: Listing, price: float | None, what: str):
        if price is None or price <= 0:
            raise reject(f"the order needs {what} above zero")
        tick = catalogue.min_tick(listing, price)
        if abs(price / tick - round(price / tick)) > 1e-6:
            raise Rejection(*OFF_TICK)  # the order is not taken in (ib_insync takes 110 for a warning)

    def _reservation(self, order: Order, now: float) -> float:
        if self._waiting(order):
            return 0.0
        price = order.limit_price if order.limit_price is not None else self.quote(order.listing, now).ask
        return order.remaining * price

    def _expiry(self, listing: Listing, order: Order, good_till: float | None, now: float) -> float | None:
        """When an order expires: a DAY (or on-close) order at the close of the session under way or,
        after it, the next one's; a GTD order at its goodTillDate."""
        if order.tif == "GTD":
            return good_till
        return self.sessions.day_close(listing, now, order.extended) if order.tif == "DAY" else None

    # ------------------------------------------------------------ matching
    def _match_order(self, order: Order, now: float, placing: bool) -> list:
        listing = order.listing
        quote = self.quote(listing, now)
        buying = order.action == "BUY"
        best = quote.ask if buying else quote.bid
        depth = quote.ask_size if buying else quote.bid_size
        limit = order.limit_price
        events = []
        if limit is not None and not self._marketable(best, limit, buying):
            if placing or not self._crossed(order, now):
                return events
            # The path crossed the limit since the last pass: fill at the limit.
            fills = [(limit, min(order.remaining, depth))]
        else:
            fills = []
            remaining = order.remaining
            for price, size in self.model.book_side(listing, now, "ASK" if buying else "BID", SWEEP_LEVELS):
                if limit is not None and not self._marketable(price, limit, buying):
                    break
                take = min(remaining, size)
                fills.append((price, take))
                remaining -= take
                if not remaining:
                    break
        order.crossed_at = now
        for price, shares in fills:
            events += self._fill(order, listing, price, shares, now)
        return events

    @staticmethod
    def _marketable(price: float, limit: float, buying: bool) -> bool:
        return price <= limit + 1e-9 if buying else price >= limit - 1e-9

    def _crossed(self, order: Order, now: float) -> bool:
        low, high = self.model.low_high(order.listing, order.crossed_at, now)
        return low <= order.limit_price if order.action == "BUY" else high >= order.limit_price

    def _fill(self, order: Order, listing: Listing, price: float, shares: int, now: float) -> list:
        buying = order.action == "BUY"
        value_before = order.avg_fill_price * order.filled
        order.filled += shares
        # Rounded as TWS reports it: one fill at 226.52 averages 226.52, not 226.52000000000004.
        order.avg_fill_price = round((value_before + price * shares) / order.filled, 8)
        order.last_fill_price = price
        total_commission = commission_due(listing, order.action, order.filled,
                                          order.avg_fill_price * order.filled, now)
        commission = round(total_commission - order.commission, 2)
        order.commission = total_commission

        account = self.accounts[order.account]
        currency = listing.currency
        key = (order.account, listing.con_id)
        position = self.positions.setdefault(key, Position(*key))  # the row appears with the first fill
        realized = None
        if buying:
            cost = position.quantity * position.avg_cost + shares * price + commission
            position.quantity += shares
            position.avg_cost = cost / position.quantity
            account.cash[currency] = account.cash.get(currency, 0.0) - shares * price - commission
        else:
            realized = shares * (price - position.avg_cost) - commission
            position.quantity -= shares
            position.realized_pnl += realized
            if position.quantity == 0:
                position.avg_cost = 0.0
            account.cash[currency] = account.cash.get(currency, 0.0) + shares * price - commission
            account.realized_pnl[currency] = account.realized_pnl.get(currency, 0.0) + realized

        execution = Execution(
            exec_id=f"{order.perm_id:08x}.{len(self.executions) + 1:08x}.01.01",
            client_id=order.client_id, order_id=order.order_id, perm_id=order.perm_id,
            account=order.account, con_id=listing.con_id, side="BOT" if buying else "SLD",
            shares=shares, price=price, time=now, cum_qty=order.filled,
            avg_price=order.avg_fill_price, order_ref=order.order_ref,
            commission=commission, commission_currency=currency, realized_pnl=realized)
        self.executions.append(execution)
        if order.filled == order.quantity:
            self._finish(order, "Filled", f"Filled Size: {order.filled}")  # completedStatus as TWS words it
        self.dirty = True
        return [Filled(replace(order), execution), PositionChanged(order.account, listing.con_id),
                *self._after_fill(order, shares, now)]

    def _after_fill(self, order: Order, shares: int, now: float) -> list:
        """What a fill does to the order's OCA group and children. The group: ocaType 1 cancels
        the others, 2 and 3 reduce them by the shares filled. The children: they work for the
        shares their parent has filled, the first fill setting them to work."""
        events = []
        for other in self._oca_members(order):
            left = other.quantity - shares
            if order.oca_type == 1 or left <= other.filled:
                self._finish(other, "Cancelled", "Cancelled by OCA group")
                events += [OrderChanged(replace(other)), OrderWarning(replace(other), *OCA_CANCELLED)]
            else:
                other.quantity = left
                events.append(OrderChanged(replace(other)))
        for child in self._children(order):
            if order.filled == shares:  # its first fill: the children start watching the price now
                child.crossed_at = now
            child.quantity = max(child.filled, min(child.full_quantity, order.filled))
            if child.transmitted:
                events += [OrderChanged(replace(child)), *self._work(child, now, placing=True)]
        return events

    def _finish(self, order: Order, status: str, completed_status: str):
        order.status = status
        order.completed_at = self.clock.now()
        order.completed_status = completed_status
        self.dirty = True

    # ------------------------------------------------------------ P&L
    def position_pnl(self, account: str, con_id: int) -> PnL:
        """One position's P&L now, in its own currency (zero for one never held)."""
        listing = catalogue.by_con_id(con_id)
        now = self.clock.now()
        since, close = self.model.previous_close(listing, now)
        held = self.positions.get((account, con_id)) or Position(account, con_id)
        mark = self.mark_price(listing, now)
        bought = paid = realized = 0.0  # today's, net of sales
        for ex in reversed(self.executions):  # in time order: today's fills are the last ones
            if ex.time <= since:
                break
            if ex.account == account and ex.con_id == con_id:
                signed = ex.shares if ex.side == "BOT" else -ex.shares
                bought += signed
                paid += signed * ex.price + ex.commission
                realized += ex.realized_pnl or 0.0
        value = held.quantity * mark
        daily = value - (held.quantity - bought) * close - paid
        return PnL(position=held.quantity, daily=round(daily, 2),
                   unrealized=round(value - held.quantity * held.avg_cost, 2),
                   realized=round(realized, 2), value=round(value, 2))

    def account_pnl(self, account: str) -> tuple[float, float, float]:
        """The account's daily, unrealised and realised (today's) P&L, in its base currency (USD)."""
        totals = [0.0, 0.0, 0.0]
        for p in self.held_positions(account):
            pnl = self.position_pnl(account, p.con_id)
            currency = catalogue.by_con_id(p.con_id).currency
            for i, amount in enumerate((pnl.daily, pnl.unrealized, pnl.realized)):
                totals[i] += to_usd(amount, currency)
        daily, unrealized, realized = (round(x, 2) for x in totals)
        return daily, unrealized, realized

    # ------------------------------------------------------------ accounts
    def account_values(self, account_id: str) -> list[tuple[str, str, str]]:
        """(key, value, currency) rows as reqAccountUpdates reports them."""
        account = self.accounts[account_id]
        currencies = sorted(set(account.cash) | {"USD", "HKD"})
        stock = {c: 0.0 for c in currencies}
        unrealized = {c: 0.0 for c in currencies}
        for p in self.held_positions(account_id):
            if p.quantity:
                listing = catalogue.by_con_id(p.con_id)
                value = p.quantity * self.mark_price(listing)
                stock[listing.currency] += value
                unrealized[listing.currency] += value - p.quantity * p.avg_cost
        rows = []

        def per_currency(key, amounts):
            for c in currencies:
                rows.append((key, f"{amounts.get(c, 0.0):.2f}", c))
            rows.append((key, f"{sum(to_usd(v, c) for c, v in amounts.items()):.2f}", "BASE"))

        per_currency("CashBalance", account.cash)
        per_currency("StockMarketValue", stock)
        per_currency("UnrealizedPnL", unrealized)
        per_currency("RealizedPnL", account.realized_pnl)
        per_currency("NetLiquidationByCurrency", {c: account.cash.get(c, 0.0) + stock[c] for c in currencies})
        cash_usd = sum(to_usd(v, c) for c, v in account.cash.items())
        stock_usd = sum(to_usd(v, c) for c, v in stock.items())
        rows += [
            ("AccountCode", account_id, ""),
            ("AccountType", "INDIVIDUAL", ""),
            (SIMULATOR_TAG, str(self.model.seed), ""),  # says "simulated data, from this seed" to clients
            ("Currency", "USD", "USD"),
            ("Currency", "HKD", "HKD"),
            ("Currency", "BASE", "BASE"),
            ("ExchangeRate", "1.00", "USD"),
            ("ExchangeRate", f"{USD_PER_HKD:.8f}", "HKD"),
            ("TotalCashValue", f"{cash_usd:.2f}", "USD"),
            ("TotalCashBalance", f"{cash_usd:.2f}", "BASE"),
            ("NetLiquidation", f"{cash_usd + stock_usd:.2f}", "USD"),
            ("EquityWithLoanValue", f"{cash_usd + stock_usd:.2f}", "USD"),
            ("GrossPositionValue", f"{stock_usd:.2f}", "USD"),
            ("AvailableFunds", f"{cash_usd:.2f}", "USD"),
            ("BuyingPower", f"{cash_usd:.2f}", "USD"),
            ("ExcessLiquidity", f"{cash_usd:.2f}", "USD"),
        ]
        return rows

    # ------------------------------------------------------------ persistence
    # The files themselves are state.py's: here, the state as plain data.
    def state(self) -> dict:
        """The whole state, as JSON-ready data."""
        return {
            "version": STATE_VERSION,
            "next_order_id": self.next_order_id,
            "next_perm_id": self.next_perm_id,
            "accounts": [asdict(a) for a in self.accounts.values()],
            "positions": [asdict(p) for p in self.positions.values()],
            "orders": [asdict(o) for o in self.orders.values()],
            "executions": [asdict(e) for e in self.executions],
        }

    def restore(self, state: dict):
        """Take the state ``state()`` returned, as saved by an earlier run."""
        if state.get("version") != STATE_VERSION:
            raise ValueError(f"unknown simulator state version {state.get('version')!r}")
        self.next_order_id = state["next_order_id"]
        self.next_perm_id = state["next_perm_id"]
        self.accounts = {a["account_id"]: Account(**a) for a in state["accounts"]}
        # An all-zero row is one an older simulator created by merely reading a position (for a
        # refused sale of a stock never held): dropped, or every portfolio update would show it.
        self.positions = {(p["account"], p["con_id"]): Position(**p) for p in state["positions"]
                          if p["quantity"] or p["avg_cost"] or p["realized_pnl"]}
        self.orders = {(o["client_id"], o["order_id"]): Order(**o) for o in state["orders"]}
        self.executions = [Execution(**e) for e in state["executions"]]
        self.dirty = False

    def changes(self, events: list) -> dict:
        """What the events changed, as it is now: the orders, executions, positions and
        accounts they name, and the id counters. ``apply`` brings a restored state up to date
        with it; every change the broker makes comes with an event naming what it touched."""
        orders, executions, positions, accounts = {}, [], {}, {}
        for event in events:
            if isinstance(event, PositionChanged):
                key = (event.account, event.con_id)
                if key in self.positions:
                    positions[key] = asdict(self.positions[key])
                accounts[event.account] = asdict(self.accounts[event.account])
                continue
            key = (event.order.client_id, event.order.order_id)
            if key in self.orders:
                orders[key] = asdict(self.orders[key])
            if isinstance(event, Filled):
                executions.append(asdict(event.execution))
                accounts[event.order.account] = asdict(self.accounts[event.order.account])
        return {"next_order_id": self.next_order_id, "next_perm_id": self.next_perm_id,
                "orders": list(orders.values()), "executions": executions,
                "positions": list(positions.values()), "accounts": list(accounts.values())}

    def apply(self, changes: dict):
        """Bring the state up to date with what ``changes`` returned."""
        self.next_order_id = max(self.next_order_id, changes["next_order_id"])
        self.next_perm_id = max(self.next_perm_id, changes["next_perm_id"])
        for o in changes["orders"]:
            self.orders[(o["client_id"], o["order_id"])] = Order(**o)
        for p in changes["positions"]:
            self.positions[(p["account"], p["con_id"])] = Position(**p)
        for a in changes["accounts"]:
            self.accounts[a["account_id"]] = Account(**a)
        self.executions += [Execution(**e) for e in changes["executions"]]
