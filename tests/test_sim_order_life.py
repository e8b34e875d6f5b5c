"""An order's life as TWS reports it, checked through the real ib_insync client over a real socket.

The expected sequences and values come from TWS's own messages as others captured them:
- rust-ibapi's capture of a market order that fills (openOrder and orderStatus PreSubmitted,
  execDetails, openOrder and orderStatus Filled, openOrder Filled with the commission, then the
  commission report) and of a cancel (orderStatus Cancelled, then error 202):
  https://github.com/wboayue/rust-ibapi/blob/5fddde93/src/orders/tests.rs
- a rejection logged by ib_insync's users (error 201, then openOrder and orderStatus Inactive):
  https://github.com/erdewit/ib_insync/issues/554
- execution times in UTC without a zone: https://github.com/erdewit/ib_insync/issues/671
- error codes and texts: https://interactivebrokers.github.io/tws-api/message_codes.html
"""

import asyncio
import datetime as dt
import re
import time
from pathlib import Path

import pytest
from ib_insync import IB, LimitOrder, MarketOrder, Stock
from ib_insync.decoder import Decoder
from ib_insync.util import UNSET_DOUBLE

from qdibkr.broker import Broker
from qdibkr import emit
from qdibkr.errors import OrderRejected
from qdibkr.orders import terms
from qdibkr.sim import SimGateway, messages
from qdibkr.sim.server import Session

from .conftest import wait_until
from .test_runner import run_once, statuses

UNSET_INTEGER = 2**31 - 1
TUESDAY = 1


@pytest.fixture
def gateway(tmp_path):
    """A gateway whose clock stands at the next Tuesday, 15:00 UTC (10:00 or 11:00 in New York):
    inside a US session whatever the host's day and hour."""
    gw = SimGateway(port=0, state_path=str(tmp_path / "sim-state.json"), tick_interval=0.02).start_in_thread()
    now = dt.datetime.fromtimestamp(gw.clock.now(), dt.timezone.utc)
    target = now.replace(hour=15, minute=0, second=0, microsecond=0) + dt.timedelta(days=(TUESDAY - now.weekday()) % 7)
    if target <= now:
        target += dt.timedelta(days=7)
    gw.advance((target - now).total_seconds())
    yield gw
    gw.stop()


def record(ib: IB) -> list:
    """The messages ib_insync decodes, in order, as tuples: what each reports of an order."""
    seen = []
    wrapper = ib.wrapper

    def tap(name, describe):
        original = getattr(wrapper, name)

        def recorded(*args):
            seen.append(describe(*args))
            original(*args)

        setattr(wrapper, name, recorded)

    tap("openOrder", lambda order_id, contract, order, state:
        ("openOrder", order_id, state.status, state.commission, state.commissionCurrency))
    tap("orderStatus", lambda order_id, status, *rest: ("orderStatus", order_id, status))
    tap("execDetails", lambda req_id, contract, execution: ("execDetails", execution.orderId))
    tap("commissionReport", lambda report: ("commissionReport", report.execId))
    tap("error", lambda req_id, code, text, *rest: ("error", req_id, code, text))
    return seen


def of_order(seen: list, order_id: int) -> list:
    return [m for m in seen if m[0] == "commissionReport" or m[1] == order_id]


def aapl(ib: IB) -> Stock:
    contract = Stock("AAPL", "SMART", "USD")
    ib.qualifyContracts(contract)
    return contract


def resting_buy(ib: IB, contract, **kwargs) -> LimitOrder:
    """A limit buy 5% under the bid, on the price ladder: it rests."""
    [ticker] = ib.reqTickers(contract)
    return LimitOrder("BUY", 5, round(ticker.bid * 0.95, 2), **kwargs)


# ---------------------------------------------------------------- states (difference 2)
def test_market_order_fill_is_reported_as_tws_does(ib):
    seen = record(ib)
    trade = ib.placeOrder(aapl(ib), MarketOrder("BUY", 10))
    wait_until(ib, lambda: any(m[0] == "commissionReport" for m in seen))
    order_id = trade.order.orderId
    [exec_id] = [f.execution.execId for f in trade.fills]
    assert of_order(seen, order_id) == [
        ("openOrder", order_id, "PreSubmitted", UNSET_DOUBLE, ""),
        ("orderStatus", order_id, "PreSubmitted"),
        ("execDetails", order_id),
        ("openOrder", order_id, "Filled", UNSET_DOUBLE, ""),
        ("orderStatus", order_id, "Filled"),
        ("openOrder", order_id, "Filled", 1.0, "USD"),  # the commission so far, in the order state
        ("commissionReport", exec_id),
    ]


