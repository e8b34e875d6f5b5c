"""The simulated gateway, driven by the real ib_insync client over a real loopback socket."""

import asyncio
import math
import socket
import struct
import time

import pytest
from ib_insync import IB, LimitOrder, MarketOrder, Stock, util

from qdibkr.sim import SimGateway
from qdibkr.sim import wire

from .conftest import wait_until


def errors_of(ib: IB) -> list:
    """Collect (reqId, code, message) of every error or warning the client receives."""
    seen = []
    ib.errorEvent += lambda req_id, code, text, contract: seen.append((req_id, code, text))
    return seen


# ---------------------------------------------------------------- connecting
def test_connect_is_fast_and_complete(gateway):
    ib = IB()
    started = time.perf_counter()
    ib.connect("127.0.0.1", gateway.port, clientId=7, timeout=5)
    elapsed = time.perf_counter() - started
    try:
        assert elapsed < 1.0, f"connect took {elapsed:.2f} s: some start-up request went unanswered"
        assert ib.client.serverVersion() == 176
        assert ib.managedAccounts() == ["DU1234567"]
        values = {(v.tag, v.currency): v.value for v in ib.accountValues()}
        assert float(values[("NetLiquidation", "USD")]) > 0
        assert float(values[("CashBalance", "HKD")]) > 0
    finally:
        ib.disconnect()


def raw_handshake(port: int, versions: bytes) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    sock.sendall(b"API\0" + struct.pack(">I", len(versions)) + versions)
    return sock


def read_frame(sock: socket.socket) -> list[str] | None:
    reader = wire.FrameReader()
    while True:
        data = sock.recv(65536)
        if not data:
            return None
        frames = reader.feed(data)
        if frames:
            return frames[0]


def test_version_negotiation_picks_highest_common(gateway):
    with raw_handshake(gateway.port, b"v157..160") as sock:
        version, when = read_frame(sock)
        assert version == "160"
        assert when.endswith("America/New_York")


def test_client_with_unservable_versions_is_refused(gateway, caplog):
    with raw_handshake(gateway.port, b"v100..150") as sock:
        assert read_frame(sock) is None  # closed without a reply
    assert any("serves 157..176" in r.getMessage() for r in caplog.records)


def test_client_id_in_use_is_refused_with_326(gateway, connect):
    connect(3)
    second = IB()
    seen = errors_of(second)
    with pytest.raises((ConnectionError, TimeoutError, OSError)):
        second.connect("127.0.0.1", gateway.port, clientId=3, timeout=1)
    assert any(code == 326 for _, code, _ in seen)
    assert not second.isConnected()


def test_malformed_input_does_not_harm_other_clients(gateway, ib):
    # garbage instead of a handshake
    with socket.create_connection(("127.0.0.1", gateway.port)) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\n\r\n")
        assert sock.recv(100) == b""
    # a valid session that then sends nonsense frames and a huge length
    with raw_handshake(gateway.port, b"v157..176") as sock:
        read_frame(sock)
        for payload in (b"abc\0", b"9999\0", b"3\0not-an-id\0", b"\0"):
            sock.sendall(struct.pack(">I", len(payload)) + payload)
        sock.sendall(struct.pack(">I", 1 << 30))
        while sock.recv(65536):
            pass  # the gateway answers what it can, then closes
    # the connected client still works
    assert ib.reqCurrentTime() is not None
    assert ib.qualifyContracts(Stock("AAPL", "SMART", "USD"))


# ---------------------------------------------------------------- contracts
def test_qualify_us_and_hk_contracts(ib):
    aapl, tencent = Stock("AAPL", "SMART", "USD"), Stock("700", "SEHK", "HKD")
    assert ib.qualifyContracts(aapl, tencent) == [aapl, tencent]
    assert aapl.conId == 265598 and aapl.primaryExchange == "NASDAQ"
    assert tencent.conId > 0 and tencent.currency == "HKD"
    [details] = ib.reqContractDetails(tencent)
    assert details.minSize == 100 and details.timeZoneId == "Hongkong"  # TWS's zone ids, not IANA's
    assert "0930" in details.liquidHours
    [hsbc] = ib.reqContractDetails(Stock("5", "SEHK", "HKD"))
    assert hsbc.minSize == 400


def test_unknown_symbol_gets_error_200(ib):
    seen = errors_of(ib)
    assert ib.qualifyContracts(Stock("NOSUCH", "SMART", "USD")) == []
    assert any(code == 200 and "No security definition" in text for _, code, text in seen)


