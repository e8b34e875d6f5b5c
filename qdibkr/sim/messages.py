"""Outgoing TWS messages, as field lists, for a negotiated server version.

Each function mirrors the matching ``Decoder`` method of ib_insync 0.9.86 (and
ib_async 2.x, which decodes the same at these versions) field by field; the
comments name the fields so the two can be read side by side. Empty fields are
"unset" and decode to the client's defaults. Counts and flags that the
decoders read with ``int()`` must be present ("0").

The simulator serves versions 157 to 176; ``version`` below is what was
negotiated with this client, and each ``if version`` is a place where TWS
changed a message's layout inside that range.
"""

import datetime as dt
from zoneinfo import ZoneInfo

from . import catalogue
from .broker import Execution, Order, PnL, Position
from .catalogue import Listing
from .market import Bar
from .wire import UNSET_DOUBLE

MIN_VERSION = 157
MAX_VERSION = 176
SERVER_ZONE = "America/New_York"

# Message ids TWS sends.
TICK_PRICE, TICK_SIZE, ORDER_STATUS, ERROR, OPEN_ORDER = 1, 2, 3, 4, 5
ACCOUNT_VALUE, PORTFOLIO_VALUE, ACCOUNT_UPDATE_TIME, NEXT_VALID_ID = 6, 7, 8, 9
CONTRACT_DATA, EXECUTION_DATA, UPDATE_MKT_DEPTH, UPDATE_MKT_DEPTH_L2 = 10, 11, 12, 13
MANAGED_ACCOUNTS, HISTORICAL_DATA, SCANNER_PARAMETERS = 15, 17, 19
CURRENT_TIME, REAL_TIME_BARS, CONTRACT_DATA_END, OPEN_ORDER_END, ACCOUNT_DOWNLOAD_END = 49, 50, 52, 53, 54
EXECUTION_DATA_END, TICK_SNAPSHOT_END, MARKET_DATA_TYPE, COMMISSION_REPORT = 55, 57, 58, 59
POSITION_DATA, POSITION_END, ACCOUNT_SUMMARY, ACCOUNT_SUMMARY_END = 61, 62, 63, 64
ACCOUNT_UPDATE_MULTI, ACCOUNT_UPDATE_MULTI_END, SYMBOL_SAMPLES, MKT_DEPTH_EXCHANGES = 73, 74, 79, 80
TICK_REQ_PARAMS, NEWS_PROVIDERS, HEAD_TIMESTAMP, MARKET_RULE, PNL, PNL_SINGLE = 81, 85, 88, 93, 94, 95
TICK_BY_TICK, COMPLETED_ORDER, COMPLETED_ORDERS_END = 99, 101, 102

UNSET_INTEGER = 2**31 - 1

# What the simulator answers, besides an error, to an unsupported request that has
# no reqId: the error cannot end it in the client, an empty answer does.
EMPTY_ANSWERS = {
    "reqScannerParameters": [SCANNER_PARAMETERS, 1, ""],  # no XML document
    "reqNewsProviders": [NEWS_PROVIDERS, 0],  # no providers
}


def ib_time(t: float, zone: str = SERVER_ZONE) -> str:
    """``20261125 09:30:00 America/New_York``: IB's date-time with an IANA zone."""
    local = dt.datetime.fromtimestamp(t, ZoneInfo(zone))
    return f"{local:%Y%m%d %H:%M:%S} {zone}"


def number(x: float) -> str:
    """A quantity: whole numbers without a trailing ``.0``, as TWS writes decimals."""
    return str(int(x)) if float(x).is_integer() else str(x)


def handshake(version: int, now: float) -> list:
    return [version, ib_time(now)]


def error(version: int, req_id: int, code: int, text: str) -> list:
    fields = [ERROR, 2, req_id, code, text]
    if version >= 166:
        fields.append("")  # advancedOrderRejectJson
    return fields


# ------------------------------------------------------------------ contracts
def _contract(listing: Listing, exchange: str) -> list:
    """conId, symbol, secType, lastTradeDate, strike, right, multiplier, exchange, currency, localSymbol, tradingClass."""
    return [listing.con_id, listing.symbol, "STK", "", 0.0, "", "", exchange,
            listing.currency, listing.local_symbol, listing.trading_class]


