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

from .config import PRESETS, Settings, load_settings
from .errors import (ConnectError, ContractError, InputError, LiveTradingRefused, NotConnectedError,
                     OrderRejected, PacingError, QdibkrError, TWSError)
from .broker import AccountSummary, OrderResult, Quote, Status
from .gate import Refused
from .ibkr import IBKR
from .signals import SIGNAL_TYPES, emit
from .symbols import Symbol, parse_symbol

__all__ = [
    "connect", "emit", "SIGNAL_TYPES", "IBKR", "Settings", "load_settings", "PRESETS", "Symbol", "parse_symbol", "SimGateway",
    "Status", "AccountSummary", "OrderResult", "Quote",
    "QdibkrError", "InputError", "ConnectError", "NotConnectedError", "LiveTradingRefused", "TWSError",
    "ContractError", "OrderRejected", "PacingError", "Refused",
]


def connect(**settings) -> IBKR:
    """Connect to TWS / IB Gateway (paper by default) and return the live session."""
    return IBKR(**settings).connect()


def __getattr__(name):
    # The simulator pulls in numpy, pandas and exchange calendars: load it only when asked for.
    if name == "SimGateway":
        from .sim import SimGateway

        return SimGateway
    raise AttributeError(f"module 'qdibkr' has no attribute {name!r}")
