"""The user's risk limits, read from the config file, and the check the runner makes before each order.

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

Global limits apply to totals over every strategy (all positions in a symbol,
all orders today); a strategy's limits to its own. Any breach of either stops
the order, with the reason stored on the signal.
"""

import datetime as dt
from dataclasses import dataclass, fields

from .errors import InputError
from .symbols import parse_symbol

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


@dataclass(frozen=True)
class Proposal:
    """An order the runner is about to send, with what the limits are measured against."""

    symbol: str
    action: str
    quantity: int
    notional: float | None  # in the base currency; None when no price is needed
    position: int  # the position the limit applies to, before this order
    orders_today: int  # orders already sent today, in the same scope


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


def breach(limits: Limits, order: Proposal, scope: str) -> str | None:
    """Why ``order`` breaks ``limits`` (a plain sentence naming the limit), or None."""
    if limits.allowed_symbols is not None and order.symbol not in limits.allowed_symbols:
        return f"{order.symbol} is not among the {scope} allowed symbols ({', '.join(sorted(limits.allowed_symbols))})"
    if limits.max_order_quantity is not None and order.quantity > limits.max_order_quantity:
        return f"{order.quantity} shares exceed the {scope} max_order_quantity of {limits.max_order_quantity}"
    if limits.max_order_notional is not None and order.notional is not None \
            and order.notional > limits.max_order_notional:
        return (f"a notional of {order.notional:,.2f} exceeds the {scope} max_order_notional of "
                f"{limits.max_order_notional:,.2f}")
    after = order.position + (order.quantity if order.action == "BUY" else -order.quantity)
    if limits.max_position is not None and order.action == "BUY" and after > limits.max_position:
        return f"a position of {after} {order.symbol} would exceed the {scope} max_position of {limits.max_position}"
    if limits.max_orders_per_day is not None and order.orders_today >= limits.max_orders_per_day:
        return f"the {scope} max_orders_per_day of {limits.max_orders_per_day} has been reached"
    return None


def start_of_day() -> float:
    """Local midnight, where "orders per day" starts counting."""
    return dt.datetime.now().replace(hour=0, minute=0, second=0, microsecond=0).timestamp()


def breaches(risk: RiskConfig, strategy: str | None, symbol: str, action: str, quantity: int,
             notional: float | None, position, orders_today) -> list[str]:
    """Every limit an order breaks: the global ones, and its strategy's when it has one.

    ``position(scope)`` and ``orders_today(scope)`` measure within a scope: a strategy's name,
    or None for all strategies together."""
    scopes = [("global", risk.limits, None)]
    if strategy:
        scopes.append((f"strategy {strategy!r}", risk.for_strategy(strategy), strategy))
    reasons = []
    for scope, limits, within in scopes:
        reason = breach(limits, Proposal(symbol, action, quantity, notional, position(within),
                                         orders_today(within)), scope)
        if reason:
            reasons.append(reason)
    return reasons
