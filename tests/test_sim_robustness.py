"""The simulated gateway under the things that go wrong: a process killed right after it reported a
fill, a socket that never finishes the handshake, a flood of expensive historical data requests,
IB's pacing rules, and a refused sale that must leave no trace in the portfolio."""

import asyncio
import datetime as dt
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from ib_insync import IB, MarketOrder, Stock

from qdibkr.sim import SimGateway
from qdibkr.sim.wire import HANDSHAKE_PREFIX, encode

from .conftest import wait_until

# A year of 5-minute bars with the extended hours: about 48,000 bars, half a second of CPU or so to make.
BIG_REQUEST = ("1 Y", "5 mins", "TRADES", False)


# ---------------------------------------------------------------- state survives the process
TUESDAY_SESSION = "2026-11-24T15:00:00Z"  # 10:00 in New York


def start_sim(state: str) -> tuple[subprocess.Popen, int]:
    """``qdibkr sim --state FILE`` in its own process, as a user runs it; returns it and its port. Its
    clock starts inside a session, for a market order to fill whatever the host's day and hour."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "qdibkr", "sim", "--port", "0", "--state", state,
                             "--start", TUESDAY_SESSION],
                            stdout=subprocess.PIPE, text=True, env=env)
    line = proc.stdout.readline()  # "simulated gateway listening on 127.0.0.1:PORT, ..."
    assert "listening on 127.0.0.1:" in line, line
    return proc, int(line.split("127.0.0.1:")[1].split(",")[0])


@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
def test_a_fill_reported_to_a_client_survives_the_end_of_the_process(tmp_path, how):
    state = str(tmp_path / "state.json")
    proc, port = start_sim(state)
    try:
        ib = IB().connect("127.0.0.1", port, clientId=1, timeout=10)
        aapl = Stock("AAPL", "SMART", "USD")
        ib.qualifyContracts(aapl)
        trade = ib.placeOrder(aapl, MarketOrder("BUY", 7))
        ib.run(asyncio.wait_for(trade.filledEvent, 10))
        [fill] = trade.fills
        proc.send_signal(how)  # the moment the client has heard of the fill
        code = proc.wait(timeout=10)
        ib.disconnect()
    finally:
        proc.kill()
        proc.wait()
    if how == signal.SIGTERM:
        assert code == 0  # a clean stop, not death by the signal
        assert not os.path.exists(state + ".journal")  # it saved the whole state on the way out

    proc, port = start_sim(state)
    try:
        ib = IB().connect("127.0.0.1", port, clientId=1, timeout=10)
        assert [f.execution.execId for f in ib.reqExecutions()] == [fill.execution.execId]
        assert {p.contract.symbol: p.position for p in ib.positions()} == {"AAPL": 7}
        assert ib.client.getReqId() > trade.order.orderId  # order ids never repeat
        ib.disconnect()
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_a_journal_entry_the_snapshot_holds_or_one_torn_by_a_crash_is_not_replayed(tmp_path):
    """A crash between rewriting the snapshot and deleting the journal leaves entries the snapshot
    already holds; a crash in mid-append leaves half a line. Neither is applied on restart."""
    state = str(tmp_path / "state.json")
    gateway = SimGateway(port=0, state_path=state, start=TUESDAY_SESSION).start_in_thread()
    try:
        ib = IB().connect("127.0.0.1", gateway.port, clientId=1, timeout=5)
        aapl = Stock("AAPL", "SMART", "USD")
        ib.qualifyContracts(aapl)
        trade = ib.placeOrder(aapl, MarketOrder("BUY", 3))
        ib.run(asyncio.wait_for(trade.filledEvent, 10))
        ib.disconnect()
        journal = Path(state + ".journal").read_text()
    finally:
        gateway.stop()  # the snapshot now holds the fill, and the journal is gone
    Path(state + ".journal").write_text(journal + '{"sequence": 99, "chan')

    broker = SimGateway(port=0, state_path=state).broker
    assert [p.quantity for p in broker.held_positions()] == [3]
    assert len(broker.executions) == 1


# ---------------------------------------------------------------- no ghost portfolio rows
def test_a_refused_sale_of_a_stock_never_held_leaves_no_portfolio_row(gateway, connect):
    ib = connect(1)
    msft = Stock("MSFT", "SMART", "USD")
    ib.qualifyContracts(msft)
    trade = ib.placeOrder(msft, MarketOrder("SELL", 5))
    refused = ib.run(asyncio.wait_for(ib.errorEvent, 5))
    assert refused[0] == trade.order.orderId and refused[1] == 201  # short sale refused

    # A client that subscribes to the account afterwards gets every portfolio row there is.
    rows = []
    other = IB()
    other.updatePortfolioEvent += rows.append
    other.positionEvent += rows.append
    other.connect("127.0.0.1", gateway.port, clientId=2, timeout=5)
    try:
        other.reqPositions()
        assert [row.contract.symbol for row in rows] == []
        assert other.portfolio() == [] and other.positions() == []
    finally:
        other.disconnect()


def test_a_ghost_row_in_a_state_file_of_an_older_simulator_is_dropped(tmp_path):
    state = tmp_path / "state.json"
    state.write_text(json.dumps({
        "version": 1, "next_order_id": 2, "next_perm_id": 1_000_000_002, "orders": [], "executions": [],
        "accounts": [{"account_id": "DU1234567", "cash": {"USD": 1e6, "HKD": 1e6}, "realized_pnl": {}}],
        "positions": [{"account": "DU1234567", "con_id": 272093, "quantity": 0, "avg_cost": 0.0,
                       "realized_pnl": 0.0}],  # MSFT, never held: a refused sale left it
    }))

    gateway = SimGateway(port=0, state_path=str(state), start=TUESDAY_SESSION).start_in_thread()
    rows = []
    ib = IB()
    ib.updatePortfolioEvent += rows.append
    try:
        ib.connect("127.0.0.1", gateway.port, clientId=1, timeout=5)  # subscribes to the account
        assert rows == []
    finally:
        ib.disconnect()
        gateway.stop()


# ---------------------------------------------------------------- handshake timeout
@pytest.fixture
def impatient_gateway(tmp_path):
    gw = SimGateway(port=0, handshake_timeout=0.5, tick_interval=0.02).start_in_thread()
    yield gw
    gw.stop()


def closed_by_server(sock: socket.socket, within: float) -> bool:
    """Whether the server closes the socket within ``within`` seconds (reading what it sends till then)."""
    sock.settimeout(within)
    deadline = time.monotonic() + within
    try:
        while time.monotonic() < deadline:
            if not sock.recv(4096):
                return True
    except (TimeoutError, socket.timeout):
        return False
    except ConnectionResetError:
        return True
    return False


def test_a_socket_that_never_finishes_the_handshake_is_closed(impatient_gateway):
    silent = socket.create_connection(("127.0.0.1", impatient_gateway.port))
    halfway = socket.create_connection(("127.0.0.1", impatient_gateway.port))
    halfway.sendall(HANDSHAKE_PREFIX + encode(["v157..176"]))  # the version exchange, but no startApi
    with silent, halfway:
        assert closed_by_server(silent, within=5)
        assert closed_by_server(halfway, within=5)


def test_a_client_that_finished_the_handshake_stays_connected(impatient_gateway):
    ib = IB().connect("127.0.0.1", impatient_gateway.port, clientId=1, timeout=5)
    try:
        ib.sleep(1.5)  # three handshake timeouts
        assert ib.isConnected()
        assert ib.reqCurrentTime()
    finally:
        ib.disconnect()


# ---------------------------------------------------------------- historical data pacing
def test_bars_of_a_minute_and_more_are_not_paced(connect):
    """IB lifted its pacing limits for bars of 1 minute and more: identical requests are both answered."""
    ib = connect(1)
    spy = Stock("SPY", "SMART", "USD")
    ib.qualifyContracts(spy)
    first = ib.reqHistoricalData(spy, "", "2 D", "1 hour", "TRADES", useRTH=True)
    again = ib.reqHistoricalData(spy, "", "2 D", "1 hour", "TRADES", useRTH=True)
    assert first and [bar.date for bar in again] == [bar.date for bar in first]


def test_the_sixth_request_for_one_contract_within_two_seconds_breaks_pacing(connect):
    ib = connect(1)
    errors = []
    ib.errorEvent += lambda req_id, code, text, contract: errors.append((req_id, code, text))
    spy = Stock("SPY", "SMART", "USD")
    ib.qualifyContracts(spy)

    async def six():
        # Six different requests (none identical) for SPY's trades in 30-second bars, at once.
        ends = [f"20250603 1{hour}:00:00 America/New_York" for hour in range(6)]
        return await asyncio.gather(*(ib.reqHistoricalDataAsync(spy, end, "1800 S", "30 secs", "TRADES", False)
                                      for end in ends))

    answers = ib.run(six())
    assert [bool(bars) for bars in answers] == [True] * 5 + [False]
    assert [(code, text) for _, code, text in errors] == [
        (162, "Historical Market Data Service error message:Historical data request pacing violation")]


def test_a_duration_too_long_for_the_bar_size_gets_tws_error_162(connect):
    ib = connect(1)
    errors = []
    ib.errorEvent += lambda req_id, code, text, contract: errors.append((code, text))
    spy = Stock("SPY", "SMART", "USD")
    ib.qualifyContracts(spy)
    assert not ib.reqHistoricalData(spy, "", "1 W", "1 secs", "TRADES", useRTH=True)
    assert errors == [(162, "Historical Market Data Service error message:Time length exceed max.")]


# ---------------------------------------------------------------- the cost of one request is bounded
class RawFlooder:
    """A bare API client on its own thread: it asks for BIG_REQUEST bars of SPY ``count`` times at once
    (each ending on another day, so none is identical to another) and reads the answers, counting them
    and keeping errors, without the decoding an ib_insync client would do in the test's own event loop
    (which would slow the other clients down, not the gateway)."""

    def __init__(self, port: int, count: int, client_id: int = 77):
        self.answered = 0
        self.answers = threading.Semaphore(0)  # released once per answer
        self.errors = []
        self.erred = threading.Event()
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.sock.sendall(HANDSHAKE_PREFIX + encode(["v157..176"]))
        self.sock.recv(4096)  # the server's version and time
        self.sock.sendall(encode([71, 2, client_id, ""]))  # startApi
        duration, bar_size, what, use_rth = BIG_REQUEST
        contract = [756733, "SPY", "STK", "", 0.0, "", "", "SMART", "", "USD", "", "", 0]  # SPY's conId
        self.thread = threading.Thread(target=self.read, daemon=True)
        self.thread.start()
        for req_id in range(1, count + 1):
            if req_id % 45 == 0:
                time.sleep(1.0)  # under IB's 50 messages a second, as ib_insync paces itself
            end = (dt.date(2025, 6, 1) + dt.timedelta(days=req_id)).strftime("%Y%m%d 12:00:00 America/New_York")
            self.sock.sendall(encode([20, req_id, *contract, end, bar_size, duration, int(use_rth), what, 1, 0, ""]))

    def read(self):
        """Count the frames of historical data (id 17); keep the errors (id 4) but farm statuses (21xx)."""
        buffer = bytearray()
        try:
            while data := self.sock.recv(1 << 20):
                buffer += data
                while len(buffer) >= 4 and len(buffer) >= 4 + (size := struct.unpack_from(">I", buffer)[0]):
                    fields = bytes(buffer[4:4 + size]).split(b"\0")
                    del buffer[:4 + size]
                    if fields[0] == b"17":
                        self.answered += 1
                        self.answers.release()
                    elif fields[0] == b"4" and not fields[3].startswith(b"21"):
                        self.errors.append((int(fields[3]), fields[4].decode()))
                        self.erred.set()
        except OSError:
            pass

    def close(self):
        self.sock.close()
        self.thread.join(timeout=5)


def test_no_more_than_50_open_historical_requests_per_client(gateway):
    flooder = RawFlooder(gateway.port, count=60)  # each takes a good part of a second, one at a time
    try:
        assert flooder.erred.wait(10)
        refused = (322, "Error processing request:Only 50 simultaneous API historical data requests allowed.")
        assert flooder.errors and set(flooder.errors) == {refused}
    finally:
        flooder.close()


def memory_mb(pid: int, field: str) -> float:
    """A process's resident memory now (``VmRSS``) or at its peak so far (``VmHWM``), in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise LookupError(field)


