"""A scheduled strategy run against a bare papermill run of an empty notebook, in the same environment.

    python bench/notebook_bench.py [--repeat 5]

Strategy run: ``Scheduler.run`` of a job for ``notebooks/us_sma.ipynb`` in live
mode (papermill, 8 symbols' daily bars from the simulated gateway, the latest
targets emitted and released to the queue), each into a fresh queue so that
every run queues its signals. As ``qdibkr schedule`` does, the run's kernel is
started ahead of the slot (``Scheduler.warm``), untimed: the time is from the
slot to the signals queued. For scale, also the same scheduled run with its
kernel started at the slot ("cold kernel"). The bars cache is kept
between runs, as it is between a job's scheduled runs: the first run fetches a
year of bars ("cold"), the later ones only what is new.

Baseline: ``papermill.execute_notebook`` of a notebook with one empty cell, in
a fresh kernel. For scale, also the same strategy notebook run by plain
``papermill.execute_notebook``: what qdibkr's run machinery (run record,
kernel environment, release of the signals) adds is the difference to the
scheduled run.

All run in this process, in turn, after one warm-up each; the figures are
medians. Target: strategy / baseline <= 1.5. Prints the figures and writes
bench/results/notebook_bench.json.
"""

import argparse
import datetime as dt
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import nbformat
import papermill

from qdibkr.schedule import Job, Scheduler
from qdibkr.sim import SimGateway
from qdibkr.store import Store

ROOT = Path(__file__).resolve().parent.parent
TARGET = 1.5
NOTEBOOK = ROOT / "notebooks" / "us_sma.ipynb"


def empty_notebook(path: Path) -> Path:
    nb = nbformat.v4.new_notebook(metadata={"kernelspec": {"name": "python3", "language": "python",
                                                           "display_name": "Python 3 (ipykernel)"}})
    nb.cells = [nbformat.v4.new_code_cell("")]
    nbformat.write(nb, path)
    return path


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5, help="timed runs of each (default 5)")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="qdibkr-notebook-bench-"))
    os.environ["QDIBKR_CACHE"] = str(work / "bars")  # the kernels inherit it
    gateway = SimGateway(port=0, always_open=True).start_in_thread()
    job = Job(name="us_sma", notebook=NOTEBOOK, parameters={"mode": "live", "port": gateway.port},
              timezone="America/New_York", calendar="XNYS", at="close-10m")
    empty = empty_notebook(work / "empty.ipynb")
    slot = dt.datetime.now(dt.timezone.utc).replace(second=0, microsecond=0)

    def strategy_run(i: int, warm: bool = True) -> tuple[float, int]:
        store = Store(work / f"queue-{i}-{warm}.sqlite")
        scheduler = Scheduler([job], store, output_dir=work / "runs")
        at = slot + dt.timedelta(minutes=i)
        if warm:
            scheduler.warm(job, at).result()  # ahead of the slot
        started = time.perf_counter()
        run = scheduler.run(job, at)
        took = time.perf_counter() - started
        assert run.status == "succeeded", run.error
        signals = len(store.signals(statuses=["pending"]))
        store.close()
        return took, signals

    def plain_run(i: int) -> float:
        store = Store(work / f"plain-{i}.sqlite")  # its own queue, through the kernel's environment
        os.environ["QDIBKR_DB"] = str(store.location)
        started = time.perf_counter()
        papermill.execute_notebook(str(NOTEBOOK), str(work / f"plain-{i}.ipynb"), parameters=job.parameters,
                                   kernel_name="python3", progress_bar=False)
        took = time.perf_counter() - started
        del os.environ["QDIBKR_DB"]
        store.close()
        return took

    def baseline_run(i: int) -> float:
        started = time.perf_counter()
        papermill.execute_notebook(str(empty), str(work / f"empty-{i}.ipynb"), kernel_name="python3",
                                   progress_bar=False)
        return time.perf_counter() - started

    try:
        cold, cold_signals = strategy_run(0)
        strategy_run(0, warm=False)
        baseline_run(0)
        plain_run(0)
        strategy, cold_kernel, baseline, plain, queued = [], [], [], [], []
        for i in range(1, args.repeat + 1):
            took, signals = strategy_run(i)
            strategy.append(took)
            queued.append(signals)
            cold_kernel.append(strategy_run(i, warm=False)[0])
            baseline.append(baseline_run(i))
            plain.append(plain_run(i))
    finally:
        gateway.stop()

    result = {
        "strategy_run_s": round(statistics.median(strategy), 3),
        "empty_notebook_s": round(statistics.median(baseline), 3),
        "ratio": round(statistics.median(strategy) / statistics.median(baseline), 2),
        "target_ratio": TARGET,
        "cold_strategy_run_s": round(cold, 3),
        "kernel_started_at_slot_s": round(statistics.median(cold_kernel), 3),
        "kernel_started_at_slot_ratio": round(statistics.median(cold_kernel) / statistics.median(baseline), 2),
        "same_notebook_plain_papermill_s": round(statistics.median(plain), 3),
        "signals_queued_per_run": queued,
        "cold_signals_queued": cold_signals,
        "strategy_runs_s": [round(t, 3) for t in strategy],
        "empty_notebook_runs_s": [round(t, 3) for t in baseline],
        "repeat": args.repeat,
        "python": sys.version.split()[0],
    }
    print(f"scheduled strategy run (us_sma, live, papermill): {result['strategy_run_s']:.2f} s median, warm kernel "
          f"(cold cache: {cold:.2f} s); signals queued per run: {queued}")
    print(f"the same, its kernel started at the slot:         {result['kernel_started_at_slot_s']:.2f} s median "
          f"(ratio {result['kernel_started_at_slot_ratio']:.2f})")
    print(f"papermill run of an empty notebook:               {result['empty_notebook_s']:.2f} s median")
    print(f"the same notebook, plain papermill:               {result['same_notebook_plain_papermill_s']:.2f} s "
          f"median (what the run machinery adds: the difference to the scheduled run)")
    print(f"ratio: {result['ratio']:.2f} (target <= {TARGET})")
    out = ROOT / "bench" / "results" / "notebook_bench.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"written to {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
