"""Kernels for notebook runs: one fresh python3 kernel per run, optionally started ahead ("warm").

A scheduled strategy run spends most of its time before its first line of strategy: starting a
kernel (about half a second) and importing pandas, ib_insync and qdibkr (about as long again). The
scheduler therefore starts the next run's kernel shortly before its slot and imports in it, out of
sight, the modules the notebook imports at the top level of its cells::

    kernel = Kernel.start(notebook, preload=True)   # ahead of the slot
    ...
    kernel.set_environment({"QDIBKR_RUN_ID": run.id})  # at the slot: whose run it is
    papermill.execute_notebook(..., km=kernel.manager)
    kernel.shutdown()                                  # a kernel serves one run

Preloading fills ``sys.modules`` only: the notebook's namespace is still empty when its first cell
runs, so a warm run computes exactly what a cold one does. The run's own environment (run id,
slot) is set at the slot, when it exists; modules read such variables when called, never at import.
"""

import ast
import functools
import json
import os
import queue
import signal
import subprocess
import time
from pathlib import Path

KERNEL = "python3"
STARTUP_TIMEOUT = 60.0  # seconds for a kernel to answer its first request
# Like papermill's own kernels: the kernel keeps its IPython history in memory, not in the
# user's history database (which concurrent runs would otherwise share).
KERNEL_ARGUMENTS = ["--HistoryManager.hist_file=:memory:"]
# Seconds a kernel asked to shut down has to exit before it is terminated (half of it), then killed.
# Its run is over and saved by then. jupyter_client's default is 5: ipykernel 7 now and then fails
# to exit on request (about one shutdown in ten here), which would cost every such run seconds.
SHUTDOWN_WAIT = 1.0


def run_sync(coroutine_function):
    """jupyter_core's ``run_sync``, imported when a kernel is first used: it imports asyncio, which the
    command line's queue commands do without (their parser names this package's run timeout)."""
    from jupyter_core.utils import run_sync as wrap

    return wrap(coroutine_function)


