"""The widgets, driven through their own values and buttons, against the simulated gateway.

Each test runs one asyncio event loop, as a Jupyter kernel does: a button click
schedules a task on it, and the test awaits the widgets' own changes (trait
change events), never a fixed sleep.
"""

import asyncio
import threading

import pytest

from qdibkr.gate import Refused
from qdibkr.risk import RiskConfig
from qdibkr.runner import Runner, runner_settings
from qdibkr.sim import catalogue
from qdibkr.store import Store
from qdibkr.widgets import Session, dashboard

TIMEOUT = 15.0


ACCOUNT = "DU1234567"  # the simulated gateway's paper account


@pytest.fixture
def session(gateway, store):
    return Session(store=store, host="127.0.0.1", port=gateway.port, client_id=5)


def held(gateway) -> dict[str, float]:
    """What the simulated gateway's account holds, by IB symbol."""
    return {catalogue.by_con_id(p.con_id).symbol: p.quantity
            for p in gateway.broker.held_positions(ACCOUNT) if p.quantity}


def nothing_sent(gateway, store):
    """No order reached the gateway, the account holds nothing, and the gate journalled no order."""
    assert gateway.broker.orders == {}
    assert held(gateway) == {}
    assert store.read(lambda db: db.execute("SELECT COUNT(*) FROM orders").fetchone()[0]) == 0


async def changed_until(widget, condition, trait: str = "value", timeout: float = TIMEOUT):
    """Wait until ``condition()`` holds, re-checking each time ``widget``'s trait changes."""
    changed = asyncio.Event()

    def on_change(_):
        changed.set()

    widget.observe(on_change, names=trait)
    try:
        async with asyncio.timeout(timeout):
            while not condition():
                changed.clear()
                await changed.wait()
    except TimeoutError:
        raise AssertionError(f"still {getattr(widget, trait)!r} after {timeout} s") from None
    finally:
        widget.unobserve(on_change, names=trait)


def run(session: Session, scenario):
    """Run ``scenario`` on a fresh event loop, as a kernel would, and disconnect on that loop."""
    async def main():
        try:
            await asyncio.wait_for(scenario(), 60)
        finally:
            session.ibkr.disconnect()

    asyncio.run(main())


def test_connection_form_connects_refuses_and_explains(session, gateway):
    ui = dashboard(session)
    form = ui.connection

    async def scenario():
        assert "not connected" in form.status.value
        form.port.value = 1  # nothing listens there
        form.connect_button.click()
        await session.settle()
        assert "nothing is listening" in form.status.value and "tws-paper 7497" in form.status.value

        form.preset.value = 7496  # TWS live, without the opt-in
        assert form.port.value == 7496
        form.connect_button.click()
        await session.settle()
        assert "trades real money" in form.status.value and not session.ibkr.is_connected()

        form.port.value = gateway.port
        assert form.preset.value == 0  # "other port"
        form.connect_button.click()
        await session.settle()
        assert "connected: account DU1234567 (paper)" in form.status.value
        assert "(the simulated gateway)" in form.status.value

        ui.quotes.symbols.value = "AAPL 0700.HK"  # no live HK subscription: TWS says so, and qdibkr falls back
        ui.quotes.button.click()
        await session.settle()
        assert "no market data subscription for this symbol" in form.messages.value
        assert "0700.HK" in ui.quotes.table.value and "delayed" in ui.quotes.table.value

        form.disconnect_button.click()
        await changed_until(form.status, lambda: "not connected" in form.status.value)

    run(session, scenario)


def test_session_is_the_widgets_face_with_the_sessions_queue(session, store, monkeypatch):
    assert session.ibkr.face == "widgets" and session.ibkr.gate.store is store
    assert session.ibkr.settings.client_id == 5  # given; else the widgets' own default
    monkeypatch.setenv("QDIBKR_DB", str(store.location))
    default = Session()
    assert default.ibkr.settings.client_id == 3 and default.ibkr.gate.store is default.store
    assert default.store.location == store.location  # the configured queue
    assert dashboard(default).connection.client_id.value == 3


def test_ticket_checks_sends_and_positions_follow_events(session, gateway, store):
    ui = dashboard(session)
    ticket, positions = ui.ticket, ui.positions

    async def scenario():
        ui.connection.connect_button.click()
        await session.settle()
        ticket.symbol.value, ticket.quantity.value = "0700.HK", 150
        ticket.send_button.click()
        await session.settle()
        assert "board_lot: 0700.HK trades in board lots of 100 shares; 150 is not a multiple (try 100)" \
            in ticket.preview.value
        assert ticket.status.value.count("not sent") == 1
        nothing_sent(gateway, store)

        ticket.quantity.value = 100
        ticket.check_button.click()
        await session.settle()
        assert "notional HKD" in ticket.preview.value and "no problem found" in ticket.preview.value

        ticket.symbol.value, ticket.quantity.value = "AAPL", 10
        ticket.send_button.click()
        await session.settle()
        await changed_until(ticket.status, lambda: "Filled, 10 of 10 filled" in ticket.status.value)
        await changed_until(positions.table, lambda: ">AAPL<" in positions.table.value)
        assert ">10<" in positions.table.value
        await changed_until(positions.totals, lambda: "net liquidation USD" in positions.totals.value)

        ticket.side.value, ticket.quantity.value = "sell", 11  # more than the account holds
        ticket.check_button.click()
        await session.settle()
        assert "short_sale: selling 11 AAPL would sell short: account holds 10" in ticket.preview.value
        ticket.send_button.click()
        await session.settle()
        assert "not sent: short_sale: selling 11 AAPL" in ticket.status.value
        assert held(gateway) == {"AAPL": 10}

    run(session, scenario)


