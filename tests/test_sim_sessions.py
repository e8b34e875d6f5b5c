"""Trading sessions and the simulated clock, through the real ib_insync client.

Every gateway here starts its clock at a fixed instant, so the tests mean the same whatever the host's day
and hour; most also stand the clock still (``speed=0``) and move it with ``advance``. The instants:
2026-11-29 is a Sunday; 2026-11-24 a Tuesday (New York opens 14:30 UTC, closes 21:00 UTC; Hong Kong
trades 09:30-12:00 and 13:00-16:00 local, UTC+8); 2026-11-30 the Monday after.
"""

import datetime as dt
import os
import shutil
import subprocess
import time

import pytest
from ib_insync import IB, LimitOrder, MarketOrder, Stock

from qdibkr.sim import SimGateway, us_session_start
from qdibkr.sim.clock import parse_instant

from .conftest import wait_until
from .test_sim_order_life import of_order, record

SUNDAY = "2026-11-29T08:19:00Z"  # 03:19 New York, 16:19 Hong Kong
TUESDAY_SESSION = "2026-11-24T15:00:00Z"  # 10:00 New York
MONDAY_OPEN = parse_instant("2026-11-30T14:30:00Z")
AAPL = Stock("AAPL", "SMART", "USD")
TENCENT = Stock("700", "SEHK", "HKD")


@pytest.fixture
def client():
    clients = []

    def connect(gateway: SimGateway) -> IB:
        ib = IB()
        ib.connect("127.0.0.1", gateway.port, clientId=1, timeout=5)
        ib.qualifyContracts(AAPL, TENCENT)
        clients.append(ib)
        return ib

    yield connect
    for ib in clients:
        ib.disconnect()


def warnings_of(ib: IB) -> list:
    seen = []
    ib.errorEvent += lambda req_id, code, text, contract: seen.append((req_id, code, text))
    return seen


def utc(t: dt.datetime) -> dt.datetime:
    return t.astimezone(dt.timezone.utc)


def test_a_market_order_on_a_sunday_rests_presubmitted_with_tws_warning(gateway_at, client):
    gateway = gateway_at(SUNDAY)
    ib = client(gateway)
    seen = warnings_of(ib)
    trade = ib.placeOrder(AAPL, MarketOrder("BUY", 10))
    status_at_warning = []
    ib.errorEvent += lambda *args: status_at_warning.append(trade.orderStatus.status)
    wait_until(ib, lambda: any(code == 399 for _, code, _ in seen))
    # As a live paper Gateway sends them: the order's PreSubmitted status first, then the warning
    # (github.com/ThomasMarcelis/ibkr-go, testdata/transcripts/api_conditions_matrix_aapl.txt).
    assert status_at_warning == ["PreSubmitted"]
    assert trade.orderStatus.status == "PreSubmitted"
    assert (trade.order.orderId, 399, "Order Message:\nBUY 10 AAPL NASDAQ.NMS\nWarning: Your order will not be "
            "placed at the exchange until 2026-11-30 09:30:00 US/Eastern.") in seen
    gateway.advance(6 * 3600)  # still Sunday
    ib.reqOpenOrders()
    assert trade.orderStatus.status == "PreSubmitted" and not trade.fills
    assert gateway.broker.executions == []


def test_a_market_order_in_a_weekday_session_fills(gateway_at, client):
    gateway = gateway_at(TUESDAY_SESSION)
    ib = client(gateway)
    seen, messages = warnings_of(ib), record(ib)
    trade = ib.placeOrder(AAPL, MarketOrder("BUY", 10))
    wait_until(ib, lambda: any(m[0] == "commissionReport" for m in messages))
    assert trade.orderStatus.status == "Filled" and trade.orderStatus.filled == 10
    assert not [code for _, code, _ in seen if code == 399]
    # TWS's sequence for a market order that fills (see test_sim_order_life)
    assert [m[:3] if m[0] in ("openOrder", "orderStatus") else m[0] for m in of_order(messages, trade.order.orderId)] \
        == [("openOrder", trade.order.orderId, "PreSubmitted"), ("orderStatus", trade.order.orderId, "PreSubmitted"),
            "execDetails", ("openOrder", trade.order.orderId, "Filled"), ("orderStatus", trade.order.orderId, "Filled"),
            ("openOrder", trade.order.orderId, "Filled"), "commissionReport"]
    assert utc(trade.fills[0].execution.time) == dt.datetime(2026, 11, 24, 15, tzinfo=dt.timezone.utc)


def test_an_order_waiting_for_the_open_trades_at_the_open_when_the_clock_jumps_past_it(gateway_at, client):
    gateway = gateway_at(SUNDAY)
    ib = client(gateway)
    trade = ib.placeOrder(AAPL, MarketOrder("BUY", 10))
    wait_until(ib, lambda: trade.orderStatus.status == "PreSubmitted")
    gateway.advance(MONDAY_OPEN + 3600 - gateway.clock.now())  # to Monday 10:30 New York, in one call
    wait_until(ib, trade.isDone)
    assert trade.orderStatus.status == "Filled"
    assert utc(trade.fills[0].execution.time).timestamp() == MONDAY_OPEN


