"""Shared fixtures: a simulated gateway on a free loopback port, and real ib_insync clients."""

import time

import pytest
from ib_insync import IB

from qdibkr.sim import SimGateway


@pytest.fixture
def gateway(tmp_path):
    gw = SimGateway(port=0, state_path=str(tmp_path / "sim-state.json"), tick_interval=0.02).start_in_thread()
    yield gw
    gw.stop()


@pytest.fixture
def connect(gateway):
    """Connect real ib_insync clients to the gateway; all are disconnected afterwards."""
    clients = []

    def _connect(client_id=1, **kwargs) -> IB:
        ib = IB()
        ib.connect("127.0.0.1", gateway.port, clientId=client_id, timeout=5, **kwargs)
        clients.append(ib)
        return ib

    yield _connect
    for ib in clients:
        ib.disconnect()


@pytest.fixture
def ib(connect) -> IB:
    return connect(1)


def wait_until(ib: IB, condition, timeout: float = 5.0):
    """Let ib_insync process incoming messages until ``condition()`` holds.

    Each wait ends at the client's next network update, so nothing here sleeps
    for a fixed time; the timeout only bounds a failing test.
    """
    deadline = time.monotonic() + timeout
    while not condition():
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"condition not met within {timeout} s")
        ib.waitOnUpdate(timeout=left)
    return True
