"""The simulated gateway's contract catalogue: which stocks exist and how they trade.

TWS answers a contract request from IB's security master; the simulator answers
it from the small table below: the large US names and ETFs and the large Hong
Kong names, with the identifiers, descriptions and trading rules that a real
``reqContractDetails`` reports for them. The other modules ask this one:

- ``find`` and ``by_con_id`` match a request to listings, as TWS does;
  ``search`` answers a symbol search (reqMatchingSymbols);
- ``min_tick`` and ``round_to_tick`` apply the listing's price ladder (US cents,
  HKEX's spread table);
- ``trading_hours`` builds IB's tradingHours / liquidHours strings;
- ``session_table`` lists every trading session of an exchange calendar as numpy
  arrays, for the price model's bars.

Exchange holidays and half days come from ``exchange_calendars``. Loading a
calendar takes about a tenth of a second, so each one is loaded once, lazily,
and covers 2000-2049: the span the simulator's price model supports.
"""

import bisect
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from functools import lru_cache
from zoneinfo import ZoneInfo

import numpy as np
import pandas as pd

from ..hours import load_calendar

# ------------------------------------------------------------------ listings

# validExchanges and orderTypes of a SMART US stock as real TWS sent them for AAPL on 2025-03-23
# (wboayue/rust-ibapi, commit 4512f99e, src/transport/connection/tests.rs, AAPL_CONTRACT).
US_EXCHANGES = ("SMART,AMEX,NYSE,CBOE,PHLX,ISE,CHX,ARCA,NASDAQ,DRCTEDGE,BEX,BATS,EDGEA,BYX,IEX,EDGX,FOXRIVER,"
                "PEARL,NYSENAT,LTSE,MEMX,IBEOS,OVERNIGHT,TPLUS0,PSX")
US_ORDER_TYPES = ("ACTIVETIM,AD,ADDONT,ADJUST,ALERT,ALGO,ALLOC,AON,AVGCOST,BASKET,BENCHPX,CASHQTY,COND,CONDORDER,"
                  "DARKONLY,DARKPOLL,DAY,DEACT,DEACTDIS,DEACTEOD,DIS,DUR,GAT,GTC,GTD,GTT,HID,IBKRATS,ICE,IMB,IOC,"
                  "LIT,LMT,LOC,MIDPX,MIT,MKT,MOC,MTL,NGCOMB,NODARK,NONALGO,OCA,OPG,OPGREROUT,PEGBENCH,PEGMID,"
                  "POSTATS,POSTONLY,PREOPGRTH,PRICECHK,REL,REL2MID,RELPCTOFS,RPI,RTH,SCALE,SCALEODD,SCALERST,"
                  "SIZECHK,SMARTSTG,SNAPMID,SNAPMKT,SNAPREL,STP,STPLMT,SWEEP,TRAIL,TRAILLIT,TRAILLMT,TRAILMIT,"
                  "WHATIF")
HK_ORDER_TYPES = ("ACTIVETIM,AD,ADJUST,ALERT,ALLOC,AVGCOST,BASKET,COND,CONDORDER,DAY,DEACT,DEACTDIS,"
                  "DEACTEOD,GAT,GTC,GTD,GTT,HID,IOC,LIT,LMT,MIT,MKT,NONALGO,OCA,SCALE,STP,STPLMT,"
                  "TRAIL,TRAILLIT,TRAILLMT,TRAILMIT,WHATIF")

US_MARKET_RULE = 26  # real TWS: "26,26,...", one per valid exchange (rust-ibapi's TSLA capture, below)
HK_MARKET_RULE = 1723  # a plausible id for SEHK's ladder: no published capture of an SEHK stock's rule id found