def test_resting_limit_order_is_presubmitted_then_submitted(ib):
    seen = record(ib)
    contract = aapl(ib)
    trade = ib.placeOrder(contract, resting_buy(ib, contract))
    wait_until(ib, lambda: trade.orderStatus.status == "Submitted")
    order_id = trade.order.orderId
    assert [m[:3] for m in of_order(seen, order_id)] == [
        ("openOrder", order_id, "PreSubmitted"), ("orderStatus", order_id, "PreSubmitted"),
        ("openOrder", order_id, "Submitted"), ("orderStatus", order_id, "Submitted")]


def test_cancel_is_reported_as_tws_does(ib):
    contract = aapl(ib)
    trade = ib.placeOrder(contract, resting_buy(ib, contract))
    wait_until(ib, lambda: trade.orderStatus.status == "Submitted")
    seen = record(ib)
    ib.cancelOrder(trade.order)
    order_id = trade.order.orderId
    wait_until(ib, lambda: any(m[0] == "error" for m in seen))
    assert of_order(seen, order_id) == [
        ("orderStatus", order_id, "Cancelled"), ("error", order_id, 202, "Order Canceled - reason:")]


def test_rejected_order_is_inactive_after_error_201(ib):
    seen = record(ib)
    trade = ib.placeOrder(aapl(ib), MarketOrder("BUY", 1_000_000))  # more than the cash
    wait_until(ib, lambda: trade.orderStatus.status == "Inactive")
    order_id = trade.order.orderId
    # Taken in, then refused by TWS's own checks: PreSubmitted, error 201, Inactive (ib_insync issue 554).
    messages = of_order(seen, order_id)
    taken, error, states = messages[:2], messages[2], messages[3:]
    assert [m[:3] for m in taken] == [("openOrder", order_id, "PreSubmitted"), ("orderStatus", order_id, "PreSubmitted")]
    assert error[:3] == ("error", order_id, 201) and error[3].startswith("Order rejected - reason:")
    assert [m[:3] for m in states] == [("openOrder", order_id, "Inactive"), ("orderStatus", order_id, "Inactive")]
    assert ib.reqCompletedOrders(apiOnly=True)[0].orderStatus.status == "Inactive"


# ---------------------------------------------------------------- error codes (difference 3)
def test_limit_price_off_the_tick_ladder_gets_110_and_no_order(ib):
    seen = record(ib)
    contract = aapl(ib)
    order = resting_buy(ib, contract)
    order.lmtPrice += 0.005  # AAPL trades in cents
    trade = ib.placeOrder(contract, order)
    wait_until(ib, lambda: any(m[0] == "error" for m in seen))
    order_id = trade.order.orderId
    assert of_order(seen, order_id) == [
        ("error", order_id, 110, "The price does not conform to the minimum price variation for this contract.")]
    assert ib.reqAllOpenOrders() == []  # TWS took no order in


def test_cancelling_an_unknown_order_gets_10147(ib):
    seen = record(ib)
    ib.client.cancelOrder(987654)
    wait_until(ib, lambda: any(m[0] == "error" for m in seen))
    assert seen == [("error", 987654, 10147, "OrderId 987654 that needs to be cancelled is not found.")]


def test_reusing_the_id_of_a_finished_order_gets_tws_texts(ib):
    seen = record(ib)
    contract = aapl(ib)
    filled = ib.placeOrder(contract, MarketOrder("BUY", 10))
    resting = ib.placeOrder(contract, resting_buy(ib, contract))
    wait_until(ib, lambda: filled.isDone() and resting.orderStatus.status == "Submitted")
    ib.cancelOrder(resting.order)
    wait_until(ib, lambda: resting.isDone())
    # Past ib_insync's IB.placeOrder, which refuses to resend a finished trade itself:
    ib.client.placeOrder(filled.order.orderId, contract, filled.order)  # a modification of a filled order
    ib.client.placeOrder(resting.order.orderId, contract, resting.order)  # the id of a cancelled order
    wait_until(ib, lambda: len([m for m in seen if m[0] == "error" and m[2] != 202]) == 2)
    assert [m for m in seen if m[0] == "error" and m[2] != 202] == [
        ("error", filled.order.orderId, 104, "Can't modify a filled order."),
        ("error", resting.order.orderId, 103, "Duplicate order ID.")]


@pytest.mark.parametrize("attribute, code, text", [
    ("eTradeOnly", 10268, "The 'EtradeOnly' order attribute is not supported."),
    ("firmQuoteOnly", 10269, "The 'firmQuoteOnly' order attribute is not supported."),
])
def test_etrade_only_and_firm_quote_only_are_refused(ib, attribute, code, text):
    seen = record(ib)
    order = MarketOrder("BUY", 10)
    setattr(order, attribute, True)  # as ibapi 9.81 sets both by default
    trade = ib.placeOrder(aapl(ib), order)
    wait_until(ib, lambda: any(m[0] == "error" for m in seen))
    ib.reqCurrentTime()  # a round trip: anything sent for the order before its answer is now processed
    assert of_order(seen, trade.order.orderId) == [("error", trade.order.orderId, code, text)]
    assert not trade.fills and ib.positions() == []


