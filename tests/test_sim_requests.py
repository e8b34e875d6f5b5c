"""The simulated gateway's research and trading requests beyond the basics, and its
answer to requests it does not serve, driven by real ib_insync and ib_async clients
over loopback sockets.

Most tests use a gateway whose clock stands still (``speed=0``) unless the test
moves it with ``gateway.advance``: quotes, depth, fills and P&L are then all read
at the same instant, so they can be compared exactly.
"""

import asyncio
import datetime as dt
import importlib
import inspect
import math
from itertools import pairwise

import numpy as np
import pytest
from ib_insync import IB, MarketOrder, RequestError, Stock, util

from qdibkr.sim import SimGateway, catalogue, incoming

from .conftest import wait_until

ACCOUNT = "DU1234567"
AAPL, TENCENT = catalogue.find("AAPL")[0], catalogue.find("700")[0]


@pytest.fixture
def gateway():
    """A gateway with live US and HK data whose clock moves only when the test advances it."""
    gw = SimGateway(port=0, tick_interval=0.02, speed=0, live_data=("US", "HK"), always_open=True).start_in_thread()
    yield gw
    gw.stop()


def errors_of(ib) -> list:
    """(reqId, code, message) of every error the client receives, as it arrives."""
    seen = []
    ib.errorEvent += lambda req_id, code, text, *rest: seen.append((req_id, code, text))
    return seen


def within(coroutine, seconds: float = 3.0):
    """Run a request's coroutine, failing the test if it has not ended in time."""
    return util.run(asyncio.wait_for(coroutine, seconds))


def qualified(ib, *contracts):
    assert ib.qualifyContracts(*contracts) == list(contracts)
    return contracts[0] if len(contracts) == 1 else contracts


def advance_into_session(gateway, listing, use_rth: bool, margin: float = 600):
    """Move simulated time into a trading window of the listing with ``margin`` seconds left."""
    table = catalogue.session_table(listing.calendar)
    opens, closes = (table.open, table.close) if use_rth else (table.ext_open, table.ext_close)
    now = gateway.clock.now()
    i = int(np.searchsorted(closes, now + margin, side="right"))
    gateway.advance(max(0.0, opens[i] - now))


# ---------------------------------------------------------------- requests the simulator does not serve
@pytest.mark.parametrize("library", ["ib_insync", "ib_async"])
def test_request_table_matches_the_clients(library):
    """Every request a client library can send is named in the table, with its reqId where the client puts it."""
    module = pytest.importorskip(library)
    client_module = importlib.import_module(f"{library}.client")
    sent = []
    client = client_module.Client(module.Wrapper(None))
    client.connState = client_module.Client.CONNECTED
    client._serverVersion = 176
    client.isConnected = lambda: True
    client.sendMsg = lambda text: sent.append(text.split("\0")[:-1])
    samples = {"contract": module.Stock("AAPL", "SMART", "USD"), "order": module.MarketOrder("BUY", 1),
               "execFilter": module.ExecutionFilter(), "subscription": module.ScannerSubscription(),
               "data": module.WshEventData()}
    checked = 0
    for name, method in inspect.getmembers(client_module.Client, inspect.isfunction):
        if name == "send" or "self.send(" not in inspect.getsource(method):
            continue  # not a request
        parameters = list(inspect.signature(method).parameters)[1:]
        id_name = next((p for p in parameters if p in ("reqId", "orderId", "tickerId")), None)
        args = [4242 if p == id_name else samples.get(p, [] if p.endswith("Options") else 0) for p in parameters]
        sent.clear()
        method(client, *args)
        [fields] = sent
        assert incoming.name(int(fields[0])) == name
        assert incoming.req_id(fields) == (4242 if id_name else -1), name
        checked += 1
    assert checked >= 80


def test_unsupported_request_ends_with_an_error_naming_it(ib):
    seen = errors_of(ib)
    aapl = qualified(ib, Stock("AAPL", "SMART", "USD"))
    assert within(ib.reqFundamentalDataAsync(aapl, "ReportSnapshot")) == []
    [(req_id, code, text)] = seen
    assert req_id > 0 and code == 322 and "does not support reqFundamentalData" in text

    ib.RaiseRequestErrors = True
    with pytest.raises(RequestError, match="does not support reqSecDefOptParams"):
        within(ib.reqSecDefOptParamsAsync("AAPL", "", "STK", aapl.conId))


