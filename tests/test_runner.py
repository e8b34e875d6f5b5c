"""The queue and the runner, end to end against the simulated gateway."""

import asyncio
import threading
from contextlib import closing

from pathlib import Path

import pytest

from qdibkr import InputError, emit
from qdibkr.risk import Limits, RiskConfig
from qdibkr.runner import Runner, RunnerBusy, runner_settings
from qdibkr.store import HALTED_KEY
from qdibkr.signals import wake_runner
from qdibkr.sim import catalogue
from qdibkr.store import Store

ALWAYS = RiskConfig(outside_hours="send")  # the simulated market never closes


@pytest.fixture
def store(store_on_each_backend):
    """Every test here runs on a SQLite queue and on a PostgreSQL one."""
    return store_on_each_backend


def run_once(store: Store, gateway, risk: RiskConfig = ALWAYS, advance: float = 0.0) -> Runner:
    """Run a runner until nothing is waiting or in flight. With ``advance``, move the
    gateway's clock on in steps of that many seconds meanwhile (limit orders fill later)."""
    runner = Runner(store, runner_settings(port=gateway.port), risk)
    thread = threading.Thread(target=asyncio.run, args=(runner.run(once=True),), daemon=True)
    thread.start()
    for _ in range(400):
        thread.join(timeout=0.05)
        if not thread.is_alive():
            break
        if advance:
            gateway.advance(advance)
    assert not thread.is_alive(), "the runner did not finish"
    return runner


def bid(gateway, symbol: str) -> float:
    """The gateway's current bid, read off its price model."""
    [listing] = catalogue.find(symbol)
    return gateway.broker.quote(listing, gateway.clock.now()).bid


def statuses(store: Store) -> list[tuple[str, str]]:
    return [(s.signal_type, s.status) for s in store.signals()]


def orders_at_gateway(gateway) -> dict[str, int]:
    counts: dict[str, int] = {}
    for order in gateway.broker.orders.values():
        counts[order.order_ref] = counts.get(order.order_ref, 0) + 1
    return counts


# ---------------------------------------------------------------- emitting
def test_emit_validates_and_stores_nothing_invalid(store):
    emit("open_long", "AAPL", 10, strategy="sma", store=store)
    bad = [
        (dict(signal_type="buy", symbol="AAPL", quantity=1), "signal_type"),
        (dict(signal_type="open_long", symbol="AAPL", quantity=0), "quantity"),
        (dict(signal_type="open_long", symbol="AAPL", quantity=2.5), "quantity"),
        (dict(signal_type="open_long", symbol="AAPL", quantity=None), "quantity"),
        (dict(signal_type="open_long", symbol="AAPL", quantity=1, limit=0), "limit"),
        (dict(signal_type="open_long", symbol="AAPL", quantity=1, limit=float("inf")), "limit"),  # TWS: malformed
        (dict(signal_type="open_long", symbol="AAPL", quantity=1, tif="IOC"), "tif"),
        (dict(signal_type="open_long", symbol="AAPL!", quantity=1), "symbol"),
        (dict(signal_type="reduce_long", symbol="AAPL", quantity=11), "quantity"),
        (dict(signal_type="close_long", symbol="MSFT", quantity=None), "quantity"),
        (dict(signal_type="open_long", symbol="0700.HK", quantity=100), "symbol"),  # board lot not known yet
    ]
    for kwargs, field in bad:
        with pytest.raises(InputError) as e:
            emit(strategy="sma", store=store, **kwargs)
        assert e.value.field == field, kwargs
    store.remember_board_lot("0700.HK", 100)
    with pytest.raises(InputError, match="board lots of 100 shares; 150"):
        emit("open_long", "700", 150, strategy="sma", store=store)
    with pytest.raises(InputError, match="strategy"):
        emit("open_long", "AAPL", 1, strategy="", store=store)
    assert len(store.signals()) == 1


