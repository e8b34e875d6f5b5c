"""Stop, trailing, on-close and Adaptive orders, OCA groups and brackets, through the real ib_insync client.

Each gateway's clock starts at a fixed instant and stands still; the tests move it with ``advance`` and
read the seeded price path (``broker.model``) to choose their stop and limit levels, so they mean the same
whatever the host's day and hour. On 2026-11-24 (a Tuesday) AAPL falls through the morning; on 2026-11-25
it dips, then rises. What TWS does, and where that is written:
- stops are simulated by IB and held PreSubmitted until elected; a US stock's default trigger is the last
  price: https://interactivebrokers.github.io/tws-api/trigger_method_limit.html
- bracket orders: the parent and first child go with transmit=False, the last child transmits all:
  https://interactivebrokers.github.io/tws-api/bracket_order.html
- a cancel is reported as orderStatus Cancelled, then error 202 (tests/test_sim_order_life.py)
"""

import pytest
from ib_insync import IB, LimitOrder, MarketOrder, Order, Stock, StopLimitOrder, StopOrder, TagValue

from qdibkr.sim import catalogue
from qdibkr.sim.catalogue import round_to_tick
from qdibkr.sim.clock import parse_instant

from .conftest import wait_until

FALLING = "2026-11-24T15:00:00Z"  # 10:00 in New York
RISING = "2026-11-25T15:00:00Z"
BEFORE_CLOSE = "2026-11-24T20:50:00Z"  # New York closes at 21:00 UTC
LISTING = catalogue.find("AAPL")[0]
STEP = 5.0  # seconds of simulated time per market pass when a test walks the clock
WINDOW = 3600.0


@pytest.fixture
def market(gateway_at, tmp_path):
    """Start a gateway at an instant and connect a client to it: returns (gateway, client, AAPL)."""
    clients = []

    def start(instant, **kwargs):
        gateway = gateway_at(instant, **kwargs)
        ib = IB()
        ib.connect("127.0.0.1", gateway.port, clientId=1, timeout=5)
        clients.append(ib)
        contract = Stock("AAPL", "SMART", "USD")
        ib.qualifyContracts(contract)
        return gateway, ib, contract

    yield start
    for ib in clients:
        ib.disconnect()


def reports(ib: IB) -> dict:
    """The last openOrder TWS sent for each order id, as ib_insync decoded it: (order, status)."""
    seen = {}
    original = ib.wrapper.openOrder

    def tap(order_id, contract, order, state):
        seen[order_id] = (order, state.status)
        original(order_id, contract, order, state)

    ib.wrapper.openOrder = tap
    return seen


def errors(ib: IB) -> list:
    seen = []
    ib.errorEvent += lambda req_id, code, text, contract: seen.append((req_id, code, text))
    return seen


def settle(ib: IB):
    """Wait until the client has read everything the gateway sent before: a round trip behind it."""
    ib.reqCurrentTime()


def walk(gateway, done, limit: float = WINDOW) -> float:
    """Move the clock on in steps, a market pass each, until ``done()`` (which reads the gateway's
    broker: the client then waits for the messages); the time it held."""
    start = gateway.clock.now()
    while gateway.clock.now() - start < limit:
        gateway.advance(STEP)
        if done():
            return gateway.clock.now()
    raise AssertionError(f"not done within {limit:g} simulated seconds")


def status(gateway, trade) -> str:
    """The order's status in the gateway's broker, ahead of what the client has read."""
    return gateway.broker.orders[(trade.order.clientId, trade.order.orderId)].status


def path(gateway, t0: float, t1: float) -> tuple[float, float]:
    return gateway.broker.model.low_high(LISTING, t0, t1)


def mid(gateway, t: float) -> float:
    return gateway.broker.model.mid(LISTING, t)


def between(a: float, b: float) -> float:
    """A price on the tick ladder halfway between two others."""
    return round_to_tick(LISTING, (a + b) / 2)


def buy(ib: IB, contract, quantity: int):
    trade = ib.placeOrder(contract, MarketOrder("BUY", quantity))
    wait_until(ib, lambda: trade.orderStatus.status == "Filled")