# ---------------------------------------------------------------- order fields (difference 5)
def test_market_order_fields_as_tws_reports_them(ib):
    trade = ib.placeOrder(aapl(ib), MarketOrder("BUY", 10))
    wait_until(ib, lambda: trade.isDone())
    assert (trade.order.lmtPrice, trade.order.auxPrice) == (0.0, 0.0)  # not the unset double
    [completed] = ib.reqCompletedOrders(apiOnly=True)
    order = completed.order
    assert (order.lmtPrice, order.auxPrice, order.displaySize, order.clearingIntent) == (0.0, 0.0, UNSET_INTEGER, "IB")
    assert (order.totalQuantity, order.filledQuantity) == (0, 10)  # totalQuantity: what was left
    assert completed.orderStatus.status == "Filled"


def test_open_order_fields_as_tws_reports_them(connect):
    ib, other = connect(1), connect(2)
    contract = aapl(ib)
    trade = ib.placeOrder(contract, resting_buy(ib, contract))
    wait_until(ib, lambda: trade.orderStatus.status == "Submitted")
    [seen] = other.reqAllOpenOrders()  # decoded afresh from the openOrder message
    order = seen.order
    assert seen.contract.right == "?"
    assert (order.lmtPrice, order.auxPrice) == (trade.order.lmtPrice, 0.0)
    assert (order.displaySize, order.clearingIntent, order.openClose) == (UNSET_INTEGER, "IB", "")
    assert (order.deltaNeutralOrderType, order.volatilityType, order.referencePriceType) == ("None", 0, 0)
    assert (order.scaleInitLevelSize, order.scaleSubsLevelSize) == (UNSET_INTEGER, UNSET_INTEGER)
    assert (order.cashQty, order.dontUseAutoPriceForHedge, order.adjustedOrderType) == (0.0, True, "None")


# ---------------------------------------------------------------- execution times (difference 6)
def test_execution_time_is_utc_without_a_zone(gateway, ib):
    times = []
    exec_details = ib.client.decoder.handlers[11]
    ib.client.decoder.handlers[11] = lambda fields: (times.append(fields[15]), exec_details(fields))
    before = int(gateway.clock.now())
    trade = ib.placeOrder(aapl(ib), MarketOrder("BUY", 10))
    wait_until(ib, lambda: trade.isDone() and trade.fills)
    after = gateway.clock.now()
    [text] = times
    assert re.fullmatch(r"\d{8}-\d\d:\d\d:\d\d", text)
    sent = dt.datetime.strptime(text, "%Y%m%d-%H:%M:%S").replace(tzinfo=dt.timezone.utc).timestamp()
    assert before <= sent <= after


@pytest.fixture
def host_in_hong_kong(monkeypatch):
    """The process's local time zone set to Hong Kong (UTC+8), as on a user's machine there."""
    monkeypatch.setenv("TZ", "Asia/Hong_Kong")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


def test_qdibkr_reads_execution_times_right_on_a_host_not_on_utc(gateway, host_in_hong_kong):
    """The fill's time as qdibkr reads it: the runner records ``execution.time``, and ``trades()``
    of a later connection shows the executions TWS reports at connect."""
    placing, later = (Broker(host="127.0.0.1", port=gateway.port, client_id=i) for i in (1, 2))
    placing.connect()
    try:
        before = gateway.clock.now()
        result = placing.run(placing.place_async(Stock("AAPL", "SMART", "USD"), "BUY", 10))
        after = gateway.clock.now()
        assert result.status == "Filled"
        [fill] = placing.ib.fills()
        assert before - 1 <= fill.execution.time.timestamp() <= after  # whole seconds on the wire
        later.connect()
        [shown] = later.trades()["time"]
        assert before - 1 <= shown.timestamp() <= after
    finally:
        placing.disconnect()
        later.disconnect()


def test_qdibkr_does_not_count_a_rejected_order_as_open(gateway):
    """TWS reports a rejected order Inactive, which ib_insync keeps among its open trades."""
    broker = Broker(host="127.0.0.1", port=gateway.port, client_id=1)
    broker.connect()
    try:
        aapl = Stock("AAPL", "SMART", "USD")
        broker.ib.qualifyContracts(aapl)
        with pytest.raises(OrderRejected, match="error 201"):
            broker.run(broker.place_async(aapl, "BUY", 1_000_000))  # more than the cash
        wait_until(broker.ib, lambda: broker.ib.trades()[0].orderStatus.status == "Inactive")
        assert broker.orders().empty
        assert broker.run(broker.open_orders_async(aapl)) == []
    finally:
        broker.disconnect()


