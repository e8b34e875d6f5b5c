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

A run never holds on for ever: it may take ``timeout`` seconds (``RUN_TIMEOUT``
unless told), then its kernel is killed and it is recorded ``failed``, saying
so. ``stop_runs`` stops the runs under way in this process the same way (the
commands call it on SIGINT and SIGTERM, see ``stop_on_signals``). A run left
``running`` by a process that was killed outright (SIGKILL, a crash) is
recorded ``failed``, its staged signals cancelled, when the next run starts
(``Store.fail_orphaned_runs``): each run records the process that owns it.
"""

import ast
import datetime as dt
import json
import logging
import os
import signal
import threading
from concurrent.futures import Future
from contextlib import contextmanager
from pathlib import Path

from .config import RUN_TIMEOUT, config_file
from .errors import InputError
from .kernels import KERNEL, Kernel, KernelDied
from .signals import RUN_ID_ENV, default_store, wake_runner
from .store import Run, Store

log = logging.getLogger("qdibkr.runs")

RUN_KEY_ENV = "QDIBKR_RUN_KEY"
RUNS_ENV = "QDIBKR_RUNS"
# Seconds a command that was stopped waits for its run's thread to wind down (its kernel killed,
# the run recorded already) before it exits anyway.
STOP_WAIT = 5.0


class Stopped(KeyboardInterrupt):
    """SIGINT (Ctrl-C) or SIGTERM arrived: the command is to stop (see ``stop_on_signals``). A
    KeyboardInterrupt, so that whatever handles Ctrl-C handles SIGTERM alike."""

    def __init__(self, signum: int):
        self.signum = signum
        self.name = signal.Signals(signum).name
        super().__init__(f"stopped by {self.name}")


class RunStopped(Exception):
    """The run was stopped (timed out, or stopped by ``stop_runs``) before its kernel took it."""


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


def check_parameters(notebook, parameters: dict):
    """Refuse a parameter the notebook's ``parameters`` cell does not define: papermill would only log
    it, and the run would go on with the default (``-p modee live`` would run in research mode).
    ``qdibkr run`` checks its ``-p`` parameters with it, a schedule file its ``[parameters]``."""
    import papermill

    known = papermill.inspect_notebook(str(notebook))
    unknown = sorted(set(parameters) - set(known))
    if known and unknown:  # a notebook without a parameters cell takes whatever it is given
        raise InputError("parameter", f"{notebook} has no parameter {', '.join(unknown)}; "
                                      f"its parameters are {', '.join(known)}")


def timeout_error(timeout: float) -> str:
    """What a run that timed out is recorded failing with."""
    return (f"timed out: the run took more than {timeout:g} s, its limit; raise it with "
            f"`qdibkr run --timeout SECONDS`, `timeout = \"20m\"` in the schedule file or "
            f"run_notebook(timeout=...) (0: no limit)")


class _Execution:
    """A run under way in this process, which another thread may stop (``stop``): its kernel is
    killed and the run recorded failed at once; the thread running it then finds its kernel dead."""

    def __init__(self, store: Store, job: str | None):
        self.store = store
        self.job = job
        self.run: Run | None = None
        self.output = ""
        self.kernel: Kernel | None = None
        self.reason: str | None = None  # why it was stopped
        self.done = False  # its notebook has ended: too late to stop it
        self.recorded = threading.Event()  # its end is recorded
        self._lock = threading.Lock()

    def started(self, run: Run, output: Path):
        with self._lock:
            self.run, self.output = run, str(output)
        if self.reason:  # stopped before its record existed
            self._record_stop()

    def attach(self, kernel: Kernel):
        """The run's kernel, now that it has one; killed at once if the run was stopped meanwhile."""
        with self._lock:
            self.kernel = kernel
            if self.reason:
                kernel.kill()
                raise RunStopped(self.reason)

    def stop(self, reason: str) -> bool:
        """Stop the run: kill its kernel, then record it failed with ``reason``, its staged signals
        cancelled. False if it had ended, or been stopped, already."""
        with self._lock:
            if self.done or self.reason:
                return False
            self.reason = reason
            if self.kernel:
                self.kernel.kill()  # first: a kernel still going could stage a signal after the record
        self._record_stop()
        return True

    def _record_stop(self):
        with self._lock:
            run = self.run
        if run:
            self.store.fail_run(run.id, self.reason, output_path=self.output)
            log.warning("run %s of %s stopped: %s", run.id[:8], run.notebook, self.reason)

    def finish(self) -> bool:
        """The notebook ended; False if the run was stopped first (the stop holds)."""
        with self._lock:
            self.done = not self.reason
            return self.done


_under_way: set[_Execution] = set()  # the runs in progress in this process
_under_way_lock = threading.Lock()
_stopping: str | None = None  # set once a signal stops this process: no run starts after it


def stop_runs(reason: str, *, jobs=None, wait: float = STOP_WAIT) -> list[Run]:
    """Stop the runs under way in this process (of ``jobs`` only, if given): kill their kernels,
    record them failed with ``reason`` and cancel their staged signals. Returns their records. A run
    whose notebook had just ended is not stopped; its end is awaited up to ``wait`` seconds."""
    with _under_way_lock:
        executions = [e for e in _under_way if jobs is None or e.job in jobs]
    stopped, ending = [], []
    for execution in executions:
        (stopped if execution.stop(reason) else ending).append(execution)
    for execution in ending:
        execution.recorded.wait(wait)
    return [execution.store.run(execution.run.id) for execution in stopped if execution.run]