def test_a_sell_stop_is_presubmitted_until_the_last_price_reaches_it_then_sells_at_the_bid(market):
    gateway, ib, contract = market(FALLING)
    buy(ib, contract, 100)
    seen = reports(ib)
    t0 = gateway.clock.now()
    low, _ = path(gateway, t0, t0 + WINDOW)
    stop = between(mid(gateway, t0), low)
    assert low < stop < mid(gateway, t0)
    trade = ib.placeOrder(contract, StopOrder("SELL", 100, stop))
    wait_until(ib, lambda: trade.orderStatus.status == "PreSubmitted")
    assert seen[trade.order.orderId][0].auxPrice == stop

    elected = walk(gateway, lambda: status(gateway, trade) == "Filled")
    wait_until(ib, lambda: trade.orderStatus.status == "Filled")
    assert path(gateway, t0, elected - STEP)[0] > stop  # not reached at the pass before
    assert path(gateway, elected - STEP, elected)[0] <= stop
    (fill,) = trade.fills
    assert fill.execution.price == gateway.broker.model.quote(LISTING, elected).bid
    assert [s.status for s in trade.log][-2:] == ["PreSubmitted", "Filled"]
    (done,) = [t for t in ib.reqCompletedOrders(apiOnly=True) if t.order.permId == trade.order.permId]
    assert (done.order.orderType, done.order.auxPrice, done.orderStatus.status) == ("STP", stop, "Filled")


def test_a_stop_gapped_through_fills_at_the_first_price_not_at_the_stop(market):
    gateway, ib, contract = market(FALLING)
    buy(ib, contract, 100)
    t0 = gateway.clock.now()
    later = t0 + 2 * WINDOW
    assert mid(gateway, later) < mid(gateway, t0) - 1.0
    stop = round_to_tick(LISTING, mid(gateway, later) + 0.5)
    trade = ib.placeOrder(contract, StopOrder("SELL", 100, stop))
    wait_until(ib, lambda: trade.orderStatus.status == "PreSubmitted")
    gateway.advance(later - t0)  # one pass, two hours on: the market has gapped through the stop
    wait_until(ib, lambda: trade.orderStatus.status == "Filled")
    price = trade.fills[0].execution.price
    assert price == gateway.broker.model.quote(LISTING, later).bid
    assert price < stop - 0.3


def test_a_stop_limit_elects_a_limit_order_at_its_limit_price(market):
    gateway, ib, contract = market(RISING)
    seen = reports(ib)
    t0 = gateway.clock.now()
    _, high = path(gateway, t0, t0 + WINDOW)
    stop = between(mid(gateway, t0), high)
    order = StopLimitOrder("BUY", 100, lmtPrice=round_to_tick(LISTING, stop - 0.5), stopPrice=stop)
    trade = ib.placeOrder(contract, order)
    wait_until(ib, lambda: trade.orderStatus.status == "PreSubmitted")
    assert seen[trade.order.orderId][0].lmtPrice == order.lmtPrice
    assert seen[trade.order.orderId][0].auxPrice == stop

    elected = walk(gateway, lambda: status(gateway, trade) != "PreSubmitted")
    assert path(gateway, elected - STEP, elected)[1] >= stop
    wait_until(ib, lambda: trade.orderStatus.status == "Submitted")  # a buy limit half a dollar under the market
    assert not trade.fills


def test_a_trailing_stop_ratchets_up_with_the_price_and_reports_its_stop(market):
    gateway, ib, contract = market(RISING)
    buy(ib, contract, 100)
    seen = reports(ib)
    t0 = gateway.clock.now()
    trade = ib.placeOrder(contract, Order(action="SELL", totalQuantity=100, orderType="TRAIL", auxPrice=0.25))
    wait_until(ib, lambda: trade.order.orderId in seen)
    order_id = trade.order.orderId
    assert seen[order_id][0].trailStopPrice == round_to_tick(LISTING, mid(gateway, t0) - 0.25)
    held = gateway.broker.orders[(1, order_id)]
    stops = []

    def moved():
        stops.append(held.trail_stop_price)
        return held.status == "Filled"

    elected = walk(gateway, moved)
    wait_until(ib, lambda: trade.orderStatus.status == "Filled")
    assert stops == sorted(stops) and stops[-1] > stops[0]  # ratcheted up, never down
    _, high = path(gateway, t0, elected - STEP)
    assert stops[-1] == round_to_tick(LISTING, high - 0.25)
    assert seen[order_id][0].trailStopPrice == stops[-1]  # the client was told each new stop
    assert path(gateway, elected - STEP, elected)[0] <= stops[-1]


