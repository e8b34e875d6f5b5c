"""The runner's heartbeat, against the simulated gateway over real sockets.

``SimGateway.freeze()`` suspends the gateway as a stopped process would be:
its sockets stay open and the kernel keeps accepting what the runner sends, but
nothing is read or answered. That is the half-open connection (TWS's machine
asleep, its process hung, a NAT that forgot the flow) the runner must notice
on its own. ``thaw()`` ends the outage as the process resuming, and
``thaw(drop_connections=True)`` as the network coming back without the old
connection, so that what the runner sent into the silence is lost.

The runner serves from a thread of its own; the tests wait on threading events
set by its connection's events, never for a fixed time.
"""

import asyncio
import logging
import threading
import time

import pytest

from qdibkr import InputError, emit
from qdibkr.config import Heartbeat, load_heartbeat
from qdibkr.runner import RUNNER_CLIENT_ID, Runner, runner_settings
from qdibkr.signals import wake_runner
from qdibkr.sim.server import Session
from qdibkr.store import Store

from .test_runner import ALWAYS, orders_at_gateway
from .test_runner_crash import basket

FAST = Heartbeat(interval=0.3, timeout=0.3)
SLACK = 0.25  # seconds of scheduling latency allowed on top of interval + timeout
WAIT = 30.0  # bounds only a failing test


class Serving:
    """A runner working in a thread with its own event loop, and what it did, seen from the test."""

    def __init__(self, runner: Runner):
        self.runner = runner
        self.connections = 0
        self.dropped = threading.Event()  # set when the runner's connection ends
        ib = runner.ibkr.ib
        ib.connectedEvent += self._connected
        ib.disconnectedEvent += self.dropped.set
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self._serve, name="runner", daemon=True)
        self.thread.start()

    def _serve(self):
        asyncio.set_event_loop(self.loop)  # ib_insync looks its loop up as the thread's current one
        self.loop.run_until_complete(self.runner.run())
        self.loop.close()

    def _connected(self):
        self.connections += 1

    def when(self, condition) -> threading.Event:
        """An event set once ``condition()`` holds, checked after each batch of messages the runner
        receives (fills come in one; a fill the reconcile adopts is seen at the next, and the
        gateway revalues the portfolio every few seconds)."""
        done = threading.Event()

        def check():
            if condition():
                done.set()

        self.runner.ibkr.ib.updateEvent += check
        check()
        return done

    def when_filled(self, store: Store, *signal_ids: str) -> threading.Event:
        """An event set once every one of these signals is filled."""
        return self.when(lambda: all(store.signal(i).status == "filled" for i in signal_ids))

    def stop(self):
        self.loop.call_soon_threadsafe(self.runner.stop)
        self.thread.join(timeout=10)
        assert not self.thread.is_alive(), "the runner did not stop"


@pytest.fixture
def serve(store, gateway):
    """Start runners on the gateway's queue with the given heartbeat; each is stopped afterwards."""
    started = []

    def _serve(heartbeat: Heartbeat) -> Serving:
        serving = Serving(Runner(store, runner_settings(port=gateway.port), ALWAYS, heartbeat))
        started.append(serving)
        return serving

    yield _serve
    for serving in started:
        serving.stop()


def test_heartbeat_settings_come_from_the_runner_section(store, tmp_path, monkeypatch):
    assert load_heartbeat({}) == Heartbeat(interval=10.0, timeout=5.0)
    config = tmp_path / "config.toml"
    config.write_text("[runner]\nheartbeat_interval = 2\nheartbeat_timeout = 0.5\n")
    monkeypatch.setenv("QDIBKR_CONFIG", str(config))
    assert Runner(store).heartbeat == Heartbeat(interval=2.0, timeout=0.5)
    assert Runner(store, heartbeat=FAST).heartbeat == FAST  # an argument beats the file
    for bad in (0, -1, "10", True):
        with pytest.raises(InputError) as e:
            load_heartbeat({"runner": {"heartbeat_timeout": bad}})
        assert e.value.field == "runner.heartbeat_timeout"


