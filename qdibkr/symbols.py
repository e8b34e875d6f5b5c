"""Symbols as users write them, and the IB contracts they stand for.

US stocks are tickers (``AAPL``, ``BRK.B`` or ``BRK B``): IB's symbol with a
space before the share class, routed SMART, in USD. Hong Kong stocks are
written ``0700.HK``, ``00700`` or ``700``: IB knows them as ``700`` on SEHK in
HKD, and we display them back as ``0700.HK``. The market type, when given,
uses the product brief's names ``USStock`` and ``HShare``; otherwise the
symbol's form decides.
"""

import re
from dataclasses import dataclass

from .errors import InputError

US_STOCK, HK_SHARE = "USStock", "HShare"
MARKET_TYPES = (US_STOCK, HK_SHARE)
# qdibkr's simulated gateway reports its price model's seed as an account value under this tag, which no
# TWS sends: how a client tells the simulator's synthetic data from IB's (``Broker.data_source``).
SIMULATOR_TAG = "QdibkrSimulatorSeed"
FORMATS = "US tickers like AAPL or BRK.B; Hong Kong stocks as 0700.HK, 00700 or 700"

_US = re.compile(r"^([A-Z]{1,6})(?:[ ./-]([A-Z]))?$")
_HK = re.compile(r"^0*(\d{1,5})(?:\.HK)?$")


@dataclass(frozen=True)
class Symbol:
    """One stock, in IB's terms and in ours."""

    ib_symbol: str  # "AAPL", "BRK B", "700"
    market: str  # US_STOCK or HK_SHARE
    exchange: str  # "SMART" or "SEHK"
    currency: str  # "USD" or "HKD"

    @property
    def display(self) -> str:
        """How qdibkr shows it: ``AAPL``, ``BRK.B``, ``0700.HK``."""
        if self.market == HK_SHARE:
            return f"{int(self.ib_symbol):04d}.HK"
        return self.ib_symbol.replace(" ", ".")

    def __str__(self) -> str:
        return self.display


def parse_market(market_type: str | None) -> str | None:
    if not market_type:
        return None
    for known in MARKET_TYPES:
        if market_type.lower() == known.lower():
            return known
    raise InputError("marketType", f"{market_type!r} is not a market type; use USStock or HShare")


def parse_symbol(text: str, market_type: str | None = None) -> Symbol:
    """Read a user's symbol; ``market_type`` (USStock / HShare) must agree with its form."""
    market = parse_market(market_type)
    cleaned = (text or "").strip().upper()
    hk = _HK.match(cleaned)
    if hk and int(hk.group(1)) > 0:
        if market == US_STOCK:
            raise InputError("symbol", f"{text!r} is a Hong Kong stock code, but marketType is USStock; use HShare or a US ticker")
        return Symbol(str(int(hk.group(1))), HK_SHARE, "SEHK", "HKD")
    us = _US.match(cleaned)
    if us:
        if market == HK_SHARE:
            raise InputError("symbol", f"{text!r} is a US ticker, but marketType is HShare; write Hong Kong stocks as 0700.HK, 00700 or 700")
        ticker, share_class = us.groups()
        return Symbol(f"{ticker} {share_class}" if share_class else ticker, US_STOCK, "SMART", "USD")
    raise InputError("symbol", f"{text!r} is not a symbol qdibkr understands; use {FORMATS}")
