"""Benchmark the simulated gateway through the real ib_insync client.

Figures, each beside a baseline measured in the same run (these machines are
shared and noisy, so ratios travel better than absolute times):

- connect: ``IB.connect()`` to Synchronization complete, vs. the bare API
  handshake (TCP connect, version exchange, startApi answered);
- order round trip: ``placeOrder`` of a 1-share market order to its Filled
  status, vs. a ``reqCurrentTime`` round trip on the same connection;
- throughput: messages per second (both directions) that the simulator
  sustains with many ib_insync clients requesting quote snapshots, and the
  same per CPU-second of the simulator process (it runs on one core);
- durable state: the order round trip again with ``--state FILE``, where every
  change is journaled and fsync'ed before the fill is reported;
- historical flood: one client asking for a year of 5-minute bars outside
  regular hours (about 48,000 bars each) five times a second, as in issue 12:
  the simulator's resident memory before and at its peak, the answers and
  refusals the flood got, and meanwhile another client's connect time.

The simulator runs in its own process, started as a user would (``qdibkr sim``),
always open (``--always-open``) so that its market orders fill at any hour.

    python bench/sim_bench.py [--clients 24] [--seconds 5] [--orders 300] [--flood-seconds 25]

Prints the figures and writes them to bench/results/sim_bench.json.
"""

import argparse
import asyncio
import itertools
import json
import os
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from ib_insync import IB, MarketOrder, Stock

from qdibkr.sim.wire import FrameReader, encode
from stats import milliseconds  # bench/stats.py

RESULTS = Path(__file__).parent / "results" / "sim_bench.json"
US_SYMBOLS = ["AAPL", "MSFT", "TSLA", "GOOGL", "AMZN", "NVDA", "META", "JPM", "SPY", "QQQ"]