def test_a_trailing_limit_by_percent_reports_its_stop_and_limit(market):
    gateway, ib, contract = market(FALLING)
    seen = reports(ib)
    t0 = gateway.clock.now()
    order = Order(action="BUY", totalQuantity=100, orderType="TRAIL LIMIT", trailingPercent=1.0,
                  lmtPriceOffset=0.1)
    trade = ib.placeOrder(contract, order)
    wait_until(ib, lambda: trade.orderStatus.status == "PreSubmitted")
    reported = seen[trade.order.orderId][0]
    stop = round_to_tick(LISTING, mid(gateway, t0) * 1.01)
    assert (reported.trailStopPrice, reported.trailingPercent, reported.lmtPriceOffset) == (stop, 1.0, 0.1)
    assert reported.lmtPrice == pytest.approx(stop + 0.1)
    gateway.advance(WINDOW)  # the price falls: a buy's stop follows it down
    settle(ib)
    _, status = seen[trade.order.orderId]
    low, _ = path(gateway, t0, t0 + WINDOW)
    assert status == "PreSubmitted"
    assert seen[trade.order.orderId][0].trailStopPrice == round_to_tick(LISTING, low * 1.01)


def test_market_and_limit_on_close_trade_at_the_closing_price(market):
    gateway, ib, contract = market(BEFORE_CLOSE)
    buy(ib, contract, 200)
    close = parse_instant("2026-11-24T21:00:00Z")
    closing = round_to_tick(LISTING, mid(gateway, close))
    moc = ib.placeOrder(contract, Order(action="SELL", totalQuantity=100, orderType="MOC"))
    loc = ib.placeOrder(contract, Order(action="SELL", totalQuantity=100, orderType="LOC",
                                        lmtPrice=closing - 1))
    loc_too_high = ib.placeOrder(contract, Order(action="BUY", totalQuantity=100, orderType="LOC",
                                                 lmtPrice=closing - 1))
    wait_until(ib, lambda: all(t.orderStatus.status == "Submitted" for t in (moc, loc, loc_too_high)))
    gateway.advance(300)
    settle(ib)
    assert moc.orderStatus.status == loc.orderStatus.status == "Submitted"  # nothing trades before the close
    gateway.advance(600)
    wait_until(ib, lambda: moc.orderStatus.status == loc.orderStatus.status == "Filled")
    for trade in (moc, loc):
        (fill,) = trade.fills
        assert fill.execution.price == closing
        assert fill.execution.shares == 100
        assert fill.execution.time.timestamp() == close
    wait_until(ib, lambda: loc_too_high.orderStatus.status == "Cancelled")


def test_an_adaptive_market_order_works_after_its_priority_delay(market):
    gateway, ib, contract = market(FALLING)
    seen = reports(ib)
    order = MarketOrder("BUY", 100, algoStrategy="Adaptive", algoParams=[TagValue("adaptivePriority", "Urgent")])
    trade = ib.placeOrder(contract, order)
    wait_until(ib, lambda: trade.orderStatus.status == "PreSubmitted")
    reported = seen[trade.order.orderId][0]
    assert reported.algoStrategy == "Adaptive"
    assert reported.algoParams == [TagValue("adaptivePriority", "Urgent")]
    gateway.advance(0.5)
    settle(ib)
    assert trade.orderStatus.status == "PreSubmitted"
    gateway.advance(0.5)
    wait_until(ib, lambda: trade.orderStatus.status == "Filled")


def test_a_stop_is_modified_by_placing_it_again_and_cancelled(market):
    gateway, ib, contract = market(FALLING)
    buy(ib, contract, 100)
    seen = reports(ib)
    refused = errors(ib)
    order = StopOrder("SELL", 100, 200.0)
    trade = ib.placeOrder(contract, order)
    wait_until(ib, lambda: trade.orderStatus.status == "PreSubmitted")
    order.auxPrice = 210.0
    ib.placeOrder(contract, order)
    wait_until(ib, lambda: seen[order.orderId][0].auxPrice == 210.0)
    ib.cancelOrder(order)
    wait_until(ib, lambda: trade.orderStatus.status == "Cancelled" and refused)
    assert refused == [(order.orderId, 202, "Order Canceled - reason:")]


def test_unsupported_stop_terms_are_refused_with_the_reason(market):
    gateway, ib, contract = market(FALLING)
    refused = errors(ib)
    trade = ib.placeOrder(contract, Order(action="BUY", totalQuantity=100, orderType="TRAIL"))
    wait_until(ib, lambda: trade.orderStatus.status == "Inactive")
    assert refused[0][1] == 201 and "trailing amount (auxPrice) or trailingPercent" in refused[0][2]
    trade = ib.placeOrder(contract, Order(action="BUY", totalQuantity=100, orderType="MOC", tif="GTC"))
    wait_until(ib, lambda: trade.orderStatus.status == "Inactive")
    assert "good for the day only" in refused[-1][2]