def test_reduce_counts_signals_on_the_way(store):
    emit("open_long", "AAPL", 10, strategy="a", store=store)
    emit("reduce_long", "AAPL", 4, strategy="a", store=store)
    emit("reduce_long", "AAPL", 6, strategy="a", store=store)
    with pytest.raises(InputError, match="holds 0"):
        emit("reduce_long", "AAPL", 1, strategy="a", store=store)
    with pytest.raises(InputError, match="holds 0"):
        emit("reduce_long", "AAPL", 1, strategy="b", store=store)  # another strategy holds nothing


def test_idempotency_key_stores_one_signal(store):
    first = emit("open_long", "AAPL", 10, strategy="sma", key="sma-2026-11-25", store=store)
    again = emit("open_long", "AAPL", 10, strategy="sma", key="sma-2026-11-25", store=store)
    assert again.id == first.id and len(store.signals()) == 1


# ---------------------------------------------------------------- the runner
def test_each_signal_type_trades_and_positions_follow_fills(store, gateway):
    emit("open_long", "AAPL", 10, strategy="sma", store=store)
    emit("add_long", "AAPL", 5, strategy="sma", store=store)
    emit("reduce_long", "AAPL", 6, strategy="sma", store=store)
    emit("close_long", "AAPL", strategy="sma", store=store)
    run_once(store, gateway)
    assert statuses(store) == [("open_long", "filled"), ("add_long", "filled"),
                               ("reduce_long", "filled"), ("close_long", "filled")]
    signals = store.signals()
    assert [s.order_quantity for s in signals] == [10, 5, 6, 9]  # close_long sized at sending time
    assert orders_at_gateway(gateway) == {s.order_ref: 1 for s in signals}
    [position] = store.positions("sma")
    assert position.quantity == 0
    fills = store.fills("sma")
    assert [f.side for f in fills] == ["BUY", "BUY", "SELL", "SELL"]
    # USD 1 minimum each; sales add the SEC fee and FINRA TAF of their day (qdibkr.commissions)
    assert [f.commission for f in fills[:2]] == [1.0, 1.0] and all(1.0 <= f.commission < 1.2 for f in fills[2:])
    assert position.realized_pnl == pytest.approx(sum(f.realized_pnl for f in fills if f.side == "SELL"))
    assert gateway.broker.position("DU1234567", 265598).quantity == 0


def test_hk_board_lots_and_partial_fills(store, gateway):
    store.remember_board_lot("0700.HK", 100)
    emit("open_long", "0700.HK", 1800, strategy="hk", store=store)  # more than the book shows at one price
    run_once(store, gateway)
    [signal] = store.signals()
    assert signal.status == "filled" and signal.filled == 1800
    assert len(store.fills("hk")) >= 2
    assert all(f.shares % 100 == 0 and f.commission_currency == "HKD" for f in store.fills("hk"))


def test_limit_order_fills_later(store, gateway):
    emit("open_long", "AAPL", 5, strategy="dip", limit=round(bid(gateway, "AAPL") * 0.995, 2), tif="GTC", store=store)
    run_once(store, gateway, advance=3600)
    [signal] = store.signals()
    assert signal.status == "filled" and signal.avg_price <= signal.limit_price


def test_rejections_are_stored_with_ibs_reason(store, gateway):
    emit("open_long", "AAPL", 100_000, strategy="big", store=store)
    run_once(store, gateway)
    [signal] = store.signals()
    assert signal.status == "rejected" and "insufficient cash" in signal.reason
    # Refused, TWS keeps the order as Inactive; nothing is working.
    assert [o.status for o in gateway.broker.orders.values()] == ["Inactive"]


def test_close_waits_for_the_open_it_closes(store, gateway):
    emit("open_long", "MSFT", 4, strategy="s", limit=round(bid(gateway, "MSFT") * 0.995, 2), tif="GTC", store=store)
    emit("close_long", "MSFT", strategy="s", store=store)
    run_once(store, gateway, advance=3600)
    opened, closed = store.signals()
    assert opened.status == closed.status == "filled"
    buy, sell = store.fills("s")
    assert buy.time <= sell.time and sell.shares == 4


