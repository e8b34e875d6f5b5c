"""The gate: the one pre-trade check every order passes, whichever face it comes from.

The CLI, the HTTP API, the widgets, the Python API (all through ``ibkr.IBKR``)
and the runner (for each signal, at the moment it sends it) call
``Gate.admit`` before anything reaches TWS. It measures what the rules need:

- from TWS: the contract, its board lot and the order types its listing takes,
  the account's position, the open orders of every client on the symbol (of
  any type: a resting stop sell sells as surely as a limit sell), a price when
  a notional limit needs one, TWS's clock (the trading day, a GTD's end);
- from the queue, inside the one transaction that also journals the order:
  the kill switch, the strategy's position and its signals in flight, signals
  recorded ``submitting`` that TWS may not know yet, the orders sent in the
  exchange's trading day;

and hands them to ``risk.check`` (pure). A refusal raises ``Refused``, naming
each rule broken with its numbers, in the same words on every face, and
nothing is stored or sent. An order let through is journalled (and a signal
recorded ``submitting``) before the caller sends it: what the next check
counts, in this process or another.
"""

from dataclasses import dataclass

from .broker import Broker
from .config import RiskSource
from .errors import InputError
from .model import Side
from .orders import OrderType, Terms, good_till_instant, listing_name
from .risk import Breach, Exposure, Order, check, trading_day
from .store import SentOrder, Signal, Store
from .symbols import US_STOCK, Symbol


class Refused(InputError):
    """The gate refused an order: ``rule`` is the first rule broken (as named in the config file, or
    ``halted``, ``short_sale``, ``board_lot``), ``breaches`` all of them. Nothing was stored or sent."""

    def __init__(self, breaches: list[Breach]):
        self.breaches = breaches
        self.rule = breaches[0].rule
        super().__init__(breaches[0].field, "order refused: " + "; ".join(str(b) for b in breaches))


@dataclass(frozen=True)
class Admitted:
    """An order the gate let go: send it with this contract and order id."""

    symbol: Symbol
    contract: object  # the broker's qualified contract
    quantity: int
    order_id: int