# What real TWS reports in contract details, from published captures of its messages:
# - wboayue/rust-ibapi, commit a3c0c478 (2023-01-03), src/contracts/tests.rs: TSLA on SMART recorded
#   2022-12-29: minTick 0.01, timeZoneId "US/Eastern", secIdList 1|ISIN|US88160R1014, marketRuleIds
#   "26" per valid exchange, tradingHours "20221229:0400-20221229:2000;...;20230103:0400-20230103:2000"
#   and liquidHours "...0930-...1600": six calendar days from today, CLOSED on days without a session
#   (none at the end: see the AAPL capture below).
# - ib-api-reloaded/ib_async, ib_async/contract.py (ContractDetails._parseSessions): its docstring shows
#   the same six-day form from Sunday 2024-07-21 ("20240721:CLOSED;20240722:0400-20240722:2000;...;
#   20240726:0400-20240726:2000").
# - rust-ibapi, commit 4512f99e (2025-03-24), src/transport/connection/tests.rs: AAPL on SMART in a
#   session whose handshake reads "20250323 22:21:01 Greenwich Mean Time" (a Sunday evening in New
#   York): minTick 0.01, US/Eastern, ISIN US0378331005, minSize and sizeIncrement 0.0001 (fractional
#   shares), suggestedSizeIncrement 100, and hours for Monday 24 to Friday 28 March: a trailing
#   weekend is left out. (It also starts on Monday: TWS had already moved to the next trading day
#   that Sunday evening; the simulator starts on the exchange's date.)
# - IB's API docs, "Trading Schedule TimeZoneId" (interactivebrokers.github.io/tws-api/contract_details.html):
#   TWS sends the schedule's zone ids as-is: "US/Eastern", "Hongkong", "Japan", "MET", ... (tz database
#   links, not the canonical IANA names).
# - IB's API docs, "Minimum Price Increment" (interactivebrokers.github.io/tws-api/minimum_increment.html):
#   minTick is "the smallest possible minimum increment encountered on any exchange or price"; the price
#   at hand follows the market rule. US stocks report 0.01 (the captures above); for SEHK stocks this
#   catalogue reports the spread table's smallest step, 0.001 (no published SEHK capture was found).
TWS_TIME_ZONE_IDS = {"America/New_York": "US/Eastern", "Asia/Hong_Kong": "Hongkong"}
US_MIN_TICK = 0.01
US_SIZE_RULES = (0.0001, 0.0001, 100)  # minSize, sizeIncrement, suggestedSizeIncrement

# The venue a fill reports (execDetails' exchange, and its contract's): an exchange code, such as
# "ISLAND" for Nasdaq's book in rust-ibapi's recorded fill of a SMART TSLA order on 2023-02-24
# (commit ab912e08, src/orders/tests.rs). The simulator fills a US stock on its listing market's
# own book, a Hong Kong stock on SEHK.
EXECUTION_VENUES = {"NASDAQ": "ISLAND", "NYSE": "NYSE", "ARCA": "ARCA", "SEHK": "SEHK"}

# Price ladders as IB's reqMarketRule reports them: (low edge, increment) rows,
# each increment applying from its low edge up to the next row's. The US rule is
# SEC rule 612 (cents, sub-penny below $1); the HK rule is HKEX's spread table.
MARKET_RULES: dict[int, tuple[tuple[float, float], ...]] = {
    US_MARKET_RULE: ((0.0, 0.0001), (1.0, 0.01)),
    HK_MARKET_RULE: ((0.0, 0.001), (0.25, 0.005), (0.5, 0.01), (10.0, 0.02), (20.0, 0.05),
                     (100.0, 0.1), (200.0, 0.2), (500.0, 0.5), (1000.0, 1.0), (2000.0, 2.0),
                     (5000.0, 5.0)),
}


# What a symbol search reports as traded on each stock: every listing here has
# listed options, warrants and CFDs at IB.
DERIVATIVE_SEC_TYPES = ("CFD", "OPT", "IOPT", "WAR", "BAG")
MAX_SEARCH_RESULTS = 16  # TWS returns at most 16 matches per symbol search


@dataclass(frozen=True)
class Listing:
    """One stock on one exchange, with what contract details report for it."""

    symbol: str  # IB symbol: "AAPL", "BRK B", "700"
    con_id: int
    exchange: str  # what contract details report: "SMART" (US) or "SEHK"
    primary_exchange: str  # "NASDAQ", "NYSE", "ARCA", "SEHK"
    currency: str
    local_symbol: str
    trading_class: str  # "NMS" for NASDAQ stocks, else the symbol
    long_name: str
    industry: str
    category: str
    subcategory: str
    stock_type: str  # "COMMON" or "ETF"
    board_lot: int  # orders trade in multiples of it: 1 in the US, the board lot in HK
    calendar: str  # exchange_calendars name: "XNYS" or "XHKG"
    time_zone: str  # IANA name of the exchange's zone (contract details send TWS's id for it)
    isin: str  # contract details' secIdList
    min_tick: float  # contract details' minTick
    size_rules: tuple[float, float, float]  # minSize, sizeIncrement, suggestedSizeIncrement
    base_price: float  # the price model's level on 2026-01-01
    annual_vol: float  # the price model's annualised volatility
    market_rule_id: int  # key into MARKET_RULES
    valid_exchanges: str
    order_types: str
    daily_volume: int  # the price model's typical shares traded per session
    sec_type: str = "STK"