@contextmanager
def stop_on_signals():
    """For a command's main thread: SIGINT (Ctrl-C) and SIGTERM raise ``Stopped`` in it, once, and
    from then until the block ends no run starts in this process (one starting is stopped at once).
    The command then calls ``stop_runs`` and exits; the block restores the previous handlers."""
    def handler(signum, frame):
        global _stopping
        if _stopping:  # a second signal while the first one's cleanup runs: let it finish
            return
        _stopping = f"stopped by {signal.Signals(signum).name}"
        raise Stopped(signum)

    global _stopping
    previous = {signum: signal.signal(signum, handler) for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for signum, action in previous.items():
            signal.signal(signum, action)
        _stopping = None


def run_until_stopped(function, *args, **kwargs):
    """``function(*args, **kwargs)`` (``run_notebook``, or what calls it) for a command: run in a
    thread while this, the main, thread waits for it within ``stop_on_signals``. On SIGINT or
    SIGTERM the runs under way are stopped (``stop_runs``: their kernels killed, recorded failed,
    their staged signals cancelled) and ``Stopped`` raised once that is recorded."""
    result = Future()

    def work():
        try:
            result.set_result(function(*args, **kwargs))
        except BaseException as e:
            result.set_exception(e)

    thread = threading.Thread(target=work, name="notebook-run", daemon=True)
    thread.start()
    try:
        return result.result()
    except Stopped as stopped:
        stop_runs(str(stopped))
        thread.join(STOP_WAIT)  # its kernel is dead; let it close its channels and files
        raise


def run_notebook(notebook, parameters: dict | None = None, *, job: str | None = None,
                 slot: dt.datetime | None = None, store: Store | None = None, output_dir=None,
                 timeout: float | None = None, env: dict | None = None, kernel: Kernel | None = None) -> Run:
    """Execute ``notebook`` with ``parameters`` (see the module's notes) and return its record.

    A failing notebook does not raise: the record says ``failed`` and why. ``timeout`` bounds the
    whole run, in seconds (None: ``RUN_TIMEOUT``; 0: no limit); a run that takes longer has its
    kernel killed and is recorded failed. ``env`` adds variables to the kernel's environment.
    ``kernel``: one started ahead for this notebook (see ``kernels``), else a fresh one starts
    now; either serves this run only. Runs left ``running`` by killed processes are recorded failed
    first (``Store.fail_orphaned_runs``)."""
    notebook = Path(notebook)
    if not notebook.is_file():
        raise InputError("notebook", f"{notebook} is not a notebook file")
    parameters = dict(parameters or {})
    store = store or default_store()
    timeout = RUN_TIMEOUT if timeout is None else float(timeout)
    execution = _Execution(store, job)
    with _under_way_lock:  # first, so that stop_runs stops this run whatever it is doing
        _under_way.add(execution)
        if _stopping:
            execution.stop(_stopping)
    watchdog = None
    try:
        store.fail_orphaned_runs()
        strategy = strategy_of(notebook, parameters)
        run = store.start_run(job=job, slot=slot.timestamp() if slot else None, notebook=str(notebook),
                              strategy=strategy, parameters=json.dumps(parameters, default=str))
        stamp = dt.datetime.fromtimestamp(run.started_at, dt.timezone.utc)
        output = Path(output_dir or runs_dir()) / strategy / f"{stamp:%Y%m%dT%H%M%SZ}-{run.id[:8]}.ipynb"
        execution.started(run, output)
        if timeout > 0:
            watchdog = threading.Timer(timeout, execution.stop, args=(timeout_error(timeout),))
            watchdog.daemon = True
            watchdog.start()
        output.parent.mkdir(parents=True, exist_ok=True)
        env = {**(env or {}), RUN_ID_ENV: run.id, "QDIBKR_DB": store.location}
        if job and slot:
            env[RUN_KEY_ENV] = run_key(job, slot)
        try:
            if execution.reason:
                raise RunStopped(execution.reason)
            kernel = _kernel_for_run(kernel, notebook, env)
            execution.attach(kernel)
            _execute(notebook, output, parameters, kernel)
        except BaseException as e:  # the notebook's error, a dead kernel, a timeout, Ctrl-C: the run failed
            failed = store.fail_run(run.id, execution.reason or _describe(e), output_path=str(output))
            execution.recorded.set()
            if not isinstance(e, Exception):
                raise
            return failed
        if not execution.finish():  # stopped as its last cell ended: the stop holds
            return store.fail_run(run.id, execution.reason, output_path=str(output))
        succeeded = store.succeed_run(run.id, output_path=str(output))
        execution.recorded.set()
        wake_runner(store)
        return succeeded
    finally:  # after the record: the runner has the signals while the kernel winds down
        execution.recorded.set()
        if watchdog:
            watchdog.cancel()
        with _under_way_lock:
            _under_way.discard(execution)
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


def _execute(notebook: Path, output: Path, parameters: dict, kernel: Kernel):
    import papermill

    papermill.execute_notebook(
        str(notebook), str(output), parameters=parameters, kernel_name=KERNEL, language="python",
        progress_bar=False, km=kernel.manager)


def _describe(error: Exception) -> str:
    """One line: the notebook's exception and the cell it came from, or what else went wrong."""
    if hasattr(error, "ename"):  # papermill's PapermillExecutionError
        return f"{error.ename}: {error.evalue} (cell [{error.exec_count}])"
    if isinstance(error, Stopped):
        return str(error)
    if isinstance(error, KeyboardInterrupt):
        return "interrupted (KeyboardInterrupt, Ctrl-C)"
    return f"{type(error).__name__}: {error}".strip(": ")

