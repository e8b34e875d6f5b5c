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
ORDER_TYPES = ("MKT", "LMT")
TIME_IN_FORCE = ("DAY", "GTC")
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
        return [o for o in self.orders.values() if o.is_open]

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
        """A new order, or a modification when this client's order id is still open."""
        existing = self.orders.get((client_id, order_id))
        if existing and not existing.is_open:
            raise (Rejection(104, "Can't modify a filled order.") if existing.status == "Filled"
                   else Rejection(103, "Duplicate order ID."))  # TWS's texts, message_codes.html
        account = self.resolve_account(request.account or (existing.account if existing else ""))
        now = self.clock.now()
        try:
            quantity = self._validate(listing, request, account, existing, now)
        except Rejection as r:
            if r.code == 201 and existing is None:  # taken in, then refused: it exists, Inactive
                order = self._new_order(client_id, order_id, listing, request, account, request.quantity, now)
                self._finish(order, "Inactive", "Rejected")
                r.order = replace(order)
            raise
        extended = extended_hours(request.order_type, request.outside_rth)
        if existing:
            existing.quantity = quantity
            existing.limit_price = request.limit_price if request.order_type == "LMT" else None
            existing.order_type = request.order_type
            existing.tif = request.tif
            existing.outside_rth = request.outside_rth
            existing.expires_at = self._expiry(listing, request.tif, extended, now)
            existing.crossed_at = now
            order = existing
        else:
            order = self._new_order(client_id, order_id, listing, request, account, quantity, now)
        self.dirty = True
        opens = self.sessions.next_open(listing, now, extended)
        if opens != now:  # TWS holds it until its session opens, and says so
            order.status = "PreSubmitted"
            text = self.sessions.deferral_warning(listing, order.action, order.quantity, opens or now)
            return [OrderChanged(replace(order)), OrderWarning(replace(order), ORDER_MESSAGE, text)]
        events = [OrderChanged(replace(order)), *self._match_order(order, now, placing=True)]
        if order.status == "PreSubmitted":  # not filled at once: it rests, working at the exchange
            events += self._submit(order)
        return events

    def _new_order(self, client_id: int, order_id: int, listing: Listing, request: OrderRequest, account: str,
                   quantity: float, now: float) -> Order:
        """Record a new order, PreSubmitted, with the next permId."""
        extended = extended_hours(request.order_type, request.outside_rth)
        order = Order(
            client_id=client_id, order_id=order_id, perm_id=self.next_perm_id, account=account,
            con_id=listing.con_id, action=request.action, quantity=quantity,
            order_type=request.order_type,
            limit_price=request.limit_price if request.order_type == "LMT" else None,
            tif=request.tif, order_ref=request.order_ref, outside_rth=request.outside_rth,
            placed_at=now, expires_at=self._expiry(listing, request.tif, extended, now), crossed_at=now)
        self.next_perm_id += 1
        self.orders[(client_id, order_id)] = order
        self.next_order_id = max(self.next_order_id, order_id + 1)
        self.dirty = True
        return order

    def _submit(self, order: Order) -> list:
        """An accepted (PreSubmitted) order starts working at the exchange: Submitted."""
        order.status = "Submitted"
        self.dirty = True
        return [OrderChanged(replace(order))]

    def cancel(self, client_id: int, order_id: int) -> list:
        order = self.orders.get((client_id, order_id))
        if order is None:
            raise Rejection(10147, f"OrderId {order_id} that needs to be cancelled is not found.")
        if not order.is_open:
            raise Rejection(10148, f"OrderId {order_id} that needs to be cancelled cannot be cancelled, state: {order.status}.")
        self._finish(order, "Cancelled", "Cancelled by Trader")
        return [OrderChanged(replace(order))]

    def match(self) -> list:
        """One matching pass over every open order: expiries, orders whose session opened, fills."""
        now = self.clock.now()
        events = []
        for order in self.open_orders():
            listing = order.listing
            if order.expires_at is not None and now >= order.expires_at:
                self._finish(order, "Cancelled", "Cancelled: DAY order expired at the close")
                events.append(OrderChanged(replace(order)))
            elif not self.sessions.may_trade(listing, now, order.extended):
                continue  # waits for its session
            elif order.status == "PreSubmitted":  # its session opened: placed at the exchange now
                order.crossed_at = now
                events += self._submit(order)
                events += self._match_order(order, now, placing=True)
            else:
                order.crossed_at = max(order.crossed_at, self.sessions.window_start(listing, now, order.extended))
                events += self._match_order(order, now, placing=False)
        return events

    def next_wakeup(self, now: float) -> float | None:
        """The next instant after ``now`` when an open order's fate may change without a price
        move: its session opens or it expires. A clock that jumps steps through these."""
        times = []
        for order in self.open_orders():
            if order.expires_at is not None:
                times.append(order.expires_at)
            if not self.sessions.may_trade(order.listing, now, order.extended):
                times.append(self.sessions.next_open(order.listing, now, order.extended))
        later = [t for t in times if t is not None and t > now]
        return min(later) if later else None

    # ------------------------------------------------------------ rules
    def _validate(self, listing: Listing, request: OrderRequest, account: str, existing: Order | None,
                  now: float) -> int:
        if request.e_trade_only:
            raise Rejection(*E_TRADE_ONLY)
        if request.firm_quote_only:
            raise Rejection(*FIRM_QUOTE_ONLY)
        if request.action not in ("BUY", "SELL"):
            raise reject(f"action must be BUY or SELL, not {request.action!r}")
        if request.order_type not in ORDER_TYPES:
            raise reject(f"order type {request.order_type!r} is not supported by the simulated gateway (use MKT or LMT)")
        if request.tif not in TIME_IN_FORCE:
            raise reject(f"time in force {request.tif!r} is not supported by the simulated gateway (use DAY or GTC)")
        quantity = request.quantity
        if quantity <= 0 or quantity != int(quantity):
            raise reject(f"order quantity {quantity:g} must be a positive whole number of shares")
        quantity = int(quantity)
        if existing and quantity < existing.filled:
            raise reject(f"the new quantity {quantity} is below the {existing.filled} shares already filled")
        if listing.board_lot > 1 and quantity % listing.board_lot:
            raise reject(f"order size {quantity} is not a multiple of the board lot size {listing.board_lot} for {listing.symbol} on {listing.primary_exchange}")

        quote = self.quote(listing, now)
        if request.order_type == "LMT":
            price = request.limit_price
            if price is None or price <= 0:
                raise reject("a limit order needs a positive limit price")
            tick = catalogue.min_tick(listing, price)
            if abs(price / tick - round(price / tick)) > 1e-6:
                raise Rejection(*OFF_TICK)  # the order is not taken in (ib_insync takes 110 for a warning)
            if request.action == "BUY" and price > quote.ask * (1 + PRICE_BAND):
                raise reject(f"the limit price {price:g} is more than {PRICE_BAND:.0%} above the market ask {quote.ask:g}")
            if request.action == "SELL" and price < quote.bid * (1 - PRICE_BAND):
                raise reject(f"the limit price {price:g} is more than {PRICE_BAND:.0%} below the market bid {quote.bid:g}")

        others = [o for o in self.open_orders() if o is not existing and o.account == account]
        new_open = quantity - (existing.filled if existing else 0)
        if request.action == "SELL":
            held = self.position(account, listing.con_id).quantity
            selling = sum(o.remaining for o in others if o.action == "SELL" and o.con_id == listing.con_id)
            if new_open > held - selling:
                raise reject(
                    f"short selling is not allowed in this account: selling {new_open} {listing.symbol} "
                    f"but only {held - selling} are held and not already being sold")
        else:
            price = request.limit_price if request.order_type == "LMT" else quote.ask
            cost = new_open * price
            cost += commission_due(listing, "BUY", new_open, cost, now)
            reserved = sum(self._reservation(o, now) for o in others
                           if o.action == "BUY" and o.listing.currency == listing.currency)
            available = self.accounts[account].cash.get(listing.currency, 0.0) - reserved
            if cost > available:
                raise reject(
                    f"insufficient cash: the order needs about {cost:,.2f} {listing.currency} "
                    f"but only {available:,.2f} {listing.currency} is available")
        return quantity

    def _reservation(self, order: Order, now: float) -> float:
        price = order.limit_price if order.limit_price is not None else self.quote(order.listing, now).ask
        return order.remaining * price

    def _expiry(self, listing: Listing, tif: str, extended: bool, now: float) -> float | None:
        """When a DAY order expires: the close of the session under way or, after it, the next one's."""
        return self.sessions.day_close(listing, now, extended) if tif == "DAY" else None

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
        return [Filled(replace(order), execution), PositionChanged(order.account, listing.con_id)]

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
