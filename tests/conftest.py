"""Shared fixtures: a simulated gateway on a free loopback port, real ib_insync clients, and the queue's
databases (a SQLite file, or a database on a real PostgreSQL server started for the session)."""

import asyncio
import os
import uuid

import pytest
from ib_insync import IB, util

from qdibkr.broker import until
from qdibkr.ibkr import IBKR
from qdibkr.sim import SimGateway
from qdibkr.store import Store

from .pg import PostgresServer, PostgresUnavailable


@pytest.fixture(autouse=True)
def isolated_settings(monkeypatch, tmp_path):
    """No test reads the developer's QDIBKR_* variables, config file or queue."""
    for name in ("HOST", "PORT", "CLIENT_ID", "ACCOUNT", "PRESET", "LIVE", "DB"):
        monkeypatch.delenv(f"QDIBKR_{name}", raising=False)
    monkeypatch.setenv("QDIBKR_CONFIG", str(tmp_path / "no-config.toml"))
    # A command run without --db (qdibkr order journals what it sends) uses a queue of the test's own,
    # never the developer's ~/.local/share/qdibkr/queue.sqlite.
    monkeypatch.setenv("QDIBKR_DB", str(tmp_path / "default-queue.sqlite"))


@pytest.fixture(autouse=True)
def event_loop_for_blocking_clients():
    """ib_insync's blocking calls run the thread's event loop; a test that ran ``asyncio.run`` in this
    thread leaves it with none (or a closed one), which the next test's client must not inherit."""
    policy = asyncio.get_event_loop_policy()
    try:
        usable = not policy.get_event_loop().is_closed()
    except RuntimeError:
        usable = False
    if not usable:
        policy.set_event_loop(policy.new_event_loop())


@pytest.fixture
def gateway(tmp_path):
    """A simulated gateway that is always open: every test may trade US and Hong Kong stocks whatever the
    host's day and hour (tests of the trading sessions, test_sim_sessions.py, set the clock themselves)."""
    gw = SimGateway(port=0, state_path=str(tmp_path / "sim-state.json"), tick_interval=0.02,
                    always_open=True).start_in_thread()
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
def ib_async_client(gateway):
    """ib_async (the maintained fork of ib_insync) and one of its clients connected to the gateway, as
    (module, client): the module's own Contract and Order classes go with its client."""
    ib_async = pytest.importorskip("ib_async")
    ib = ib_async.IB()
    ib.connect("127.0.0.1", gateway.port, clientId=11, timeout=5)
    yield ib_async, ib
    ib.disconnect()


@pytest.fixture
def store(tmp_path):
    """A fresh queue in a SQLite file. (Modules whose every test must hold on both backends, the store's,
    the runner's and the crash tests, override it with ``store_on_each_backend``.)"""
    s = Store(tmp_path / "queue.sqlite")
    yield s
    s.close()


@pytest.fixture
def store_on_each_backend(queue_url):
    """A fresh queue, once in a SQLite file and once in a PostgreSQL database."""
    s = Store(queue_url)
    yield s
    s.close()


def started_postgres() -> PostgresServer:
    """A started PostgreSQL server. Where none can start, the test is skipped saying why; in CI (``CI`` set)
    it fails instead, so a broken setup is never reported green."""
    server = PostgresServer()
    try:
        return server.start()
    except PostgresUnavailable as e:
        server.close()
        if os.environ.get("CI"):
            pytest.fail(f"PostgreSQL server did not start: {e}")
        pytest.skip(f"PostgreSQL server did not start: {e}")


@pytest.fixture(scope="session")
def postgres():
    """A PostgreSQL server for the whole session, started by the first test that needs one."""
    server = started_postgres()
    yield server
    server.close()


@pytest.fixture
def postgres_of_its_own():
    """A PostgreSQL server for one test that stops and restarts it (the database going down and coming back),
    which would cut the other tests' connections to the session's server."""
    server = started_postgres()
    yield server
    server.close()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgresql)])
def queue_url(request, tmp_path):
    """Where a fresh, empty queue lives, once per backend: a SQLite file's path (not yet created) or the URL
    of a new PostgreSQL database, dropped afterwards with any connection the test left open."""
    if request.param == "sqlite":
        yield str(tmp_path / "queue.sqlite")
        return
    server = request.getfixturevalue("postgres")  # only PostgreSQL tests start the server
    name = f"qd_{uuid.uuid4().hex}"
    yield server.create_database(name)
    server.drop_database(name)


@pytest.fixture
def ib(connect) -> IB:
    return connect(1)


@pytest.fixture
def ibkr(gateway):
    """qdibkr's own connection layer, connected to the gateway as client 1."""
    session = IBKR(host="127.0.0.1", port=gateway.port, client_id=1).connect()
    yield session
    session.disconnect()


def wait_until(ib: IB, condition, timeout: float = 5.0):
    """Let ib_insync process incoming messages until ``condition()`` holds.

    Woken by each batch of messages, so nothing sleeps for a fixed time; the
    timeout only bounds a failing test.
    """
    if not util.run(until(ib, condition, timeout)):
        raise AssertionError(f"condition not met within {timeout} s")


@pytest.fixture
def gateway_at():
    """Start simulated gateways whose clocks begin at an instant (ISO-8601, aware datetime or POSIX
    seconds), whatever the host's date, and stand still unless ``speed`` says otherwise: for what
    depends on the day and hour (trading sessions, fee rates). Each is stopped afterwards."""
    started = []

    def start(instant, speed=0.0, **kwargs) -> SimGateway:
        gw = SimGateway(port=0, tick_interval=0.02, start=instant, speed=speed, **kwargs).start_in_thread()
        started.append(gw)
        return gw

    yield start
    for gw in started:
        gw.stop()