def start_simulator(*options: str) -> tuple[subprocess.Popen, int]:
    proc = subprocess.Popen([sys.executable, "-m", "qdibkr", "sim", "--port", "0", "--always-open", *options],
                            stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline()  # "simulated gateway listening on 127.0.0.1:PORT, ..."
    port = int(line.split("127.0.0.1:")[1].split(",")[0])
    return proc, port


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def memory_mb(pid: int, field: str = "VmRSS") -> float:
    """Resident memory of a process now (VmRSS) or at its peak so far (VmHWM), in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise LookupError(field)


def frame(payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + payload


def bare_handshake(port: int, client_id: int) -> float:
    """TCP connect, version exchange, startApi, until nextValidId arrives: the floor under connect()."""
    started = time.perf_counter()
    reader = FrameReader()
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(b"API\0" + frame(b"v157..176"))
        while not reader.feed(sock.recv(4096)):
            pass  # until the version answer
        sock.sendall(frame(f"71\x002\x00{client_id}\x00\x00".encode()))
        while not any(fields[0] == "9" for fields in reader.feed(sock.recv(4096))):
            pass  # until nextValidId
    return time.perf_counter() - started


async def measure_connect(port: int, rounds: int) -> dict:
    connect, bare = [], []
    for i in range(rounds):
        bare.append(bare_handshake(port, 500 + i))
        ib = IB()
        started = time.perf_counter()
        await ib.connectAsync("127.0.0.1", port, clientId=600 + i, timeout=5)
        connect.append(time.perf_counter() - started)
        ib.disconnect()
    return {**milliseconds("connect", connect),
            "bare_handshake_ms_p50": 1e3 * statistics.median(bare),
            "connect_vs_handshake": statistics.median(connect) / statistics.median(bare)}


async def measure_orders(port: int, orders: int) -> dict:
    ib = IB()
    await ib.connectAsync("127.0.0.1", port, clientId=1, timeout=5)
    contract = Stock("AAPL", "SMART", "USD")
    await ib.qualifyContractsAsync(contract)
    round_trips, current_time = [], []
    # Two messages a round, 20 rounds a second: under ib_insync's own 45/s throttle
    # (and IB's 50/s limit), or the figures would measure the throttle's waits.
    next_round = time.perf_counter()
    for i in range(orders):
        await asyncio.sleep(max(0.0, next_round - time.perf_counter()))
        next_round = time.perf_counter() + 0.05
        started = time.perf_counter()
        await ib.reqCurrentTimeAsync()
        current_time.append(time.perf_counter() - started)

        started = time.perf_counter()
        trade = ib.placeOrder(contract, MarketOrder("BUY" if i % 2 == 0 else "SELL", 1))
        await trade.filledEvent
        round_trips.append(time.perf_counter() - started)
    ib.disconnect()
    return {**milliseconds("order_round_trip", round_trips),
            "current_time_ms_p50": 1e3 * statistics.median(current_time),
            "order_vs_current_time": statistics.median(round_trips) / statistics.median(current_time)}


async def measure_throughput(port: int, pid: int, clients: int, seconds: float) -> dict:
    ibs = []
    for i in range(clients):
        ib = IB()
        await ib.connectAsync("127.0.0.1", port, clientId=100 + i, timeout=10)
        ibs.append(ib)
    contracts = [Stock(s, "SMART", "USD") for s in US_SYMBOLS]
    await ibs[0].qualifyContractsAsync(*contracts)

    def counted() -> int:
        return sum(ib.client._numMsgRecv + ib.client.conn.numMsgSent for ib in ibs)

    async def hammer(ib: IB, until: float):
        while time.perf_counter() < until:
            await ib.reqTickersAsync(*contracts)

    before, cpu_before, started = counted(), cpu_seconds(pid), time.perf_counter()
    await asyncio.gather(*(hammer(ib, started + seconds) for ib in ibs))
    elapsed, cpu = time.perf_counter() - started, cpu_seconds(pid) - cpu_before
    messages = counted() - before
    for ib in ibs:
        ib.disconnect()
    return {"clients": clients, "messages": messages, "seconds": elapsed,
            "messages_per_second": messages / elapsed, "simulator_cpu_share": cpu / elapsed,
            "messages_per_simulator_cpu_second": messages / cpu if cpu else float("inf")}


class BarFlood:
    """A bare API client on its own thread asking for a year of SPY's 5-minute bars outside regular
    hours ``rate`` times a second (each ending on another day: none identical), and counting what it
    gets: answers (historicalData) and errors. It reads without decoding, so it loads only the simulator."""

    def __init__(self, port: int, rate: float, client_id: int):
        self.answers, self.errors = 0, {}
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.sock.sendall(b"API\0" + frame(b"v157..176"))
        self.sock.recv(4096)  # the version answer
        self.sock.sendall(encode([71, 2, client_id, ""]))
        self.rate = rate
        self.stopping = threading.Event()
        self.threads = [threading.Thread(target=self.ask, daemon=True), threading.Thread(target=self.read, daemon=True)]
        for thread in self.threads:
            thread.start()

    def ask(self):
        spy = [756733, "SPY", "STK", "", 0.0, "", "", "SMART", "", "USD", "", "", 0]
        req_id = 0
        while not self.stopping.wait(1 / self.rate):
            req_id += 1
            end = time.strftime("%Y%m%d 12:00:00 America/New_York", time.gmtime(1_700_000_000 - req_id * 86400))
            self.sock.sendall(encode([20, req_id, *spy, end, "5 mins", "1 Y", 0, "TRADES", 1, 0, ""]))

    def read(self):
        buffer = bytearray()
        try:
            while data := self.sock.recv(1 << 20):
                buffer += data
                while len(buffer) >= 4 and len(buffer) >= 4 + (size := struct.unpack_from(">I", buffer)[0]):
                    fields = bytes(buffer[4:4 + size]).split(b"\0", 5)
                    del buffer[:4 + size]
                    if fields[0] == b"17":
                        self.answers += 1
                    elif fields[0] == b"4" and not fields[3].startswith(b"21"):  # not a farm status
                        self.errors[int(fields[3])] = self.errors.get(int(fields[3]), 0) + 1
        except OSError:
            pass

    def stop(self):
        self.stopping.set()
        self.sock.close()
        for thread in self.threads:
            thread.join(timeout=5)


async def measure_flood(port: int, pid: int, seconds: float) -> dict:
    """The simulator's memory under a flood of year-long bar requests, and another client's connects."""
    warm_up = BarFlood(port, rate=1, client_id=300)  # the first bars load what every later request uses
    while not warm_up.answers:
        await asyncio.sleep(0.1)
    warm_up.stop()
    before = memory_mb(pid)
    flood = BarFlood(port, rate=5, client_id=301)
    connects, timeouts, peak, until = [], 0, before, time.perf_counter() + seconds
    for i in itertools.count():
        if time.perf_counter() >= until:
            break
        ib = IB()
        started = time.perf_counter()
        try:
            await ib.connectAsync("127.0.0.1", port, clientId=400 + i, timeout=10)
            connects.append(time.perf_counter() - started)
        except (asyncio.TimeoutError, ConnectionError):
            timeouts += 1
        ib.disconnect()
        peak = max(peak, memory_mb(pid, "VmHWM"))
        await asyncio.sleep(0.5)
    flood.stop()
    return {"flood_seconds": seconds, "flood_requests_per_second": flood.rate,
            "flood_answers": flood.answers, "flood_refused_322": flood.errors.pop(322, 0),
            "flood_other_errors": sum(flood.errors.values()),
            "flood_rss_before_mb": before, "flood_rss_peak_mb": peak,
            **(milliseconds("flood_other_client_connect", connects) if connects else {}),
            "flood_other_client_connect_timeouts_10s": timeouts}


async def main(args) -> dict:
    results = {}
    proc, port = start_simulator()
    try:
        results.update(await measure_connect(port, args.connects))
        results.update(await measure_orders(port, args.orders))
        results.update(await measure_throughput(port, proc.pid, args.clients, args.seconds))
        if args.flood_seconds:
            results.update(await measure_flood(port, proc.pid, args.flood_seconds))
    finally:
        proc.terminate()
        proc.wait()
    with tempfile.TemporaryDirectory() as work:
        proc, port = start_simulator("--state", str(Path(work) / "state.json"))
        try:
            durable = await measure_orders(port, args.orders)
        finally:
            proc.terminate()
            proc.wait()
    results.update({f"with_state_{name}": value for name, value in durable.items()})
    return results


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=24)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--orders", type=int, default=200)
    parser.add_argument("--connects", type=int, default=30)
    parser.add_argument("--flood-seconds", type=float, default=25.0, help="0: skip the historical data flood")
    figures = asyncio.run(main(parser.parse_args()))
    for name, value in figures.items():
        print(f"{name:36s} {value:12.3f}" if isinstance(value, float) else f"{name:36s} {value:12d}")
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(figures, indent=2))
    print(f"written to {RESULTS}")