def contract_data(version: int, req_id: int, listing: Listing, now: float) -> list:
    """A contract details message with what real TWS reports for the listing (see the sources at the top
    of ``catalogue``): TWS's time-zone id, the ISIN, six days of trading and liquid hours."""
    trading_hours, liquid_hours = catalogue.trading_hours(listing, dt.datetime.fromtimestamp(now, dt.timezone.utc))
    fields = [CONTRACT_DATA]
    if version < 164:
        fields.append(8)  # message version, dropped in 164
    fields += [
        req_id, listing.symbol, "STK",
        "",  # lastTradeDateOrContractMonth
        0.0, "",  # strike, right
        listing.exchange, listing.currency, listing.local_symbol,
        listing.trading_class,  # marketName
        listing.trading_class, listing.con_id,
        listing.min_tick,
    ]
    if version < 164:
        fields.append(1)  # mdSizeMultiplier, obsolete
    fields += [
        "",  # multiplier
        listing.order_types, listing.valid_exchanges,
        1, 0,  # priceMagnifier, underConId
        listing.long_name, listing.primary_exchange,
        "",  # contractMonth
        listing.industry, listing.category, listing.subcategory,
        catalogue.time_zone_id(listing), trading_hours, liquid_hours,
        "", "",  # evRule, evMultiplier
        1, "ISIN", listing.isin,  # secIdList: one tag-value pair
        1,  # aggGroup
        "", "",  # underSymbol, underSecType
        catalogue.market_rule_ids(listing),
        "",  # realExpirationDate
        listing.stock_type,
    ]
    min_size, size_increment, suggested_size_increment = listing.size_rules
    if version == 163:
        fields.append(suggested_size_increment)
    if version >= 164:
        fields += [min_size, size_increment, suggested_size_increment]
    return fields


def symbol_samples(version: int, req_id: int, listings: list[Listing]) -> list:
    """reqMatchingSymbols' answer: a ContractDescription per listing."""
    fields = [SYMBOL_SAMPLES, req_id, len(listings)]
    for listing in listings:
        fields += [listing.con_id, listing.symbol, listing.sec_type, listing.primary_exchange, listing.currency,
                   len(catalogue.DERIVATIVE_SEC_TYPES), *catalogue.DERIVATIVE_SEC_TYPES]
        if version >= 176:
            fields += [listing.long_name, ""]  # description, issuerId
    return fields


def market_rule(rule_id: int) -> list:
    """marketRuleId, then (lowEdge, increment) per price band."""
    rows = catalogue.MARKET_RULES[rule_id]
    return [MARKET_RULE, rule_id, len(rows), *(value for row in rows for value in row)]


# ------------------------------------------------------------------ orders
def order_status(order: Order) -> list:
    return [ORDER_STATUS, order.order_id, order.status, number(order.filled), number(order.remaining),
            order.avg_fill_price, order.perm_id, order.parent_id, order.last_fill_price, order.client_id, "", 0.0]


# An order as TWS reports it (openOrder, completedOrder): field values from TWS's own messages,
# captured by rust-ibapi at server version 164 (a market order for TSLA, placed, filled, reported
# with its commission; a completed AAPL order):
# https://github.com/wboayue/rust-ibapi/blob/5fddde93/src/orders/tests.rs


def _order_contract(listing: Listing) -> list:
    """The contract of an order message: strike "0" and right "?" for a stock, as TWS writes them."""
    return [listing.con_id, listing.symbol, "STK", "", 0, "?", "", listing.exchange,
            listing.currency, listing.local_symbol, listing.trading_class]


def _order_prices(order: Order) -> list:
    """lmtPrice and auxPrice (a stop price, or a trailing amount): 0.0 where unused (a market
    order's limit), not the unset double."""
    return [_or(order.limit_price, 0.0), _or(order.aux_price, 0.0)]


def _or(x: float | None, absent):
    """A price the order may not have, else what TWS writes in its place (0.0, "" or the unset double)."""
    return absent if x is None else x


def _algo(order: Order) -> list:
    """algoStrategy, then its parameters (count, tag, value...) when there is one."""
    if not order.algo_strategy:
        return [""]
    return [order.algo_strategy, len(order.algo_params), *(x for kv in order.algo_params.items() for x in kv)]


def _delta_neutral() -> list:
    """deltaNeutralOrderType .. deltaNeutralDesignatedLocation: TWS names no order type "None", and
    the client then reads the eight fields that follow it."""
    return ["None", "",  # deltaNeutralOrderType, deltaNeutralAuxPrice
            0, "", "", "",  # conId, settlingFirm, clearingAccount, clearingIntent
            "?", 0, 0, ""]  # openClose, shortSale, shortSaleSlot, designatedLocation


