"""The user's session: a connection to TWS / IB Gateway whose orders pass the gate.

``qdibkr.connect()`` returns an ``IBKR``; the CLI, the HTTP API and the widgets
each hold one too. It is the broker adapter (``broker.Broker``: quotes,
positions, account, orders, bars) plus ``place_order``, which checks the input,
asks the gate (``gate.Gate``: the kill switch, the risk limits, the short-sale
rule, board lots) and only then sends. The queue the gate consults is opened
on the first order, so a quote costs no database.
"""

from .broker import Broker, OrderResult
from .config import RiskSource, current, load_settings
from .gate import Gate
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
                                tif: str = "DAY", market_type: str | None = None,
                                order_ref: str = "") -> OrderResult:
        """Place a market order, or a limit order when ``limit`` is given, if the gate lets it go;
        returns once TWS answers. ``Refused`` names the rule it breaks; nothing is sent then."""
        self._require_connection()
        action, quantity = validate.side(side), validate.quantity(quantity)
        tif, limit = validate.tif(tif), validate.limit_price(limit, "price")
        admitted = await self.gate.admit(symbol, action, quantity, limit, market_type=market_type)
        return await self.place_async(admitted.contract, action, quantity, limit=limit, tif=tif, order_ref=order_ref,
                                      order_id=admitted.order_id)

    def place_order(self, symbol: str, side: str, quantity: float, **kwargs) -> OrderResult:
        return self.run(self.place_order_async(symbol, side, quantity, **kwargs))
