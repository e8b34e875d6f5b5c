"""The runner against a one-second polling worker: emit-to-order latency and basket throughput.

Both run as their own processes against the simulated gateway (in this
process, so the moment each order reaches it can be read exactly):

- latency: single signals emitted one at a time (20 a second, under IB's
  pacing), from the ``emit()`` call to the order's arrival at the gateway;
- throughput: a 300-order basket emitted at once, orders per second from the
  first emit to the last order's arrival, and the pacing errors (code 100) the
  gateway had to send.

The runner is measured on a SQLite queue (woken by a datagram) and on a
PostgreSQL one (woken by NOTIFY, on a throwaway server from tests/pg.py).

The baseline is the worker many projects ship: every second it reads the
pending signals and places each order, waiting for its fill, one after another.
Targets for the runner: latency p50 < 5 ms, p99 < 25 ms; basket >= 40 orders/s,
zero pacing errors.

    python bench/runner_bench.py [--signals 100] [--basket 300]

Prints the figures and writes them to bench/results/runner_bench.json.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from qdibkr import emit
from qdibkr.sim import SimGateway
from qdibkr.store import Store
from stats import milliseconds  # bench/stats.py

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.pg import PostgresServer  # noqa: E402  (a throwaway PostgreSQL server, as the tests use)

RESULTS = Path(__file__).parent / "results" / "runner_bench.json"
SYMBOLS = ["AAPL", "MSFT", "TSLA", "GOOGL", "AMZN", "NVDA", "META", "JPM", "SPY", "QQQ", "IWM", "BRK B"]


def polling_worker(port: int, db: str):
    """The baseline: poll every second; place each pending order and wait for it, in turn."""
    from qdibkr.ibkr import IBKR

    store = Store(db)
    with IBKR(port=port, client_id=80) as ibkr:
        while True:
            for signal in store.signals(statuses=("pending",)):
                store.update_signal(signal.id, status="submitting")  # the least a worker must do to send once
                side = "buy" if signal.action == "BUY" else "sell"
                result = ibkr.place_order(signal.symbol, side, signal.quantity, order_ref=signal.order_ref)
                store.update_signal(signal.id, status="filled" if result.status == "Filled" else "submitted")
            time.sleep(1.0)


def arrival(gateway: SimGateway, order_ref: str) -> float | None:
    return next((o.placed_at for o in gateway.broker.orders.values() if o.order_ref == order_ref), None)


def wait_for_orders(gateway: SimGateway, count: int, timeout: float = 120.0):
    deadline = time.monotonic() + timeout
    while len(gateway.broker.orders) < count and time.monotonic() < deadline:
        time.sleep(0.001)


def measure(name: str, command: list[str], signals: int, basket: int, db: str | None = None) -> dict:
    """Latency and basket throughput of a worker on a queue: a SQLite file unless ``db`` names another."""
    gateway = SimGateway(port=0, always_open=True).start_in_thread()
    workdir = tempfile.mkdtemp(prefix=f"qdibkr-bench-{name}-")
    db = db or os.path.join(workdir, "queue.sqlite")
    config = os.path.join(workdir, "config.toml")
    Path(config).write_text('[risk]\noutside_hours = "send"\n')
    env = {**os.environ, "QDIBKR_CONFIG": config, "QDIBKR_DB": db}
    store = Store(db)
    worker = subprocess.Popen([*command, "--port", str(gateway.port)], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        # warm up: the worker is connected once its first order arrives
        emit("open_long", "AAPL", 1, strategy="warmup", store=store)
        wait_for_orders(gateway, 1)
        latencies = []
        for i in range(signals):
            started = time.time()
            signal = emit("open_long", SYMBOLS[i % len(SYMBOLS)], 1, strategy=f"lat{i}", store=store)
            wait_for_orders(gateway, 2 + i)
            latencies.append(arrival(gateway, signal.order_ref) - started)
            time.sleep(max(0.0, 0.05 - (time.time() - started)))  # 20 signals a second
        time.sleep(1.0)  # let the pacing window clear before the basket
        before = len(gateway.broker.orders)
        started = time.time()
        refs = [emit("open_long", SYMBOLS[i % len(SYMBOLS)], 1, strategy=f"basket{i}", store=store).order_ref
                for i in range(basket)]
        wait_for_orders(gateway, before + basket, timeout=600)
        last = max(arrival(gateway, ref) for ref in refs)
        violations = sum(s.rate.violations for s in gateway.sessions.values())
    finally:
        worker.kill()
        worker.wait()
        gateway.stop()
    return {**milliseconds(f"{name}_latency", latencies),
            f"{name}_basket_orders_per_s": basket / (last - started),
            f"{name}_pacing_violations": violations}


def main(args) -> dict:
    qdibkr = shutil.which("qdibkr") or sys.exit("install qdibkr first: pip install -e .")
    figures = measure("runner", [qdibkr, "runner"], args.signals, args.basket)
    with PostgresServer() as postgres:  # the same runner on a PostgreSQL queue, woken by NOTIFY
        figures.update(measure("runner_postgresql", [qdibkr, "runner"], args.signals, args.basket,
                               db=postgres.create_database()))
    figures.update(measure("polling", [sys.executable, __file__, "--polling-worker"], args.signals // 5,
                           args.basket // 5))
    figures["latency_p50_polling_over_runner"] = figures["polling_latency_ms_p50"] / figures["runner_latency_ms_p50"]
    figures["throughput_runner_over_polling"] = figures["runner_basket_orders_per_s"] / \
        figures["polling_basket_orders_per_s"]
    return figures


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--signals", type=int, default=100, help="single signals for the latency figure")
    parser.add_argument("--basket", type=int, default=300)
    parser.add_argument("--polling-worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.polling_worker:
        polling_worker(args.port, os.environ["QDIBKR_DB"])
    figures = main(args)
    for name, value in figures.items():
        print(f"{name:36s} {value:12.3f}" if isinstance(value, float) else f"{name:36s} {value:12d}")
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(figures, indent=2))
    print(f"written to {RESULTS}")