# ---------------------------------------------------------------- market data
def test_live_quote_snapshot(ib):
    aapl = Stock("AAPL", "SMART", "USD")
    ib.qualifyContracts(aapl)
    [ticker] = ib.reqTickers(aapl)
    assert ticker.marketDataType == 1
    assert 0 < ticker.bid < ticker.ask
    assert ticker.bidSize > 0 and ticker.askSize > 0
    assert ticker.bid <= ticker.last <= ticker.ask
    assert ticker.close > 0 and ticker.high >= ticker.low > 0 and ticker.volume > 0


def test_streaming_quote_updates(gateway, ib):
    spy = Stock("SPY", "SMART", "USD")
    ib.qualifyContracts(spy)
    ticker = ib.reqMktData(spy)
    wait_until(ib, lambda: ticker.bid > 0)
    first = (ticker.bid, ticker.ask, ticker.last)
    gateway.advance(3600)
    wait_until(ib, lambda: (ticker.bid, ticker.ask, ticker.last) != first)
    ib.cancelMktData(spy)


def test_hk_quote_needs_delayed_data_without_subscription(ib):
    seen = errors_of(ib)
    tencent = Stock("700", "SEHK", "HKD")
    ib.qualifyContracts(tencent)
    [ticker] = ib.reqTickers(tencent)
    assert any(code == 354 for _, code, _ in seen)
    assert util.isNan(ticker.bid)

    ib.reqMarketDataType(3)
    [ticker] = ib.reqTickers(tencent)
    assert ticker.marketDataType == 3
    assert any(code == 10167 for _, code, _ in seen)
    assert 0 < ticker.bid < ticker.ask and ticker.last > 0


# ---------------------------------------------------------------- historical data
def test_daily_and_intraday_bars_agree_with_live_price(gateway, ib):
    aapl = Stock("AAPL", "SMART", "USD")
    ib.qualifyContracts(aapl)
    daily = ib.reqHistoricalData(aapl, "", "1 Y", "1 day", "TRADES", useRTH=True)
    assert 240 <= len(daily) <= 260
    assert all(b.low <= min(b.open, b.close) and b.high >= max(b.open, b.close) for b in daily)
    minutes = ib.reqHistoricalData(aapl, "", "5 D", "1 min", "TRADES", useRTH=True)
    assert len(minutes) > 300
    assert minutes[-1].date.tzinfo is not None
    # the daily bar of a session closes where that session's last minute bar does
    last_session = minutes[-1].date.date()
    same_day = [b for b in daily if b.date == last_session]
    if same_day:
        assert same_day[0].close == minutes[-1].close


def test_identical_historical_request_within_15s_gets_162(ib):
    """Paced for bars of 30 seconds or less (IB lifted the limits for larger ones)."""
    seen = errors_of(ib)
    spy = Stock("SPY", "SMART", "USD")
    ib.qualifyContracts(spy)
    request = (spy, "20250603 11:00:00 America/New_York", "1800 S", "30 secs", "TRADES", True)  # a Tuesday
    assert ib.reqHistoricalData(*request)
    assert len(ib.reqHistoricalData(*request)) == 0
    assert any(code == 162 and "pacing" in text for _, code, text in seen)


# ---------------------------------------------------------------- orders
def positions_of(ib: IB) -> dict:
    return {p.contract.symbol: p for p in ib.positions()}


def test_market_order_fills_with_commission_and_position(ib):
    aapl = Stock("AAPL", "SMART", "USD")
    ib.qualifyContracts(aapl)
    order = MarketOrder("BUY", 10, orderRef="sig-1")
    trade = ib.placeOrder(aapl, order)
    wait_until(ib, lambda: trade.isDone() and trade.fills and trade.fills[-1].commissionReport.execId)
    assert trade.orderStatus.status == "Filled"
    assert trade.orderStatus.filled == 10
    [fill] = trade.fills
    assert fill.execution.orderRef == "sig-1" and fill.execution.side == "BOT"
    assert trade.orderStatus.avgFillPrice == fill.execution.price  # exactly, as TWS reports one fill
    assert fill.commissionReport.commission == 1.0  # 10 x 0.005 is below the USD 1 minimum
    assert fill.commissionReport.currency == "USD"
    wait_until(ib, lambda: "AAPL" in positions_of(ib))
    position = positions_of(ib)["AAPL"]
    assert position.position == 10
    assert position.avgCost == pytest.approx(fill.execution.price + 0.1)  # commission in the average cost
    wait_until(ib, lambda: any(p.contract.symbol == "AAPL" for p in ib.portfolio()))
    [item] = [p for p in ib.portfolio() if p.contract.symbol == "AAPL"]
    assert item.marketValue == pytest.approx(item.marketPrice * 10, abs=0.01)