def test_a_limit_order_waiting_for_the_open_is_submitted_when_it_opens(gateway_at, client):
    gateway = gateway_at(SUNDAY)
    ib = client(gateway)
    [ticker] = ib.reqTickers(AAPL)
    trade = ib.placeOrder(AAPL, LimitOrder("BUY", 10, round(ticker.bid * 0.92, 2), tif="GTC"))
    wait_until(ib, lambda: trade.orderStatus.status == "PreSubmitted")
    gateway.advance(MONDAY_OPEN + 1 - gateway.clock.now())
    wait_until(ib, lambda: trade.orderStatus.status == "Submitted")
    assert not trade.fills


def test_hong_kong_orders_wait_through_the_lunch_break(gateway_at, client):
    gateway = gateway_at("2026-11-24T12:10:00+08:00")
    ib = client(gateway)
    seen = warnings_of(ib)
    trade = ib.placeOrder(TENCENT, MarketOrder("BUY", 100))
    wait_until(ib, lambda: any(code == 399 for _, code, _ in seen))
    assert trade.orderStatus.status == "PreSubmitted"
    assert seen[-1][2].endswith("will not be placed at the exchange until 2026-11-24 13:00:00 Hongkong.")
    gateway.advance(49 * 60)  # 12:59
    ib.reqOpenOrders()
    assert trade.orderStatus.status == "PreSubmitted" and not trade.fills
    gateway.advance(60)
    wait_until(ib, trade.isDone)
    assert utc(trade.fills[0].execution.time) == dt.datetime(2026, 11, 24, 5, tzinfo=dt.timezone.utc)  # 13:00 HKT


def test_day_orders_expire_at_the_close_gtc_and_outside_rth_ones_go_on(gateway_at, client):
    gateway = gateway_at("2026-11-24T20:50:00Z")  # 15:50 New York
    ib = client(gateway)
    [ticker] = ib.reqTickers(AAPL)
    low = round(ticker.bid * 0.92, 2)  # far below the market: rests
    day = ib.placeOrder(AAPL, LimitOrder("BUY", 1, low, tif="DAY"))
    gtc = ib.placeOrder(AAPL, LimitOrder("BUY", 1, low, tif="GTC"))
    extended = ib.placeOrder(AAPL, LimitOrder("BUY", 1, low, tif="DAY", outsideRth=True))
    wait_until(ib, lambda: all(t.orderStatus.status == "Submitted" for t in (day, gtc, extended)))
    gateway.advance(9 * 60)  # 15:59
    ib.reqOpenOrders()
    assert day.orderStatus.status == "Submitted"
    gateway.advance(2 * 60)  # 16:01
    wait_until(ib, lambda: day.orderStatus.status == "Cancelled")
    assert gtc.orderStatus.status == "Submitted" and extended.orderStatus.status == "Submitted"
    gateway.advance(4 * 3600)  # 20:01: the post-market is over
    wait_until(ib, lambda: extended.orderStatus.status == "Cancelled")
    assert gtc.orderStatus.status == "Submitted"


def test_a_day_order_placed_after_the_close_is_good_for_the_next_session(gateway_at, client):
    gateway = gateway_at(SUNDAY)
    ib = client(gateway)
    [ticker] = ib.reqTickers(AAPL)
    day = ib.placeOrder(AAPL, LimitOrder("BUY", 1, round(ticker.bid * 0.92, 2), tif="DAY"))
    gateway.advance(MONDAY_OPEN + 3600 - gateway.clock.now())
    wait_until(ib, lambda: day.orderStatus.status == "Submitted")
    gateway.advance(6 * 3600)  # past Monday's 16:00 close
    wait_until(ib, lambda: day.orderStatus.status == "Cancelled")


def test_outside_rth_limit_orders_trade_in_the_pre_market_others_wait(gateway_at, client):
    gateway = gateway_at("2026-11-24T12:00:00Z")  # 07:00 New York
    ib = client(gateway)
    [ticker] = ib.reqTickers(AAPL)
    price = round(ticker.ask * 1.01, 2)  # marketable
    extended = ib.placeOrder(AAPL, LimitOrder("BUY", 1, price, outsideRth=True))
    regular = ib.placeOrder(AAPL, LimitOrder("BUY", 1, price))
    market = ib.placeOrder(AAPL, MarketOrder("BUY", 1, outsideRth=True))  # TWS ignores outsideRth on market orders
    wait_until(ib, lambda: extended.isDone() and market.orderStatus.status == "PreSubmitted"
               and regular.orderStatus.status == "PreSubmitted")
    assert extended.orderStatus.status == "Filled"


