"""The queue under concurrency and failure, with real processes and a real PostgreSQL server: many
processes emitting the same idempotency keys at once, emits racing for a strategy's last shares, two
runners on one PostgreSQL queue as if on two hosts, the database's connections killed while a runner
works, the database down and back. What both backends can do runs on both."""

import json
import random
import select
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from qdibkr import InputError, emit
from qdibkr.databases import QueueUnavailable
from qdibkr.model import FINAL
from qdibkr.runner import RUNNER_CLIENT_ID
from qdibkr.store import Fill, Store

from .test_runner import orders_at_gateway
from .test_runner_crash import US, assert_exactly_once, basket, runner_env

ROOT = Path(__file__).resolve().parent.parent  # the tree whose qdibkr and tests the child processes import


# ---------------------------------------------------------------- processes
def emitter(where: str):
    """A child process's loop (``Emitters``): open the queue, say ``ready``, then for each line read (a JSON
    list of ``emit``'s keyword arguments) emit them in order and answer one JSON line: per emit, the
    signal's id, or the field and message of the InputError that refused it."""
    store = Store(where)
    print("ready", flush=True)
    for line in sys.stdin:
        answers = []
        for kwargs in json.loads(line):
            try:
                answers.append({"id": emit(store=store, **kwargs).id})
            except InputError as e:
                answers.append({"field": e.field, "message": e.message})
        print(json.dumps(answers), flush=True)
    store.close()


class Emitters:
    """Processes that each hold the queue open, then emit what they are told all at the same moment: every
    one waits on its stdin, so the lines written to them start them together (no sleeps)."""

    TIMEOUT = 60  # seconds: bounds a failing test

    def __init__(self, where: str, n: int, logs: Path):
        command = [sys.executable, "-c",
                   "import sys; from tests.test_queue_concurrency import emitter; emitter(sys.argv[1])", where]
        self.logs = [logs / f"emitter-{i}.log" for i in range(n)]
        self.processes = [subprocess.Popen(command, cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                           stderr=log.open("w"), text=True) for log in self.logs]
        for i in range(n):
            assert self._answer(i) == "ready"

    def __enter__(self) -> "Emitters":
        return self

    def __exit__(self, *exc):
        for process in self.processes:
            process.stdin.close()  # the end of its input ends its loop
        for process in self.processes:
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    def emit_at_once(self, work: list[list[dict]]) -> list[list[dict]]:
        """Give process i the emits ``work[i]``, all at once; their answers, in the same shape."""
        for process, emits in zip(self.processes, work):
            process.stdin.write(json.dumps(emits) + "\n")
            process.stdin.flush()
        return [json.loads(self._answer(i)) for i in range(len(work))]

    def _answer(self, i: int) -> str:
        process = self.processes[i]
        ready, _, _ = select.select([process.stdout], [], [], self.TIMEOUT)
        line = process.stdout.readline() if ready else ""
        if not line:
            process.kill()
            pytest.fail(f"emitter {i} gave no answer (exit {process.wait()}):\n{self.logs[i].read_text()[-3000:]}")
        return line.strip()


class RunnerProcess:
    """A ``qdibkr runner`` process, as if on host ``host`` (what it records in the queue's lease), whose log
    is read as it is written so that a test can wait for what the runner says."""

    def __init__(self, env: dict, port: int, *args: str, host: str = "host-a"):
        code = (f"import socket, sys; socket.gethostname = lambda: {host!r}; "
                f"from qdibkr.cli import main; sys.exit(main())")
        self.process = subprocess.Popen([sys.executable, "-c", code, "runner", "--port", str(port), *args],
                                        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                        text=True)
        self.lines: list[str] = []
        self._said = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self):
        for line in self.process.stderr:
            with self._said:
                self.lines.append(line)
                self._said.notify_all()
        with self._said:
            self.lines.append("")  # the end of the log
            self._said.notify_all()

    def said(self, text: str) -> int:
        with self._said:
            return sum(text in line for line in self.lines)

    def wait_for(self, text: str, timeout: float = 30):
        """Until the runner has logged ``text``; fails (with its log) if it ends or is silent on it."""
        with self._said:
            if not self._said.wait_for(lambda: self.said(text) or self.lines[-1:] == [""], timeout):
                pytest.fail(f"the runner did not say {text!r} within {timeout} s:\n{self.log()}")
            if not self.said(text):
                pytest.fail(f"the runner ended without saying {text!r}:\n{self.log()}")

    def log(self) -> str:
        with self._said:
            return "".join(self.lines)[-4000:]

    def finish(self, timeout: float) -> int:
        """Its exit status once it ends by itself (``--once``); fails with its log if it has not by then."""
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            pytest.fail(f"the runner did not finish within {timeout} s:\n{self.log()}")

    def kill(self):
        """SIGKILL, and reap it (a dead process not yet reaped would still look alive to a lease's check)."""
        self.process.kill()
        self.process.wait()
        self._reader.join(timeout=5)


