"""The queue's store on both databases: schema versions and upgrades, the counters and revisions that keep
the cost of an order independent of the queue's size, archiving, and a queue that cannot be reached."""

import sqlite3
import subprocess
import sys
import time

import pytest

from qdibkr import InputError, emit
from qdibkr.databases import QueueUnavailable, Taken
from qdibkr.store import MIGRATIONS, SCHEMA_VERSION, Fill, SentOrder, Store


@pytest.fixture
def store(store_on_each_backend):
    """Every test here runs on a SQLite queue and on a PostgreSQL one."""
    return store_on_each_backend


def filled(store: Store, signal, price: float = 10.0):
    """Take a signal through submitting to filled as the runner does, with its fill recorded."""
    store.admit(lambda db: None, SentOrder(origin="runner", strategy=signal.strategy, symbol=signal.symbol,
                                           side=signal.action, quantity=signal.quantity, trading_day="2026-11-27",
                                           order_id=1, signal_id=signal.id))
    store.update_signal(signal.id, status="submitted")
    store.record_fill(Fill(exec_id=f"e-{signal.id}", signal_id=signal.id, strategy=signal.strategy,
                           symbol=signal.symbol, side=signal.action, shares=signal.quantity, price=price,
                           time=time.time(), commission=1.0, commission_currency="USD"), currency="USD")
    return store.update_signal(signal.id, status="filled", filled=signal.quantity, avg_price=price)


def counted(store: Store) -> dict[str, int]:
    """Signals by status, counted the slow way."""
    counts: dict[str, int] = {}
    for signal in store.signals():
        counts[signal.status] = counts.get(signal.status, 0) + 1
    return counts


def test_status_counters_follow_every_kind_of_change(store):
    a = emit("open_long", "AAPL", 10, strategy="a", store=store)
    filled(store, a)
    emit("reduce_long", "AAPL", 5, strategy="a", store=store)
    cancelled = emit("open_long", "MSFT", 1, strategy="a", store=store)
    store.cancel_signal(cancelled.id)
    for run, succeeds in (("run-ok", True), ("run-bad", False)):
        emit("open_long", "TSLA", 1, strategy="b", store=store, run_id=run)
        emit("open_long", "NVDA", 1, strategy="b", store=store, run_id=run)
        assert store.status_counts()["staged"] == 2
        store.release_run(run) if succeeds else store.discard_run(run, "the notebook raised")
    assert store.status_counts() == counted(store) == {"filled": 1, "pending": 3, "cancelled": 3}
    assert store.archive(older_than=0) == 4  # the finished ones
    assert store.status_counts() == counted(store) == {"pending": 3}


def test_changed_since_reads_exactly_what_changed(store):
    first = emit("open_long", "AAPL", 1, strategy="a", store=store)
    signals, revision = store.open_signals()
    assert [s.id for s in signals] == [first.id]
    assert store.changed_since(revision) == ([], revision)
    second = emit("open_long", "MSFT", 1, strategy="a", store=store, run_id="r")
    store.cancel_signal(first.id)
    changed, later = store.changed_since(revision)
    assert [(s.id, s.status) for s in changed] == [(second.id, "staged"), (first.id, "cancelled")]
    store.release_run("r")  # many rows in one statement: each gets a newer revision
    changed, latest = store.changed_since(later)
    assert [(s.id, s.status) for s in changed] == [(second.id, "pending")] and latest > later
    store.archive(older_than=0)  # moving rows out never makes a revision come round again
    third = emit("open_long", "TSLA", 1, strategy="a", store=store)
    assert [s.id for s in store.changed_since(latest)[0]] == [third.id]


def test_orders_per_day_are_counted_as_they_are_admitted(store):
    for strategy in ("a", "a", "b", None):
        store.admit(lambda db: None, SentOrder(origin="cli", strategy=strategy, symbol="AAPL", side="BUY",
                                               quantity=1, trading_day="2026-11-27"))
    store.admit(lambda db: None, SentOrder(origin="cli", strategy="a", symbol="AAPL", side="BUY", quantity=1,
                                           trading_day="2026-11-30"))
    day = store.read(lambda db: (store.orders_today(db, "2026-11-27"), store.orders_today(db, "2026-11-27", "a"),
                                 store.orders_today(db, "2026-11-30", "b")))
    assert day == (4, 2, 0)


def test_archive_moves_old_finished_signals_and_their_fills(store):
    done = filled(store, emit("open_long", "AAPL", 10, strategy="a", store=store))
    waiting = emit("reduce_long", "AAPL", 4, strategy="a", store=store)
    assert store.archive(older_than=3600) == 0  # nothing that old
    assert store.archive(older_than=0) == 1
    assert [s.id for s in store.signals()] == [waiting.id] and store.fills() == []
    assert store.positions("a")[0].quantity == 10  # positions stay: they are what the strategy holds
    rows = store.read(lambda db: (db.execute("SELECT id FROM signals_archive").fetchall(),
                                  db.execute("SELECT signal_id FROM fills_archive").fetchall()))
    assert [r["id"] for r in rows[0]] == [done.id] and [r["signal_id"] for r in rows[1]] == [done.id]
    with pytest.raises(InputError, match="holds 6"):  # the reduce on the way still counts
        emit("reduce_long", "AAPL", 7, strategy="a", store=store)