def test_ticket_shows_risk_limits_from_the_config_file(session, tmp_path, monkeypatch):
    config = tmp_path / "config.toml"
    config.write_text("[risk]\nmax_order_quantity = 5\n[risk.strategy.tiny]\nmax_order_notional = 100\n")
    monkeypatch.setenv("QDIBKR_CONFIG", str(config))
    ui = dashboard(session)
    ticket = ui.ticket

    async def scenario():
        await ui.connection.connect_async()
        ticket.quantity.value = 6
        ticket.check_button.click()
        await session.settle()
        assert "max_order_quantity: 6 shares exceed the global max_order_quantity of 5" in ticket.preview.value
        ticket.quantity.value, ticket.route.value, ticket.strategy.value = 1, "signal", "tiny"
        ticket.send_button.click()
        await session.settle()
        assert "max_order_notional: a notional of" in ticket.preview.value
        assert "exceeds the strategy 'tiny' max_order_notional of 100.00" in ticket.preview.value
        assert "not sent: max_order_notional" in ticket.status.value
        assert session.store.signals() == []

    run(session, scenario)


def test_signals_from_the_ticket_queue_cancel_and_fill(session, gateway, store):
    ui = dashboard(session)
    ticket, queue, positions = ui.ticket, ui.queue, ui.positions

    async def scenario():
        await ui.connection.connect_async()
        ticket.route.value, ticket.strategy.value = "signal", "by-hand"
        ticket.symbol.value, ticket.quantity.value = "MSFT", 3
        ticket.send_button.click()
        await session.settle()
        [first] = store.signals()
        assert f"signal {first.id[:8]} (open_long 3 MSFT for by-hand): pending" in ticket.status.value
        assert list(queue.cancel_buttons) == [first.id]
        queue.cancel_buttons[first.id].click()
        assert store.signal(first.id).status == "cancelled"
        await changed_until(queue.grid, lambda: not queue.cancel_buttons, "children")
        await changed_until(ticket.status, lambda: "cancelled (cancelled by the user)" in ticket.status.value)

        ticket.send_button.click()
        await session.settle()
        second = store.signals()[-1]
        assert second.status == "pending" and second.signal_type == "open_long"
        # The runner, as another process would: its own connection to the queue and to TWS.
        runner_store = Store(store.location)
        runner = Runner(runner_store, runner_settings(port=gateway.port), RiskConfig(outside_hours="send"))
        thread = threading.Thread(target=asyncio.run, args=(runner.run(once=True),), daemon=True)
        thread.start()
        await changed_until(ticket.status, lambda: ": filled, 3 filled at" in ticket.status.value)
        await changed_until(positions.strategies, lambda: ">by-hand<" in positions.strategies.value)
        assert ">MSFT<" in positions.strategies.value
        thread.join(TIMEOUT)
        runner_store.close()
        statuses = [s.status for s in store.signals()]
        assert statuses == ["cancelled", "filled"]
        await changed_until(queue.grid, lambda: "filled" in [getattr(c, "value", "") for c in queue.grid.children],
                            "children")

    run(session, scenario)


def test_ticket_direct_order_refused_while_halted(session, gateway, store):
    ui = dashboard(session)
    ticket = ui.ticket

    async def scenario():
        await ui.connection.connect_async()
        store.halt("test")
        ticket.symbol.value, ticket.quantity.value = "AAPL", 10
        ticket.send_button.click()
        await session.settle()
        assert "halted: trading is halted (test)" in ticket.preview.value
        assert "not sent: halted: trading is halted (test)" in ticket.status.value
        nothing_sent(gateway, store)

        # Halted between the ticket's check and the send (by the CLI, say): the gate refuses as it goes.
        async def nothing_found(*args, **kwargs):
            return []

        preview, session.ibkr.gate.preview = session.ibkr.gate.preview, nothing_found
        with pytest.raises(Refused) as refused:
            await ticket.send_async()
        assert refused.value.rule == "halted"
        assert "not sent: order refused: halted: trading is halted (test)" in ticket.status.value
        nothing_sent(gateway, store)

        session.ibkr.gate.preview = preview
        store.resume()
        ticket.send_button.click()
        await session.settle()
        assert "Filled, 10 of 10 filled" in ticket.status.value
        assert held(gateway) == {"AAPL": 10}

    run(session, scenario)


def test_ticket_direct_order_over_max_order_quantity_is_refused(session, gateway, store, tmp_path, monkeypatch):
    config = tmp_path / "config.toml"
    config.write_text("[risk]\nmax_order_quantity = 5\n")
    monkeypatch.setenv("QDIBKR_CONFIG", str(config))
    ui = dashboard(session)
    ticket = ui.ticket

    async def scenario():
        await ui.connection.connect_async()
        ticket.symbol.value, ticket.quantity.value = "AAPL", 6
        ticket.send_button.click()
        await session.settle()
        breach = "max_order_quantity: 6 shares exceed the global max_order_quantity of 5"
        assert breach in ticket.preview.value and f"not sent: {breach}" in ticket.status.value
        nothing_sent(gateway, store)

        # The gate judges the order again as it goes, whatever the ticket's check said.
        async def nothing_found(*args, **kwargs):
            return []

        session.ibkr.gate.preview = nothing_found
        with pytest.raises(Refused) as refused:
            await ticket.send_async()
        assert refused.value.rule == "max_order_quantity"
        assert f"not sent: order refused: {breach}" in ticket.status.value
        nothing_sent(gateway, store)

    run(session, scenario)