def poll(condition, timeout: float, what: str, runner: RunnerProcess | None = None):
    """Until ``condition()`` holds (checked every 10 ms); fails after ``timeout`` seconds saying ``what``
    (and what ``runner`` logged)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not within {timeout} s" + (f"; the runner's log:\n{runner.log()}" if runner else ""))
        time.sleep(0.01)


def all_final(store: Store) -> bool:
    return all(s.status in FINAL for s in store.signals())


@pytest.fixture
def pg_store(postgres):
    """A fresh queue in a database of the session's PostgreSQL server."""
    name = f"qd_{uuid.uuid4().hex}"
    store = Store(postgres.create_database(name))
    yield store
    store.close()
    postgres.drop_database(name)


def database_name(store: Store) -> str:
    return urlsplit(store.location).path.lstrip("/")


# ---------------------------------------------------------------- emitting at once
def test_processes_emitting_the_same_keys_at_once_store_each_once(queue_url, tmp_path):
    processes, senders, keys = 8, 4, 500  # every key emitted by 4 of the 8 processes: 2,000 emits
    work = [[dict(signal_type="open_long", symbol=US[k % len(US)], quantity=1 + k % 7, strategy=f"s{k % 13}",
                  key=f"k{k}") for k in range(keys) if (p - k) % processes < senders] for p in range(processes)]
    assert sum(map(len, work)) == 2000
    with Emitters(queue_url, processes, tmp_path) as emitters:
        answers = emitters.emit_at_once(work)  # in the same order: the senders of a key race for it
    ids: dict[str, set[str]] = {}
    for emits, answered in zip(work, answers):
        for kwargs, answer in zip(emits, answered, strict=True):
            ids.setdefault(kwargs["key"], set()).add(answer["id"])
    assert len(ids) == keys and all(len(got) == 1 for got in ids.values())  # every sender got the same signal
    store = Store(queue_url)
    try:
        stored = store.signals()
        assert {s.idempotency_key: {s.id} for s in stored} == ids and len(stored) == keys
        assert store.status_counts() == {"pending": keys}
    finally:
        store.close()


def hold(store: Store, strategy: str, symbol: str, shares: int):
    """Give ``strategy`` a position of ``shares``, as the runner makes one: a signal sent and filled."""
    signal = emit("open_long", symbol, shares, strategy=strategy, store=store)
    store.update_signal(signal.id, status="submitting", order_quantity=shares)
    store.record_fill(Fill(exec_id=f"x-{signal.id}", signal_id=signal.id, strategy=strategy, symbol=symbol,
                           side="BUY", shares=shares, price=100.0, time=time.time(), commission=1.0,
                           commission_currency="USD"), currency="USD")
    store.update_signal(signal.id, status="filled", filled=shares)


def test_emits_racing_for_the_last_shares_exactly_one_wins(store_on_each_backend, tmp_path):
    store, racers = store_on_each_backend, 6
    with Emitters(store.location, racers, tmp_path) as emitters:
        for n in range(20):
            strategy = f"r{n}"
            if n % 2:
                hold(store, strategy, "AAPL", 100)  # 100 held
            else:
                emit("open_long", "AAPL", 100, strategy=strategy, store=store)  # 100 on the way
            reduce = dict(signal_type="reduce_long", symbol="AAPL", quantity=100, strategy=strategy)
            answers = [answer for [answer] in emitters.emit_at_once([[reduce]] * racers)]
            won = [a["id"] for a in answers if "id" in a]
            assert len(won) == 1, answers
            assert all(a["field"] == "quantity" and f"strategy {strategy!r} holds 0" in a["message"]
                       for a in answers if "id" not in a), answers
            assert [s.id for s in store.signals(strategy=strategy) if s.signal_type == "reduce_long"] == won