def test_unsupported_request_without_req_id_gets_an_empty_answer(ib):
    """reqScannerParameters has no reqId for an error to end it: it gets an empty answer too."""
    seen = errors_of(ib)
    assert within(ib.reqScannerParametersAsync()) == ""
    assert (-1, 322) == seen[0][:2] and "does not support reqScannerParameters" in seen[0][2]


def test_ib_async_unsupported_requests_end_promptly(ib_async_client):
    ib_async, ib = ib_async_client
    seen = errors_of(ib)
    assert within(ib.reqNewsProvidersAsync()) == []
    contract = ib_async.Stock("AAPL", "SMART", "USD")
    ib.qualifyContracts(contract)
    assert within(ib.reqHistogramDataAsync(contract, True, "1 week")) == []
    assert [text.split(" cause - ")[1] for _, _, text in seen] == [
        "the simulated gateway does not support reqNewsProviders",
        "the simulated gateway does not support reqHistogramData"]


# ---------------------------------------------------------------- head timestamp
def test_head_timestamp_is_the_first_bar_served(ib):
    aapl, tencent = qualified(ib, Stock("AAPL", "SMART", "USD"), Stock("700", "SEHK", "HKD"))
    head = ib.reqHeadTimeStamp(aapl, "TRADES", useRTH=True, formatDate=1)
    assert head == dt.datetime(2000, 1, 3, 9, 30, tzinfo=head.tzinfo) and str(head.tzinfo) == "America/New_York"
    assert ib.reqHeadTimeStamp(aapl, "MIDPOINT", useRTH=False, formatDate=2) == dt.datetime(
        2000, 1, 3, 9, 0, tzinfo=dt.UTC)  # 04:00 New York: the extended hours
    hk_head = ib.reqHeadTimeStamp(tencent, "TRADES", useRTH=True, formatDate=1)
    assert hk_head.timestamp() == catalogue.session_table(TENCENT.calendar).open[0]  # 10:00: HKEX's hours then
    assert str(hk_head.tzinfo) == "Asia/Hong_Kong"

    daily = ib.reqHistoricalData(aapl, head + dt.timedelta(days=3), "5 D", "1 day", "TRADES", useRTH=True)
    assert daily[0].date == head.date()
    minutes = ib.reqHistoricalData(aapl, head + dt.timedelta(minutes=5), "1 D", "1 min", "TRADES", useRTH=True)
    assert minutes[0].date == head
    seen = errors_of(ib)
    assert not ib.reqHistoricalData(aapl, head - dt.timedelta(minutes=1), "1 D", "1 min", "TRADES", useRTH=True)
    assert [code for _, code, _ in seen] == [162]  # HMDS query returned no data


def test_head_timestamp_of_unknown_contract_is_error_200(ib):
    seen = errors_of(ib)
    within(ib.reqHeadTimeStampAsync(Stock("NOSUCH", "SMART", "USD"), "TRADES", True, 1))
    [(req_id, code, _)] = seen
    assert req_id > 0 and code == 200


# ---------------------------------------------------------------- symbol search and market rules
def test_matching_symbols(ib):
    [apple] = ib.reqMatchingSymbols("AA")
    assert (apple.contract.symbol, apple.contract.conId, apple.contract.secType) == ("AAPL", 265598, "STK")
    assert apple.contract.primaryExchange == "NASDAQ" and apple.contract.currency == "USD"
    assert apple.contract.description == "APPLE INC" and "OPT" in apple.derivativeSecTypes
    [tencent] = ib.reqMatchingSymbols("tencent")
    assert (tencent.contract.symbol, tencent.contract.primaryExchange, tencent.contract.currency) == ("700", "SEHK", "HKD")
    assert [d.contract.symbol for d in ib.reqMatchingSymbols("brk.b")] == ["BRK B"]
    assert ib.reqMatchingSymbols("NOSUCHNAME") == []