def _us(symbol, con_id, isin, primary, long_name, industry, category, subcategory,
        base_price, annual_vol, daily_volume, stock_type="COMMON") -> Listing:
    return Listing(
        symbol=symbol, con_id=con_id, exchange="SMART", primary_exchange=primary, currency="USD",
        local_symbol=symbol, trading_class="NMS" if primary == "NASDAQ" else symbol,
        long_name=long_name, industry=industry, category=category, subcategory=subcategory,
        stock_type=stock_type, board_lot=1, calendar="XNYS", time_zone="America/New_York",
        isin=isin, min_tick=US_MIN_TICK, size_rules=US_SIZE_RULES,
        base_price=base_price, annual_vol=annual_vol, market_rule_id=US_MARKET_RULE,
        valid_exchanges=US_EXCHANGES, order_types=US_ORDER_TYPES, daily_volume=daily_volume)


def _hk(symbol, con_id, isin, long_name, industry, category, subcategory, board_lot,
        base_price, annual_vol, daily_volume, stock_type="COMMON") -> Listing:
    return Listing(
        symbol=symbol, con_id=con_id, exchange="SEHK", primary_exchange="SEHK", currency="HKD",
        local_symbol=symbol, trading_class=symbol,
        long_name=long_name, industry=industry, category=category, subcategory=subcategory,
        stock_type=stock_type, board_lot=board_lot, calendar="XHKG", time_zone="Asia/Hong_Kong",
        isin=isin, min_tick=MARKET_RULES[HK_MARKET_RULE][0][1],
        # SEHK orders trade in whole board lots (odd lots go to a separate book), so TWS's size
        # fields are the board lot; qdibkr reads minSize as the board lot (qdibkr.broker).
        size_rules=(board_lot, board_lot, board_lot),
        base_price=base_price, annual_vol=annual_vol, market_rule_id=HK_MARKET_RULE,
        valid_exchanges="SEHK", order_types=HK_ORDER_TYPES, daily_volume=daily_volume)