# ---------------------------------------------------------------- runners and a failing database
@pytest.mark.postgresql
def test_two_runners_on_two_hosts_the_second_takes_over_a_killed_ones_basket(pg_store, gateway, tmp_path):
    """A runner on another host can not tell whether the holder of the lease lives: it waits until the
    lease expires by the database server's clock, then reconciles what the killed one sent (by orderRef,
    from another client id) and sends the rest."""
    store = pg_store
    env = runner_env(tmp_path, store)
    first = RunnerProcess(env, gateway.port, "--wait", "--client-id", "91", host="host-a")
    second = None
    try:
        first.wait_for("runner connected as client 91")  # it holds the lease
        second = RunnerProcess(env, gateway.port, "--wait", "--client-id", "92", host="host-b")
        second.wait_for("waiting for the runner of")
        total = basket(store, strategies=2)
        poll(lambda: len(gateway.broker.orders) >= 8, 30, "the first runner sending", first)
        first.kill()  # mid-basket; its lease stays in the queue until it expires by the server's clock
        second.wait_for("runner connected as client 92", timeout=40)
        poll(lambda: all_final(store), 60, "every signal final after the takeover", second)
    finally:
        first.kill()
        if second is not None:
            second.kill()
    assert len(store.signals()) == total
    assert_exactly_once(store, gateway)
    assert {order.client_id for order in gateway.broker.orders.values()} == {91, 92}  # both sent part of it


@pytest.mark.postgresql
def test_killing_the_database_connections_mid_basket_loses_and_duplicates_nothing(pg_store, gateway, tmp_path,
                                                                                   postgres):
    """The runner's connections (its store's and its wake-up listener's) cut at random moments while it works
    a basket: in a transaction, at a commit, between them, while TWS reports a fill."""
    store, db = pg_store, database_name(pg_store)
    total = basket(store, strategies=6)
    runner = RunnerProcess(runner_env(tmp_path, store), gateway.port, "--once")
    rng = random.Random(20261129)
    killed = []
    try:
        while runner.process.poll() is None and len(killed) < 150:
            time.sleep(rng.uniform(0.005, 0.05))  # the random moment of the cut, not a synchronisation
            # The store's connection (the runner's, and this test's idle one) twice as often as the listener's.
            killed.append(postgres.terminate(db, rng.choice(["qdibkr", "qdibkr", "qdibkr runner wake-ups"])))
        assert runner.finish(timeout=30) == 0, runner.log()
    finally:
        runner.kill()
    assert sum(killed) >= 10, killed  # connections were cut while it worked
    assert len(store.signals()) == total
    assert_exactly_once(store, gateway)


@pytest.mark.postgresql
def test_database_down_and_back(postgres_of_its_own, gateway, tmp_path):
    server = postgres_of_its_own
    store = Store(server.create_database())
    runner = RunnerProcess(runner_env(tmp_path, store), gateway.port)
    try:
        runner.wait_for("runner connected")
        emit("open_long", "AAPL", 5, strategy="before", store=store)
        poll(lambda: all_final(store), 30, "the first signal filled", runner)
        session = gateway.sessions[RUNNER_CLIENT_ID]

        server.stop()
        for _ in range(2):  # found dropped, then found closed: the same answer
            with pytest.raises(QueueUnavailable) as refused:
                emit("open_long", "MSFT", 3, strategy="during", store=store)
            assert store.where in str(refused.value) and "nothing was written" in str(refused.value)
        runner.wait_for("keeps its connection to TWS")  # it met the outage while serving

        server.start()
        emit("open_long", "MSFT", 3, strategy="after", store=store)
        emit("close_long", "AAPL", strategy="before", store=store)
        poll(lambda: all_final(store), 40, "the signals emitted after the outage filled", runner)
        assert gateway.sessions[RUNNER_CLIENT_ID] is session  # one connection to TWS throughout
        assert runner.said("runner connected") == 1, runner.log()
    finally:
        runner.kill()
    signals = store.signals()
    assert [(s.strategy, s.signal_type) for s in signals] == [
        ("before", "open_long"), ("after", "open_long"), ("before", "close_long")]  # nothing of "during"
    assert store.status_counts() == Counter(s.status for s in signals) == {"filled": 3}
    assert orders_at_gateway(gateway) == {s.order_ref: 1 for s in signals}
    assert [p.quantity for p in store.positions()] == [3, 0]
    store.close()