def test_hk_order_commission_minimum_and_sell_realises_pnl(ib):
    tencent = Stock("700", "SEHK", "HKD")
    ib.qualifyContracts(tencent)
    buy = ib.placeOrder(tencent, MarketOrder("BUY", 100))
    wait_until(ib, lambda: buy.isDone() and buy.fills and buy.fills[-1].commissionReport.execId)
    value = buy.fills[0].execution.price * 100
    # IB's 0.08% (at least HKD 18), stamp duty rounded up to a dollar, the SFC and AFRC levies
    fees = max(18.0, round(0.0008 * value, 2)) + math.ceil(0.001 * value) + round(0.000027 * value, 2) \
        + round(0.0000015 * value, 2)
    assert buy.fills[0].commissionReport.commission == pytest.approx(fees, abs=0.011)
    assert buy.fills[0].commissionReport.currency == "HKD"
    sell = ib.placeOrder(tencent, MarketOrder("SELL", 100))
    wait_until(ib, lambda: sell.isDone() and sell.fills and sell.fills[-1].commissionReport.execId)
    report = sell.fills[0].commissionReport
    expected = 100 * (sell.fills[0].execution.price - buy.fills[0].execution.price) \
        - buy.fills[0].commissionReport.commission - report.commission
    assert report.realizedPNL == pytest.approx(expected, abs=0.02)


def test_large_market_order_fills_in_parts(ib):
    nvda = Stock("NVDA", "SMART", "USD")
    ib.qualifyContracts(nvda)
    quantity = 3000  # twice the largest size the simulator ever displays at one price
    trade = ib.placeOrder(nvda, MarketOrder("BUY", quantity))
    wait_until(ib, lambda: trade.isDone() and all(f.commissionReport.execId for f in trade.fills), timeout=10)
    assert trade.orderStatus.status == "Filled"
    assert len(trade.fills) >= 2
    assert sum(f.execution.shares for f in trade.fills) == quantity
    prices = [f.execution.price for f in trade.fills]
    assert prices[1] == pytest.approx(prices[0] + 0.01)  # took the best ask, then one tick up the book
    commissions = sum(f.commissionReport.commission for f in trade.fills)
    assert commissions == pytest.approx(0.005 * quantity, abs=0.02)


def test_limit_order_rests_then_fills_when_price_crosses(gateway, ib):
    aapl = Stock("AAPL", "SMART", "USD")
    ib.qualifyContracts(aapl)
    [ticker] = ib.reqTickers(aapl)
    limit = round(ticker.bid * 0.995, 2)
    trade = ib.placeOrder(aapl, LimitOrder("BUY", 5, limit, tif="GTC"))
    wait_until(ib, lambda: trade.orderStatus.status == "Submitted")
    assert not trade.fills
    for _ in range(200):  # move time on, an hour at a time, until the path crosses the limit
        gateway.advance(3600)
        ib.reqCurrentTime()  # a round trip: whatever the gateway sent before its answer is now processed
        if trade.isDone():
            break
    assert trade.orderStatus.status == "Filled"
    assert trade.fills[0].execution.price <= limit


def test_cancel_gives_cancelled_and_202(ib):
    seen = errors_of(ib)
    aapl = Stock("AAPL", "SMART", "USD")
    ib.qualifyContracts(aapl)
    [ticker] = ib.reqTickers(aapl)
    trade = ib.placeOrder(aapl, LimitOrder("BUY", 5, round(ticker.bid * 0.95, 2)))
    wait_until(ib, lambda: trade.orderStatus.status == "Submitted")
    ib.cancelOrder(trade.order)
    wait_until(ib, lambda: trade.orderStatus.status == "Cancelled")
    assert any(code == 202 and req_id == trade.order.orderId for req_id, code, _ in seen)
    assert trade not in ib.openTrades()


def test_modify_resting_order(ib):
    aapl = Stock("AAPL", "SMART", "USD")
    ib.qualifyContracts(aapl)
    [ticker] = ib.reqTickers(aapl)
    order = LimitOrder("BUY", 5, round(ticker.bid * 0.95, 2))
    trade = ib.placeOrder(aapl, order)
    wait_until(ib, lambda: trade.orderStatus.status == "Submitted")
    order.totalQuantity = 8
    order.lmtPrice = round(ticker.bid * 0.96, 2)
    ib.placeOrder(aapl, order)
    other = IB()
    ib2 = other.connect("127.0.0.1", ib.client.port, clientId=99, timeout=5)
    try:
        ib2.reqAllOpenOrders()
        [seen] = [t for t in ib2.openTrades() if t.order.permId == trade.order.permId]
        assert seen.order.totalQuantity == 8 and seen.order.lmtPrice == order.lmtPrice
    finally:
        ib2.disconnect()


def rejection(ib: IB, contract, order) -> str:
    seen = errors_of(ib)
    trade = ib.placeOrder(contract, order)
    # TWS refuses with error 201, then reports the order Inactive (openOrder, orderStatus).
    wait_until(ib, lambda: trade.orderStatus.status == "Inactive")
    [(_, code, text)] = [e for e in seen if e[0] == order.orderId]
    assert code == 201
    return text


