"""The main job on a fresh install: a strategy notebook trades against the simulated gateway, end to end.

``qdibkr demo``:

1. starts the simulated gateway on a free loopback port (a paper account;
   nothing leaves the machine), its clock inside a US trading session (now if
   the market is open, else in its last session: it says which), so the demo
   trades on any day and at any hour, and a runner (its own connection, client
   id 90) on a fresh queue;
2. runs the US strategy notebook (``notebooks/us_sma.ipynb``) in live mode with
   papermill: it fetches daily bars, computes the SMA crossover's targets and
   emits what the strategy lacks as signals, staged until the notebook has run
   to its end, then released to the runner;
3. waits for the runner to execute them, and prints the signals, the account's
   positions, the strategy's own positions, the day's trades and where the
   executed notebook is.

Everything lives in a temporary folder (printed), so the demo never touches the
user's queue, runs or bars cache.
"""

import asyncio
import tempfile
import threading
import time
from pathlib import Path

from .config import CLIENT_IDS, Settings
from .display import records, table
from .errors import QdibkrError
from .broker import Broker
from .risk import RiskConfig
from .runner import RUNNER_CLIENT_ID, Runner
from .runs import run_notebook
from .sim import SimGateway, describe_start, us_session_start
from .store import Store

NOTEBOOK = Path(__file__).resolve().parent.parent / "notebooks" / "us_sma.ipynb"
SIGNAL_COLUMNS = ("strategy", "signal_type", "symbol", "quantity", "status", "filled", "avg_price", "reason")
RUNNER_WAIT = 30.0  # seconds for the runner to finish the run's signals


def section(title: str, rows):
    print(f"\n{title}\n{table(records(rows))}")


def run_demo(work_dir: str | None = None) -> int:
    if not NOTEBOOK.is_file():
        raise QdibkrError(f"the demo runs {NOTEBOOK}, which is not there: install qdibkr from its source folder "
                          f"(pip install -e .) to have the notebooks")
    work = Path(work_dir or tempfile.mkdtemp(prefix="qdibkr-demo-"))
    now = time.time()
    start = us_session_start(now)
    gateway = SimGateway(port=0, state_path=str(work / "sim-state.json"), start=start).start_in_thread()
    print(f"simulated gateway listening on 127.0.0.1:{gateway.port} (work folder {work})")
    print(describe_start(start, now))
    store = Store(work / "queue.sqlite")
    runner = Runner(store, Settings(port=gateway.port, client_id=RUNNER_CLIENT_ID), RiskConfig())
    stop_runner = start_in_thread(runner)
    print(f"runner started (client id {RUNNER_CLIENT_ID}) on the queue {store.where}")
    try:
        print(f"running {NOTEBOOK.name} in live mode with papermill ...", flush=True)
        run = run_notebook(NOTEBOOK, {"mode": "live", "port": gateway.port}, store=store, output_dir=work / "runs",
                           env={"QDIBKR_CACHE": str(work / "bars")})
        print(f"run {run.id[:8]} {run.status} in {run.duration:.1f} s: {run.signals} signal(s) released to the runner")
        if run.status != "succeeded":
            raise QdibkrError(f"the strategy notebook failed ({run.error}); see {run.output_path}")
        signals = wait_for_runner(store, run.id)
        section("signals", [{k: getattr(s, k) for k in SIGNAL_COLUMNS} for s in signals])
        if not signals:
            print("\n(today every symbol's fast average is below its slow one: the strategy wants no position)")
        with Broker(Settings(port=gateway.port, client_id=CLIENT_IDS["cli"])) as ibkr:
            section("positions (the IB account)", ibkr.positions())
            section(f"positions of strategy {run.strategy} (the queue's record of its fills)",
                    store.positions(run.strategy))
            section("trades", ibkr.trades().drop(columns=["exec_id", "account"]))
        print(f"\nexecuted notebook: {run.output_path}")
    finally:
        stop_runner()
        store.close()
        gateway.stop()
    return 0


def start_in_thread(runner: Runner):
    """Run ``runner`` in a thread with its own event loop; returns the function that stops it."""
    loop = asyncio.new_event_loop()

    def serve():
        asyncio.set_event_loop(loop)  # ib_insync looks its loop up as the thread's current one
        loop.run_until_complete(runner.run())
        loop.close()

    thread = threading.Thread(target=serve, name="runner", daemon=True)
    thread.start()

    def stop():
        loop.call_soon_threadsafe(runner.stop)
        thread.join(10)

    return stop


def wait_for_runner(store: Store, run_id: str) -> list:
    """The run's signals once the runner has finished each (filled, rejected or cancelled)."""
    deadline = time.monotonic() + RUNNER_WAIT
    while True:
        signals = store.signals(run_id=run_id)
        if all(s.is_final for s in signals):
            return signals
        if time.monotonic() > deadline:
            raise QdibkrError(f"the runner has not finished the run's signals within {RUNNER_WAIT:g} s: "
                              + ", ".join(f"{s.signal_type} {s.symbol} {s.status}" for s in signals))
        time.sleep(0.05)
