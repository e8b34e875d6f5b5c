"""What IB charges for a US or Hong Kong stock order: its fixed-pricing commission plus the fees it passes on.

One function, ``commission``, used by both the simulated gateway (the commission
reports of its fills) and the backtest (what a simulated fill costs), so that a
backtest pays exactly what the simulator charges for the same order. The figure
is what IB's commission report shows: its commission and the pass-through fees
together.

``FEES`` is the one table of rates. Each row says what it charges, on which side,
from which trade date (in the exchange's time zone) until the next row of the
same name, and where the rate comes from. A date before a charge's first row
pays that first row. What IB's fixed pricing includes and what it passes on:

- US stocks: IBKR Pro Fixed, USD 0.005 a share, at least USD 1, at most 1% of the
  value, "includes all exchange and most regulatory fees excluding transaction
  fees, which are passed through on all stock sales": the SEC's Section 31 fee and
  FINRA's Trading Activity Fee (TAF), on sales only, each rounded up to the cent
  (https://www.interactivebrokers.com/en/pricing/commissions-stocks.php).
- Hong Kong stocks: IBKR Fixed, 0.08% of the value, at least HKD 18. It includes
  the exchange and clearing fees (HKEX's trading fee of 0.00565% and the CCASS
  settlement fee): IB's own example prices 1,000 shares at HKD 50 at HKD 40.00
  fixed against HKD 25 + 3 exchange + 2 clearing tiered
  (https://www.interactivebrokers.com/en/accounts/fees/asianStockBundlUnbund.php).
  What the government and the regulators levy is passed on, on both sides: stamp
  duty rounded up to a whole dollar, the SFC transaction levy and the AFRC levy.

An order's charges are worked out on its whole filled quantity and value, so a
minimum, a cap or a rounding applies once per order, as on IB's statements.
"""

import datetime as dt
import math
from dataclasses import dataclass
from functools import lru_cache

SIDES = ("BUY", "SELL")
SALES = ("SELL",)
EVER = dt.date.min  # a rate with no known start: applied to every date before the next row


# Rounding to cents and dollars: the products of decimal rates carry float noise (0.1155 is
# 11.549999... cents), which a millionth of a cent absorbs.
NOISE = 1e-6


def _nearest_cent(x: float) -> float:
    """Half a cent up, as a levy is rounded."""
    return math.floor(x * 100 + 0.5 + NOISE) / 100


def _up_to_cent(x: float) -> float:
    return math.ceil(x * 100 - NOISE) / 100


def _up_to_dollar(x: float) -> float:
    return float(math.ceil(x - NOISE / 100))


ROUNDINGS = {"cent": _nearest_cent, "up_to_cent": _up_to_cent, "up_to_dollar": _up_to_dollar}


@dataclass(frozen=True, slots=True)
class Fee:
    """One rate of one charge, in force from ``since`` until the next row of the same name."""

    name: str
    currency: str  # the market: "USD" (US stocks) or "HKD" (Hong Kong stocks)
    sides: tuple[str, ...]  # the sides that pay it
    since: dt.date
    source: str
    per_share: float = 0.0
    per_value: float = 0.0  # a fraction of the trade value
    minimum: float = 0.0
    maximum: float = math.inf
    maximum_per_value: float = math.inf  # a cap as a fraction of the trade value
    rounding: str = "cent"  # a key of ROUNDINGS

    def amount(self, quantity: float, value: float) -> float:
        raw = self.per_share * quantity + self.per_value * value
        if raw <= 0:
            return 0.0  # a rate of zero charges nothing, not its minimum
        cap = min(self.maximum, self.maximum_per_value * value)
        return ROUNDINGS[self.rounding](min(max(raw, self.minimum), cap))


def _sec(since: str, per_million: float, advisory: str) -> Fee:
    return Fee("SEC fee", "USD", SALES, dt.date.fromisoformat(since), f"SEC {advisory}",
               per_value=per_million / 1e6, rounding="up_to_cent")


def _taf(since: str, per_share: float, cap: float, source: str) -> Fee:
    return Fee("FINRA TAF", "USD", SALES, dt.date.fromisoformat(since), source,
               per_share=per_share, maximum=cap, rounding="up_to_cent")