def test_market_rules_are_the_ladders_prices_follow(gateway, ib):
    aapl, tencent = qualified(ib, Stock("AAPL", "SMART", "USD"), Stock("700", "SEHK", "HKD"))
    for contract in (aapl, tencent):
        [details] = ib.reqContractDetails(contract)
        rule_ids = details.marketRuleIds.split(",")
        assert len(rule_ids) == len(details.validExchanges.split(",")) and len(set(rule_ids)) == 1
        increments = ib.reqMarketRule(int(rule_ids[0]))
        assert increments[0].lowEdge == 0 and all(a.lowEdge < b.lowEdge for a, b in pairwise(increments))
        [ticker] = ib.reqTickers(contract)
        step = [i.increment for i in increments if i.lowEdge <= ticker.bid][-1]
        assert step == details.minTick or contract is tencent
        for price in (ticker.bid, ticker.ask, ticker.last):
            assert abs(price / step - round(price / step)) < 1e-6
    hk_rule = ib.reqMarketRule(catalogue.HK_MARKET_RULE)
    assert [(i.lowEdge, i.increment) for i in hk_rule][3:5] == [(10.0, 0.02), (20.0, 0.05)]  # HKEX's spread table


# ---------------------------------------------------------------- P&L
def advance_until_changed(gateway, ib, figure, step: float = 3600):
    """Advance simulated time an hour at a time until ``figure()`` changes (a price can
    come back to the same tick); returns the new value."""
    before = figure()
    for _ in range(20):
        gateway.advance(step)
        try:
            wait_until(ib, lambda: figure() != before, timeout=1.5)
            return figure()
        except AssertionError:
            continue
    raise AssertionError("the figure never changed")


def filled(ib, contract, order):
    trade = ib.placeOrder(contract, order)
    wait_until(ib, lambda: trade.isDone() and all(f.commissionReport.execId for f in trade.fills))
    return trade


def test_pnl_follows_fills_and_prices(gateway, ib):
    aapl = qualified(ib, Stock("AAPL", "SMART", "USD"))
    buy = filled(ib, aapl, MarketOrder("BUY", 100))
    account, single = ib.reqPnL(ACCOUNT), ib.reqPnLSingle(ACCOUNT, "", aapl.conId)
    wait_until(ib, lambda: single.position == 100 and not math.isnan(account.dailyPnL))

    def consistent():
        [position] = ib.positions()
        mark = single.value / 100
        assert mark == pytest.approx(round(mark, 2))  # a price on the ladder
        assert single.unrealizedPnL == pytest.approx(single.value - 100 * position.avgCost, abs=0.011)
        # bought today: the day's P&L is the fill's, commissions included
        assert single.dailyPnL == pytest.approx(single.unrealizedPnL, abs=0.011)
        assert (account.dailyPnL, account.unrealizedPnL) == (single.dailyPnL, single.unrealizedPnL)

    consistent()
    commission = buy.fills[0].commissionReport.commission
    assert single.unrealizedPnL == pytest.approx(single.value - 100 * buy.fills[0].execution.price - commission, abs=0.011)
    advance_until_changed(gateway, ib, lambda: single.value)
    consistent()

    sell = filled(ib, aapl, MarketOrder("SELL", 40))
    wait_until(ib, lambda: single.position == 60)
    realized = sell.fills[0].commissionReport.realizedPNL
    assert single.realizedPnL == pytest.approx(realized, abs=0.011) and account.realizedPnL == single.realizedPnL

    ib.cancelPnLSingle(ACCOUNT, "", aapl.conId)
    value = single.value
    advance_until_changed(gateway, ib, lambda: account.unrealizedPnL)  # the account's still updates
    assert single.value == value


def test_daily_pnl_counts_overnight_positions_from_the_previous_close(gateway, ib):
    aapl = qualified(ib, Stock("AAPL", "SMART", "USD"))
    filled(ib, aapl, MarketOrder("BUY", 10))
    # Move on to the session after the next close: the position is then an overnight one.
    table = catalogue.session_table(AAPL.calendar)
    now = gateway.clock.now()
    closing = int(np.searchsorted(table.close, now))
    gateway.advance(table.open[closing + 1] + 60 - now)
    single = ib.reqPnLSingle(ACCOUNT, "", aapl.conId)
    [ticker] = ib.reqTickers(aapl)
    wait_until(ib, lambda: single.position == 10)
    assert single.dailyPnL == pytest.approx(single.value - 10 * ticker.close, abs=0.011)
    assert single.realizedPnL == 0


def test_pnl_of_an_unknown_account_is_refused(ib):
    seen = errors_of(ib)
    ib.reqPnL("DU0000000")
    wait_until(ib, lambda: seen)
    assert seen[0][1] == 321 and "unknown account" in seen[0][2]


