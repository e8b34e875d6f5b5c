"""Notebook runs through papermill: kept, recorded, and their signals released only on success."""

import datetime as dt
import gc
import json
import os
import signal
import threading
from pathlib import Path

import pytest

from qdibkr.cli import main
from qdibkr.kernels import Kernel
from qdibkr.runs import run_notebook
from tests.notebook_files import outputs, write_notebook

EMIT = """
from qdibkr import emit
from qdibkr.runs import signal_key
for symbol, quantity in orders:
    emit("open_long", symbol, quantity, strategy=strategy, key=signal_key(symbol))
"""


@pytest.fixture
def emitter(tmp_path) -> Path:
    """A notebook that emits its orders, then waits for a line on ``gate`` (if given) and fails if told to."""
    return write_notebook(tmp_path / "emitter.ipynb",
                          'strategy = "nb"\norders = [["AAPL", 5], ["MSFT", 3]]\ngate = ""\nfail = False',
                          EMIT, "if gate:\n    open(gate).read()",
                          "if fail:\n    raise RuntimeError('half way')")


def test_a_run_is_kept_and_recorded(store, emitter, tmp_path):
    run = run_notebook(emitter, {"orders": [["SPY", 2]], "strategy": "index"}, store=store,
                       output_dir=tmp_path / "runs")
    assert run.status == "succeeded" and run.error == "" and run.job is None
    assert json.loads(run.parameters) == {"orders": [["SPY", 2]], "strategy": "index"}
    assert 0 < run.duration < 60 and store.runs() == [run]
    output = Path(run.output_path)
    assert output.parent == tmp_path / "runs" / "index" and output.name.endswith(f"-{run.id[:8]}.ipynb")
    assert outputs(output, "error") == []
    [signal] = store.signals(run_id=run.id)
    assert (signal.symbol, signal.quantity, signal.status, signal.idempotency_key) == ("SPY", 2, "pending", None)
    assert run.signals == 1


def test_signals_stay_staged_until_the_run_succeeds(store, emitter, tmp_path):
    gate = tmp_path / "gate"
    os.mkfifo(gate)
    result = []
    thread = threading.Thread(target=lambda: result.append(run_notebook(
        emitter, {"gate": str(gate)}, store=store, output_dir=tmp_path / "runs")))
    thread.start()
    with open(gate, "w") as writer:  # opens once the notebook, past its emits, waits to read
        staged = store.signals()
        assert [(s.symbol, s.status) for s in staged] == [("AAPL", "staged"), ("MSFT", "staged")]
        assert store.open_signals()[0] == []  # nothing a runner would send
        writer.write("go\n")
    thread.join(60)
    [run] = result
    assert run.status == "succeeded" and run.signals == 2
    assert [s.status for s in store.signals()] == ["pending", "pending"]


def test_a_failed_run_releases_no_signals(store, emitter, tmp_path):
    run = run_notebook(emitter, {"fail": True}, store=store, output_dir=tmp_path / "runs")
    assert run.status == "failed" and run.signals == 0
    assert run.error.startswith("RuntimeError: half way (cell [")
    assert [s.status for s in store.signals()] == ["cancelled", "cancelled"]
    assert all(f"notebook run {run.id[:8]} failed: RuntimeError: half way" in s.reason for s in store.signals())
    assert store.open_signals()[0] == []
    assert outputs(run.output_path, "error")[0]["evalue"] == "half way"  # kept, showing where it stopped


def test_a_slot_run_again_emits_nothing_twice(store_on_each_backend, emitter, tmp_path):
    """On a SQLite queue and on a PostgreSQL one (the notebook's kernel is told where by QDIBKR_DB)."""
    store = store_on_each_backend
    slot = dt.datetime(2026, 11, 25, 15, 50, tzinfo=dt.timezone.utc)
    failed = run_notebook(emitter, {"fail": True}, job="sma", slot=slot, store=store, output_dir=tmp_path / "runs")
    first = run_notebook(emitter, {}, job="sma", slot=slot, store=store, output_dir=tmp_path / "runs")
    again = run_notebook(emitter, {}, job="sma", slot=slot, store=store, output_dir=tmp_path / "runs")
    assert (failed.status, first.status, again.status) == ("failed", "succeeded", "succeeded")
    assert (first.signals, again.signals) == (2, 0)  # a failed run leaves the slot's keys free
    pending = store.signals(statuses=["pending"])
    assert [s.idempotency_key for s in pending] == ["sma@2026-11-25T15:50Z:AAPL", "sma@2026-11-25T15:50Z:MSFT"]
    assert all(s.run_id == first.id for s in pending)
    later = run_notebook(emitter, {}, job="sma", slot=slot + dt.timedelta(days=1), store=store,
                         output_dir=tmp_path / "runs")
    assert later.signals == 2