def test_a_cancelled_historical_request_is_dropped_and_confirmed(connect):
    ib = connect(1)
    errors = []
    ib.errorEvent += lambda req_id, code, text, contract: errors.append((req_id, code, text))
    spy = Stock("SPY", "SMART", "USD")
    ib.qualifyContracts(spy)
    first, second = ib.client.getReqId(), ib.client.getReqId()
    for req_id in (first, second):  # the second waits for the first to be computed
        ib.client.reqHistoricalData(req_id, spy, "", *BIG_REQUEST, 1, False, [])
    ib.client.cancelHistoricalData(second)
    # The confirmation may queue behind the first request's year of bars, which a loaded machine decodes slowly.
    wait_until(ib, lambda: errors, 60)
    assert errors == [(second, 162, f"Historical Market Data Service error message:API historical data query "
                                    f"cancelled: {second}")]


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads the simulator's memory from /proc")
def test_a_flood_of_year_long_bar_requests_is_served_in_turn_in_bounded_memory(tmp_path):
    """A client asking for a year of 5-minute bars thirty times at once waits for them, one after the
    other: the simulator's memory grows by about one request's, and another client connects at once
    and gets its own bars ahead of the flood. (Computed all at once, the flood took the simulator
    from about 170 MB to 750 MB.)"""
    proc, port = start_sim(str(tmp_path / "state.json"))
    try:
        warm_up = RawFlooder(port, count=1, client_id=77)  # first bars load what every later request uses
        assert warm_up.answers.acquire(timeout=30)
        warm_up.close()
        before = memory_mb(proc.pid, "VmRSS")

        flooder = RawFlooder(port, count=30, client_id=78)
        started = time.monotonic()
        other = IB().connect("127.0.0.1", port, clientId=2, timeout=10)
        assert time.monotonic() - started < 2.0
        bars = other.reqHistoricalData(Stock("AAPL", "SMART", "USD"), "20250603 16:00:00 America/New_York", "2 D",
                                       "1 hour", "TRADES", useRTH=True)
        assert bars and flooder.answered <= 3  # its turn came after the request being computed
        other.disconnect()
        for _ in range(3):
            assert flooder.answers.acquire(timeout=30)
        assert flooder.errors == []
        assert memory_mb(proc.pid, "VmHWM") - before < 150
        flooder.close()
    finally:
        proc.terminate()
        proc.wait(timeout=10)
