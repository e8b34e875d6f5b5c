"""The queue at scale: what an order and an emit cost with 0 to 100,000 finished signals already stored.

Both backends, a SQLite file and PostgreSQL (a throwaway server of
tests/pg.py, over a Unix socket), get one queue per size, filled first, then
measured in turns (A B C A B C ...), so that a slower moment of a shared
machine falls on every size alike and the ratios stay meaningful:

1. the runner: a basket of market orders (strategies x symbols, one order per
   pair, so none waits for another) is emitted, then ``qdibkr runner --once``
   runs as its own process against the simulated gateway in this process.
   CPU per order is the runner process's CPU time (user + system, from
   /proc/<pid>/stat) between the first order's arrival at the gateway and the
   last one's, over the orders; orders/s is the orders over the same window's
   wall time. On PostgreSQL the server's CPU per order is measured too (its
   processes serving the runner's connections), since there the queries' work
   is done outside the runner. The median of ``--rounds`` baskets at each size
   (each basket adds its orders to its queue's finished signals: the empty
   queue holds none at the first round, 400 at the second...), after one
   basket not counted in a queue of its own (the first runner of a bench
   costs more whatever the size). Targets: CPU per order at 100k within 1.3x
   of the empty queue's; orders/s at 100k >= 44 (ib_insync sends at most 45
   messages a second);
2. ``reduce_long`` emits, in this process, by a strategy holding a position
   (so a reduce is allowed; a fill recorded with ``Store.record_fill`` made it)
   on a symbol with many finished signals of its own, one emit into the 1k
   queue, then one into the 100k queue, and so on: the p50 of one ``emit()``
   at each size (the median of ``--emit-rounds`` rounds' p50, each round on
   new connections; on PostgreSQL with this process and the server on two
   different processors, see ``apart``). Each reduce is cancelled after it is timed, so the signals on
   the way stay few at every size. Target: 100k over 1k <= 1.5;
3. emits from 8 processes at once into the largest queue: signals/s in total
   (all signals over the span from the first start to the last end) and the
   p50 of one emit.

How a queue is filled (``preload``): multi-row INSERTs of finished signals,
inside one ``Store.transaction()``, shaped as trading leaves them: round trips
(an open_long and its close_long, both filled, each with its order in the
``orders`` journal and its fill in ``fills``) and limit orders cancelled at IB
(journalled, no fill), over 8 strategies and 12 symbols, on trading days two
days ago and earlier (never today's, which the gate counts). The store's own
bookkeeping is kept as its operations keep it: each signal has the next
revision and the ``revision`` counter ends at the last, the ``status.<s>``
counters and ``order_counts`` grow by what was inserted, and the strategies'
realized P&L is added to ``positions``. The counters are checked against a
count of the tables at the end. A PostgreSQL queue is then ANALYZEd, as
autovacuum would within a minute of such a load (without statistics its
planner scans the table for ``changed_since``: 30 ms at 100k).

    python bench/queue_bench.py [--sizes 0,10000,100000] [--basket 400] [--rounds 3]
                                [--emit-sizes 1000,100000] [--emit-rounds 9] [--backends sqlite,postgresql]

Quicker (about a minute): --sizes 0,10000 --emit-sizes 1000,10000 --basket 200 --rounds 1.

Prints the tables and writes the figures to bench/results/queue_bench.json.
"""

import argparse
import json
import multiprocessing
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from contextlib import ExitStack, contextmanager
from dataclasses import fields
from pathlib import Path

from qdibkr import emit
from qdibkr.model import FINAL
from qdibkr.risk import trading_day
from qdibkr.sim import SimGateway
from qdibkr.store import Fill, Signal, Store
from qdibkr.symbols import parse_symbol
from runner_bench import SYMBOLS, wait_for_orders  # bench/runner_bench.py
from stats import milliseconds  # bench/stats.py

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).parent / "results" / "queue_bench.json"
STRATEGIES = ["sma", "momentum", "pairs", "breakout", "meanrev", "carry", "news", "rebalance"]
SPACING = 200.0  # seconds between preloaded signals: 100,000 of them span about 230 days
ROWS_PER_INSERT = 400  # rows of one multi-row INSERT: 24 columns x 400 stays under both backends' limits
EMITTERS = 8
CONFIG = """[risk]
outside_hours = "send"        # the simulated market never closes
max_orders_per_day = 1000000  # never reached: set so that the gate counts the day's orders, as a desk's does
"""


