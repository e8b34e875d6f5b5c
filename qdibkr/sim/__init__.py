"""The simulated gateway: a TWS / IB Gateway stand-in that speaks the real API socket protocol.

Modules, one job each: ``wire`` frames bytes, ``messages`` encodes what TWS
sends, ``incoming`` names what clients send, ``catalogue`` lists the contracts,
``market`` is the seeded price model, ``broker`` keeps accounts, orders, fills
and P&L, ``state`` journals them durably, ``streams`` sends bars, ticks, depth and P&L as time passes, ``pacing``
holds IB's rate rules and limits, ``clock`` is simulated time, ``sessions``
says when each listing trades on it, and ``server`` ties them to client
connections.
"""

from .server import SimGateway
from .sessions import describe_start, us_session_start

__all__ = ["SimGateway", "describe_start", "us_session_start"]
