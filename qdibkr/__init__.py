"""qdibkr: notebook-first research-to-live trading of US and Hong Kong stocks through IB TWS / Gateway.

The public API::

    import qdibkr
    ibkr = qdibkr.connect()                 # settings: arguments, QDIBKR_* variables, config file, defaults
    ibkr.quote("AAPL", "0700.HK")
    ibkr.place_order("700", "buy", 100)     # HK quantities in whole board lots
    ibkr.positions(); ibkr.trades(); ibkr.account_summary()

    qdibkr.emit("open_long", "AAPL", 10, strategy="sma")   # into the queue; `qdibkr runner` sends it

    gateway = qdibkr.SimGateway(port=0).start_in_thread()   # the offline simulated gateway
"""

import importlib

from .config import PRESETS, Settings, load_settings
from .errors import (ConnectError, ContractError, InputError, LiveTradingRefused, NotConnectedError,
                     OrderRejected, PacingError, QdibkrError, TWSError)
from .signals import SIGNAL_TYPES, emit
from .symbols import Symbol, parse_symbol

# The names whose modules are heavy, and those modules: loaded on first use (PEP 562), so that
# `import qdibkr.cli` and `from qdibkr import emit` pull in neither ib_insync (with eventkit and numpy,
# through the broker) nor the simulator's pandas and exchange calendars: the queue commands start in
# a fraction of the time (bench/cli_bench.py).
_LAZY = {
    "IBKR": "ibkr",
    "Status": "broker", "AccountSummary": "broker", "OrderResult": "broker", "Quote": "broker",
    "Refused": "gate",
    "SimGateway": "sim",
}

__all__ = [
    "connect", "emit", "SIGNAL_TYPES", "IBKR", "Settings", "load_settings", "PRESETS", "Symbol", "parse_symbol", "SimGateway",
    "Status", "AccountSummary", "OrderResult", "Quote",
    "QdibkrError", "InputError", "ConnectError", "NotConnectedError", "LiveTradingRefused", "TWSError",
    "ContractError", "OrderRejected", "PacingError", "Refused",
]


def connect(**settings) -> "IBKR":
    """Connect to TWS / IB Gateway (paper by default) and return the live session."""
    from .ibkr import IBKR

    return IBKR(**settings).connect()


def __getattr__(name):
    if name not in _LAZY:
        raise AttributeError(f"module 'qdibkr' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    globals()[name] = value  # the next lookup finds it without coming here
    return value


def __dir__():
    # The lazy names too, for a notebook's tab completion.
    return sorted({*globals(), *_LAZY})
