"""The user's session: a connection to TWS / IB Gateway whose orders pass the gate.

``qdibkr.connect()`` returns an ``IBKR``; the CLI, the HTTP API and the widgets
each hold one too. It is the broker adapter (``broker.Broker``: quotes,
positions, account, orders, bars) plus ``place_order``, which checks the input,
asks the gate (``gate.Gate``: the kill switch, the risk limits, the short-sale
rule, board lots) and only then sends; ``modify_order`` changes a working
order's size or prices through the same gate. The queue the gate consults is opened
on the first order, so a quote costs no database.
"""

import dataclasses

from .broker import Broker, OrderResult, order_terms
from .config import RiskSource, current, load_settings
from .gate import Gate
from .orders import terms
from .errors import InputError
from .model import Side
from .signals import default_store
from .store import Store
from . import validate


class IBKR(Broker):
    """A connection to TWS / IB Gateway for one face (``face``: cli, api, widgets, python; it sets the
    default client id and names the orders' origin). ``store`` is the queue whose kill switch and
    journal the gate uses (default: the configured queue); ``risk`` the limits (default: the config
    file's ``[risk]``, re-read when the file changes)."""

    def __init__(self, settings=None, *, store: Store | None = None, risk: RiskSource | None = None,
                 face: str = "python", **overrides):
        super().__init__(settings or load_settings(face=face, **overrides))
        self.face = face
        self._store, self._risk, self._gate = store, risk, None

    @property
    def gate(self) -> Gate:
        if self._gate is None:
            self._gate = Gate(self, self._store or default_store(), self._risk or current().risk, self.face)
        return self._gate

    async def place_order_async(self, symbol: str, side: str, quantity: float, *, limit: float | None = None,
                                stop: float | None = None, trail_amount: float | None = None,
                                trail_percent: float | None = None, limit_offset: float | None = None,
                                at_close: bool = False, adaptive: str | None = None, outside_rth: bool = False,
                                tif: str = "DAY", good_till: str | None = None, order_type: str | None = None,
                                market_type: str | None = None, order_ref: str = "") -> OrderResult:
        """Place an order if the gate lets it go; returns once TWS answers. Its type follows from the
        prices given (see ``orders.terms``): ``limit`` alone a limit order, ``stop`` a stop (with ``limit``
        a stop-limit), ``trail_amount`` or ``trail_percent`` a trailing stop (with ``limit_offset`` a
        trailing limit), ``at_close`` a MOC (with ``limit`` a LOC), nothing a market order; or
        ``order_type`` (MKT, LMT, STP, STP LMT, TRAIL, TRAIL LIMIT, MOC, LOC) says it. ``adaptive``
        (patient, normal, urgent) works a market or limit order with IB's Adaptive algo; ``outside_rth``
        lets a US limit or stop-limit order trade outside regular hours; ``tif`` GTD needs ``good_till``
        ("YYYYMMDD HH:MM:SS Zone"). An ``InputError`` names the field at fault, ``Refused`` the rule the
        order breaks; nothing is sent then."""
        self._require_connection()
        action, quantity = validate.side(side), validate.quantity(quantity)
        order = terms(order_type, limit=limit, stop=stop, trail_amount=trail_amount, trail_percent=trail_percent,
                      limit_offset=limit_offset, at_close=at_close, adaptive=adaptive, outside_rth=outside_rth,
                      tif=tif, good_till=good_till)
        admitted = await self.gate.admit(symbol, action, quantity, order, market_type=market_type)
        return await self.place_async(admitted.contract, action, quantity, order, order_ref=order_ref,
                                      order_id=admitted.order_id)

    def place_order(self, symbol: str, side: str, quantity: float, **kwargs) -> OrderResult:
        return self.run(self.place_order_async(symbol, side, quantity, **kwargs))

    async def modify_order_async(self, order_id: int, *, quantity: float | None = None, limit: float | None = None,
                                 stop: float | None = None, trail_amount: float | None = None,
                                 trail_percent: float | None = None) -> OrderResult:
        """Change the size or prices of a working order this client placed, keeping its id and type;
        returns once TWS has answered. The new terms are checked as a new order's are (a stop on a
        limit order is refused, naming the field) and pass the gate with the new size and prices, the
        order's present size no longer counting. ``UnknownOrder`` for an id that is not this client's
        working order; nothing is sent on any refusal."""
        changes = dict(limit=limit, stop=stop, trail_amount=trail_amount, trail_percent=trail_percent)
        changes = {name: value for name, value in changes.items() if value is not None}
        if quantity is None and not changes:
            raise InputError("quantity", "nothing to change: give a quantity, limit, stop, trail_amount or "
                                         "trail_percent")
        trade = self.own_open_trade(order_id)
        if "trail_amount" in changes:  # a trail is in money or in percent, never both
            changes.setdefault("trail_percent", None)
        if "trail_percent" in changes:
            changes.setdefault("trail_amount", None)
        new_terms = dataclasses.replace(order_terms(trade.order), **changes)
        # The size judged is the order's whole new size (TWS's totalQuantity), shares already filled included:
        # for a partly filled order the rules see those twice (held, and in the order), erring towards refusal.
        size = int(trade.order.totalQuantity) if quantity is None else validate.quantity(quantity)
        admitted = await self.gate.admit_change(order_id, self._display(trade.contract), Side(trade.order.action),
                                                size, new_terms)
        return await self.modify_async(trade, admitted.quantity, new_terms)

    def modify_order(self, order_id: int, **changes) -> OrderResult:
        return self.run(self.modify_order_async(order_id, **changes))