def test_quotes_stand_still_while_the_market_is_closed(gateway_at, client):
    gateway = gateway_at(SUNDAY)
    ib = client(gateway)

    def snapshot():  # ib_insync keeps one Ticker per contract: read its values at once
        [ticker] = ib.reqTickers(AAPL)
        return ticker.bid, ticker.ask, ticker.last

    closed = snapshot()
    gateway.advance(3 * 3600)
    assert snapshot() == closed
    gateway.advance(MONDAY_OPEN + 600 - gateway.clock.now())
    assert snapshot() != closed


def test_market_depth_stands_still_while_the_market_is_closed(gateway_at, client):
    gateway = gateway_at(SUNDAY)
    ib = client(gateway)
    ticker = ib.reqMktDepth(AAPL, numRows=5)
    wait_until(ib, lambda: len(ticker.domBids) == 5 and len(ticker.domAsks) == 5)

    def book():
        return [(level.price, level.size) for level in ticker.domBids + ticker.domAsks]

    closed = book()
    gateway.advance(3 * 3600)  # its market pass has sent any update before the time is answered:
    ib.reqCurrentTime()
    assert book() == closed
    gateway.advance(MONDAY_OPEN + 600 - gateway.clock.now())
    ib.reqCurrentTime()
    assert book() != closed


def test_always_open_trades_on_a_sunday(gateway_at, client):
    gateway = gateway_at(SUNDAY, always_open=True)
    ib = client(gateway)
    trade = ib.placeOrder(AAPL, MarketOrder("BUY", 10))
    wait_until(ib, trade.isDone)
    assert trade.orderStatus.status == "Filled"


def test_the_demo_clock_starts_inside_a_us_session():
    sunday = parse_instant(SUNDAY)
    start = us_session_start(sunday)  # Friday 2026-11-27 (a half day after Thanksgiving), after its open
    assert dt.datetime(2026, 11, 27, 14, 30, tzinfo=dt.timezone.utc).timestamp() < start < sunday
    tuesday = parse_instant(TUESDAY_SESSION)
    assert us_session_start(tuesday) == tuesday


# ---------------------------------------------------------------- qdibkr sim, as a user starts it
def start_sim(*arguments) -> tuple[subprocess.Popen, int, str]:
    qdibkr = shutil.which("qdibkr") or pytest.fail("the qdibkr console script is not installed")
    sim = subprocess.Popen([qdibkr, "sim", "--port", "0", *arguments], stdout=subprocess.PIPE, text=True,
                           env={**os.environ, "QDIBKR_CONFIG": os.devnull})
    line = sim.stdout.readline()
    port = int(line.split("127.0.0.1:")[1].split(",")[0])
    return sim, port, sim.stdout.readline()


def test_qdibkr_sim_on_a_sunday_says_when_the_market_opens_and_holds_the_order():
    sim, port, mode = start_sim("--start", SUNDAY)
    try:
        assert "Sun 2026-11-29 08:19" in mode and "XNYS (USD) closed, opens Mon 2026-11-30 09:30" in mode
        ib = IB().connect("127.0.0.1", port, clientId=1, timeout=5)
        try:
            trade = ib.placeOrder(ib.qualifyContracts(Stock("AAPL", "SMART", "USD"))[0], MarketOrder("BUY", 10))
            wait_until(ib, lambda: trade.orderStatus.status == "PreSubmitted")
            ib.reqOpenOrders()  # a round trip later, still waiting
            assert trade.orderStatus.status == "PreSubmitted" and not trade.fills
        finally:
            ib.disconnect()
    finally:
        sim.terminate()
        sim.wait(timeout=10)


def test_qdibkr_sim_at_speed_600_fills_an_order_within_seconds_of_the_simulated_open():
    start = "2026-11-24T13:30:00Z"  # an hour before the open: 6 s of wall time at 600x
    sim, port, mode = start_sim("--start", start, "--speed", "600")
    try:
        assert "time runs 600x real time" in mode
        ib = IB().connect("127.0.0.1", port, clientId=1, timeout=5)
        try:
            trade = ib.placeOrder(ib.qualifyContracts(Stock("AAPL", "SMART", "USD"))[0], MarketOrder("BUY", 10))
            wait_until(ib, lambda: trade.orderStatus.status == "PreSubmitted")
            sim_now = ib.reqCurrentTime().timestamp()
            open_at = parse_instant("2026-11-24T14:30:00Z")
            assert sim_now < open_at
            open_wall = time.time() + (open_at - sim_now) / 600
            wait_until(ib, trade.isDone, timeout=(open_at - sim_now) / 600 + 10)
            filled_wall = time.time()
            assert trade.orderStatus.status == "Filled"
            assert filled_wall - open_wall < 3.0  # seconds of wall time after the simulated open
            assert utc(trade.fills[0].execution.time).timestamp() >= open_at
        finally:
            ib.disconnect()
    finally:
        sim.terminate()
        sim.wait(timeout=10)
