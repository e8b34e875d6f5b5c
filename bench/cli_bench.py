"""The queue commands against a bare sqlite3 script doing the same work: process time, in one run.

Two pairs, each command its own fresh process on the same queue file:

- ``qdibkr queue`` (the latest 50 signals, as a table) against a ``python -c`` script that runs the
  same query and prints the rows;
- ``qdibkr signal open_long AAPL 1 --strategy b`` (checked, then queued) against a script that inserts
  the same row in one transaction, committed as the queue commits (WAL, synchronous=NORMAL).

Process time is the user + system CPU seconds of the finished child, as the operating system counts
them. The two commands of a pair run in turn, A B A B ..., and the ratio is taken pair by pair: a drift
in the machine's speed moves both alike. Bytecode is cached, as in any installed package (in a
temporary PYTHONPYCACHEPREFIX, filled by the warm-up runs, so nothing is written into the tree), and
there is no config file. Target (issue 13): each median ratio within 2.

    python bench/cli_bench.py [--runs 30]

Prints a table and writes the figures to bench/results/cli_bench.json.
"""

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from stats import spread  # bench/stats.py

RESULTS = Path(__file__).parent / "results" / "cli_bench.json"
WARMUP = 2  # uncounted runs of each command: bytecode compiled and cached, files in the page cache

BARE_QUEUE = """
import sqlite3, sys
rows = sqlite3.connect(sys.argv[1]).execute("SELECT * FROM signals ORDER BY seq DESC LIMIT 50").fetchall()
for row in reversed(rows):
    print(*row)
"""
BARE_SIGNAL = """
import sqlite3, sys, time, uuid
db = sqlite3.connect(sys.argv[1], isolation_level=None)
db.execute("PRAGMA synchronous=NORMAL")
db.execute("BEGIN IMMEDIATE")
now, id = time.time(), uuid.uuid4().hex
db.execute("INSERT INTO signals (id, created_at, updated_at, strategy, symbol, market, signal_type, quantity, "
           "order_type, tif, status) VALUES (?, ?, ?, 'b', 'AAPL', 'USStock', 'open_long', 1, 'MKT', 'DAY', 'pending')",
           (id, now, now))
db.execute("COMMIT")
print("signal", id[:8])
"""


def process_time(command: list[str], env: dict) -> tuple[float, float]:
    """CPU seconds (user + system) and wall seconds of one run of ``command``, from start to exit."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    done = subprocess.run(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode:
        sys.exit(f"{' '.join(command)} failed: {done.stderr}")
    return after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime, wall


def pairs(qdibkr: list[str], bare: list[str], env: dict, runs: int) -> dict:
    """``runs`` pairs of qdibkr (A) and the bare script (B) in turn: each one's process time in ms
    and the ratios A/B of CPU and wall time, pair by pair, as median, min and max."""
    for _ in range(WARMUP):
        process_time(qdibkr, env)
        process_time(bare, env)
    measured = [(process_time(qdibkr, env), process_time(bare, env)) for _ in range(runs)]
    return {"qdibkr_cpu_ms": spread([1e3 * a[0] for a, _ in measured]),
            "bare_cpu_ms": spread([1e3 * b[0] for _, b in measured]),
            "cpu_ratio": spread([a[0] / b[0] for a, b in measured]),
            "wall_ratio": spread([a[1] / b[1] for a, b in measured])}


def main(runs: int) -> dict:
    qdibkr = shutil.which("qdibkr") or sys.exit("install qdibkr first: pip install -e .")
    workdir = tempfile.mkdtemp(prefix="qdibkr-bench-cli-")
    db = os.path.join(workdir, "queue.sqlite")
    env = {**os.environ, "QDIBKR_DB": db, "QDIBKR_CONFIG": os.path.join(workdir, "none.toml"),
           "PYTHONPYCACHEPREFIX": os.path.join(workdir, "pycache")}
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    try:
        process_time([qdibkr, "queue"], env)  # creates the queue
        for _ in range(50):  # a full page for `qdibkr queue`
            process_time([sys.executable, "-c", BARE_SIGNAL, db], env)
        return {"runs": runs,
                "queue": pairs([qdibkr, "queue"], [sys.executable, "-c", BARE_QUEUE, db], env, runs),
                "signal": pairs([qdibkr, "signal", "open_long", "AAPL", "1", "--strategy", "b"],
                                [sys.executable, "-c", BARE_SIGNAL, db], env, runs)}
    finally:
        shutil.rmtree(workdir)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=30, help="counted pairs of each command (default 30)")
    figures = main(parser.parse_args().runs)
    print(f"{'command':8s} {'figure':14s} {'median':>8s} {'min':>8s} {'max':>8s}   ({figures['runs']} pairs)")
    for command in ("queue", "signal"):
        for name, values in figures[command].items():
            print(f"{command:8s} {name:14s} " + " ".join(f"{values[k]:8.2f}" for k in ("median", "min", "max")))
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(figures, indent=2))
    print(f"written to {RESULTS}")