# ------------------------------------------------------------ filling the queue
def finished(store: Store) -> int:
    """Finished signals in the queue, from its counters."""
    return sum(n for status, n in store.status_counts().items() if status in FINAL)


def preload(store: Store, size: int, rng: random.Random):
    """Add finished signals until the queue holds ``size`` of them (see the module's docstring)."""
    have = finished(store)
    start = time.time() - 2 * 86400 - have * SPACING  # each top-up goes further back
    signals, orders, fills, realized = [], [], [], Counter()
    order_id = 10_000_000 + have
    while len(signals) < size - have:
        strategy, symbol = rng.choice(STRATEGIES), parse_symbol(rng.choice(SYMBOLS))
        quantity, price = rng.randint(1, 50) * 10, round(rng.uniform(20, 500), 2)
        when = start - len(signals) * SPACING
        day = trading_day(symbol.market, when)
        base = dict(strategy=strategy, symbol=symbol.display, market=symbol.market, tif="DAY", run_id=None,
                    source=rng.choice(["notebook", "cli", "api"]), order_quantity=quantity, cancel_requested=0)
        if rng.random() < 0.9 and size - have - len(signals) >= 2:  # a round trip, both filled
            exit_price = round(price * rng.uniform(0.95, 1.06), 2)
            legs = [("open_long", "BUY", price), ("close_long", "SELL", exit_price)]
            realized[strategy, symbol.display] += quantity * (exit_price - price) - 2.0
        else:  # a limit order that never filled, cancelled at IB
            legs = [("open_long", "BUY", None)]
        for signal_type, side, fill_price in legs:
            order_id += 1
            signal_id, when = uuid.uuid4().hex, when + 60
            filled = fill_price is not None
            signals.append(dict(
                base, id=signal_id, signal_type=signal_type, created_at=when, updated_at=when + 2,
                quantity=None if signal_type == "close_long" else quantity,
                order_type="MKT" if filled else "LMT", limit_price=None if filled else round(price * 0.9, 2),
                idempotency_key=f"{strategy}-{day}-{symbol.display}-{signal_type}-{order_id}"
                if rng.random() < 0.5 else None,
                status="filled" if filled else "cancelled", reason="" if filled else "cancelled at IB",
                order_id=order_id, perm_id=order_id + 1_000_000_000, filled=quantity if filled else 0,
                avg_price=fill_price))
            orders.append(dict(sent_at=when, trading_day=day, origin="runner", strategy=strategy,
                               symbol=symbol.display, side=side, quantity=quantity, order_id=order_id,
                               signal_id=signal_id))
            if filled:
                fills.append(dict(exec_id=f"0000e0d5.{order_id:08x}.01.01", signal_id=signal_id, strategy=strategy,
                                  symbol=symbol.display, side=side, shares=quantity, price=fill_price, time=when + 1,
                                  commission=1.0, commission_currency="USD",
                                  realized_pnl=None if side == "BUY" else quantity * (fill_price - price) - 2.0))
    if not signals:
        return
    with store.transaction() as db:
        revision = db.execute("SELECT n FROM counters WHERE name = 'revision'").fetchone()["n"]
        for rev, signal in enumerate(signals, revision + 1):
            signal["rev"] = rev
        insert(db, "signals", [f.name for f in fields(Signal) if f.name != "seq"] + ["rev"], signals)
        insert(db, "orders", list(orders[0]), orders)
        insert(db, "fills", [f.name for f in fields(Fill)], fills)
        Store._count(db, "revision", len(signals))  # the store's own counter upsert, not a copy of it
        for status, n in Counter(s["status"] for s in signals).items():
            Store._count(db, f"status.{status}", n)
        for (day, strategy), n in Counter((o["trading_day"], o["strategy"]) for o in orders).items():
            db.execute("INSERT INTO order_counts VALUES (?, ?, ?) ON CONFLICT (trading_day, strategy) "
                       "DO UPDATE SET n = order_counts.n + excluded.n", (day, strategy, n))
        for (strategy, symbol), pnl in realized.items():
            db.execute("INSERT INTO positions VALUES (?, ?, 'USD', 0, 0.0, ?) ON CONFLICT (strategy, symbol) "
                       "DO UPDATE SET realized_pnl = positions.realized_pnl + excluded.realized_pnl",
                       (strategy, symbol, pnl))