# US conIds are IB's real ones; the HK conIds are plausible stand-ins.
CATALOGUE: tuple[Listing, ...] = (
    _us("AAPL", 265598, "US0378331005", "NASDAQ", "APPLE INC", "Technology", "Computers", "Computers",
        270.0, 0.25, 50_000_000),
    _us("MSFT", 272093, "US5949181045", "NASDAQ", "MICROSOFT CORP", "Technology", "Software",
        "Applications Software", 500.0, 0.22, 20_000_000),
    _us("TSLA", 76792991, "US88160R1014", "NASDAQ", "TESLA INC", "Consumer, Cyclical", "Auto Manufacturers",
        "Auto-Cars/Light Trucks", 420.0, 0.55, 90_000_000),
    _us("GOOGL", 208813719, "US02079K3059", "NASDAQ", "ALPHABET INC-CL A", "Communications", "Internet",
        "Web Portals/ISP", 280.0, 0.28, 30_000_000),
    _us("AMZN", 3691937, "US0231351067", "NASDAQ", "AMAZON.COM INC", "Communications", "Internet",
        "E-Commerce/Products", 230.0, 0.30, 40_000_000),
    _us("NVDA", 4815747, "US67066G1040", "NASDAQ", "NVIDIA CORP", "Technology", "Semiconductors",
        "Electronic Compo-Semicon", 185.0, 0.45, 180_000_000),
    _us("META", 107113386, "US30303M1027", "NASDAQ", "META PLATFORMS INC-CLASS A", "Communications", "Internet",
        "Internet Content-Entmnt", 650.0, 0.35, 12_000_000),
    _us("BRK B", 72063691, "US0846707026", "NYSE", "BERKSHIRE HATHAWAY INC-CL B", "Financial", "Insurance",
        "Reinsurance", 500.0, 0.15, 4_000_000),
    _us("JPM", 1520593, "US46625H1005", "NYSE", "JPMORGAN CHASE & CO", "Financial", "Banks",
        "Diversified Banking Inst", 300.0, 0.22, 9_000_000),
    _us("SPY", 756733, "US78462F1030", "ARCA", "SPDR S&P 500 ETF TRUST", "Funds", "Equity Fund", "Large Cap",
        660.0, 0.15, 70_000_000, stock_type="ETF"),
    _us("QQQ", 320227571, "US46090E1038", "NASDAQ", "INVESCO QQQ TRUST SERIES 1", "Funds", "Equity Fund",
        "Large Cap", 600.0, 0.20, 45_000_000, stock_type="ETF"),
    _us("IWM", 9579970, "US4642876555", "ARCA", "ISHARES RUSSELL 2000 ETF", "Funds", "Equity Fund", "Small Cap",
        240.0, 0.22, 30_000_000, stock_type="ETF"),
    _hk("700", 37_180_700, "KYG875721634", "TENCENT HOLDINGS LTD", "Communications", "Internet",
        "Internet Content-Entmnt", 100, 600.0, 0.35, 15_000_000),
    _hk("5", 37_180_005, "GB0005405286", "HSBC HOLDINGS PLC", "Financial", "Banks", "Diversified Banking Inst",
        400, 100.0, 0.22, 20_000_000),
    _hk("9988", 37_189_988, "KYG017191142", "ALIBABA GROUP HOLDING LTD", "Communications", "Internet",
        "E-Commerce/Products", 100, 150.0, 0.45, 60_000_000),
    _hk("1299", 37_181_299, "HK0000069689", "AIA GROUP LTD", "Financial", "Insurance", "Life/Health Insurance",
        200, 75.0, 0.30, 25_000_000),
    _hk("3690", 37_183_690, "KYG596691041", "MEITUAN-CLASS B", "Communications", "Internet", "E-Commerce/Services",
        100, 100.0, 0.50, 30_000_000),
    _hk("388", 37_180_388, "HK0388045442", "HONG KONG EXCHANGES & CLEAR", "Financial", "Diversified Finan Serv",
        "Finance-Other Services", 100, 400.0, 0.32, 5_000_000),
    _hk("941", 37_180_941, "HK0941009539", "CHINA MOBILE LTD", "Communications", "Telecommunications",
        "Cellular Telecom", 500, 85.0, 0.20, 15_000_000),
    _hk("1810", 37_181_810, "KYG9830T1067", "XIAOMI CORP-CLASS B", "Technology", "Computers", "Computers",
        200, 45.0, 0.50, 150_000_000),
    _hk("2318", 37_182_318, "CNE1000003X6", "PING AN INSURANCE GROUP CO-H", "Financial", "Insurance",
        "Multi-line Insurance", 500, 55.0, 0.35, 30_000_000),
    _hk("2800", 37_182_800, "HK2800008867", "TRACKER FUND OF HONG KONG", "Funds", "Equity Fund", "Large Cap",
        500, 26.0, 0.22, 60_000_000, stock_type="ETF"),
)

_BY_CON_ID = {listing.con_id: listing for listing in CATALOGUE}


def by_con_id(con_id: int) -> Listing | None:
    return _BY_CON_ID.get(con_id)


def _same_symbol(a: str, b: str) -> bool:
    """Case-insensitive, with "BRK.B" and "BRK B" alike, as TWS accepts both."""
    return a.upper().replace(".", " ") == b.upper().replace(".", " ")


def _exchange_matches(listing: Listing, exchange: str) -> bool:
    """US stocks route SMART or to their primary exchange; HK stocks trade on SEHK."""
    exchange = exchange.upper()
    if listing.currency == "USD":
        return exchange in ("SMART", listing.primary_exchange)
    return exchange == "SEHK"


def find(symbol: str, sec_type: str = "", exchange: str = "", primary_exchange: str = "",
         currency: str = "", con_id: int = 0, local_symbol: str = "") -> list[Listing]:
    """The listings a reqContractDetails request matches, as TWS would match them.

    Every non-empty field must match. A conId alone identifies a listing; a
    request with no symbol, local symbol or conId matches nothing (TWS refuses
    it). Several listings may match when fields are left empty; none is [],
    which the server reports as error 200.
    """
    if not (symbol or local_symbol or con_id):
        return []
    if sec_type and sec_type.upper() != "STK":
        return []
    candidates = [by_con_id(con_id)] if con_id else CATALOGUE
    return [
        listing for listing in candidates
        if listing is not None
        and (not symbol or _same_symbol(symbol, listing.symbol))
        and (not local_symbol or _same_symbol(local_symbol, listing.local_symbol))
        and (not exchange or _exchange_matches(listing, exchange))
        and (not primary_exchange or primary_exchange.upper() == listing.primary_exchange)
        and (not currency or currency.upper() == listing.currency)
    ]