def test_risk_limits_reject_or_hold(store, gateway):
    risk = RiskConfig(Limits(max_order_quantity=50, allowed_symbols=frozenset({"AAPL", "MSFT"}),
                             max_order_notional=5_000),
                      {"tiny": Limits(max_position=3)}, on_breach="reject", outside_hours="send")
    emit("open_long", "AAPL", 60, strategy="x", store=store)
    emit("open_long", "TSLA", 1, strategy="x", store=store)
    emit("open_long", "MSFT", 20, strategy="x", store=store)  # ~10,000 USD
    emit("open_long", "AAPL", 4, strategy="tiny", store=store)
    emit("open_long", "AAPL", 2, strategy="ok", store=store)
    run_once(store, gateway, risk)
    reasons = {(s.symbol, s.strategy): (s.status, s.reason) for s in store.signals()}
    assert reasons[("AAPL", "x")][1].startswith("order refused: max_order_quantity: 60 shares exceed the global "
                                                "max_order_quantity of 50")
    assert "not among the global allowed symbols" in reasons[("TSLA", "x")][1]
    assert "exceeds the global max_order_notional of 5,000.00" in reasons[("MSFT", "x")][1]
    assert "would exceed the strategy 'tiny' max_position of 3" in reasons[("AAPL", "tiny")][1]
    assert reasons[("AAPL", "ok")] == ("filled", "")
    assert [o.order_ref for o in gateway.broker.orders.values()] == [store.signals()[-1].order_ref]


def test_hold_on_breach_keeps_the_signal(store, gateway):
    risk = RiskConfig(Limits(max_orders_per_day=1), on_breach="hold", outside_hours="send")
    emit("open_long", "AAPL", 1, strategy="a", store=store)
    emit("open_long", "MSFT", 1, strategy="a", store=store)
    run_once(store, gateway, risk)
    assert statuses(store) == [("open_long", "filled"), ("open_long", "held")]
    assert "max_orders_per_day of 1" in store.signals()[1].reason


SUNDAY = "2026-11-29T08:19:00Z"  # 03:19 in New York
TUESDAY_SESSION = "2026-11-24T15:00:00Z"  # 10:00 in New York


def test_outside_hours_holds_by_default_by_the_gateways_clock(store, gateway_at):
    """Trading hours are judged by TWS's clock, not the host's: one of the two gateways below contradicts
    the host's clock whatever its day and hour, and the runner follows the gateway's each time."""
    closed = gateway_at(SUNDAY)
    emit("open_long", "AAPL", 1, strategy="a", store=store)
    run_once(store, closed, RiskConfig())
    [signal] = store.signals()
    assert signal.status == "held" and "the market opens 2026-11-30 14:30 UTC" in signal.reason
    emit("add_long", "AAPL", 2, strategy="a", store=store)  # queued behind the held one
    run_once(store, closed, RiskConfig())  # a --once run ends: nothing can be sent before the open
    assert statuses(store) == [("open_long", "held"), ("add_long", "pending")]
    assert closed.broker.orders == {}

    run_once(store, gateway_at(TUESDAY_SESSION), RiskConfig())
    assert statuses(store) == [("open_long", "filled"), ("add_long", "filled")]


def test_outside_hours_reject(store, gateway_at):
    emit("open_long", "AAPL", 1, strategy="a", store=store)
    emit("add_long", "AAPL", 2, strategy="a", store=store)
    run_once(store, gateway_at(SUNDAY), RiskConfig(outside_hours="reject"))
    assert statuses(store) == [("open_long", "rejected"), ("add_long", "rejected")]


def test_kill_switch_stops_sending_and_survives_restarts(store, gateway):
    store.halt("halted by the user")
    emit("open_long", "AAPL", 1, strategy="a", store=store)
    run_once(store, gateway)
    run_once(store, gateway)  # a restarted runner is still halted
    assert statuses(store) == [("open_long", "held")] and gateway.broker.orders == {}
    assert "halted: trading is halted (halted by the user)" in store.signals()[0].reason
    store.set(HALTED_KEY, None)
    run_once(store, gateway)
    assert statuses(store) == [("open_long", "filled")]