def insert(db, table: str, columns: list[str], rows: list[dict]):
    """``rows`` into ``table``, ROWS_PER_INSERT to a statement."""
    row = f"({', '.join('?' * len(columns))})"
    for first in range(0, len(rows), ROWS_PER_INSERT):
        part = rows[first:first + ROWS_PER_INSERT]
        db.execute(f"INSERT INTO {table} ({', '.join(columns)}) VALUES {', '.join([row] * len(part))}",
                   [r[c] for r in part for c in columns])


def check_counters(store: Store):
    """The counters the store keeps agree with a count of the tables (the preload kept them so)."""
    def count(db):
        return ({r["status"]: r["n"] for r in db.execute("SELECT status, COUNT(*) AS n FROM signals GROUP BY status")},
                db.execute("SELECT MAX(rev) AS n FROM signals").fetchone()["n"],
                db.execute("SELECT n FROM counters WHERE name = 'revision'").fetchone()["n"],
                db.execute("SELECT COUNT(*) AS n FROM orders").fetchone()["n"],
                db.execute("SELECT SUM(n) AS n FROM order_counts").fetchone()["n"])
    by_status, last_revision, revision, orders, counted_orders = store.read(count)
    assert store.status_counts() == by_status, (store.status_counts(), by_status)
    assert revision >= last_revision, (revision, last_revision)
    assert counted_orders == orders, (counted_orders, orders)