def test_qdibkr_ends_an_order_refused_with_110(gateway):
    """ib_insync takes error 110 for a warning; TWS took no order in, and qdibkr must not keep one."""
    broker = Broker(host="127.0.0.1", port=gateway.port, client_id=1)
    broker.connect()
    try:
        aapl = Stock("AAPL", "SMART", "USD")
        broker.ib.qualifyContracts(aapl)
        [ticker] = broker.ib.reqTickers(aapl)
        with pytest.raises(OrderRejected, match="error 110"):
            broker.run(broker.place_async(aapl, "BUY", 5, terms(limit=round(ticker.bid * 0.95, 2) + 0.005)))
        [trade] = broker.ib.trades()
        assert trade.orderStatus.status == "Cancelled" and trade.log[-1].errorCode == 110
        assert broker.orders().empty
    finally:
        broker.disconnect()


@pytest.fixture
def late_commission_reports(monkeypatch):
    """Commission reports a moment after the rest of their fill, in a later batch, as TWS's may come."""
    send = Session.send

    def later(session, fields):
        if fields[0] == messages.COMMISSION_REPORT:
            asyncio.get_running_loop().call_later(0.2, send, session, fields)
        else:
            send(session, fields)

    monkeypatch.setattr(Session, "send", later)


def test_runner_waits_for_the_commission_report_after_filled(store, gateway, late_commission_reports):
    """A signal is filled once its fill is in the store: the close that follows it sees the shares."""
    emit("open_long", "AAPL", 10, strategy="late", store=store)
    emit("close_long", "AAPL", strategy="late", store=store)
    run_once(store, gateway)
    assert statuses(store) == [("open_long", "filled"), ("close_long", "filled")]
    assert [(f.side, f.shares) for f in store.fills("late")] == [("BUY", 10), ("SELL", 10)]


# ---------------------------------------------------------------- field by field, against TWS's captures
CAPTURES = Path(__file__).parent / "fidelity" / "rust_ibapi_orders.txt"
CAPTURED_VERSION = 164
# What legitimately differs: ids, the account, the captured order's instrument (TSLA), the time.
DIFFERS = {"orderId", "clientId", "permId", "account", "conId", "symbol", "localSymbol", "completedTime"}


class Collector:
    """A wrapper for both decoders: keeps what openOrder and completedOrder decode."""

    def __init__(self):
        self.decoded = []

    def openOrder(self, order_id, contract, order, state):
        self.decoded.append((contract, order, state))

    def completedOrder(self, contract, order, state):
        self.decoded.append((contract, order, state))


def decoded_fields(fields: list[str], version: int, ibapi_decoder) -> dict:
    """The message decoded by ib_insync's decoder and by IB's own (ibapi): every field, by name."""
    ours, ibs = Collector(), Collector()
    Decoder(ours, version).interpret(fields)
    ibapi_decoder.Decoder(ibs, version).interpret(tuple(f.encode() for f in fields))
    return {f"{source}.{kind}.{name}": vars(value) if hasattr(value, "__dict__") else value  # ibapi's SoftDollarTier
            for source, [decoded] in (("ib_insync", ours.decoded), ("ibapi", ibs.decoded))
            for kind, obj in zip(("contract", "order", "state"), decoded)
            for name, value in vars(obj).items() if name not in DIFFERS}


def test_order_messages_decode_as_tws_captures(gateway):
    """The sim's openOrder (PreSubmitted; Filled with the commission) and completedOrder for a market order
    of 100 AAPL decode, through ib_insync and ibapi, to the fields of TWS's own for the same order, both at
    the captures' server version (later versions add fields)."""
    ibapi_decoder = pytest.importorskip("ibapi.decoder")
    ib = IB()
    ib.client.MaxClientVersion = CAPTURED_VERSION
    ib.connect("127.0.0.1", gateway.port, clientId=7, timeout=5)
    assert ib.client.serverVersion() == CAPTURED_VERSION
    raw = []
    interpret = ib.client.decoder.interpret
    ib.client.decoder.interpret = lambda fields: (raw.append(fields), interpret(fields))
    trade = ib.placeOrder(aapl(ib), MarketOrder("BUY", 100))  # USD 1 commission, as in the capture
    wait_until(ib, lambda: trade.fills and trade.fills[0].commissionReport.execId)
    ib.reqCompletedOrders(apiOnly=True)
    opened = [f for f in raw if f[0] == "5"]
    ours = [opened[0], opened[-1], next(f for f in raw if f[0] == "101")]
    captured = [line.split("|")[:-1] for line in CAPTURES.read_text().splitlines() if not line.startswith("#")]
    for sim, tws in zip(ours, captured, strict=True):
        assert decoded_fields(sim, CAPTURED_VERSION, ibapi_decoder) == decoded_fields(tws, CAPTURED_VERSION, ibapi_decoder)
    ib.disconnect()