class Gate:
    """The pre-trade check of one connection. ``origin`` names the face in the journal; a runner passes
    its ``lease_holder`` (only the lease's holder may send signals) and may accept other clients' open
    orders as listed up to ``open_orders_max_age`` seconds ago (its own it follows live), to spare TWS a
    request per order."""

    def __init__(self, broker: Broker, store: Store, risk: RiskSource, origin: str, *,
                 lease_holder: str | None = None, open_orders_max_age: float = 0.0, clock=None):
        self.broker, self.store, self.risk, self.origin = broker, store, risk, origin
        self.lease_holder = lease_holder
        self.open_orders_max_age = open_orders_max_age
        self.clock = clock  # POSIX seconds; None: TWS's clock, which decides the trading day

    async def admit(self, symbol: str, side: Side, quantity: int, terms: Terms = Terms(), *,
                    strategy: str | None = None, market_type: str | None = None,
                    signal: Signal | None = None) -> Admitted:
        """Check one order against every rule; journal it and return how to send it, or raise ``Refused``
        (or an ``InputError`` naming the field, for terms the listing or TWS's clock cannot take)."""
        return await self._judge(symbol, side, quantity, terms, strategy, market_type, signal, dry_run=False)

    async def admit_change(self, order_id: int, symbol: str, side: Side, quantity: int, terms: Terms, *,
                           market_type: str | None = None) -> Admitted:
        """Check this client's working order ``order_id`` as modified to ``quantity`` and ``terms``, by
        the same rules as a new order, its present size counting no longer (its new one replaces it);
        raise ``Refused`` or return how to send it. Nothing is journalled: a modification is no new
        order, so it does not count towards max_orders_per_day (and TWS keeps the order's id)."""
        return await self._judge(symbol, side, quantity, terms, None, market_type, None, dry_run=False,
                                 replacing=order_id)

    async def preview(self, symbol: str, side: Side, quantity: int, terms: Terms = Terms(), *,
                      strategy: str | None = None, market_type: str | None = None) -> list[Breach]:
        """The rules the order would break if sent now (an order ticket shows them before sending);
        nothing is journalled."""
        try:
            await self._judge(symbol, side, quantity, terms, strategy, market_type, None, dry_run=True)
        except Refused as e:
            return e.breaches
        return []

    def _held(self, contract, side: Side) -> int:
        """The account's holding as this order's rules must see it: as TWS last reported it, with this
        session's fills that TWS has not yet reported in a position counted against the order only
        (bought shares for a buy's max_position, sold ones for a sale), never for it."""
        unposted = self.broker.unposted(contract)
        return int(self.broker.held(contract) + (max(unposted, 0) if side == Side.BUY else min(unposted, 0)))

    async def _judge(self, symbol, side, quantity, terms, strategy, market_type, signal, dry_run,
                     replacing: int = 0) -> Admitted:
        risk = self.risk()
        sym, contract, lot = await self.broker.contract_async(symbol, market_type)
        self._check_listing(sym, contract, terms)
        order = Order(sym, side, quantity, terms.limit, strategy)
        notional = None
        if risk.needs_prices:
            # Kept simple: a stop is measured at its stop price, other orders without a limit at the quote.
            price = terms.reference_price or await self.broker.price_async(sym.display, sym.market)
            rate = 1.0 if sym.currency == "USD" else self.broker.rate_to_base(sym.currency)
            notional = quantity * price * rate
        # An order being modified is left out of the open orders: its new size is the one judged.
        at_tws = await self.broker.open_orders_async(contract, self.open_orders_max_age, except_order=replacing)
        held = self._held(contract, side)  # after that await: a fill meanwhile is in one or the other
        if side == Side.SELL and quantity > held - sum(n for _, s, n in at_tws if s == Side.SELL):
            # TWS reports a fill's new position in a message of its own, which may still be on its way
            # (a close sent the moment its open filled): one round trip, then measure again before refusing.
            await self.broker.settle_async()
            held = self._held(contract, side)
        known_refs = {ref for ref, _, _ in at_tws if ref}
        now = self.clock() if self.clock else (await self.broker.server_time_async()).timestamp()
        if terms.good_till is not None and good_till_instant(terms.good_till) <= now:
            raise InputError("good_till", f"{terms.good_till!r} has passed (TWS's clock); a GTD order needs "
                                          f"an end in the future")
        day = trading_day(sym.market, now)
        order_id = replacing or (0 if dry_run else signal.order_id if signal and signal.order_id
                                 else self.broker.next_order_id())

        def judge(db):
            # Signals recorded `submitting` that TWS does not list yet are on their way to it all the same.
            on_the_way = [(s, n) for ref, s, n in self.store.submitting_refs(db, sym.display) if ref not in known_refs]
            on_the_way += [(s, n) for _, s, n in at_tws]
            account = Exposure(
                held=held,
                buying=int(sum(n for s, n in on_the_way if s == Side.BUY)),
                selling=int(sum(n for s, n in on_the_way if s == Side.SELL)),
                # a modification is no new order: max_orders_per_day, reached or not, does not stop it
                orders_today=self.store.orders_today(db, day) if risk.counts_orders and not replacing else 0)
            own = None
            if strategy:
                buying, selling = self.store.in_flight(db, sym.display, strategy)
                own = Exposure(held=self.store.position(db, strategy, sym.display), buying=buying, selling=selling,
                               orders_today=self.store.orders_today(db, day, strategy) if risk.counts_orders else 0)
            found = check(risk, order, notional, int(lot), account, own)
            halted = self.store.halted(db)
            if halted:
                found.insert(0, Breach("halted", f"trading is halted ({halted}); `qdibkr resume` lifts the kill "
                                                 f"switch", "halted"))
            if found:
                raise Refused(found)

        if dry_run or replacing:  # a modification is journalled nowhere: it is no new order to count
            self.store.read(judge)
            return Admitted(sym, contract, quantity, order_id)
        self.store.admit(judge, SentOrder(
            origin=self.origin, strategy=strategy, symbol=sym.display, side=side, quantity=quantity,
            trading_day=day, order_id=order_id, signal_id=signal.id if signal else None),
            lease_holder=self.lease_holder)
        return Admitted(sym, contract, quantity, order_id)

    def _check_listing(self, sym: Symbol, contract, terms: Terms):
        """Terms the listing cannot take, refused before TWS would (error 387 for a type it lacks)."""
        offered = self.broker.order_types(contract)
        where = f"{sym.display} on {contract.primaryExchange or contract.exchange}"
        for code in terms.listing_codes:
            if offered and code not in offered:  # a listing that names no types: TWS decides
                field, what = ("adaptive", "the Adaptive algo") if code == "ALGO" else ("order_type", terms.type)
                taken = [str(t) for t in OrderType if listing_name(t) in offered]
                raise InputError(field, f"{what} is not offered for {where}; it takes {', '.join(taken)}")
        if terms.outside_rth and sym.market != US_STOCK:
            raise InputError("outside_rth", f"only US stocks trade outside regular hours, not {where}")