# ------------------------------------------------------------ 1. the runner
def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process ``pid`` so far (/proc/<pid>/stat, in clock ticks)."""
    stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(stat[11]) + int(stat[12])) / os.sysconf("SC_CLK_TCK")


def runner_pass(store: Store, basket: int, workdir: Path) -> dict:
    """Emit a basket, run ``qdibkr runner --once`` on it; its CPU per order and orders/s while it sends."""
    qdibkr = shutil.which("qdibkr") or sys.exit("install qdibkr first: pip install -e .")
    config = workdir / "config.toml"
    config.write_text(CONFIG)
    env = {**os.environ, "QDIBKR_CONFIG": str(config), "QDIBKR_DB": store.location}
    refs = [emit("open_long", SYMBOLS[i % len(SYMBOLS)], 1 + i % 5, strategy=f"basket{i // len(SYMBOLS)}",
                 store=store).order_ref for i in range(basket)]
    gateway = SimGateway(port=0, always_open=True).start_in_thread()
    log = workdir / "runner.log"  # a file, not a pipe: the runner logs every signal's change, and must never wait
    with open(log, "w") as stderr:
        runner = subprocess.Popen([qdibkr, "runner", "--once", "--port", str(gateway.port)], env=env,
                                  stdout=subprocess.DEVNULL, stderr=stderr)
    try:
        wait_for_orders(gateway, 1)
        cpu_first = cpu_seconds(runner.pid)
        serving = server_processes(store)
        server_first = sum(map(cpu_seconds, serving))
        wait_for_orders(gateway, basket)
        cpu_last = cpu_seconds(runner.pid)
        server_last = sum(map(cpu_seconds, serving))
        assert runner.wait(timeout=120) == 0, log.read_text()[-2000:]
        arrivals = sorted(o.placed_at for o in gateway.broker.orders.values())
    finally:
        runner.kill()
        runner.wait()
        gateway.stop()
    assert len(arrivals) == basket, f"{len(arrivals)} orders reached the gateway, not {basket}"
    assert set(refs) <= {s.order_ref for s in store.signals(statuses=("filled",), limit=basket)}, \
        "the basket is not all filled"
    return {"cpu_ms_per_order": 1e3 * (cpu_last - cpu_first) / basket,
            "server_cpu_ms_per_order": 1e3 * (server_last - server_first) / basket,
            "orders_per_s": basket / (arrivals[-1] - arrivals[0])}


def server_processes(store: Store) -> list[int]:
    """The PostgreSQL server processes serving the other connections to the store's database (the
    runner's two); none for SQLite, whose work is done in the runner's own process."""
    if store.db.kind != "postgresql":
        return []
    return [row["pid"] for row in store.read(lambda db: db.execute(
        "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()").fetchall())]


# ------------------------------------------------------------ 2. reduce_long emits
def hold_shares(store: Store, strategy: str, symbol: str, shares: int):
    """Give ``strategy`` a position of at least ``shares`` in ``symbol``: a filled open_long and its fill."""
    if store.read(lambda db: store.position(db, strategy, symbol)) >= shares:
        return
    opened = emit("open_long", symbol, shares, strategy=strategy, store=store)
    store.update_signal(opened.id, status="submitting", order_quantity=shares)
    store.update_signal(opened.id, status="filled", filled=shares, avg_price=100.0)
    store.record_fill(Fill(exec_id=uuid.uuid4().hex, signal_id=opened.id, strategy=strategy, symbol=symbol,
                           side="BUY", shares=shares, price=100.0, time=time.time(), commission=1.0,
                           commission_currency="USD"), currency="USD")


@contextmanager
def apart(server):
    """This process on one processor and the PostgreSQL ``server``'s processes (those to come inherit
    it from the postmaster) on another, while the block runs. Left to the scheduler, a connection's
    server process shares the emitter's processor or not, at random, and an emit's round trips then
    cost 0.4 or 0.8 ms (a wake-up across processors), which would swamp the difference between sizes;
    apart, every round trip crosses, as to a server on another host."""
    postmaster = server and int((server.dir / "data" / "postmaster.pid").read_text().split()[0])
    children = Path(f"/proc/{postmaster}/task/{postmaster}/children")  # a kernel may not list them
    if server is None or len(os.sched_getaffinity(0)) < 2 or not children.exists():
        yield
        return
    ours, theirs = os.sched_getaffinity(0), os.sched_getaffinity(postmaster)
    here, there = sorted(ours)[:2]

    def place(mask):
        for pid in [postmaster, *map(int, children.read_text().split())]:
            try:
                os.sched_setaffinity(pid, mask)
            except ProcessLookupError:  # ended meanwhile
                pass
    os.sched_setaffinity(0, {here})
    place({there})
    try:
        yield
    finally:
        os.sched_setaffinity(0, ours)
        place(theirs)


def reduce_emits(stores: dict[int, Store], count: int) -> dict[int, list[float]]:
    """Seconds each of ``count`` reduce_long emits took in each queue (after 10 not counted), taking turns."""
    strategy, symbol = STRATEGIES[0], SYMBOLS[0]
    for store in stores.values():
        hold_shares(store, strategy, symbol, count + 10)
    seconds = {size: [] for size in stores}
    for _ in range(count + 10):
        for size, store in stores.items():
            started = time.perf_counter()
            signal = emit("reduce_long", symbol, 1, strategy=strategy, store=store)
            seconds[size].append(time.perf_counter() - started)
            store.cancel_signal(signal.id)  # so the signals on the way stay as few as a desk's
    return {size: each[10:] for size, each in seconds.items()}


# ------------------------------------------------------------ 3. emits from 8 processes
def emitter(location: str, strategy: str, count: int, ready, results):
    """One emitting process: opens its own store, waits for the others, emits ``count`` signals."""
    store = Store(location)
    emit("open_long", SYMBOLS[0], 1, strategy=strategy, store=store)  # warm: imports, caches, connection
    ready.wait()
    begun, seconds = time.time(), []
    for i in range(count):
        started = time.perf_counter()
        emit("open_long", SYMBOLS[i % len(SYMBOLS)], 1, strategy=strategy, store=store)
        seconds.append(time.perf_counter() - started)
    results.put((begun, time.time(), seconds))
    store.close()


def concurrent_emits(store: Store, count: int) -> dict:
    """Signals/s in total and the p50/p99 of one emit, ``EMITTERS`` processes emitting ``count`` each."""
    spawn = multiprocessing.get_context("spawn")  # each child opens its own connection
    ready, results = spawn.Barrier(EMITTERS), spawn.Queue()
    children = [spawn.Process(target=emitter, args=(store.location, f"emitter{n}", count, ready, results))
                for n in range(EMITTERS)]
    for child in children:
        child.start()
    try:
        outcomes = [results.get(timeout=300) for _ in children]
    finally:
        for child in children:
            child.join(timeout=10)
            child.kill()
    seconds = [s for _, _, each in outcomes for s in each]
    span = max(end for _, end, _ in outcomes) - min(begun for begun, _, _ in outcomes)
    return {"signals_per_s": len(seconds) / span, **milliseconds("emit", seconds)}


# ------------------------------------------------------------ the whole
def measure(backend: str, locations: dict[int, str], warm_up: str, server, args, workdir: Path) -> dict:
    """Every figure of one backend, from its queues (by size: where each is) on ``server`` (PostgreSQL's,
    else None), after a basket not counted in a queue of its own, ``warm_up`` (the first runner of a
    bench costs more, whatever the size)."""
    rng = random.Random(20261129)
    stores = {size: Store(where) for size, where in locations.items()}
    figures = {}
    try:
        for size, store in stores.items():
            started = time.perf_counter()
            preload(store, size, rng)
            if store.db.kind == "postgresql":
                # What autovacuum does within a minute of such a load: without statistics the planner
                # scans for `rev > ?` (changed_since) and filters the status of a strategy's signals.
                store.db.query("ANALYZE", fetch=False)
            print(f"{backend}: {finished(store)} finished signals preloaded in {time.perf_counter() - started:.1f} s",
                  flush=True)
        warming = Store(warm_up)
        runner_pass(warming, args.basket, workdir)
        warming.close()
        emitted = {size: [] for size in args.emit_sizes}
        for _ in range(args.emit_rounds):  # each round on connections of its own
            with apart(server):
                fresh = {size: Store(locations[size]) for size in args.emit_sizes}
                for size, seconds in reduce_emits(fresh, args.emits).items():
                    emitted[size].append(seconds)
                    fresh[size].close()
        passes = {size: [] for size in args.sizes}
        for _ in range(args.rounds):
            for size in args.sizes:
                passes[size].append(runner_pass(stores[size], args.basket, workdir))
                print(f"{backend}: runner with {size} finished signals: {passes[size][-1]}", flush=True)
        for size, rounds in emitted.items():
            p50s = [1e3 * statistics.median(seconds) for seconds in rounds]
            figures[f"{backend}_{size}_reduce_long_emit_ms_p50"] = statistics.median(p50s)
            figures[f"{backend}_{size}_reduce_long_emit_ms_p50_rounds"] = p50s
            figures[f"{backend}_{size}_reduce_long_emit_ms_p99"] = \
                milliseconds("emit", [s for seconds in rounds for s in seconds])["emit_ms_p99"]
        for size, each in passes.items():
            for figure in ("cpu_ms_per_order", "server_cpu_ms_per_order", "orders_per_s"):
                figures[f"{backend}_{size}_runner_{figure}"] = statistics.median(p[figure] for p in each)
                figures[f"{backend}_{size}_runner_{figure}_rounds"] = [p[figure] for p in each]
        largest = max(stores)
        figures.update({f"{backend}_{largest}_{EMITTERS}_emitters_{k}": v for k, v in
                        concurrent_emits(stores[largest], args.emits_per_process).items()})
        for store in stores.values():
            check_counters(store)
    finally:
        for store in stores.values():
            store.close()
    return figures


def ratios(figures: dict, args) -> dict:
    """Each figure over the smallest queue's, and whether the brief's targets are met."""
    out = {}
    for backend in args.backends:
        empty, large = min(args.sizes), max(args.sizes)
        for size in args.sizes:
            for figure in ("cpu_ms_per_order", "server_cpu_ms_per_order", "orders_per_s"):
                base = figures[f"{backend}_{empty}_runner_{figure}"]
                if base:  # SQLite has no server
                    out[f"{backend}_{size}_runner_{figure}_ratio"] = figures[f"{backend}_{size}_runner_{figure}"] / base
        small_emit, large_emit = min(args.emit_sizes), max(args.emit_sizes)
        out[f"{backend}_reduce_long_p50_ratio"] = figures[f"{backend}_{large_emit}_reduce_long_emit_ms_p50"] / \
            figures[f"{backend}_{small_emit}_reduce_long_emit_ms_p50"]
        out[f"{backend}_target_cpu_per_order"] = out[f"{backend}_{large}_runner_cpu_ms_per_order_ratio"] <= 1.3
        out[f"{backend}_target_orders_per_s"] = figures[f"{backend}_{large}_runner_orders_per_s"] >= 44
        out[f"{backend}_target_reduce_long"] = out[f"{backend}_reduce_long_p50_ratio"] <= 1.5
    return out


def print_tables(figures: dict, args):
    print(f"\nrunner, a basket of {args.basket} market orders (median of {args.rounds})")
    print(f"{'backend':11s} {'finished':>9s} {'CPU ms/order':>13s} {'x empty':>8s} {'server ms/order':>16s} "
          f"{'x empty':>8s} {'orders/s':>9s} {'x empty':>8s}")
    for backend in args.backends:
        for size in args.sizes:
            key = f"{backend}_{size}_runner_"
            server = (f"{figures[key + 'server_cpu_ms_per_order']:16.2f} "
                      f"{figures[key + 'server_cpu_ms_per_order_ratio']:8.2f}"
                      if key + "server_cpu_ms_per_order_ratio" in figures else f"{'-':>16s} {'-':>8s}")
            print(f"{backend:11s} {size:9d} {figures[key + 'cpu_ms_per_order']:13.2f} "
                  f"{figures[key + 'cpu_ms_per_order_ratio']:8.2f} {server} {figures[key + 'orders_per_s']:9.1f} "
                  f"{figures[key + 'orders_per_s_ratio']:8.2f}")
    print(f"\nreduce_long emit, in process ({args.emits} emits a round, median of the rounds' p50)")
    print(f"{'backend':11s} {'finished':>9s} {'p50 ms':>8s} {'p99 ms':>8s}")
    for backend in args.backends:
        for size in args.emit_sizes:
            key = f"{backend}_{size}_reduce_long_emit_ms_"
            print(f"{backend:11s} {size:9d} {figures[key + 'p50']:8.3f} {figures[key + 'p99']:8.3f}")
        print(f"{backend:11s} {'ratio':>9s} {figures[f'{backend}_reduce_long_p50_ratio']:8.2f}")
    largest = max(args.sizes + args.emit_sizes)
    print(f"\nemits from {EMITTERS} processes at once ({args.emits_per_process} each, {largest} finished signals)")
    print(f"{'backend':11s} {'signals/s':>10s} {'p50 ms':>8s} {'p99 ms':>8s}")
    for backend in args.backends:
        key = f"{backend}_{largest}_{EMITTERS}_emitters_"
        print(f"{backend:11s} {figures[key + 'signals_per_s']:10.1f} {figures[key + 'emit_ms_p50']:8.3f} "
              f"{figures[key + 'emit_ms_p99']:8.3f}")
    print("\ntargets")
    for backend in args.backends:
        for target in ("cpu_per_order", "orders_per_s", "reduce_long"):
            print(f"{backend:11s} {target:14s} {'met' if figures[f'{backend}_target_{target}'] else 'MISSED'}")


def main(args) -> dict:
    figures = {}
    sizes = sorted(set(args.sizes) | set(args.emit_sizes))
    with ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="qdibkr-queue-bench-")))
        for backend in args.backends:
            if backend == "sqlite":
                locations = {size: str(workdir / f"queue-{size}.sqlite") for size in sizes}
                warm_up = str(workdir / "warm-up.sqlite")
                server = None
            else:
                sys.path.insert(0, str(ROOT))
                from tests.pg import PostgresServer

                server = stack.enter_context(PostgresServer())
                locations = {size: server.create_database() for size in sizes}
                warm_up = server.create_database()
            figures.update(measure(backend, locations, warm_up, server, args, workdir))
    figures.update(ratios(figures, args))
    return figures


def numbers(text: str) -> list[int]:
    return [int(n) for n in text.split(",")]


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=numbers, default=[0, 10_000, 100_000],
                        help="finished signals in the queue for the runner's figures")
    parser.add_argument("--emit-sizes", type=numbers, default=[1_000, 100_000],
                        help="finished signals in the queue for the reduce_long figures")
    parser.add_argument("--basket", type=int, default=400, help="market orders the runner sends at each size")
    parser.add_argument("--emits", type=int, default=150, help="reduce_long emits timed at each size, a round")
    parser.add_argument("--emit-rounds", type=int, default=9, help="rounds of reduce_long emits (the median p50)")
    parser.add_argument("--emits-per-process", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3, help="baskets at each size (the median is reported)")
    parser.add_argument("--backends", type=lambda s: s.split(","), default=["sqlite", "postgresql"])
    args = parser.parse_args()
    figures = main(args)
    print_tables(figures, args)
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(figures, indent=2))
    print(f"written to {RESULTS}")