def search(pattern: str) -> list[Listing]:
    """The listings a symbol search (reqMatchingSymbols) finds, best first, as TWS ranks them:
    the exact symbol, then symbols that start with the pattern, then company names with a
    word that does. Case-insensitive; "BRK.B" and "BRK B" alike."""
    text = pattern.strip().upper().replace(".", " ")
    if not text:
        return []

    def rank(listing: Listing) -> int | None:
        if listing.symbol == text:
            return 0
        if listing.symbol.startswith(text):
            return 1
        if f" {text}" in f" {listing.long_name}":  # at the start of a word
            return 2
        return None

    ranked = [(rank(listing), i) for i, listing in enumerate(CATALOGUE)]
    return [CATALOGUE[i] for r, i in sorted(x for x in ranked if x[0] is not None)][:MAX_SEARCH_RESULTS]


def market_rule_ids(listing: Listing) -> str:
    """Contract details' marketRuleIds: one rule id per valid exchange, in the same order."""
    return ",".join([str(listing.market_rule_id)] * len(listing.valid_exchanges.split(",")))


def time_zone_id(listing: Listing) -> str:
    """Contract details' timeZoneId: TWS's name for the exchange's zone ("US/Eastern", "Hongkong")."""
    return TWS_TIME_ZONE_IDS[listing.time_zone]


def execution_venue(listing: Listing) -> str:
    """The exchange code a fill of this listing reports (ISLAND for a NASDAQ stock)."""
    return EXECUTION_VENUES[listing.primary_exchange]


# ------------------------------------------------------------------ price ladder

@lru_cache(maxsize=None)
def _ladder(market_rule_id: int) -> tuple[np.ndarray, np.ndarray]:
    rows = MARKET_RULES[market_rule_id]
    return np.array([edge for edge, _ in rows]), np.array([step for _, step in rows])


def _tick_size(listing: Listing, price: float) -> float:
    """The scalar case of ``_tick_sizes``, without numpy's per-call overhead (the order path's hot spot)."""
    rows = MARKET_RULES[listing.market_rule_id]
    return rows[max(0, bisect.bisect_right([edge for edge, _ in rows], price) - 1)][1]


def _tick_sizes(listing: Listing, prices: np.ndarray) -> np.ndarray:
    edges, steps = _ladder(listing.market_rule_id)
    band = np.searchsorted(edges, prices, side="right") - 1
    return steps[np.clip(band, 0, len(steps) - 1)]


def min_tick(listing: Listing, price):
    """The price increment allowed at ``price``, a float or a numpy array.

    As in IB's market rules, a band's low edge belongs to it: 100.0 on SEHK
    trades in steps of 0.1 (HKEX's table puts it in the 0.05 band; both ladders
    agree on which prices are valid).
    """
    if isinstance(price, (float, int)):
        return _tick_size(listing, price)
    ticks = _tick_sizes(listing, np.asarray(price, dtype=float))
    return float(ticks) if ticks.ndim == 0 else ticks


def round_to_tick(listing: Listing, price, direction: str = "nearest"):
    """Round onto the listing's price ladder: "nearest", "down" or "up".

    ``price`` may be a float or a numpy array (the price model rounds whole bar
    series at once); the result has the same form. Every band edge of both
    ladders is a multiple of the increments on either side of it, so rounding
    with the increment at the price itself always lands on a valid price.
    """
    scalar = isinstance(price, (float, int))
    prices = float(price) if scalar else np.asarray(price, dtype=float)
    tick = _tick_size(listing, prices) if scalar else _tick_sizes(listing, prices)
    # round() first so that 412.4 / 0.2 = 2061.9999999 floors to 2062, not 2061.
    steps = np.round(prices / tick, 9)
    if direction == "down":
        steps = np.floor(steps)
    elif direction == "up":
        steps = np.ceil(steps)
    elif direction == "nearest":
        steps = np.floor(steps + 0.5)
    else:
        raise ValueError(f"direction must be 'nearest', 'down' or 'up', not {direction!r}")
    rounded = np.round(steps * tick, 6)
    return float(rounded) if scalar or rounded.ndim == 0 else rounded


# ------------------------------------------------------------------ sessions

# Extended (outside-RTH) hours per calendar: local pre-market start and how long
# after the close trading goes on. US: 04:00 to 20:00 (17:00 on half days).
# Calendars not listed here trade only their regular hours.
_EXTENDED_HOURS = {"XNYS": (timedelta(hours=4), timedelta(hours=4))}


