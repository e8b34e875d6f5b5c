"""Exactly once under failure: a runner killed at random moments, a gateway restarted, two runners; each
on a SQLite queue and on a PostgreSQL one."""

import asyncio
import os
import random
import shutil
import subprocess
import threading
import time

import pytest

from qdibkr import emit
from qdibkr.runner import Runner, runner_settings
from qdibkr.sim import SimGateway
from qdibkr.store import Store

from .test_runner import ALWAYS, orders_at_gateway

@pytest.fixture
def store(store_on_each_backend):
    """Every test here runs on a SQLite queue and on a PostgreSQL one."""
    return store_on_each_backend


def runner_env(tmp_path, store: Store) -> dict:
    """The environment of a ``qdibkr runner`` process on ``store``'s queue (a path or a URL), sending at any hour."""
    config = tmp_path / "config.toml"
    config.write_text('[risk]\noutside_hours = "send"\n')
    return {**os.environ, "QDIBKR_CONFIG": str(config), "QDIBKR_DB": store.location}


US = ["AAPL", "MSFT", "TSLA", "GOOGL", "AMZN", "NVDA", "META", "JPM", "SPY", "QQQ"]


def basket(store: Store, strategies: int = 4, name: str = "s") -> int:
    """Opens then closes on every symbol for several strategies: 2 signals per (strategy, symbol)."""
    for s in range(strategies):
        for symbol in US:
            emit("open_long", symbol, 1 + s, strategy=f"{name}{s}", store=store)
    for s in range(strategies):
        for symbol in US:
            emit("close_long", symbol, strategy=f"{name}{s}", store=store)
    return 2 * strategies * len(US)


def assert_exactly_once(store: Store, gateway: SimGateway):
    signals = store.signals()
    assert all(s.status == "filled" for s in signals), [(s.signal_type, s.status, s.reason) for s in signals
                                                       if s.status != "filled"]
    assert orders_at_gateway(gateway) == {s.order_ref: 1 for s in signals}
    # Each signal names its order as TWS knows it, also when a reconcile adopted a completed one.
    ids = {order.order_ref: (order.order_id, order.perm_id) for order in gateway.broker.orders.values()}
    assert {s.order_ref: (s.order_id, s.perm_id) for s in signals} == ids
    executed = {}
    for ex in gateway.broker.executions:
        executed[ex.order_ref] = executed.get(ex.order_ref, 0) + ex.shares
    recorded = {}
    for fill in store.fills():
        ref = f"qd-{fill.signal_id}"
        recorded[ref] = recorded.get(ref, 0) + fill.shares
    assert recorded == executed
    assert all(p.quantity == 0 for p in store.positions())


def test_sigkill_at_random_moments_never_duplicates_or_loses(tmp_path, gateway, store):
    qdibkr = shutil.which("qdibkr") or pytest.fail("the qdibkr console script is not installed")
    env = runner_env(tmp_path, store)
    command = [qdibkr, "runner", "--port", str(gateway.port)]
    rng = random.Random(20261125)
    kills = 0
    total = 0
    while kills < 22:
        total += basket(store, strategies=1, name=f"k{kills}")  # more work arrives between crashes
        runner = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(0.3, 1.2))  # the random moment of the crash, not a synchronisation
        runner.kill()  # SIGKILL: no clean-up of any kind
        runner.wait()
        kills += 1
        assert max(orders_at_gateway(gateway).values(), default=0) == 1  # never twice, at any moment
    finished = subprocess.run([*command, "--once"], env=env, capture_output=True, text=True, timeout=120)
    assert finished.returncode == 0, finished.stderr[-2000:]
    assert len(store.signals()) == total
    assert_exactly_once(store, gateway)


def test_gateway_restart_in_the_middle_of_a_basket(tmp_path, store):
    state = tmp_path / "sim-state.json"
    gateway = SimGateway(port=0, state_path=str(state), always_open=True).start_in_thread()
    port = gateway.port
    basket(store, strategies=3)
    runner = Runner(store, runner_settings(port=port), ALWAYS)
    thread = threading.Thread(target=asyncio.run, args=(runner.run(once=True),), daemon=True)
    thread.start()
    while len(gateway.broker.orders) < 10:  # mid-basket
        thread.join(timeout=0.005)
    gateway.stop()  # TWS goes away (its daily restart); orders and fills are in its state file
    gateway = SimGateway(port=port, state_path=str(state), always_open=True).start_in_thread()
    try:
        thread.join(timeout=120)
        assert not thread.is_alive()
        assert_exactly_once(store, gateway)
    finally:
        gateway.stop()


def test_two_runner_processes_cannot_both_send(tmp_path, gateway, store):
    qdibkr = shutil.which("qdibkr") or pytest.fail("the qdibkr console script is not installed")
    basket(store, strategies=1)
    env = runner_env(tmp_path, store)
    first = subprocess.Popen([qdibkr, "runner", "--port", str(gateway.port)], env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        for line in first.stderr:  # the first runner logs once it holds the queue and is connected
            if "runner connected" in line:
                break
        second = subprocess.run([qdibkr, "runner", "--port", str(gateway.port), "--client-id", "91"],
                                env=env, capture_output=True, text=True, timeout=60)
        assert second.returncode == 1
        assert "another runner holds the queue" in second.stderr and "--wait" in second.stderr
    finally:
        first.kill()
        first.wait()