def test_cancel_signal_before_and_after_sending(store, gateway):
    first = emit("open_long", "AAPL", 1, strategy="a", store=store)
    assert store.cancel_signal(first.id).status == "cancelled"
    resting = emit("open_long", "AAPL", 1, strategy="b", limit=round(bid(gateway, "AAPL") * 0.9, 2), tif="GTC",
                   store=store)
    runner = Runner(store, runner_settings(port=gateway.port), ALWAYS)
    thread = threading.Thread(target=asyncio.run, args=(runner.run(once=True),), daemon=True)
    thread.start()
    for _ in range(200):  # until the order rests at the gateway
        if gateway.broker.open_orders():
            break
        thread.join(timeout=0.02)
    store.cancel_signal(resting.id)
    wake_runner(store)
    thread.join(timeout=10)
    assert store.signal(resting.id).status == "cancelled"
    assert [o.status for o in gateway.broker.orders.values()] == ["Cancelled"]


def second_runner_refused(path, gateway):
    second = Runner(Store(path), runner_settings(port=gateway.port, client_id=91), ALWAYS)
    # On a loop of its own: asyncio.run would leave this thread without a current loop,
    # which the ib_insync clients of later tests look up.
    with closing(asyncio.new_event_loop()) as loop, \
            pytest.raises(RunnerBusy, match="another runner holds the queue"):
        loop.run_until_complete(second.run(once=True))


@pytest.mark.parametrize("reach", ["same path", "symlink", "relative path"])
def test_a_second_runner_on_the_same_queue_is_refused_by_any_path(tmp_path, gateway, monkeypatch, reach):
    """The lease is in the queue itself: a symlink or a relative path to the same file finds it taken."""
    store = Store(tmp_path / "queue.sqlite")  # paths are a SQLite queue's matter
    first = Runner(store, runner_settings(port=gateway.port), ALWAYS)
    assert store.take_lease(first.lease_holder, 60) is None
    path = Path(store.location)
    if reach == "symlink":
        path = tmp_path / "elsewhere.sqlite"
        path.symlink_to(store.location)
    elif reach == "relative path":
        monkeypatch.chdir(Path(store.location).parent)
        path = Path(store.location).name
    emit("open_long", "AAPL", 1, strategy="a", store=store)
    second_runner_refused(path, gateway)
    assert gateway.broker.orders == {} and statuses(store) == [("open_long", "pending")]
    store.release_lease(first.lease_holder)
    run_once(store, gateway)  # free again: the next runner takes it
    assert statuses(store) == [("open_long", "filled")]


def test_a_runner_that_lost_its_lease_sends_nothing(store, gateway):
    """A runner that stalled past its lease's term, while another took the queue, must not send."""
    emit("open_long", "AAPL", 1, strategy="a", store=store)
    stalled = Runner(store, runner_settings(port=gateway.port), ALWAYS)
    store.take_lease("another runner", 60)
    with closing(asyncio.new_event_loop()) as loop:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(stalled.ibkr.connect_async())
        loop.run_until_complete(stalled.send(store.signals()[0]))
        stalled.ibkr.disconnect()
    asyncio.set_event_loop(asyncio.new_event_loop())
    assert stalled.stopping and gateway.broker.orders == {} and statuses(store) == [("open_long", "pending")]


def test_fills_made_on_an_earlier_day_while_no_runner_was_up_are_flagged(store, gateway):
    from .test_runner_keepalive import Serving

    emit("open_long", "AAPL", 5, strategy="away", limit=round(bid(gateway, "AAPL") * 0.995, 2), tif="GTC",
         store=store)
    serving = Serving(Runner(store, runner_settings(port=gateway.port), ALWAYS))
    assert serving.when(lambda: store.signals()[0].status == "submitted").wait(30)
    serving.stop()  # the runner is down while the limit rests, fills, and the day ends
    [order] = gateway.broker.orders.values()
    for _ in range(200):
        if order.filled:
            break
        gateway.advance(3600)
    assert order.filled == 5
    gateway.advance(2 * 86400)  # TWS reports the executions of the current day only

    run_once(store, gateway)
    [signal] = store.signals()
    assert signal.status == "filled" and signal.filled == 5 and store.fills() == []
    assert "5 shares filled at IB while no runner was connected" in signal.reason
    assert "qdibkr reconcile" in signal.reason