def _adjusted(order: Order) -> list:
    """adjustedOrderType .. adjustableTrailingUnit: no adjustment; trailStopPrice and lmtPriceOffset
    sit among them (ib_insync reads trailStopPrice here last)."""
    return ["None", UNSET_DOUBLE, _or(order.trail_stop_price, UNSET_DOUBLE), _or(order.lmt_price_offset, UNSET_DOUBLE),
            *[UNSET_DOUBLE] * 3, 0]


def open_order(version: int, order: Order, with_commission: bool = False) -> list:
    """An order and its state. ``with_commission`` adds the commission charged so far to the state, as
    TWS does in the openOrder it sends after a fill's execDetails and state (min and max commission,
    for a what-if order, stay empty)."""
    listing = order.listing
    commission = [round(order.commission, 2), "", "", listing.currency] if with_commission else ["", "", "", ""]
    fields = [OPEN_ORDER, order.order_id, *_order_contract(listing),
              order.action, number(order.quantity), order.order_type, *_order_prices(order),
              order.tif, order.oca_group,
              order.account, "", 0,  # openClose (none for a stock), origin (customer)
              order.order_ref, order.client_id, order.perm_id,
              order.outside_rth, False,  # outsideRth, hidden
              0, "", "",  # discretionaryAmt, goodAfterTime, deprecated sharesAllocation
              "", "", "", "", "",  # faGroup, faMethod, faPercentage, faProfile, modelCode
              order.good_till_date, "", "", "",  # goodTillDate, rule80A, percentOffset, settlingFirm
              0, "", -1,  # shortSaleSlot, designatedLocation, exemptCode
              0, "", "", "", "", "",  # auctionStrategy, startingPrice, stockRefPrice, delta, stockRangeLower, stockRangeUpper
              UNSET_INTEGER, False, False, False, "",  # displaySize, blockOrder, sweepToFill, allOrNone, minQty
              order.oca_type or 3, False, False, "",  # ocaType (TWS's default 3), eTradeOnly, firmQuoteOnly, nbboPriceCap
              order.parent_id, 0,  # parentId, triggerMethod (0: the default, last for stocks)
              "", 0, *_delta_neutral(),  # volatility, volatilityType, delta-neutral order
              False, 0,  # continuousUpdate, referencePriceType
              _or(order.trail_stop_price, ""), _or(order.trailing_percent, ""),
              "", "", "",  # basisPoints, basisPointsType, comboLegsDescrip
              0, 0, 0,  # combo legs, order combo legs, smart combo routing params
              UNSET_INTEGER, UNSET_INTEGER, "",  # scaleInitLevelSize, scaleSubsLevelSize, scalePriceIncrement
              "",  # hedgeType
              False, "", "IB", False,  # optOutSmartRouting, clearingAccount, clearingIntent, notHeld
              False,  # deltaNeutralContract present
              *_algo(order),
              False, False,  # solicited, whatIf
              order.status,
              *[UNSET_DOUBLE] * 9,  # margin before / change / after (what-if orders only)
              *commission,  # commission, minCommission, maxCommission, commissionCurrency
              "",  # warningText
              False, False,  # randomizeSize, randomizePrice
              0,  # conditions
              *_adjusted(order),
              "", "", "",  # softDollarTier name, value, displayName
              0, True, False,  # cashQty, dontUseAutoPriceForHedge, isOmsContainer
              0, False]  # discretionaryUpToLimitPrice, usePriceMgmtAlgo
    if version >= 159:
        fields.append("")  # duration
    if version >= 160:
        fields.append("")  # postToAts
    if version >= 162:
        fields.append(False)  # autoCancelParent
    if version >= 170:
        # minTradeQty, minCompeteSize, competeAgainstBestOffset, midOffsetAtWhole, midOffsetAtHalf: TWS fills in
        # its defaults for the middle two (tests/fidelity/market_order_aapl_v173.json)
        fields += ["", 100, 0.02, "", ""]
    return fields