def test_ib_async_pnl_single(gateway, ib_async_client):
    ib_async, ib = ib_async_client
    contract = ib_async.Stock("700", "SEHK", "HKD")
    ib.qualifyContracts(contract)
    trade = ib.placeOrder(contract, ib_async.MarketOrder("BUY", 200))
    single = ib.reqPnLSingle(ACCOUNT, "", contract.conId)
    wait_until(ib, lambda: trade.isDone() and single.position == 200)
    assert single.value == pytest.approx(200 * gateway.broker.mark_price(TENCENT))
    assert single.unrealizedPnL == pytest.approx(single.dailyPnL, abs=0.011) and single.unrealizedPnL < 0


# ---------------------------------------------------------------- real-time bars
def test_real_time_bars_stream_the_historical_5_second_bars(gateway, ib):
    aapl = qualified(ib, Stock("AAPL", "SMART", "USD"))
    advance_into_session(gateway, AAPL, use_rth=False)
    bars = ib.reqRealTimeBars(aapl, 5, "TRADES", useRTH=False)
    gateway.advance(30)
    wait_until(ib, lambda: len(bars) == 6)
    starts = [bar.time.timestamp() for bar in bars]
    assert all(b - a == 5 for a, b in pairwise(starts)) and starts[0] % 5 == 0
    assert all(bar.low <= min(bar.open_, bar.close) <= max(bar.open_, bar.close) <= bar.high for bar in bars)
    assert all(bar.volume >= 0 and bar.wap > 0 for bar in bars)

    end = bars[-1].time + dt.timedelta(seconds=5)
    history = ib.reqHistoricalData(aapl, end, "30 S", "5 secs", "TRADES", useRTH=False)
    assert [(b.date, b.open, b.high, b.low, b.close, b.volume, b.average, b.barCount) for b in history] == [
        (b.time, b.open_, b.high, b.low, b.close, b.volume, b.wap, b.count) for b in bars]

    ib.cancelRealTimeBars(bars)
    gateway.advance(30)
    ib.reqCurrentTime()  # a round trip: anything sent before its answer has arrived
    assert len(bars) == 6


def test_real_time_bars_need_live_data_and_5_seconds():
    gateway = SimGateway(port=0, tick_interval=0.02, speed=0, always_open=True).start_in_thread()  # live US data only
    try:
        ib = IB().connect("127.0.0.1", gateway.port, clientId=1, timeout=5)
        seen = errors_of(ib)
        aapl, tencent = qualified(ib, Stock("AAPL", "SMART", "USD"), Stock("700", "SEHK", "HKD"))
        ib.reqRealTimeBars(tencent, 5, "TRADES", useRTH=True)
        ib.reqRealTimeBars(aapl, 10, "TRADES", useRTH=True)
        wait_until(ib, lambda: len(seen) == 2)
        assert [code for _, code, _ in seen] == [420, 321]
        assert "No market data permissions for SEHK STK" in seen[0][2] and "5 seconds" in seen[1][2]
        ib.disconnect()
    finally:
        gateway.stop()


# ---------------------------------------------------------------- tick-by-tick
def recorded(ib, method: str) -> list:
    """Arguments of every call of one of the wrapper's tick-by-tick methods, with the tick's own time."""
    calls = []
    original = getattr(ib.wrapper, method)

    def record(*args):
        calls.append(args)
        original(*args)

    setattr(ib.wrapper, method, record)
    return calls


def test_tick_by_tick_bid_ask_is_the_quote_second_by_second(gateway, ib):
    aapl = qualified(ib, Stock("AAPL", "SMART", "USD"))
    calls = recorded(ib, "tickByTickBidAsk")
    ticker = ib.reqTickByTickData(aapl, "BidAsk")
    wait_until(ib, lambda: calls)  # the current quote, on subscribing
    gateway.advance(20)
    wait_until(ib, lambda: len(calls) >= 15)  # sizes change nearly every second
    times = [call[1] for call in calls]
    assert times == sorted(set(times)) and times[-1] - times[0] >= 18
    for _, t, bid, ask, bid_size, ask_size, _ in calls:
        quote = gateway.model.quote(AAPL, t)
        assert (bid, ask, bid_size, ask_size) == (quote.bid, quote.ask, quote.bid_size, quote.ask_size)
    assert (ticker.bid, ticker.ask) == calls[-1][2:4]
    ib.cancelTickByTickData(aapl, "BidAsk")


