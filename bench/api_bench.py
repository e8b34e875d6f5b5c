"""Requests per second and latency of `qdibkr serve` on loopback, against a bare Starlette app.

Four processes: the simulated gateway (`qdibkr sim`), the API server
(`qdibkr serve`, connected to it and holding three positions), the baseline (a
Starlette hello-world under uvicorn, served the same way) and this one, the
load: N keep-alive HTTP/1.1 clients, each sending its next request as soon as
the last is answered, for a fixed time after a short warm-up. The client is
a few lines of asyncio, so that it costs less than the servers it measures.
Then 200 clients post one signal each at once, with distinct idempotency keys:
exactly 200 signals must be queued, and posting them all again must add none.

Target: GET /api/ibkr/positions >= 1,000 req/s with p99 < 50 ms (50 clients).

    python bench/api_bench.py [--clients 50] [--seconds 5]

Prints the figures and writes them to bench/results/api_bench.json.
"""

import argparse
import asyncio
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

from stats import percentile  # bench/stats.py

RESULTS = Path(__file__).parent / "results" / "api_bench.json"
WARM_UP = 1.0  # seconds of load before measuring
SIGNALS = 200
BASELINE = """
import asyncio, socket, uvicorn
from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Route

async def hello(request):
    return JSONResponse({"success": True, "data": "hello"})

sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
sock.bind(("127.0.0.1", 0))
sock.listen(2048)
print(f"listening on http://127.0.0.1:{sock.getsockname()[1]}", flush=True)
app = Starlette(routes=[Route("/hello", hello)])
asyncio.run(uvicorn.Server(uvicorn.Config(app, log_config=None)).serve(sockets=[sock]))
"""


# ---------------------------------------------------------------- a lean HTTP/1.1 client
class Connection:
    """One keep-alive HTTP/1.1 connection: send a request, read the whole response."""

    def __init__(self, reader, writer, host: str):
        self.reader, self.writer, self.host = reader, writer, host

    @classmethod
    async def open(cls, base: str) -> "Connection":
        host, port = re.match(r"http://([^:/]+):(\d+)", base).groups()
        reader, writer = await asyncio.open_connection(host, int(port))
        return cls(reader, writer, f"{host}:{port}")

    async def request(self, method: str, path: str, body: dict | None = None) -> tuple[int, bytes]:
        payload = json.dumps(body).encode() if body is not None else b""
        head = f"{method} {path} HTTP/1.1\r\nHost: {self.host}\r\n"
        if body is not None:
            head += f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n"
        self.writer.write(head.encode() + b"\r\n" + payload)
        status = int((await self.reader.readline()).split()[1])
        length = 0
        while (line := await self.reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.partition(b":")
            if name.lower() == b"content-length":
                length = int(value)
        return status, await self.reader.readexactly(length)

    def close(self):
        self.writer.close()


async def load(base: str, path: str, clients: int, seconds: float) -> dict:
    """Closed-loop load: every client sends its next GET when the last is answered."""
    connections = [await Connection.open(base) for _ in range(clients)]
    loop = asyncio.get_running_loop()
    start = loop.time() + WARM_UP
    stop = start + seconds
    latencies, failures = [], 0

    async def client(connection: Connection):
        nonlocal failures
        while (sent := loop.time()) < stop:
            status, _ = await connection.request("GET", path)
            if sent >= start:
                latencies.append(loop.time() - sent)
                failures += status != 200

    await asyncio.gather(*(client(c) for c in connections))
    for c in connections:
        c.close()
    return {"rps": len(latencies) / seconds, "p50_ms": percentile(latencies, 50) * 1000,
            "p99_ms": percentile(latencies, 99) * 1000, "requests": len(latencies), "failures": failures}


async def burst_of_signals(base: str, run: str) -> dict:
    """SIGNALS clients post one signal each, all at once, each with its own idempotency key."""
    connections = [await Connection.open(base) for _ in range(SIGNALS)]
    loop = asyncio.get_running_loop()

    async def post(i: int, connection: Connection) -> tuple[float, int]:
        sent = loop.time()
        status, _ = await connection.request("POST", "/api/ibkr/signal", {
            "signalType": "open_long", "symbol": "AAPL", "quantity": 1, "strategy": "bench", "key": f"{run}-{i}"})
        return loop.time() - sent, status

    started = loop.time()
    answers = await asyncio.gather(*(post(i, c) for i, c in enumerate(connections)))
    wall = loop.time() - started
    for c in connections:
        c.close()
    latencies = [latency for latency, _ in answers]
    return {"wall_s": wall, "p99_ms": percentile(latencies, 99) * 1000,
            "failures": sum(status != 200 for _, status in answers)}


# ---------------------------------------------------------------- the processes
def start(command: list[str], env: dict) -> tuple[subprocess.Popen, str]:
    """Start a server process and return it with the address it prints once listening."""
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, env=env)
    line = proc.stdout.readline()
    found = re.search(r"(?:listening on http://)?(127\.0\.0\.1:\d+)", line)
    if not found:
        proc.kill()
        sys.exit(f"{command[:3]} did not start: {line}")
    return proc, f"http://{found.group(1)}"