def completed_order(version: int, order: Order) -> list:
    """A completed order as TWS reports it: its totalQuantity is what was left unfilled (0 for the
    captured filled order; the whole order for a cancelled one, as in ib_insync issue 559)."""
    listing = order.listing
    fields = [COMPLETED_ORDER, *_order_contract(listing),
              order.action, number(order.remaining), order.order_type, *_order_prices(order),
              order.tif, order.oca_group, order.account, "", 0, order.order_ref, order.perm_id,  # openClose, origin
              order.outside_rth, False, 0, "",  # outsideRth, hidden, discretionaryAmt, goodAfterTime
              "", "", "", "", "",  # faGroup, faMethod, faPercentage, faProfile, modelCode
              order.good_till_date, "", "", "",  # goodTillDate, rule80A, percentOffset, settlingFirm
              0, "", -1,  # shortSaleSlot, designatedLocation, exemptCode
              "", "", "", "", "",  # startingPrice, stockRefPrice, delta, stockRangeLower, stockRangeUpper
              UNSET_INTEGER, False, False, "", order.oca_type or 3, 0,  # displaySize, sweepToFill, allOrNone, minQty, ocaType, triggerMethod
              "", 0, "None", "",  # volatility, volatilityType, deltaNeutralOrderType, deltaNeutralAuxPrice
              0, 0, 0, "",  # deltaNeutral conId, shortSale, shortSaleSlot, designatedLocation
              False, 0, _or(order.trail_stop_price, ""), _or(order.trailing_percent, ""),  # continuousUpdate .. trailingPercent
              "",  # comboLegsDescrip
              0, 0, 0,  # combo legs, order combo legs, smart combo routing params
              UNSET_INTEGER, UNSET_INTEGER, "",  # scaleInitLevelSize, scaleSubsLevelSize, scalePriceIncrement
              "",  # hedgeType
              "", "IB", False,  # clearingAccount, clearingIntent, notHeld
              False,  # deltaNeutralContract present
              *_algo(order),
              False, order.status, False, False,  # solicited, status, randomizeSize, randomizePrice
              0,  # conditions
              _or(order.trail_stop_price, UNSET_DOUBLE), _or(order.lmt_price_offset, UNSET_DOUBLE),  # trailStopPrice, lmtPriceOffset
              0, True, False,  # cashQty, dontUseAutoPriceForHedge, isOmsContainer
              "", number(order.filled), UNSET_INTEGER, False,  # autoCancelDate, filledQuantity, refFuturesConId, autoCancelParent
              "Not an insider or substantial shareholder",  # shareholder
              False, False, 2**63 - 1,  # imbalanceOnly, routeMarketableToBbo, parentPermId (none)
              _completed_time(order), order.completed_status]
    if version >= 170:
        fields += ["", "", "", "", ""]
    return fields


def _completed_time(order: Order) -> str:
    if order.completed_at is None:
        return ""
    local = dt.datetime.fromtimestamp(order.completed_at, ZoneInfo(SERVER_ZONE))
    return f"{local:%Y%m%d %H:%M:%S} {SERVER_ZONE}"


def execution_time(t: float) -> str:
    """An execution's time as TWS sends it to clients of these versions lately: UTC, written
    ``20231214-20:57:37`` with no zone (ib_insync issue 671, ib_async issue 230; rust-ibapi's 2023
    capture still had the older ``20230224  12:04:56`` in TWS's local time). A client that reads
    the zone-less time as the host's local time is wrong on any host not on UTC."""
    return f"{dt.datetime.fromtimestamp(t, dt.timezone.utc):%Y%m%d-%H:%M:%S}"


def execution(req_id: int, ex: Execution) -> list:
    listing = catalogue.by_con_id(ex.con_id)
    venue = catalogue.execution_venue(listing)  # the contract's exchange too, as TWS reports a fill
    return [EXECUTION_DATA, req_id, ex.order_id, *_contract(listing, venue),
            ex.exec_id, execution_time(ex.time), ex.account, venue, ex.side,
            number(ex.shares), ex.price, ex.perm_id, ex.client_id, 0,  # liquidation
            number(ex.cum_qty), ex.avg_price, ex.order_ref, "", "", "",  # evRule, evMultiplier, modelCode
            2]  # lastLiquidity: removed


def commission_report(ex: Execution) -> list:
    realized = UNSET_DOUBLE if ex.realized_pnl is None else round(ex.realized_pnl, 2)
    return [COMMISSION_REPORT, 1, ex.exec_id, ex.commission, ex.commission_currency, realized, UNSET_DOUBLE, ""]


# ------------------------------------------------------------------ account and positions
def position(p: Position) -> list:
    listing = catalogue.by_con_id(p.con_id)
    return [POSITION_DATA, 3, p.account, *_contract(listing, listing.primary_exchange),
            number(p.quantity), p.avg_cost]