def notebook_imports(notebook: Path) -> list[str]:
    """The absolute modules ``notebook`` imports at the top level of its code cells, in order.
    Cells that are not plain Python (IPython magics) are passed over: their modules load as the
    notebook runs."""
    import nbformat

    modules = []
    for cell in nbformat.read(notebook, as_version=4).cells:
        if cell.cell_type != "code":
            continue
        try:
            body = ast.parse(cell.source).body
        except SyntaxError:
            continue
        for node in body:
            if isinstance(node, ast.Import):
                modules += [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                modules.append(node.module)
    return list(dict.fromkeys(modules))


# Runs in the kernel: defines, uses and deletes one name, so the notebook finds its namespace empty.
# A module that fails to import is left for the notebook's own import to report, in its cell.
_PRELOAD = """
def _qdibkr_preload(modules):
    import importlib
    for module in modules:
        try:
            importlib.import_module(module)
        except Exception:
            pass
_qdibkr_preload({modules})
del _qdibkr_preload
"""


@functools.cache
def _manager_class() -> type:
    """jupyter_client's AsyncKernelManager, remembering the clients it hands out: papermill leaves
    its client's channels open on a kernel it did not start, a dozen file descriptors a run that a
    long-running scheduler would run out of. (Defined on first use: notebooks import this module,
    through ``runs.signal_key``, and need not pay for jupyter_client's manager.)"""
    from jupyter_client.manager import AsyncKernelManager

    class RunKernelManager(AsyncKernelManager):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.clients_made = []

        def client(self, **kwargs):
            client = super().client(**kwargs)
            self.clients_made.append(client)
            return client

    return RunKernelManager


class KernelDied(RuntimeError):
    """The kernel process is gone."""


class Kernel:
    """A python3 kernel for one notebook run, in the notebook's folder. ``manager`` is its
    jupyter_client AsyncKernelManager, to hand to papermill (``km=``)."""

    def __init__(self, manager, notebook: Path):
        self.manager = manager
        self.notebook = notebook

    @classmethod
    def start(cls, notebook, env: dict | None = None, *, preload: bool = False) -> "Kernel":
        """Start a kernel for ``notebook`` with ``env`` added to this process's environment
        (os.environ itself is left alone: other runs may be starting in other threads) and, with
        ``preload``, the notebook's modules imported. The connection to it is encrypted where
        jupyter_client and pyzmq can do so."""
        import zmq

        notebook = Path(notebook).resolve()
        manager = _manager_class()(kernel_name=KERNEL, shutdown_wait_time=SHUTDOWN_WAIT)
        options = {}
        if manager.has_trait("transport_encryption") and zmq.has("curve"):
            options["transport_encryption"] = "auto"
        run_sync(manager.start_kernel)(cwd=str(notebook.parent), env={**os.environ, **(env or {})},
                                       extra_arguments=KERNEL_ARGUMENTS, **options)
        kernel = cls(manager, notebook)
        try:
            if preload:
                kernel.execute(_PRELOAD.format(modules=notebook_imports(notebook)))
        except BaseException:
            kernel.shutdown()
            raise
        return kernel

    def alive(self) -> bool:
        return bool(run_sync(self.manager.is_alive)())

    def set_environment(self, env: dict):
        """Add ``env`` to the kernel's environment. Raises if the kernel did not take it (KernelDied
        if it is gone): a run whose kernel does not know its run id would send its signals straight
        to the runner."""
        self.execute(f"__import__('os').environ.update({json.dumps(env)})")

    def execute(self, code: str):
        """Run ``code`` in the kernel out of sight (no output, no history, no execution count);
        raises RuntimeError with the kernel's error if it failed."""
        reply = run_sync(self._execute)(code)
        if reply["content"]["status"] != "ok":
            content = reply["content"]
            raise RuntimeError(f"the kernel for {self.notebook.name} failed: "
                               f"{content.get('ename', 'error')}: {content.get('evalue', '')}")

    async def _execute(self, code: str) -> dict:
        # Only the reply matters. KernelClient.wait_for_ready would cost a fixed 0.2 s draining the
        # IOPub channel; a request sent before the kernel listens simply waits in zmq's queue.
        client = self.manager.client()
        client.start_channels()
        try:
            request = client.execute(code, silent=True, store_history=False)
            deadline = time.monotonic() + STARTUP_TIMEOUT
            while True:
                try:
                    reply = await client.get_shell_msg(timeout=1.0)
                except queue.Empty:
                    if not await self.manager.is_alive():
                        raise KernelDied(f"the kernel for {self.notebook.name} has died") from None
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"the kernel for {self.notebook.name} did not answer in "
                                           f"{STARTUP_TIMEOUT:g} s") from None
                    continue
                if reply["parent_header"].get("msg_id") == request:
                    return reply
        finally:
            client.stop_channels()

    def kill(self, wait: float = 1.0):
        """Kill the kernel at once, with whatever it started (its process group: jupyter_client
        starts each kernel in a session of its own), from any thread and without its event loop:
        for a run that must stop now (a timeout, SIGTERM). Waits up to ``wait`` seconds for it to
        end; ``shutdown()`` still cleans up after it."""
        provisioner = self.manager.provisioner
        process = getattr(provisioner, "process", None)
        if process is None or process.poll() is not None:
            return
        pgid = getattr(provisioner, "pgid", None)
        try:
            if pgid and pgid != os.getpgrp():  # never this process's own group
                os.killpg(pgid, signal.SIGKILL)
            else:
                process.kill()
        except ProcessLookupError:
            pass
        try:
            process.wait(wait)
        except subprocess.TimeoutExpired:
            pass

    def shutdown(self):
        """Stop the kernel, close every client's channels and remove its connection file. It is
        asked to shut down, not interrupted first as KernelManager.shutdown_kernel does: it is
        idle, its run over."""
        async def stop():
            try:
                if await self.manager.is_alive():
                    await self.manager.request_shutdown()
                    await self.manager.finish_shutdown()
            finally:
                for client in self.manager.clients_made:
                    client.stop_channels()
                await self.manager.cleanup_resources()

        run_sync(stop)()