def test_tick_by_tick_last_midpoint_and_limit(gateway, connect):
    ib, other = connect(1), connect(2)
    aapl, tencent = qualified(ib, Stock("AAPL", "SMART", "USD"), Stock("700", "SEHK", "HKD"))
    trades, midpoints = recorded(ib, "tickByTickAllLast"), recorded(ib, "tickByTickMidPoint")
    ib.reqTickByTickData(tencent, "Last")
    ib.reqTickByTickData(aapl, "MidPoint")
    gateway.advance(10)
    wait_until(ib, lambda: len(trades) >= 5 and len(midpoints) >= 2)
    for _, tick_type, t, price, size, _, exchange, _ in trades:
        quote = gateway.model.quote(TENCENT, t)
        assert (tick_type, price, size, exchange) == (1, quote.last, quote.last_size, "SEHK") and size % 100 == 0
    for _, t, midpoint in midpoints:
        quote = gateway.model.quote(AAPL, t)
        assert midpoint == pytest.approx((quote.bid + quote.ask) / 2)

    seen = errors_of(other)  # three tick-by-tick subscriptions per login, whichever client holds them
    spy = qualified(other, Stock("SPY", "SMART", "USD"))
    other.reqTickByTickData(spy, "AllLast")
    other.reqTickByTickData(spy, "BidAsk")
    wait_until(other, lambda: seen)
    assert seen[0][1] == 10190


# ---------------------------------------------------------------- market depth
def test_market_depth_is_the_book_market_orders_sweep(gateway, ib):
    aapl = qualified(ib, Stock("AAPL", "SMART", "USD"))
    ticker = ib.reqMktDepth(aapl, numRows=5, isSmartDepth=True)
    wait_until(ib, lambda: len(ticker.domBids) == 5 and len(ticker.domAsks) == 5)
    bids, asks = ticker.domBids, ticker.domAsks
    assert all(a.price > b.price for a, b in pairwise(bids)) and all(a.price < b.price for a, b in pairwise(asks))
    assert all(level.size % 100 == 0 and level.marketMaker for level in bids + asks)
    [quote] = ib.reqTickers(aapl)
    assert (quote.bid, quote.bidSize) == (bids[0].price, bids[0].size)
    assert (quote.ask, quote.askSize) == (asks[0].price, asks[0].size)

    quantity = int(asks[0].size + asks[1].size + 1)  # through two levels into the third
    trade = filled(ib, aapl, MarketOrder("BUY", quantity))
    assert [(f.execution.price, f.execution.shares) for f in trade.fills] == [
        (asks[0].price, asks[0].size), (asks[1].price, asks[1].size), (asks[2].price, 1)]

    book = [(level.price, level.size) for level in ticker.domAsks]
    gateway.advance(5)
    wait_until(ib, lambda: [(level.price, level.size) for level in ticker.domAsks] != book)
    assert len(ticker.domAsks) == 5
    ib.cancelMktDepth(aapl, isSmartDepth=True)


def test_hk_exchange_depth_and_the_limit(gateway, connect):
    ib = connect(1)
    seen = errors_of(ib)
    tencent = qualified(ib, Stock("700", "SEHK", "HKD"))
    aapl, spy, msft = qualified(ib, *(Stock(symbol, "SMART", "USD") for symbol in ("AAPL", "SPY", "MSFT")))
    ticker = ib.reqMktDepth(tencent, numRows=3)
    wait_until(ib, lambda: len(ticker.domBids) == 3 and len(ticker.domAsks) == 3)
    assert all(level.marketMaker == "" for level in ticker.domBids)  # exchange depth names no market maker
    rule = ib.reqMarketRule(catalogue.HK_MARKET_RULE)
    for level in ticker.domBids + ticker.domAsks:
        step = [i.increment for i in rule if i.lowEdge <= level.price][-1]
        assert abs(level.price / step - round(level.price / step)) < 1e-6 and level.size % 100 == 0
    ib.reqMktDepth(aapl)
    ib.reqMktDepth(spy)
    ib.reqMktDepth(msft)
    wait_until(ib, lambda: seen)
    assert seen[0][1] == 309