FEES: tuple[Fee, ...] = (
    # ---- US stocks
    Fee("IBKR commission", "USD", SIDES, EVER,
        "IBKR Pro Fixed, US: USD 0.005/share, minimum USD 1.00, maximum 1% of trade value; "
        "https://www.interactivebrokers.com/en/pricing/commissions-stocks.php (read 2026-11-29)",
        per_share=0.005, minimum=1.0, maximum_per_value=0.01),
    # Section 31 of the Exchange Act, USD per million dollars sold; each rate from its fee rate
    # advisory (https://www.sec.gov/rules-regulations/fee-rate-advisories), read 2026-11-29.
    _sec("2013-05-25", 17.40, "FY2013 Fee Rate Advisory #3"),
    _sec("2014-03-18", 22.10, "FY2014 Fee Rate Advisory #3"),
    _sec("2015-02-14", 18.40, "FY2015 Fee Rate Advisory #3"),
    _sec("2016-02-16", 21.80, "FY2016 Fee Rate Advisory #3"),
    _sec("2017-07-04", 23.10, "FY2017 Fee Rate Advisory #3"),
    _sec("2018-05-22", 13.00, "FY2018 Fee Rate Advisory #3"),
    _sec("2019-04-16", 20.70, "FY2019 Fee Rate Advisory #2"),
    _sec("2020-02-18", 22.10, "FY2020 Fee Rate Advisory #2"),
    _sec("2021-02-25", 5.10, "FY2021 Fee Rate Advisory #2"),
    _sec("2022-05-14", 22.90, "FY2022 Fee Rate Advisory #2"),
    _sec("2023-02-27", 8.00, "FY2023 Fee Rate Advisory #2"),
    _sec("2024-05-22", 27.80, "FY2024 Fee Rate Advisory #2"),
    _sec("2025-05-14", 0.00, "FY2025 Fee Rate Advisory #2: FY2025's collections met, no fee"),
    _sec("2026-04-04", 20.60, "FY2026 Fee Rate Advisory #2, Order Release No. 34-104909 (2026-02-27), "
                              "in force until 60 days after the FY2027 appropriation"),
    # FINRA By-Laws, Schedule A, Section 1: per share sold of a covered equity security, capped per trade.
    _taf("2012-07-01", 0.000119, 5.95, "FINRA Regulatory Notice 12-31"),
    _taf("2022-01-01", 0.000130, 6.49, "SR-FINRA-2020-032 (SEC Release 34-90176), fee phase-in"),
    _taf("2023-01-01", 0.000145, 7.27, "SR-FINRA-2020-032 (SEC Release 34-90176), fee phase-in"),
    _taf("2024-01-01", 0.000166, 8.30, "SR-FINRA-2020-032; unchanged for 2025 per SR-FINRA-2024-019"),
    _taf("2026-01-01", 0.000195, 9.79, "SR-FINRA-2024-019, fee adjustment schedule for 2026"),
    _taf("2026-10-01", 0.0, 0.0, "SR-FINRA-2026-021: TAF paused for trades 2026-10-01 to 2026-12-31"),
    _taf("2027-01-01", 0.000232, 11.61, "SR-FINRA-2024-019, fee adjustment schedule for 2027"),
    # ---- Hong Kong stocks
    Fee("IBKR commission", "HKD", SIDES, EVER,
        "IBKR Fixed, Hong Kong SEHK stocks: 0.08% of trade value, minimum HKD 18, no maximum; "
        "https://www.interactivebrokers.com.hk/en/index.php?f=49708 (read 2026-11-29)",
        per_value=0.0008, minimum=18.0),
    Fee("stamp duty", "HKD", SIDES, EVER, "Stamp Duty Ordinance (Cap. 117): 0.1% of the value per side "
        "before the 2021 rise", per_value=0.001, rounding="up_to_dollar"),
    Fee("stamp duty", "HKD", SIDES, dt.date(2021, 8, 1), "Stamp Duty (Amendment) Ordinance 2021: 0.13% per side",
        per_value=0.0013, rounding="up_to_dollar"),
    Fee("stamp duty", "HKD", SIDES, dt.date(2023, 11, 17), "Stamp Duty (Amendment) Ordinance 2023: 0.1% per "
        "side from 17 November 2023, a part of a dollar counting as a dollar", per_value=0.001,
        rounding="up_to_dollar"),
    Fee("SFC transaction levy", "HKD", SIDES, dt.date(2014, 10, 1), "Securities and Futures Commission: "
        "0.0027% of the value per side since 1 October 2014", per_value=0.000027),
    Fee("AFRC transaction levy", "HKD", SIDES, EVER, "no such levy before 2022", per_value=0.0),
    Fee("AFRC transaction levy", "HKD", SIDES, dt.date(2022, 1, 1), "Accounting and Financial Reporting "
        "Council (FRC until October 2022): 0.00015% of the value per side since 1 January 2022",
        per_value=0.0000015),
)


@lru_cache(maxsize=4096)
def in_force(currency: str, side: str, day: dt.date) -> tuple[Fee, ...]:
    """The rows that apply to one side of a trade on ``day``: for each charge, its latest row by then."""
    latest: dict[str, Fee] = {}
    for fee in FEES:  # each charge's rows are in date order
        if fee.currency == currency and side in fee.sides and (fee.since <= day or fee.name not in latest):
            latest[fee.name] = fee
    return tuple(latest.values())


def charges(currency: str, side: str, quantity: float, value: float, day: dt.date) -> dict[str, float]:
    """Each charge on an order of ``quantity`` shares worth ``value``, traded on ``day`` (exchange-local)."""
    return {fee.name: fee.amount(float(quantity), float(value)) for fee in _fees(currency, side, day)}


def commission(currency: str, side: str, quantity: float, value: float, day: dt.date) -> float:
    """An order's total charge once ``quantity`` shares worth ``value`` have filled on ``day``: the sum of
    its ``charges`` (summed here without the dictionary: the backtest calls this once per order)."""
    quantity, value = float(quantity), float(value)
    return round(sum([fee.amount(quantity, value) for fee in _fees(currency, side, day)]), 2)


def _fees(currency: str, side: str, day: dt.date) -> tuple[Fee, ...]:
    if side not in SIDES:
        raise ValueError(f"side must be BUY or SELL, not {side!r}")
    return in_force(currency, side, day)