@pytest.mark.parametrize("comeback", ["process resumes", "network drops connection"])
def test_half_open_connection_is_noticed_and_signals_of_the_outage_fill_once(store, gateway, serve, caplog,
                                                                               comeback):
    caplog.set_level(logging.INFO, logger="qdibkr.runner")
    serving = serve(FAST)
    before = emit("open_long", "AAPL", 10, strategy="hb", store=store)
    assert serving.when_filled(store, before.id).wait(WAIT)

    gateway.freeze()
    frozen_at = time.monotonic()
    # Emitted before the runner can tell: it sends this order into the silence (AAPL's contract
    # is known), and only the reconcile after reconnecting can say whether TWS got it.
    blind = emit("add_long", "AAPL", 5, strategy="hb", store=store)
    assert serving.dropped.wait(FAST.interval + FAST.timeout + WAIT)
    noticed_after = time.monotonic() - frozen_at
    assert noticed_after <= FAST.interval + FAST.timeout + SLACK, noticed_after
    assert "did not answer within 0.3 s" in caplog.text
    assert store.signal(blind.id).status == "submitting"  # sent, and no answer could come
    # Emitted while the runner knows TWS is away and keeps trying to reconnect.
    during = emit("open_long", "MSFT", 3, strategy="hb2", store=store)

    gateway.thaw(drop_connections=comeback == "network drops connection")
    assert serving.when_filled(store, blind.id, during.id).wait(WAIT)
    assert serving.connections == 2  # the first, and one reconnection
    if comeback == "network drops connection":  # the reconcile found TWS without it, so it went again
        assert f"signal {blind.id[:8]} never reached TWS" in caplog.text
    signals = store.signals()
    assert [s.status for s in signals] == ["filled"] * 3
    assert orders_at_gateway(gateway) == {s.order_ref: 1 for s in signals}  # nothing sent twice
    executed: dict[str, int] = {}
    for ex in gateway.broker.executions:
        executed[ex.order_ref] = executed.get(ex.order_ref, 0) + ex.shares
    assert executed == {s.order_ref: s.order_quantity for s in signals}
    assert {f"qd-{f.signal_id}": f.shares for f in store.fills()} == executed
    print(f"\n{comeback}: half-open connection noticed after {noticed_after:.3f} s "
          f"(interval {FAST.interval:g} s + timeout {FAST.timeout:g} s)")


def test_idle_connection_is_probed_and_a_busy_one_not_declared_dead(store, gateway, serve, monkeypatch):
    answered: list[int] = []
    probed_thrice = threading.Event()
    answer = Session.req_current_time

    def counted(session, fields):
        answer(session, fields)
        answered.append(session.client_id)
        if answered.count(RUNNER_CLIENT_ID) >= 3:
            probed_thrice.set()

    monkeypatch.setattr(Session, "req_current_time", counted)  # before the runner's session exists
    serving = serve(FAST)
    assert probed_thrice.wait(WAIT)  # idle: the runner asks, the gateway answers, nothing is dropped
    probes_idle = answered.count(RUNNER_CLIENT_ID)

    started = time.monotonic()
    basket(store, strategies=4)  # 80 orders, as fast as the runner may send them
    wake_runner(store)
    assert serving.when_filled(store, *(s.id for s in store.signals())).wait(WAIT)
    busy_for = time.monotonic() - started

    assert not serving.dropped.is_set() and serving.connections == 1
    assert orders_at_gateway(gateway) == {s.order_ref: 1 for s in store.signals()}
    print(f"\n{probes_idle} probes answered while idle; {answered.count(RUNNER_CLIENT_ID) - probes_idle} "
          f"during {busy_for:.2f} s of 80 orders")


def test_a_connection_closed_while_the_runner_awaits_an_answer_is_reconnected(store, gateway, serve, caplog):
    caplog.set_level(logging.INFO, logger="qdibkr.runner")
    serving = serve(Heartbeat(interval=60, timeout=60))  # the close, not the heartbeat, must end it
    first = emit("open_long", "AAPL", 10, strategy="close", store=store)
    assert serving.when_filled(store, first.id).wait(WAIT)

    ib, asked = serving.runner.ibkr.ib, threading.Event()
    request_details = ib.reqContractDetailsAsync

    def spied(contract):  # the real request, sent at once; the test learns that it went
        answer = request_details(contract)
        asked.set()
        return answer

    ib.reqContractDetailsAsync = spied
    gateway.freeze()
    asking = emit("open_long", "NVDA", 4, strategy="close", store=store)  # its contract is not known yet
    assert asked.wait(WAIT)  # the runner now awaits NVDA's contract details
    gateway.thaw(drop_connections=True)  # the gateway closes the connection without answering

    assert serving.when_filled(store, asking.id).wait(WAIT)
    assert serving.thread.is_alive() and serving.connections == 2
    assert "the connection to TWS ended during a request" in caplog.text
    assert orders_at_gateway(gateway) == {s.order_ref: 1 for s in store.signals()}
