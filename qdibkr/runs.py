"""Notebook runs: a notebook executed by papermill with parameters, kept, recorded, and its signals
sent to the runner only if the whole notebook succeeded.

::

    from qdibkr.runs import run_notebook
    run = run_notebook("notebooks/us_sma.ipynb", {"mode": "live"})
    run.status, run.duration, run.output_path, run.signals

A run:

1. is recorded ``running`` in the queue database (table ``runs``);
2. executes in a fresh ``python3`` kernel (started now, or ahead of a scheduled
   slot: see ``kernels``), in the notebook's folder, whose environment names
   the run (``QDIBKR_RUN_ID``: whatever it emits is ``staged``), the queue
   (``QDIBKR_DB``) and, for a scheduled run, the slot (``QDIBKR_RUN_KEY``, from
   which ``signal_key`` derives idempotency keys: job + slot + symbol, so a slot
   run twice emits nothing twice);
3. is kept executed under ``runs/<strategy>/<UTC time>-<run id>.ipynb``
   (``QDIBKR_RUNS`` or the config file's ``[runs] dir`` for another folder);
   papermill saves it after every cell, so a failed run shows where it stopped;
4. ends ``succeeded``, its staged signals released to the runner (woken at
   once), or ``failed`` with the error, its signals discarded: a notebook that
   fails half way leaves no half-done rebalance.
"""

import ast
import datetime as dt
import json
import os
from pathlib import Path

from .config import config_file
from .errors import InputError
from .kernels import KERNEL, Kernel, KernelDied
from .signals import RUN_ID_ENV, default_store, wake_runner
from .store import Run, Store

RUN_KEY_ENV = "QDIBKR_RUN_KEY"
RUNS_ENV = "QDIBKR_RUNS"


def runs_dir() -> Path:
    """Where executed notebooks are kept: QDIBKR_RUNS, the config file's ``[runs] dir``, else ./runs."""
    return Path(os.environ.get(RUNS_ENV) or config_file().get("runs", {}).get("dir") or "runs").expanduser()


def run_key(job: str, slot: dt.datetime) -> str:
    """A schedule slot's name: the job and the slot's UTC minute."""
    return f"{job}@{slot.astimezone(dt.timezone.utc):%Y-%m-%dT%H:%MZ}"


def signal_key(symbol: str) -> str | None:
    """The idempotency key for a symbol's signal in this run: job + slot + symbol. None outside a
    scheduled run (by hand, every run is new)."""
    slot = os.environ.get(RUN_KEY_ENV)
    return f"{slot}:{symbol}" if slot else None


def strategy_of(notebook: Path, parameters: dict) -> str:
    """The strategy a run trades: its ``strategy`` parameter, else the default in the notebook's
    ``parameters`` cell, else the notebook's name."""
    if parameters.get("strategy"):
        return str(parameters["strategy"])
    import nbformat

    for cell in nbformat.read(notebook, as_version=4).cells:
        if "parameters" not in cell.metadata.get("tags", []):
            continue
        for node in ast.parse(cell.source).body:
            if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "strategy" for t in node.targets):
                try:
                    return str(ast.literal_eval(node.value))
                except ValueError:
                    break
    return notebook.stem


def run_notebook(notebook, parameters: dict | None = None, *, job: str | None = None,
                 slot: dt.datetime | None = None, store: Store | None = None, output_dir=None,
                 timeout: float | None = None, env: dict | None = None, kernel: Kernel | None = None) -> Run:
    """Execute ``notebook`` with ``parameters`` (see the module's notes) and return its record.

    A failing notebook does not raise: the record says ``failed`` and why. ``timeout`` bounds
    each cell, in seconds (None: no limit); ``env`` adds variables to the kernel's environment.
    ``kernel``: one started ahead for this notebook (see ``kernels``), else a fresh one starts
    now; either serves this run only."""
    notebook = Path(notebook)
    if not notebook.is_file():
        raise InputError("notebook", f"{notebook} is not a notebook file")
    parameters = dict(parameters or {})
    store = store or default_store()
    strategy = strategy_of(notebook, parameters)
    run = store.start_run(job=job, slot=slot.timestamp() if slot else None, notebook=str(notebook),
                          strategy=strategy, parameters=json.dumps(parameters, default=str))
    stamp = dt.datetime.fromtimestamp(run.started_at, dt.timezone.utc)
    output = Path(output_dir or runs_dir()) / strategy / f"{stamp:%Y%m%dT%H%M%SZ}-{run.id[:8]}.ipynb"
    output.parent.mkdir(parents=True, exist_ok=True)
    env = {**(env or {}), RUN_ID_ENV: run.id, "QDIBKR_DB": str(store.path.resolve())}
    if job and slot:
        env[RUN_KEY_ENV] = run_key(job, slot)
    try:
        kernel = _kernel_for_run(kernel, notebook, env)
        _execute(notebook, output, parameters, kernel, timeout)
    except BaseException as e:  # the notebook's error, a dead kernel, a timeout, Ctrl-C: the run failed
        error = _describe(e)
        store.discard_run(run.id, f"notebook run {run.id[:8]} failed: {error}")
        failed = store.finish_run(run.id, "failed", output_path=str(output), error=error)
        if not isinstance(e, Exception):
            raise
        return failed
    else:
        released = store.release_run(run.id)
        wake_runner(store)
        return store.finish_run(run.id, "succeeded", output_path=str(output), signals=released)
    finally:  # after the record: the runner has the signals while the kernel winds down
        if kernel:
            kernel.shutdown()


def _kernel_for_run(kernel: Kernel | None, notebook: Path, env: dict) -> Kernel:
    """The kernel started ahead, told whose run this is; a fresh one if there is none or it died
    while it waited."""
    if kernel:
        try:
            kernel.set_environment(env)
            return kernel
        except KernelDied:
            kernel.shutdown()
    return Kernel.start(notebook, env)


def _execute(notebook: Path, output: Path, parameters: dict, kernel: Kernel, timeout: float | None):
    import papermill

    papermill.execute_notebook(
        str(notebook), str(output), parameters=parameters, kernel_name=KERNEL, language="python",
        progress_bar=False, execution_timeout=timeout, km=kernel.manager)


def _describe(error: Exception) -> str:
    """One line: the notebook's exception and the cell it came from, or what else went wrong."""
    if hasattr(error, "ename"):  # papermill's PapermillExecutionError
        return f"{error.ename}: {error.evalue} (cell [{error.exec_count}])"
    return f"{type(error).__name__}: {error}".strip(": ")