def place_bracket(ib: IB, contract, entry: float, take_profit: float, stop_loss: float, quantity: int = 100):
    return [ib.placeOrder(contract, o) for o in ib.bracketOrder("BUY", quantity, entry, take_profit, stop_loss)]


def test_a_bracket_waits_for_its_last_leg_then_its_take_profit_fill_cancels_the_stop(market):
    gateway, ib, contract = market(RISING)
    refused = errors(ib)
    t0 = gateway.clock.now()
    _, high = path(gateway, t0, t0 + WINDOW)
    ask = gateway.broker.model.quote(LISTING, t0).ask
    target = between(ask, high)
    assert ask < target < high
    parent_order, profit_order, loss_order = ib.bracketOrder("BUY", 100, ask + 0.05, target, ask - 5)
    parent, profit = ib.placeOrder(contract, parent_order), ib.placeOrder(contract, profit_order)
    settle(ib)
    assert parent.orderStatus.status == profit.orderStatus.status == "PendingSubmit"  # held: not transmitted
    loss = ib.placeOrder(contract, loss_order)
    wait_until(ib, lambda: parent.orderStatus.status == "Filled" and profit.orderStatus.status == "Submitted")
    assert loss.orderStatus.status == "PreSubmitted"  # a stop: held by IB until elected
    assert loss.orderStatus.parentId == parent_order.orderId

    walk(gateway, lambda: status(gateway, profit) == "Filled")
    wait_until(ib, lambda: (loss_order.orderId, 202, "Order Canceled - reason:") in refused)
    assert loss.orderStatus.status == "Cancelled"
    assert profit.fills[0].execution.price >= target
    assert gateway.broker.position(parent_order.account or ib.managedAccounts()[0], LISTING.con_id).quantity == 0


def test_a_bracket_stop_fill_cancels_the_take_profit(market):
    gateway, ib, contract = market(FALLING)
    t0 = gateway.clock.now()
    low, _ = path(gateway, t0, t0 + WINDOW)
    ask = gateway.broker.model.quote(LISTING, t0).ask
    stop = between(mid(gateway, t0), low)
    parent, profit, loss = place_bracket(ib, contract, ask + 0.05, ask + 5, stop)
    wait_until(ib, lambda: parent.orderStatus.status == "Filled" and loss.orderStatus.status == "PreSubmitted")
    walk(gateway, lambda: status(gateway, loss) == "Filled")
    wait_until(ib, lambda: profit.orderStatus.status == "Cancelled")
    assert loss.fills[0].execution.shares == 100


def test_cancelling_a_bracket_parent_cancels_its_children(market):
    gateway, ib, contract = market(FALLING)
    price = round_to_tick(LISTING, mid(gateway, gateway.clock.now()))
    parent, profit, loss = place_bracket(ib, contract, price - 10, price + 5, price - 20)
    wait_until(ib, lambda: parent.orderStatus.status == "Submitted" and loss.orderStatus.status == "PreSubmitted")
    assert profit.orderStatus.status == "PreSubmitted"  # waits for its parent's fill
    ib.cancelOrder(parent.order)
    wait_until(ib, lambda: all(t.orderStatus.status == "Cancelled" for t in (parent, profit, loss)))


def test_a_partly_filled_parent_sets_its_children_to_the_shares_filled(market):
    gateway, ib, contract = market(FALLING)
    sizes = []
    original = ib.wrapper.openOrder

    def tap(order_id, contract, order, state):
        sizes.append((order_id, order.totalQuantity, state.status))
        original(order_id, contract, order, state)

    ib.wrapper.openOrder = tap
    quote = gateway.broker.model.quote(LISTING, gateway.clock.now())
    size = quote.ask_size + 1000  # more than the best ask shows: a limit at the ask fills that much per pass
    parent, profit, loss = place_bracket(ib, contract, quote.ask, quote.ask + 5, quote.ask - 5, quantity=size)
    wait_until(ib, lambda: parent.orderStatus.status == "Filled"
               and profit.order.totalQuantity == loss.order.totalQuantity == size)  # each child's message came
    first = parent.fills[0].execution.shares
    assert first == quote.ask_size
    for child in (profit, loss):
        seen = [(quantity, status) for order_id, quantity, status in sizes if order_id == child.order.orderId]
        assert seen[0] == (first, "PreSubmitted")  # the parent filled that much as the bracket went out
        assert seen[-1][0] == size  # and the rest on the next pass
    assert profit.orderStatus.status == "Submitted" and loss.orderStatus.status == "PreSubmitted"