def portfolio_value(p: Position, market_price: float) -> list:
    listing = catalogue.by_con_id(p.con_id)
    contract = _contract(listing, listing.primary_exchange)
    value = p.quantity * market_price
    unrealized = value - p.quantity * p.avg_cost
    return [PORTFOLIO_VALUE, 8, *contract, number(p.quantity), market_price, round(value, 2),
            p.avg_cost, round(unrealized, 2), round(p.realized_pnl, 2), p.account]


def pnl(req_id: int, daily: float, unrealized: float, realized: float) -> list:
    return [PNL, req_id, daily, unrealized, realized]


def pnl_single(req_id: int, p: PnL) -> list:
    return [PNL_SINGLE, req_id, number(p.position), p.daily, p.unrealized, p.realized, p.value]


def account_value(key: str, value: str, currency: str, account: str) -> list:
    return [ACCOUNT_VALUE, 2, key, value, currency, account]


def account_update_time(now: float) -> list:
    return [ACCOUNT_UPDATE_TIME, 1, dt.datetime.fromtimestamp(now, ZoneInfo(SERVER_ZONE)).strftime("%H:%M")]


# ------------------------------------------------------------------ market data
def tick_price(req_id: int, tick_type: int, price: float, size: int = 0) -> list:
    return [TICK_PRICE, 6, req_id, tick_type, price, number(size), 0]


def tick_size(req_id: int, tick_type: int, size: int) -> list:
    return [TICK_SIZE, 6, req_id, tick_type, number(size)]


def historical_data(req_id: int, start: str, end: str, bars: list[Bar], zone: str, format_date: int) -> list:
    fields = [HISTORICAL_DATA, req_id, start, end, len(bars)]
    for bar in bars:
        if bar.day is not None:
            stamp = bar.day.strftime("%Y%m%d")
        elif format_date == 2:
            stamp = str(int(bar.start))
        else:
            stamp = ib_time(bar.start, zone)
        fields += [stamp, bar.open, bar.high, bar.low, bar.close, number(bar.volume), bar.wap, bar.count]
    return fields


def head_timestamp(req_id: int, t: float, zone: str, format_date: int) -> list:
    return [HEAD_TIMESTAMP, req_id, str(int(t)) if format_date == 2 else ib_time(t, zone)]


def real_time_bar(req_id: int, bar: Bar) -> list:
    """time (the bar's start, epoch seconds), open, high, low, close, volume, WAP, count."""
    return [REAL_TIME_BARS, 3, req_id, int(bar.start), bar.open, bar.high, bar.low, bar.close,
            number(bar.volume), bar.wap, bar.count]


# Tick-by-tick tick types, as reqTickByTickData names them and tickByTick numbers them.
TICK_BY_TICK_TYPES = {"Last": 1, "AllLast": 2, "BidAsk": 3, "MidPoint": 4}


def tick_by_tick_last(req_id: int, tick_type: int, t: int, price: float, size: int, exchange: str) -> list:
    """A trade: price, size, attribute mask (neither past limit nor unreported), exchange, special conditions."""
    return [TICK_BY_TICK, req_id, tick_type, t, price, number(size), 0, exchange, ""]


def tick_by_tick_bid_ask(req_id: int, t: int, bid: float, ask: float, bid_size: int, ask_size: int) -> list:
    return [TICK_BY_TICK, req_id, 3, t, bid, ask, number(bid_size), number(ask_size), 0]


def tick_by_tick_midpoint(req_id: int, t: int, midpoint: float) -> list:
    return [TICK_BY_TICK, req_id, 4, t, midpoint]


# Market depth: operations and sides as updateMktDepth numbers them.
INSERT, UPDATE = 0, 1
ASK_SIDE, BID_SIDE = 0, 1


def mkt_depth(req_id: int, position: int, operation: int, side: int, price: float, size: int) -> list:
    return [UPDATE_MKT_DEPTH, 1, req_id, position, operation, side, price, number(size)]


def mkt_depth_l2(req_id: int, position: int, market_maker: str, operation: int, side: int, price: float,
                 size: int) -> list:
    """A level of smart (consolidated) depth: ``market_maker`` is the exchange quoting it."""
    return [UPDATE_MKT_DEPTH_L2, 1, req_id, position, market_maker, operation, side, price, number(size), True]


def mkt_depth_exchanges(exchanges: list[str]) -> list:
    """exchange, secType, listingExch, serviceDataType, aggGroup per exchange with depth."""
    fields = [MKT_DEPTH_EXCHANGES, len(exchanges)]
    for exchange in exchanges:
        fields += [exchange, "STK", exchange, "Deep", UNSET_INTEGER]
    return fields