def test_qdibkr_run(store_on_each_backend, emitter, tmp_path, capsys):
    """On a SQLite queue and on a PostgreSQL one (the notebook's kernel is told where by QDIBKR_DB)."""
    store = store_on_each_backend
    args = ["run", str(emitter), "--db", str(store.location), "--runs", str(tmp_path / "runs"), "-p", "strategy", "cli",
            "-p", "orders", '[["IWM", 4]]']
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "(cli): succeeded in" in out and "1 signal(s) released to the runner" in out
    assert [(s.strategy, s.symbol, s.quantity) for s in store.signals()] == [("cli", "IWM", 4)]
    assert main(args[:6] + ["-p", "fail", "true"]) == 1
    captured = capsys.readouterr()
    assert ": failed in" in captured.out and "none of its signals will trade: RuntimeError: half way" in captured.err


def test_qdibkr_run_refuses_a_parameter_the_notebook_lacks(store, emitter, tmp_path, capsys):
    """A misspelt parameter must not run the notebook with the default instead (papermill only logs it)."""
    args = ["run", str(emitter), "--db", str(store.location), "--runs", str(tmp_path / "runs"), "-p", "strategi", "x"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "has no parameter strategi; its parameters are strategy, orders, gate, fail" in err
    assert store.runs() == [] and not (tmp_path / "runs").exists()  # nothing ran, nothing was recorded


# ------------------------------------------------------------------ kernels started ahead
@pytest.fixture
def probe(tmp_path) -> Path:
    """A notebook that emits an order and prints whether ``colorsys`` (imported by its last cell, and
    by nothing else) was loaded before that cell and whether its name was bound, and the kernel's pid."""
    return write_notebook(tmp_path / "probe.ipynb", 'strategy = "nb"\norders = [["AAPL", 5]]', EMIT,
                          "import os, sys\nprint('colorsys' in sys.modules, 'colorsys' in globals(), os.getpid())",
                          "import colorsys")


def printed(path) -> list[str]:
    return [o["text"].split() for o in outputs(path, "stream")][-1]


def test_a_kernel_started_ahead_has_the_notebooks_modules_and_an_empty_namespace(store, probe, tmp_path):
    kernel = Kernel.start(probe, preload=True)
    pid = kernel.manager.provisioner.pid
    run = run_notebook(probe, {}, store=store, output_dir=tmp_path / "runs", kernel=kernel)
    assert run.status == "succeeded", run.error
    assert printed(run.output_path) == ["True", "False", str(pid)]  # loaded, yet not bound: the run's own
    [signal] = store.signals(run_id=run.id)  # the kernel learnt its run id at the run, not at its start
    assert signal.status == "pending" and run.signals == 1
    assert not kernel.alive()  # a kernel serves one run

    cold = run_notebook(probe, {}, store=store, output_dir=tmp_path / "runs")
    assert printed(cold.output_path)[:2] == ["False", "False"]


def test_a_kernel_that_died_while_it_waited_is_replaced(store, probe, tmp_path):
    kernel = Kernel.start(probe, preload=True)
    pid = kernel.manager.provisioner.pid
    os.kill(pid, signal.SIGKILL)
    run = run_notebook(probe, {}, store=store, output_dir=tmp_path / "runs", kernel=kernel)
    assert run.status == "succeeded", run.error
    assert printed(run.output_path)[2] != str(pid)
    assert [s.status for s in store.signals(run_id=run.id)] == ["pending"]


def test_runs_leave_no_open_files_behind(store, probe, tmp_path):
    """A scheduler runs notebooks for months: a run must close every socket and file it opened."""
    def open_files() -> int:
        gc.collect()
        return len(os.listdir("/proc/self/fd"))

    run_notebook(probe, {}, store=store, output_dir=tmp_path / "runs")  # what loads once stays open
    before = open_files()
    for _ in range(3):
        warm = run_notebook(probe, {}, store=store, output_dir=tmp_path / "runs",
                            kernel=Kernel.start(probe, preload=True))
        cold = run_notebook(probe, {}, store=store, output_dir=tmp_path / "runs")
        assert (warm.status, cold.status) == ("succeeded", "succeeded")
    assert open_files() - before < 6  # a client left open costs a dozen a run