def test_one_cancels_all_cancels_the_others_when_one_fills(market):
    gateway, ib, contract = market(FALLING)
    refused = errors(ib)
    t0 = gateway.clock.now()
    low, _ = path(gateway, t0, t0 + WINDOW)
    near, far = between(mid(gateway, t0), low), round_to_tick(LISTING, low - 1)
    orders = ib.oneCancelsAll([LimitOrder("BUY", 100, near), LimitOrder("BUY", 100, far)], "dip", 1)
    first, second = (ib.placeOrder(contract, o) for o in orders)
    wait_until(ib, lambda: first.orderStatus.status == second.orderStatus.status == "Submitted")
    walk(gateway, lambda: status(gateway, first) == "Filled")
    wait_until(ib, lambda: (orders[1].orderId, 202, "Order Canceled - reason:") in refused)
    assert second.orderStatus.status == "Cancelled"


def bracket_as_reported(trades: list) -> list:
    return sorted((t.order.orderId, t.order.orderType, t.order.parentId, t.order.ocaGroup, t.order.auxPrice,
                   t.orderStatus.status) for t in trades)


def test_a_reconnecting_client_and_a_restarted_gateway_see_the_whole_bracket(market, tmp_path):
    state = str(tmp_path / "sim-state.json")
    gateway, ib, contract = market(FALLING, state_path=state)
    price = round_to_tick(LISTING, mid(gateway, gateway.clock.now()))
    parent, profit, loss = place_bracket(ib, contract, price - 10, price + 5, price - 20)
    wait_until(ib, lambda: parent.orderStatus.status == "Submitted" and loss.orderStatus.status == "PreSubmitted")
    group = str(parent.order.permId)
    expected = [(parent.order.orderId, "LMT", 0, "", 0.0, "Submitted"),
                (profit.order.orderId, "LMT", parent.order.orderId, group, 0.0, "PreSubmitted"),
                (loss.order.orderId, "STP", parent.order.orderId, group, price - 20,
                 "PreSubmitted")]
    ib.disconnect()
    fresh = IB()  # a new process, knowing nothing of the orders but what TWS tells it
    fresh.connect("127.0.0.1", gateway.port, clientId=1, timeout=5)
    assert bracket_as_reported(fresh.openTrades()) == expected
    fresh.disconnect()
    gateway.stop()

    _, again, _ = market(FALLING, state_path=state)
    assert bracket_as_reported(again.openTrades()) == expected


def test_a_gtd_order_is_cancelled_at_its_date(market):
    gateway, ib, contract = market(FALLING)
    seen = reports(ib)
    price = round_to_tick(LISTING, mid(gateway, gateway.clock.now()))
    order = LimitOrder("BUY", 100, price - 10, tif="GTD", goodTillDate="20261124 12:00:00 US/Eastern")
    trade = ib.placeOrder(contract, order)
    wait_until(ib, lambda: trade.orderStatus.status == "Submitted")
    assert seen[order.orderId][0].goodTillDate == "20261124 12:00:00 US/Eastern"
    gateway.advance(3600)
    settle(ib)
    assert trade.orderStatus.status == "Submitted"  # 16:00 UTC: an hour before its date
    gateway.advance(3600)
    wait_until(ib, lambda: trade.orderStatus.status == "Cancelled")
    assert gateway.broker.orders[(1, order.orderId)].completed_at == parse_instant("2026-11-24T17:00:00Z")
    refused = errors(ib)
    bad = ib.placeOrder(contract, LimitOrder("BUY", 100, price - 10, tif="GTD", goodTillDate="tomorrow"))
    settle(ib)
    assert refused == [(bad.order.orderId, 201, "Order rejected - reason:the goodTillDate 'tomorrow' is not "
                                                "'YYYYMMDD HH:MM:SS [zone]'")]


def test_an_order_type_the_listing_lacks_gets_387_and_no_order(market):
    gateway, ib, _ = market(FALLING)
    refused = errors(ib)
    tencent = Stock("700", "SEHK", "HKD")
    ib.qualifyContracts(tencent)
    order = Order(action="BUY", totalQuantity=100, orderType="MOC")  # Hong Kong's closing auction takes no MOC
    ib.placeOrder(tencent, order)
    settle(ib)
    assert refused == [(order.orderId, 387, "Unsupported order type for this exchange and security type.")]
    assert (1, order.orderId) not in gateway.broker.orders


