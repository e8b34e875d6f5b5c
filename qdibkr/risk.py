"""The rules every order must pass: the user's risk limits, the short-sale rule, board lots and the kill
switch. Pure: the facts are measured elsewhere (``gate.py``) and handed in, so every face gets the same
verdict in the same words.

In the config file (``QDIBKR_CONFIG``, default ``~/.config/qdibkr/config.toml``)::

    [risk]                      # global: across all strategies
    max_order_quantity = 1000   # shares per order
    max_order_notional = 50000  # per order, in the account's base currency (USD)
    max_position = 5000         # shares held per symbol
    max_orders_per_day = 200
    allowed_symbols = ["AAPL", "0700.HK"]
    on_breach = "reject"        # or "hold": keep the signal until the limits allow it
    outside_hours = "hold"      # orders outside the exchange session: "hold", "reject" or "send"

    [risk.strategy.sma]         # per strategy: the same keys, for that strategy's own orders and positions
    max_order_quantity = 100

Global limits apply to the account (its position in a symbol as TWS reports it, every order sent today);
a strategy's limits to its own (its recorded position, its orders). Positions count what is in flight:
orders sent and not yet filled. "Orders per day" counts orders by when they were sent, in the trading day
of the order's exchange. Any breach stops the order; its rule's name and the numbers are in the refusal.
"""

import datetime as dt
from dataclasses import dataclass, fields

from .errors import InputError
from .model import Side
from .symbols import HK_SHARE, Symbol, parse_symbol

BREACH_ACTIONS = ("reject", "hold")
OUTSIDE_HOURS = ("hold", "reject", "send")


@dataclass(frozen=True)
class Limits:
    max_order_quantity: int | None = None
    max_order_notional: float | None = None
    max_position: int | None = None
    max_orders_per_day: int | None = None
    allowed_symbols: frozenset[str] | None = None  # as qdibkr displays them: AAPL, 0700.HK


@dataclass(frozen=True)
class RiskConfig:
    limits: Limits = Limits()
    strategies: dict[str, Limits] | None = None
    on_breach: str = "reject"
    outside_hours: str = "hold"

    def for_strategy(self, strategy: str) -> Limits:
        return (self.strategies or {}).get(strategy, Limits())

    @property
    def needs_prices(self) -> bool:
        """Whether any notional limit is set, so that orders need a current price."""
        every = [self.limits, *(self.strategies or {}).values()]
        return any(limits.max_order_notional is not None for limits in every)

    @property
    def counts_orders(self) -> bool:
        """Whether any orders-per-day limit is set, so that the day's orders need counting."""
        every = [self.limits, *(self.strategies or {}).values()]
        return any(limits.max_orders_per_day is not None for limits in every)


def _limits(section: dict, where: str) -> Limits:
    known = {f.name for f in fields(Limits)}
    unknown = set(section) - known - {"on_breach", "outside_hours", "strategy"}
    if unknown:
        raise InputError(where, f"unknown risk setting(s) {', '.join(sorted(unknown))}; known: {', '.join(sorted(known))}")
    values = {k: v for k, v in section.items() if k in known}
    for name, value in values.items():
        if name == "allowed_symbols":
            if not isinstance(value, list):
                raise InputError(f"{where}.allowed_symbols", "must be a list of symbols, e.g. [\"AAPL\", \"0700.HK\"]")
            values[name] = frozenset(parse_symbol(s).display for s in value)
        elif isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
            raise InputError(f"{where}.{name}", f"{value!r} must be a number >= 0")
    return Limits(**values)


def load_risk(config: dict) -> RiskConfig:
    """The ``[risk]`` section of a parsed config file."""
    section = config.get("risk", {})
    on_breach = section.get("on_breach", "reject")
    if on_breach not in BREACH_ACTIONS:
        raise InputError("risk.on_breach", f"{on_breach!r}: use reject or hold")
    outside_hours = section.get("outside_hours", "hold")
    if outside_hours not in OUTSIDE_HOURS:
        raise InputError("risk.outside_hours", f"{outside_hours!r}: use hold, reject or send")
    strategies = {name: _limits(values, f"risk.strategy.{name}")
                  for name, values in section.get("strategy", {}).items()}
    return RiskConfig(_limits(section, "risk"), strategies, on_breach, outside_hours)


EXCHANGE_ZONES = {HK_SHARE: "Asia/Hong_Kong"}
DEFAULT_ZONE = "America/New_York"