@dataclass(frozen=True, eq=False)
class SessionTable:
    """Every session of one calendar, 2000-2049, as parallel arrays; times are epoch seconds."""

    day: np.ndarray  # datetime64[D]: the session's date in the exchange's zone
    open: np.ndarray  # regular trading hours (RTH)
    close: np.ndarray
    break_start: np.ndarray  # lunch break (HK); NaN when the session has none
    break_end: np.ndarray
    ext_open: np.ndarray  # extended hours, the window for bars with use_rth=False
    ext_close: np.ndarray
    utc_offset: np.ndarray  # local time minus UTC during the session, seconds


def _epoch(times: pd.Series | pd.DatetimeIndex) -> np.ndarray:
    """UTC timestamps to float epoch seconds, NaT to NaN."""
    stamps = pd.DatetimeIndex(times)
    seconds = stamps.as_unit("s").asi8.astype(float)
    seconds[stamps.isna()] = np.nan
    return seconds


@lru_cache(maxsize=None)
def session_table(calendar: str) -> SessionTable:
    """All sessions of an exchange calendar (loaded once, on first use)."""
    cal = load_calendar(calendar)
    schedule = cal.schedule
    days = schedule.index
    zone = str(cal.tz)
    opens, closes = _epoch(schedule["open"]), _epoch(schedule["close"])
    local_open = schedule["open"].dt.tz_convert(zone).dt.tz_localize(None)
    utc_offset = _epoch(local_open) - opens
    if calendar in _EXTENDED_HOURS:
        pre_start, post_length = _EXTENDED_HOURS[calendar]
        ext_open = _epoch((days + pre_start).tz_localize(zone).tz_convert("UTC"))
        ext_close = closes + post_length.total_seconds()
    else:
        ext_open, ext_close = opens, closes
    table = SessionTable(
        day=days.values.astype("datetime64[D]"), open=opens, close=closes,
        break_start=_epoch(schedule["break_start"]), break_end=_epoch(schedule["break_end"]),
        ext_open=ext_open, ext_close=ext_close, utc_offset=utc_offset)
    for array in vars(table).values():
        array.setflags(write=False)  # shared by every caller
    return table


# ------------------------------------------------------------------ trading hours

def _ranges(zone: ZoneInfo, spans: list[tuple[float, float]]) -> list[str]:
    def stamp(t: float) -> str:
        return datetime.fromtimestamp(t, zone).strftime("%Y%m%d:%H%M")
    return [f"{stamp(start)}-{stamp(end)}" for start, end in spans]


def load_calendars():
    """Load every exchange calendar the catalogue uses (each is cached once loaded)."""
    for name in sorted({listing.calendar for listing in CATALOGUE}):
        session_table(name)


SCHEDULE_DAYS = 6  # TWS covers today and the next five calendar days, less closed days at the end


def trading_hours(listing: Listing, now: datetime, days: int = SCHEDULE_DAYS) -> tuple[str, str]:
    """IB's (tradingHours, liquidHours) for ``days`` days from ``now``'s local date.

    Times are in the exchange's zone, days without a session read CLOSED:
    ``"20261125:0400-20261125:2000;20261126:CLOSED;..."``, except at the end, where TWS leaves
    them out (a span ending on a weekend ends on the Friday). Liquid hours are the
    regular session (two ranges on a day with a lunch break); trading hours add
    the extended hours where the exchange has them. A naive ``now`` is UTC.
    """
    if now.tzinfo is None:
        now = now.replace(tzinfo=timezone.utc)
    zone = ZoneInfo(listing.time_zone)
    table = session_table(listing.calendar)
    first = now.astimezone(zone).date()
    trading, liquid = [], []
    for offset in range(days):
        day = first + timedelta(days=offset)
        label = day.strftime("%Y%m%d")
        i = int(np.searchsorted(table.day, np.datetime64(day, "D")))
        if i == len(table.day) or table.day[i] != np.datetime64(day, "D"):
            trading.append(f"{label}:CLOSED")
            liquid.append(f"{label}:CLOSED")
            continue
        if np.isnan(table.break_start[i]):
            regular = [(table.open[i], table.close[i])]
        else:
            regular = [(table.open[i], table.break_start[i]), (table.break_end[i], table.close[i])]
        liquid += _ranges(zone, regular)
        if listing.calendar in _EXTENDED_HOURS:
            trading += _ranges(zone, [(table.ext_open[i], table.ext_close[i])])
        else:
            trading += _ranges(zone, regular)
    while len(trading) > 1 and trading[-1].endswith(":CLOSED"):  # a closed day is one entry in each
        trading.pop()
        liquid.pop()
    return ";".join(trading), ";".join(liquid)