def test_a_signal_is_found_by_the_start_of_its_id(store):
    signals = [emit("open_long", "AAPL", 1, strategy=f"s{i}", store=store) for i in range(20)]
    for signal in signals:
        assert store.find_signal(signal.id[:8]).id == signal.id
        assert store.find_signal(signal.id.upper()[:8]).id == signal.id
    assert store.find_signal("") is None  # every signal starts so: not one
    assert store.find_signal("zz") is None


def test_a_queue_of_a_newer_qdibkr_is_refused(store):
    with store.transaction() as db:
        db.execute("UPDATE schema_version SET version = ?", (SCHEMA_VERSION + 1,))
    with pytest.raises(Exception, match=f"schema version {SCHEMA_VERSION + 1}, newer than this qdibkr"):
        Store(store.location)


def test_an_exclusive_lock_is_held_by_one_process_until_it_ends(store):
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys; from qdibkr.store import Store\n"
                               f"with Store({store.location!r}).exclusive('job-x'):\n"
                               "    print('held', flush=True); sys.stdin.read()"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "held\n"
        with pytest.raises(Taken, match=f"pid {holder.pid}"):
            with store.exclusive("job-x"):
                pass
        with store.exclusive("job-y"):  # another name: another lock
            pass
    finally:
        holder.kill()  # SIGKILL: no clean-up; the lock goes with the process
        holder.wait()
    with store.exclusive("job-x"):
        pass


def test_per_order_queries_use_indexes_not_the_whole_table(tmp_path):
    """The queries the gate and the runner make for each order, as SQLite plans them: each searches an
    index, none scans the signals or orders tables (whose rows grow with every signal ever stored)."""
    store = Store(tmp_path / "queue.sqlite")
    on_the_way = "status IN ('pending', 'held', 'submitting', 'submitted', 'partially_filled')"
    queries = [
        f"SELECT * FROM signals WHERE strategy = 'a' AND symbol = 'AAPL' AND {on_the_way}",
        "SELECT * FROM signals WHERE symbol = 'AAPL' AND status IN ('submitting', 'submitted')",
        "SELECT * FROM signals WHERE symbol = 'AAPL' AND status = 'submitting'",
        "SELECT * FROM signals WHERE rev > 5 ORDER BY rev",
        "SELECT * FROM signals WHERE idempotency_key = 'k'",
        "SELECT * FROM signals WHERE id >= 'ab' AND id < 'ab~' LIMIT 2",
        "SELECT * FROM signals WHERE run_id = 'r' AND status = 'staged'",
        "SELECT * FROM signals WHERE strategy = 'a' ORDER BY seq DESC LIMIT 50",
        "SELECT COALESCE(SUM(n), 0) FROM order_counts WHERE trading_day = '2026-11-27'",
        "SELECT * FROM fills WHERE signal_id = 'x'",
    ]
    plans = {sql: " ".join(row["detail"] for row in store.db.query(f"EXPLAIN QUERY PLAN {sql}")) for sql in queries}
    for sql, plan in plans.items():
        assert "USING" in plan and not plan.startswith("SCAN"), (sql, plan)


def test_a_queue_from_before_schema_versions_is_upgraded_with_its_data(tmp_path):
    """A queue written by a qdibkr from before schema versions (its tables as version 1 had them, the runs'
    owner columns added on first use) opens as the current version, its counts taken from its rows."""
    path = tmp_path / "old.sqlite"
    old = sqlite3.connect(path)
    for statement in MIGRATIONS[0][2]:
        old.execute(statement)
    old.execute("ALTER TABLE runs ADD COLUMN owner_pid INTEGER")  # as that qdibkr did on first use
    rows = [("f1", "filled", 5), ("f2", "filled", 5), ("p1", "pending", None), ("c1", "cancelled", None)]
    for i, (sid, status, filled_) in enumerate(rows):
        old.execute("INSERT INTO signals (id, created_at, strategy, symbol, market, signal_type, quantity, "
                    "order_type, tif, status, updated_at, filled) VALUES (?, 0, 'a', 'AAPL', 'USStock', "
                    "'open_long', 5, 'MKT', 'DAY', ?, 0, ?)", (sid, status, filled_ or 0))
    old.execute("INSERT INTO orders (sent_at, trading_day, origin, strategy, symbol, side, quantity) "
                "VALUES (0, '2026-11-27', 'runner', 'a', 'AAPL', 'BUY', 5)")
    old.commit()
    old.close()
    store = Store(path)
    assert store.db.query("SELECT version FROM schema_version")[0]["version"] == SCHEMA_VERSION
    assert store.status_counts() == {"filled": 2, "pending": 1, "cancelled": 1}
    assert store.read(lambda db: store.orders_today(db, "2026-11-27", "a")) == 1
    signals, revision = store.open_signals()
    assert [s.id for s in signals] == ["p1"] and revision == 4
    newer = emit("open_long", "AAPL", 1, strategy="a", store=store)
    assert [s.id for s in store.changed_since(revision)[0]] == [newer.id]
    assert {"owner_pid", "owner_host", "owner_started"} <= store.db.columns(store.db._connection(), "runs")
    Store(path)  # opening it again finds nothing to do


def test_an_unreachable_postgresql_queue_is_reported_in_plain_words(tmp_path):
    url = f"postgresql://trader:secret@/queue?host={tmp_path}"  # no server listens there
    with pytest.raises(QueueUnavailable) as e:
        Store(url)
    message = str(e.value)
    assert "cannot reach the queue's database postgresql://trader:***@/queue" in message
    assert "secret" not in message and "QDIBKR_DB" in message