def test_rejections(ib):
    aapl, tencent, hsbc = Stock("AAPL", "SMART", "USD"), Stock("700", "SEHK", "HKD"), Stock("5", "SEHK", "HKD")
    ib.qualifyContracts(aapl, tencent, hsbc)
    assert "insufficient cash" in rejection(ib, aapl, MarketOrder("BUY", 1_000_000))
    assert "board lot size 100" in rejection(ib, tencent, MarketOrder("BUY", 150))
    assert "board lot size 400" in rejection(ib, hsbc, MarketOrder("BUY", 100))
    assert "short selling is not allowed" in rejection(ib, aapl, MarketOrder("SELL", 1))
    [ticker] = ib.reqTickers(aapl)
    assert "more than 10% above" in rejection(ib, aapl, LimitOrder("BUY", 1, round(ticker.ask * 1.2, 2)))
    assert ib.positions() == []


def test_pacing_violation_gets_error_100(connect):
    ib = connect(5)
    seen = errors_of(ib)
    ib.client.MaxRequests = 0  # switch off ib_insync's own throttle
    for _ in range(80):
        ib.client.reqCurrentTime()
    wait_until(ib, lambda: any(code == 100 for _, code, _ in seen))


def test_a_client_that_keeps_violating_pacing_is_disconnected(connect, gateway):
    ib, other = connect(5), connect(6)
    seen = errors_of(ib)
    ib.client.MaxRequests = 0  # switch off ib_insync's own throttle

    async def flood():  # about 200 messages a second, until TWS has had enough
        while ib.isConnected():
            for _ in range(10):
                ib.client.reqCurrentTime()
            await asyncio.sleep(0.05)  # the flood's rate, not a synchronisation

    with pytest.raises(ConnectionError, match="Socket disconnect"):  # ib_insync's word for the close
        util.run(asyncio.wait_for(flood(), timeout=10))
    violations = [text for _, code, text in seen if code == 100]
    assert len(violations) == 3 and violations[-1].endswith("(3)")  # one per second of violation
    assert 5 not in gateway.sessions and other.isConnected()  # only the offender is cut off
    assert other.reqCurrentTime()


def test_two_clients_see_their_own_and_all_orders(connect):
    first, second = connect(1), connect(2)
    aapl = Stock("AAPL", "SMART", "USD")
    first.qualifyContracts(aapl)
    [ticker] = first.reqTickers(aapl)
    trade = first.placeOrder(aapl, LimitOrder("BUY", 1, round(ticker.bid * 0.95, 2)))
    wait_until(first, lambda: trade.orderStatus.status == "Submitted")
    assert second.reqOpenOrders() == []
    assert [t.order.permId for t in second.reqAllOpenOrders()] == [trade.order.permId]


def test_state_survives_reconnect_and_restart(tmp_path):
    state = str(tmp_path / "state.json")
    gateway = SimGateway(port=0, state_path=state, always_open=True).start_in_thread()
    ib = IB().connect("127.0.0.1", gateway.port, clientId=1, timeout=5)
    aapl = Stock("AAPL", "SMART", "USD")
    ib.qualifyContracts(aapl)
    [ticker] = ib.reqTickers(aapl)
    resting = ib.placeOrder(aapl, LimitOrder("BUY", 3, round(ticker.bid * 0.95, 2), tif="GTC", orderRef="keep"))
    filled = ib.placeOrder(aapl, MarketOrder("BUY", 4))
    wait_until(ib, lambda: filled.isDone() and resting.orderStatus.status == "Submitted")
    ib.disconnect()
    gateway.stop()

    gateway = SimGateway(port=0, state_path=state, always_open=True).start_in_thread()
    try:
        ib = IB().connect("127.0.0.1", gateway.port, clientId=1, timeout=5)
        assert positions_of(ib)["AAPL"].position == 4
        assert [t.order.orderRef for t in ib.openTrades()] == ["keep"]
        assert [f.execution.shares for f in ib.fills()] == [4]
        assert ib.client.getReqId() > filled.order.orderId  # order ids never repeat
        ib.disconnect()
    finally:
        gateway.stop()


def test_ib_async_connects_qualifies_and_fills(ib_async_client):
    ib_async, ib = ib_async_client
    contract = ib_async.Stock("700", "SEHK", "HKD")
    assert ib.qualifyContracts(contract)
    trade = ib.placeOrder(contract, ib_async.MarketOrder("BUY", 200))
    ib.reqCurrentTime()  # a round trip: the fill, sent before its answer, is now processed
    assert trade.orderStatus.status == "Filled"
    assert trade.orderStatus.filled == 200