def trading_day(market: str, when: float) -> str:
    """The exchange's calendar date at POSIX time ``when`` ("2026-11-27"): the day "orders per day" counts in."""
    from zoneinfo import ZoneInfo  # here: reading time zones at import would slow every command's start

    zone = ZoneInfo(EXCHANGE_ZONES.get(market, DEFAULT_ZONE))  # ZoneInfo keeps each zone it has read
    return dt.datetime.fromtimestamp(when, zone).date().isoformat()


@dataclass(frozen=True)
class Order:
    """An order about to be sent, from any face."""

    symbol: Symbol
    side: Side
    quantity: int
    limit: float | None
    strategy: str | None  # None: a direct order (CLI, HTTP, widget, Python), judged in the global scope only


@dataclass(frozen=True)
class Exposure:
    """What one scope's limits are measured against, before the order: the account's (global) or a
    strategy's position in the symbol, the shares its open orders have still to buy and to sell, and
    the orders it sent in the exchange's trading day."""

    held: int
    buying: int = 0
    selling: int = 0
    orders_today: int = 0


@dataclass(frozen=True)
class Breach:
    """One rule an order breaks: the rule's name (as in the config file) and a sentence with the numbers."""

    rule: str
    message: str
    field: str = "quantity"  # the input a user would change

    def __str__(self) -> str:
        return f"{self.rule}: {self.message}"


def check(risk: RiskConfig, order: Order, notional: float | None, lot: int, account: Exposure,
          strategy: Exposure | None) -> list[Breach]:
    """Every rule ``order`` breaks, in the global scope (``account``) and its strategy's (``strategy``).

    ``notional`` is in the account's base currency, None when no notional limit needs it."""
    found = []
    if order.quantity % lot:
        found.append(Breach("board_lot", f"{order.symbol} trades in board lots of {lot} shares; {order.quantity} "
                                         f"is not a multiple (try {max(lot, order.quantity - order.quantity % lot)})"))
    scopes = [("global", risk.limits, account, "account")]
    if order.strategy:
        scopes.append((f"strategy {order.strategy!r}", risk.for_strategy(order.strategy), strategy,
                       f"strategy {order.strategy!r}"))
    for scope, limits, exposure, holder in scopes:
        if order.side == Side.SELL:
            sellable = exposure.held - exposure.selling
            if order.quantity > sellable:
                pending = f" and its open orders already sell {exposure.selling}" if exposure.selling else ""
                found.append(Breach("short_sale", f"selling {order.quantity} {order.symbol} would sell short: "
                                                  f"{holder} holds {exposure.held}{pending}; short selling is not "
                                                  f"supported"))
        found.extend(_limit_breaches(limits, order, notional, exposure, scope))
    return found


def _limit_breaches(limits: Limits, order: Order, notional: float | None, exposure: Exposure,
                    scope: str) -> list[Breach]:
    found = []
    symbol = order.symbol.display
    if limits.allowed_symbols is not None and symbol not in limits.allowed_symbols:
        found.append(Breach("allowed_symbols", f"{symbol} is not among the {scope} allowed symbols "
                                               f"({', '.join(sorted(limits.allowed_symbols))})", "symbol"))
    if limits.max_order_quantity is not None and order.quantity > limits.max_order_quantity:
        found.append(Breach("max_order_quantity", f"{order.quantity} shares exceed the {scope} max_order_quantity "
                                                  f"of {limits.max_order_quantity:g}"))
    if limits.max_order_notional is not None and notional is not None and notional > limits.max_order_notional:
        found.append(Breach("max_order_notional", f"a notional of {notional:,.2f} exceeds the {scope} "
                                                  f"max_order_notional of {limits.max_order_notional:,.2f}"))
    if limits.max_position is not None and order.side == Side.BUY:
        after = exposure.held + exposure.buying + order.quantity
        if after > limits.max_position:
            found.append(Breach("max_position", f"a position of {after} {symbol} would exceed the {scope} "
                                                f"max_position of {limits.max_position:g} (held {exposure.held}, "
                                                f"{exposure.buying} more on the way, this order {order.quantity})"))
    if limits.max_orders_per_day is not None and exposure.orders_today >= limits.max_orders_per_day:
        found.append(Breach("max_orders_per_day", f"the {scope} max_orders_per_day of {limits.max_orders_per_day:g} "
                                                  f"has been reached ({exposure.orders_today} sent this trading day)",
                            "symbol"))
    return found