def test_ib_async_reads_the_new_fields_back_after_reconnecting(ib_async_client, gateway):
    """ib_async (the maintained fork) decodes the same openOrder: a bracket with a trailing stop and an
    Adaptive entry comes back whole to a fresh client."""
    ib_async, ib = ib_async_client
    contract = ib_async.Stock("AAPL", "SMART", "USD")
    ib.qualifyContracts(contract)
    price = round_to_tick(LISTING, gateway.broker.mark_price(LISTING))
    parent, profit, loss = ib.bracketOrder("BUY", 100, price - 10, price + 5, price - 20)
    parent.algoStrategy, parent.algoParams = "Adaptive", [ib_async.TagValue("adaptivePriority", "Patient")]
    loss.orderType, loss.auxPrice, loss.trailingPercent = "TRAIL", ib_async.util.UNSET_DOUBLE, 2.0
    trades = [ib.placeOrder(contract, o) for o in (parent, profit, loss)]
    while any(t.orderStatus.status == "PendingSubmit" for t in trades):
        assert ib.waitOnUpdate(timeout=5), "the bracket was not reported"
    ib.disconnect()
    fresh = ib_async.IB()  # a new process, knowing nothing of the orders but what TWS tells it
    fresh.connect("127.0.0.1", gateway.port, clientId=11, timeout=5)
    try:
        reported = {t.order.orderId: t.order for t in fresh.openTrades()}
    finally:
        fresh.disconnect()
    assert sorted(reported) == [t.order.orderId for t in trades]
    assert reported[parent.orderId].algoParams == [ib_async.TagValue("adaptivePriority", "Patient")]
    assert reported[loss.orderId].parentId == parent.orderId
    assert reported[loss.orderId].trailingPercent == 2.0
    assert reported[loss.orderId].ocaGroup == reported[profit.orderId].ocaGroup != ""


def test_an_untransmitted_order_can_be_cancelled_and_holds_back_nothing_while_its_parent_waits(market):
    gateway, ib, contract = market(FALLING)
    buy(ib, contract, 100)
    refused = errors(ib)
    price = round_to_tick(LISTING, mid(gateway, gateway.clock.now()))
    held = ib.placeOrder(contract, LimitOrder("BUY", 100, price - 10, transmit=False))
    settle(ib)
    assert held.orderStatus.status == "PendingSubmit"
    ib.cancelOrder(held.order)
    wait_until(ib, lambda: held.orderStatus.status == "Cancelled" and refused)
    assert refused == [(held.order.orderId, 202, "Order Canceled - reason:")]

    parent, profit, loss = place_bracket(ib, contract, price - 10, price + 5, price - 20)
    wait_until(ib, lambda: loss.orderStatus.status == "PreSubmitted")
    sale = ib.placeOrder(contract, LimitOrder("SELL", 100, price + 1))  # the shares held already
    wait_until(ib, lambda: sale.orderStatus.status == "Submitted")


def test_a_gtc_stop_gapped_through_overnight_fills_at_the_open(market):
    """AAPL closes 2026-11-23 near 231 and opens the next morning near 227.7: a GTC sell stop at 229.50
    waits through the night, then sells at the opening bid, not at its stop."""
    gateway, ib, contract = market("2026-11-23T20:55:00Z")
    buy(ib, contract, 100)
    close, opening = parse_instant("2026-11-23T21:00:00Z"), parse_instant("2026-11-24T14:30:00Z")
    assert path(gateway, gateway.clock.now(), close)[0] > 229.5 > mid(gateway, opening)
    trade = ib.placeOrder(contract, StopOrder("SELL", 100, 229.5, tif="GTC"))
    wait_until(ib, lambda: trade.orderStatus.status == "PreSubmitted")
    gateway.advance(opening - 60 - gateway.clock.now())  # the night: closed, nothing trades
    settle(ib)
    assert trade.orderStatus.status == "PreSubmitted"
    gateway.advance(120)  # the jump stops at the open for a pass
    wait_until(ib, lambda: trade.orderStatus.status == "Filled")
    fill = trade.fills[0].execution
    assert fill.time.timestamp() == opening
    assert fill.price == gateway.broker.model.quote(LISTING, opening).bid < 228