async def call(base: str, method: str, path: str, body: dict | None = None) -> dict:
    connection = await Connection.open(base)
    status, answer = await connection.request(method, path, body)
    connection.close()
    if status != 200:
        sys.exit(f"{method} {path} answered {status}: {answer.decode()}")
    return json.loads(answer)["data"]


async def measure(api: str, baseline: str, sim_port: int, clients: int, seconds: float) -> dict:
    await call(api, "POST", "/api/ibkr/connect", {"port": sim_port})
    for symbol, quantity in (("AAPL", 10), ("MSFT", 5), ("0700.HK", 100)):
        await call(api, "POST", "/api/ibkr/order", {"symbol": symbol, "side": "buy", "quantity": quantity})
    assert len(await call(api, "GET", "/api/ibkr/positions")) == 3

    figures = {"clients": clients, "seconds": seconds}
    for name, base, path in (("baseline_hello", baseline, "/hello"),
                             ("positions", api, "/api/ibkr/positions"),
                             ("quote", api, "/api/ibkr/quote?symbol=AAPL&marketType=USStock")):
        for key, value in (await load(base, path, clients, seconds)).items():
            figures[f"{name}_{key}"] = value
    for name in ("positions", "quote"):
        figures[f"{name}_rps_vs_baseline"] = figures[f"{name}_rps"] / figures["baseline_hello_rps"]

    run = uuid.uuid4().hex[:8]
    for key, value in (await burst_of_signals(api, run)).items():
        figures[f"signals_{key}"] = value
    queued = await call(api, "GET", f"/api/ibkr/queue?strategy=bench&limit={2 * SIGNALS}")
    figures["signals_sent"], figures["signals_queued"] = SIGNALS, len(queued["signals"])
    await burst_of_signals(api, run)  # the same keys again
    again = await call(api, "GET", f"/api/ibkr/queue?strategy=bench&limit={2 * SIGNALS}")
    figures["signals_queued_after_resending"] = len(again["signals"])
    figures["target_met"] = (figures["positions_rps"] >= 1000 and figures["positions_p99_ms"] < 50
                             and figures["signals_queued"] == figures["signals_queued_after_resending"] == SIGNALS)
    return figures


def main(clients: int, seconds: float) -> dict:
    qdibkr = shutil.which("qdibkr") or sys.exit("install qdibkr first: pip install -e .")
    with tempfile.TemporaryDirectory() as tmp:
        env = {k: v for k, v in os.environ.items() if not k.startswith("QDIBKR_")}
        env.update(QDIBKR_CONFIG=str(Path(tmp) / "no-config.toml"), QDIBKR_DB=str(Path(tmp) / "queue.sqlite"))
        processes = []
        try:
            sim, sim_address = start([qdibkr, "sim", "--port", "0", "--always-open"], env)
            processes.append(sim)
            api, api_address = start([qdibkr, "serve", "--port", "0"], env)
            processes.append(api)
            bare, bare_address = start([sys.executable, "-c", BASELINE], env)
            processes.append(bare)
            sim_port = int(sim_address.rsplit(":", 1)[1])
            return asyncio.run(measure(api_address, bare_address, sim_port, clients, seconds))
        finally:
            for proc in processes:
                proc.terminate()
                proc.wait()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=5.0)
    args = parser.parse_args()
    figures = main(args.clients, args.seconds)
    for name, value in figures.items():
        print(f"{name:32s} {value:12.2f}" if isinstance(value, float) else f"{name:32s} {value!s:>12}")
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(figures, indent=2))
    print(f"written to {RESULTS}")
