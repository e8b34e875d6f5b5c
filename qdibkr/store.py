"""The durable pending-order queue: signals, their orders' progress, fills and per-strategy positions.

All SQL lives here, kept plain (no SQLite-only tricks beyond the pragmas) so a
PostgreSQL backend can follow. The queue is a SQLite file in WAL mode (where:
``config.queue_path``). Every operation is atomic inside the store (one
transaction, named for what it does: emit, admit an order, record a fill, halt,
take the runner's lease...), so callers never hold a transaction. WAL with
``synchronous=NORMAL`` keeps every committed change through a crash of any
process (a power cut may lose the last moment).

Every order sent, from any face, is journalled in ``orders`` by the gate in
the same transaction that checked it: what "orders per day" counts.

One runner per queue: the runner holds a lease in the ``lease`` row, renewed
while it lives; whatever path reaches the file (a symlink, a relative path), or
later whichever host, a second runner finds the lease taken.

A signal's life (``model.TRANSITIONS``; any other change is an error):
``staged`` (emitted by a notebook run still in progress) -> ``pending`` ->
``held`` (the gate or the trading hours hold it) -> ``submitting`` (written
before the order is sent) -> ``submitted`` -> ``partially_filled`` ->
``filled``; or it ends ``cancelled`` or ``rejected`` with a reason.

A notebook run (``qdibkr run``, a scheduled job) is recorded in ``runs``:
``running`` -> ``succeeded`` or ``failed``; a schedule slot passed over is
recorded ``skipped``.
"""

import logging
import os
import socket
import sqlite3
import threading
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, fields
from pathlib import Path

from .errors import QdibkrError
from .model import FINAL, IN_FLIGHT, WAITING, SignalStatus, SignalType, check_transition

log = logging.getLogger("qdibkr.queue")

HALTED_KEY, CANCEL_OPEN_KEY, WAKE_PORT_KEY = "halted", "cancel_open", "runner.wake_port"
_FINAL_SQL = ", ".join(f"'{s}'" for s in FINAL)
_IN_FLIGHT_SQL = ", ".join(f"'{s}'" for s in IN_FLIGHT)

SCHEMA = """
CREATE TABLE IF NOT EXISTS signals (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    created_at REAL NOT NULL,
    strategy TEXT NOT NULL,
    symbol TEXT NOT NULL,
    market TEXT NOT NULL,
    signal_type TEXT NOT NULL,
    quantity INTEGER,
    order_type TEXT NOT NULL,
    limit_price REAL,
    tif TEXT NOT NULL,
    idempotency_key TEXT UNIQUE,
    source TEXT NOT NULL DEFAULT '',
    run_id TEXT,
    status TEXT NOT NULL,
    reason TEXT NOT NULL DEFAULT '',
    updated_at REAL NOT NULL,
    order_id INTEGER,
    perm_id INTEGER,
    order_quantity INTEGER,
    filled INTEGER NOT NULL DEFAULT 0,
    avg_price REAL,
    cancel_requested INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS signals_status ON signals (status);
CREATE INDEX IF NOT EXISTS signals_strategy_symbol ON signals (strategy, symbol);
CREATE TABLE IF NOT EXISTS orders (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    sent_at REAL NOT NULL,
    trading_day TEXT NOT NULL,
    origin TEXT NOT NULL,
    strategy TEXT,
    symbol TEXT NOT NULL,
    side TEXT NOT NULL,
    quantity INTEGER NOT NULL,
    order_id INTEGER,
    signal_id TEXT
);
CREATE INDEX IF NOT EXISTS orders_day ON orders (trading_day, strategy);
CREATE TABLE IF NOT EXISTS lease (
    name TEXT PRIMARY KEY,
    holder TEXT NOT NULL,
    host TEXT NOT NULL,
    pid INTEGER NOT NULL,
    since REAL NOT NULL,
    expires_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS fills (
    exec_id TEXT PRIMARY KEY,
    signal_id TEXT NOT NULL REFERENCES signals (id),
    strategy TEXT NOT NULL,
    symbol TEXT NOT NULL,
    side TEXT NOT NULL,
    shares INTEGER NOT NULL,
    price REAL NOT NULL,
    time REAL NOT NULL,
    commission REAL NOT NULL,
    commission_currency TEXT NOT NULL,
    realized_pnl REAL
);
CREATE TABLE IF NOT EXISTS positions (
    strategy TEXT NOT NULL,
    symbol TEXT NOT NULL,
    currency TEXT NOT NULL,
    quantity INTEGER NOT NULL,
    avg_cost REAL NOT NULL,
    realized_pnl REAL NOT NULL,
    PRIMARY KEY (strategy, symbol)
);
CREATE TABLE IF NOT EXISTS board_lots (
    symbol TEXT PRIMARY KEY,
    lot INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS runs (
    id TEXT PRIMARY KEY,
    job TEXT,
    slot REAL,
    notebook TEXT NOT NULL,
    strategy TEXT NOT NULL,
    parameters TEXT NOT NULL,
    status TEXT NOT NULL,
    started_at REAL NOT NULL,
    finished_at REAL,
    output_path TEXT NOT NULL DEFAULT '',
    signals INTEGER NOT NULL DEFAULT 0,
    error TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS runs_job_slot ON runs (job, slot);
CREATE TABLE IF NOT EXISTS control (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
"""


@dataclass
class Signal:
    seq: int
    id: str
    created_at: float
    strategy: str
    symbol: str  # as qdibkr displays it: AAPL, 0700.HK
    market: str  # USStock or HShare
    signal_type: str  # open_long, add_long, close_long, reduce_long
    quantity: int | None  # None: close_long of the whole position
    order_type: str  # MKT or LMT
    limit_price: float | None
    tif: str
    idempotency_key: str | None
    source: str
    run_id: str | None
    status: str
    reason: str
    updated_at: float
    order_id: int | None
    perm_id: int | None
    order_quantity: int | None  # what was sent (a close_long resolves its size then)
    filled: int
    avg_price: float | None
    cancel_requested: int  # the user asked to cancel; the runner cancels the order at IB

    @property
    def action(self) -> str:
        return SignalType(self.signal_type).side

    @property
    def order_ref(self) -> str:
        """The orderRef TWS keeps with the order: how a restarted runner finds it."""
        return f"qd-{self.id}"

    @property
    def is_final(self) -> bool:
        return self.status in FINAL


@dataclass
class Fill:
    exec_id: str
    signal_id: str
    strategy: str
    symbol: str
    side: str  # BUY or SELL
    shares: int
    price: float
    time: float
    commission: float
    commission_currency: str
    realized_pnl: float | None = None


@dataclass
class StrategyPosition:
    strategy: str
    symbol: str
    currency: str
    quantity: int
    avg_cost: float
    realized_pnl: float


@dataclass
class Run:
    """One execution of a notebook: by hand (``job`` None) or for a schedule's slot."""

    id: str
    job: str | None
    slot: float | None  # the scheduled time it ran for (POSIX seconds)
    notebook: str
    strategy: str
    parameters: str  # JSON
    status: str  # running, succeeded, failed, skipped
    started_at: float
    finished_at: float | None
    output_path: str  # the executed notebook
    signals: int  # signals released to the runner (0 unless it succeeded)
    error: str

    @property
    def duration(self) -> float | None:
        return None if self.finished_at is None else self.finished_at - self.started_at


@dataclass(frozen=True)
class SentOrder:
    """An order as the gate journals it when it lets it go."""

    origin: str  # cli, api, widget, python, runner
    strategy: str | None
    symbol: str
    side: str
    quantity: int
    trading_day: str  # the exchange's date it was sent on (risk.trading_day)
    order_id: int | None = None
    signal_id: str | None = None


@dataclass(frozen=True)
class Lease:
    """Who holds the runner's lease on this queue."""

    holder: str
    host: str
    pid: int
    since: float
    expires_at: float

    def __str__(self) -> str:
        return f"pid {self.pid} on {self.host}, since {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(self.since))}"


class LeaseLost(QdibkrError):
    """The runner no longer holds the queue's lease: another runner took it (this one stalled past its expiry)."""


def _alive_here(host: str, pid: int) -> bool | None:
    """Whether process ``pid`` lives, if it is on this host (None: another host, which only the lease's
    expiry can tell about)."""
    if host != socket.gethostname():
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Store:
    """One process's handle on the queue database; safe to share between threads."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path).expanduser()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=30)
        self._db.row_factory = sqlite3.Row
        self._lock = threading.RLock()
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("PRAGMA foreign_keys=ON")
        self._db.executescript(SCHEMA)

    def close(self):
        self._db.close()

    @contextmanager
    def transaction(self):
        """One atomic change; BEGIN IMMEDIATE so checks and writes see the same state."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _query(self, sql: str, args=()) -> list[sqlite3.Row]:
        with self._lock:
            return self._db.execute(sql, args).fetchall()

    def data_version(self) -> int:
        """A number that changes whenever another connection (the runner, say) commits a change:
        a cheap way to watch the queue."""
        return self._query("PRAGMA data_version")[0][0]

    # ------------------------------------------------------------ signals
    @staticmethod
    def _signal(row) -> Signal:
        return Signal(**{f.name: row[f.name] for f in fields(Signal)})

    def by_key(self, db, key: str) -> Signal | None:
        row = db.execute("SELECT * FROM signals WHERE idempotency_key = ?", (key,)).fetchone()
        return self._signal(row) if row else None

    def add_signal(self, check, **values) -> Signal:
        """Queue a signal, in one transaction: the signal already queued under the same idempotency key
        if there is one (a repeat emits nothing), else ``check(db)`` (which raises to refuse) and the
        new signal."""
        with self.transaction() as db:
            key = values.get("idempotency_key")
            existing = self.by_key(db, key) if key else None
            if existing:
                return existing
            check(db)
            return self.insert_signal(db, **values)

    def insert_signal(self, db, **values) -> Signal:
        """Insert a new signal within the caller's transaction."""
        now = time.time()
        values = {"id": uuid.uuid4().hex, "created_at": now, "updated_at": now, **values}
        columns = ", ".join(values)
        db.execute(f"INSERT INTO signals ({columns}) VALUES ({', '.join('?' * len(values))})", tuple(values.values()))
        signal = self._signal(db.execute("SELECT * FROM signals WHERE id = ?", (values["id"],)).fetchone())
        log.info("signal %s %s %s %s %s: %s", signal.id[:8], signal.strategy, signal.signal_type, signal.symbol,
                 signal.quantity if signal.quantity is not None else "all", signal.status)
        return signal

    def signal(self, signal_id: str) -> Signal | None:
        rows = self._query("SELECT * FROM signals WHERE id = ?", (signal_id,))
        return self._signal(rows[0]) if rows else None

    def find_signal(self, id_start: str) -> Signal | None:
        """The one signal whose id starts so (as `qdibkr queue` shows ids cut short), else None."""
        rows = self._query("SELECT * FROM signals WHERE id LIKE ? LIMIT 2", (f"{id_start}%",))
        return self._signal(rows[0]) if len(rows) == 1 else None

    def signals(self, *, statuses=None, strategy: str | None = None, limit: int | None = None,
                run_id: str | None = None) -> list[Signal]:
        sql, args = "SELECT * FROM signals WHERE 1=1", []
        if statuses:
            sql += f" AND status IN ({', '.join('?' * len(statuses))})"
            args += list(statuses)
        if strategy:
            sql += " AND strategy = ?"
            args.append(strategy)
        if run_id:
            sql += " AND run_id = ?"
            args.append(run_id)
        sql += " ORDER BY seq DESC"
        if limit:
            sql += f" LIMIT {int(limit)}"
        return [self._signal(r) for r in reversed(self._query(sql, args))]  # the latest, oldest first

    def open_signals(self) -> list[Signal]:
        """Every signal the runner has to mind (waiting or in flight), in emission order."""
        return self.signals(statuses=WAITING + IN_FLIGHT)

    def update_signal(self, signal_id: str, db=None, **changes) -> Signal:
        """Change a signal's columns (its status among them) in one transaction, and log it."""
        changes["updated_at"] = time.time()
        assignments = ", ".join(f"{k} = ?" for k in changes)
        if db is None:
            with self.transaction() as db:
                return self.update_signal(signal_id, db, **changes)
        if "status" in changes:
            old = db.execute("SELECT status FROM signals WHERE id = ?", (signal_id,)).fetchone()["status"]
            check_transition(signal_id, old, changes["status"])
        db.execute(f"UPDATE signals SET {assignments} WHERE id = ?", (*changes.values(), signal_id))
        signal = self._signal(db.execute("SELECT * FROM signals WHERE id = ?", (signal_id,)).fetchone())
        if "status" in changes:
            log.info("signal %s %s %s %s: %s%s", signal.id[:8], signal.strategy, signal.signal_type, signal.symbol,
                     signal.status, f" ({signal.reason})" if signal.reason else "")
        return signal

    def projected(self, db, strategy: str, symbol: str) -> tuple[int, int]:
        """The strategy's position in ``symbol``, and what it will be once its signals on the way are done."""
        held = self.position(db, strategy, symbol)
        delta, closing = self.pending_delta(db, strategy, symbol)
        return held, 0 if closing else held + delta

    def pending_delta(self, db, strategy: str, symbol: str) -> tuple[int, bool]:
        """Shares the strategy's unfinished signals on a symbol will add (sells negative), and
        whether one of them closes the whole position. Staged signals (of a notebook run still going,
        which may yet fail) do not count."""
        rows = db.execute(
            f"SELECT signal_type, quantity, filled FROM signals WHERE strategy = ? AND symbol = ? "
            f"AND status NOT IN ({_FINAL_SQL}, 'staged')", (strategy, symbol)).fetchall()
        delta, closes = 0, False
        for row in rows:
            if row["quantity"] is None:
                closes = True
            elif row["signal_type"] in ("open_long", "add_long"):
                delta += row["quantity"] - row["filled"]
            else:
                delta -= row["quantity"] - row["filled"]
        return delta, closes

    def cancel_signal(self, signal_id: str) -> Signal:
        """Cancel a signal not yet sent at once; for one whose order is working, ask the runner to
        cancel it at IB. A final signal is left as it is."""
        with self.transaction() as db:
            row = db.execute("SELECT * FROM signals WHERE id = ?", (signal_id,)).fetchone()
            if row["status"] in ("staged",) + WAITING:
                return self.update_signal(signal_id, db, status="cancelled", reason="cancelled by the user")
            if row["status"] not in FINAL:
                return self.update_signal(signal_id, db, cancel_requested=1)
            return self._signal(row)

    def release_run(self, run_id: str) -> int:
        """A notebook run succeeded: its staged signals go to the runner."""
        with self.transaction() as db:
            return self._release_staged(db, run_id)

    def discard_run(self, run_id: str, reason: str) -> int:
        """A notebook run failed: none of its signals may trade. Their idempotency keys are set
        aside (suffixed with the run), so that a repeat of the run may emit them afresh."""
        with self.transaction() as db:
            return self._discard_staged(db, run_id, reason)

    # ------------------------------------------------------------ the gate's operations
    def in_flight(self, db, symbol: str, strategy: str | None = None) -> tuple[int, int]:
        """Shares still to buy and to sell by signals sent and not finished (of one strategy, or all)."""
        sql = (f"SELECT signal_type, order_quantity, filled FROM signals WHERE symbol = ? "
               f"AND status IN ({_IN_FLIGHT_SQL})")
        args = [symbol]
        if strategy is not None:
            sql += " AND strategy = ?"
            args.append(strategy)
        buying = selling = 0
        for row in db.execute(sql, args):
            left = (row["order_quantity"] or 0) - row["filled"]
            if SignalType(row["signal_type"]).side == "BUY":
                buying += left
            else:
                selling += left
        return buying, selling

    def submitting_refs(self, db, symbol: str) -> list[tuple[str, str, int]]:
        """(orderRef, side, shares) of signals recorded ``submitting``: sent, or about to be, and maybe
        not yet known to TWS."""
        rows = db.execute("SELECT id, signal_type, order_quantity FROM signals WHERE symbol = ? "
                          "AND status = 'submitting'", (symbol,)).fetchall()
        return [(f"qd-{r['id']}", SignalType(r["signal_type"]).side, r["order_quantity"] or 0) for r in rows]

    def orders_today(self, db, trading_day: str, strategy: str | None = None) -> int:
        """Orders sent on an exchange's ``trading_day`` (of one strategy, or all)."""
        sql, args = "SELECT COUNT(*) FROM orders WHERE trading_day = ?", [trading_day]
        if strategy is not None:
            sql += " AND strategy = ?"
            args.append(strategy)
        return db.execute(sql, args).fetchone()[0]

    def position(self, db, strategy: str, symbol: str) -> int:
        row = db.execute("SELECT quantity FROM positions WHERE strategy = ? AND symbol = ?",
                         (strategy, symbol)).fetchone()
        return row["quantity"] if row else 0

    def admit(self, judge, order: SentOrder, *, lease_holder: str | None = None) -> Signal | None:
        """Let an order go, atomically: ``judge(db)`` measures and checks it inside this transaction and
        raises to refuse it (nothing is written then); otherwise the order is journalled and, for a
        signal, the signal recorded ``submitting`` with its order id and size. A runner passes its
        ``lease_holder``: if it no longer holds the lease, ``LeaseLost`` is raised and nothing is sent."""
        with self.transaction() as db:
            if lease_holder is not None:
                row = db.execute("SELECT holder FROM lease WHERE name = 'runner'").fetchone()
                if row is None or row["holder"] != lease_holder:
                    raise LeaseLost(f"this runner lost the lease on the queue {self.path} to another runner; "
                                    f"it sends nothing more")
            judge(db)
            values = [getattr(order, f.name) for f in fields(SentOrder)]
            db.execute(f"INSERT INTO orders (sent_at, {', '.join(f.name for f in fields(SentOrder))}) "
                       f"VALUES (?, {', '.join('?' * len(values))})", (time.time(), *values))
            if order.signal_id:
                return self.update_signal(order.signal_id, db, status=SignalStatus.SUBMITTING,
                                          order_id=order.order_id, order_quantity=order.quantity, reason="")
        return None

    def read(self, reader):
        """``reader(db)`` over one consistent view of the queue (a transaction that writes nothing)."""
        with self.transaction() as db:
            return reader(db)

    def halted(self, db=None) -> str | None:
        """Why trading is halted (the kill switch), or None; within the caller's transaction ``db`` if given."""
        if db is None:
            return self.get(HALTED_KEY)
        row = db.execute("SELECT value FROM control WHERE key = ?", (HALTED_KEY,)).fetchone()
        return row["value"] if row else None

    def halt(self, reason: str, cancel_open: bool = False):
        """Throw the kill switch: no face sends an order until ``resume``. With ``cancel_open``, the
        runner also cancels every working order it placed."""
        with self.transaction() as db:
            db.execute("INSERT OR REPLACE INTO control VALUES (?, ?)", (HALTED_KEY, reason or "halted"))
            if cancel_open:
                db.execute("INSERT OR REPLACE INTO control VALUES (?, '1')", (CANCEL_OPEN_KEY,))
        log.warning("trading halted: %s", reason)

    def resume(self):
        self.set(HALTED_KEY, None)
        log.warning("trading resumed")

    # ------------------------------------------------------------ the runner's lease
    def take_lease(self, holder: str, ttl: float) -> Lease | None:
        """Take the runner's lease for ``ttl`` seconds if it is free, expired, held by a process of this
        host that is gone, or ours already; else return who holds it."""
        now = time.time()
        with self.transaction() as db:
            row = db.execute("SELECT * FROM lease WHERE name = 'runner'").fetchone()
            if row is not None and row["holder"] != holder and row["expires_at"] > now \
                    and _alive_here(row["host"], row["pid"]) is not False:
                return Lease(*(row[k] for k in ("holder", "host", "pid", "since", "expires_at")))
            db.execute("INSERT OR REPLACE INTO lease VALUES ('runner', ?, ?, ?, ?, ?)",
                       (holder, socket.gethostname(), os.getpid(), now, now + ttl))
        return None

    def renew_lease(self, holder: str, ttl: float):
        """Extend our lease; ``LeaseLost`` if another runner holds it now."""
        with self.transaction() as db:
            changed = db.execute("UPDATE lease SET expires_at = ? WHERE name = 'runner' AND holder = ?",
                                 (time.time() + ttl, holder)).rowcount
        if not changed:
            raise LeaseLost(f"this runner lost the lease on the queue {self.path} to another runner")

    def release_lease(self, holder: str):
        with self.transaction() as db:
            db.execute("DELETE FROM lease WHERE name = 'runner' AND holder = ?", (holder,))

    # ------------------------------------------------------------ fills and positions
    def record_fill(self, fill: Fill, currency: str) -> bool:
        """Record one execution and move the strategy's position; False if already recorded."""
        with self.transaction() as db:
            if db.execute("SELECT 1 FROM fills WHERE exec_id = ?", (fill.exec_id,)).fetchone():
                return False
            row = db.execute("SELECT * FROM positions WHERE strategy = ? AND symbol = ?",
                             (fill.strategy, fill.symbol)).fetchone()
            quantity, avg_cost, realized = (row["quantity"], row["avg_cost"], row["realized_pnl"]) if row else (0, 0.0, 0.0)
            if fill.side == "BUY":
                avg_cost = (quantity * avg_cost + fill.shares * fill.price + fill.commission) / (quantity + fill.shares)
                quantity += fill.shares
            else:
                fill.realized_pnl = fill.shares * (fill.price - avg_cost) - fill.commission
                realized += fill.realized_pnl
                quantity -= fill.shares
                avg_cost = avg_cost if quantity else 0.0
            db.execute("INSERT OR REPLACE INTO positions VALUES (?, ?, ?, ?, ?, ?)",
                       (fill.strategy, fill.symbol, currency, quantity, avg_cost, realized))
            values = [getattr(fill, f.name) for f in fields(Fill)]
            db.execute(f"INSERT INTO fills VALUES ({', '.join('?' * len(values))})", values)
        log.info("fill %s %s %s %d %s @ %g (commission %g %s)", fill.exec_id, fill.strategy, fill.side,
                 fill.shares, fill.symbol, fill.price, fill.commission, fill.commission_currency)
        return True

    def positions(self, strategy: str | None = None) -> list[StrategyPosition]:
        sql = "SELECT * FROM positions" + (" WHERE strategy = ?" if strategy else "") + " ORDER BY strategy, symbol"
        return [StrategyPosition(**dict(r)) for r in self._query(sql, (strategy,) if strategy else ())]

    def fills(self, strategy: str | None = None) -> list[Fill]:
        sql = "SELECT * FROM fills" + (" WHERE strategy = ?" if strategy else "") + " ORDER BY time, exec_id"
        return [Fill(**dict(r)) for r in self._query(sql, (strategy,) if strategy else ())]

    # ------------------------------------------------------------ board lots and control flags
    def board_lot(self, symbol: str) -> int | None:
        rows = self._query("SELECT lot FROM board_lots WHERE symbol = ?", (symbol,))
        return rows[0]["lot"] if rows else None

    def remember_board_lot(self, symbol: str, lot: int):
        with self.transaction() as db:
            db.execute("INSERT OR REPLACE INTO board_lots VALUES (?, ?)", (symbol, int(lot)))

    def get(self, key: str, default: str | None = None) -> str | None:
        rows = self._query("SELECT value FROM control WHERE key = ?", (key,))
        return rows[0]["value"] if rows else default

    def set(self, key: str, value: str | None):
        with self.transaction() as db:
            if value is None:
                db.execute("DELETE FROM control WHERE key = ?", (key,))
            else:
                db.execute("INSERT OR REPLACE INTO control VALUES (?, ?)", (key, value))

    # ------------------------------------------------------------ notebook runs
    # A run records its owner, the process executing it (``owner_pid`` on ``owner_host``, which started
    # ``owner_started`` clock ticks after the host booted), so that a run left ``running`` by a killed
    # process can be told from one still going in another, and a pid reused since from its owner.
    # The columns are added to an older database on first use (see ``_run_owner_columns``).
    RUN_OWNER_COLUMNS = {"owner_pid": "INTEGER", "owner_host": "TEXT", "owner_started": "INTEGER"}

    def _run_owner_columns(self):
        """Add the owner columns to ``runs`` if this database predates them: checked and altered in
        one transaction, so that two processes upgrading at once do not both add them."""
        if getattr(self, "_runs_have_owner", False):
            return
        with self.transaction() as db:
            present = {row["name"] for row in db.execute("PRAGMA table_info(runs)")}
            for column, kind in self.RUN_OWNER_COLUMNS.items():
                if column not in present:
                    db.execute(f"ALTER TABLE runs ADD COLUMN {column} {kind}")
        self._runs_have_owner = True

    @staticmethod
    def _run(row) -> Run:
        return Run(**{f.name: row[f.name] for f in fields(Run)})

    def start_run(self, **values) -> Run:
        """Record a run that is starting (or, with ``status="skipped"``, a slot passed over), owned
        by this process."""
        self._run_owner_columns()
        values = {"id": uuid.uuid4().hex, "started_at": time.time(), "status": "running",
                  **_this_process(), **values}
        with self.transaction() as db:
            db.execute(f"INSERT INTO runs ({', '.join(values)}) VALUES ({', '.join('?' * len(values))})",
                       tuple(values.values()))
        return self.run(values["id"])

    def skip_slot(self, job: str, slot: float, **values) -> Run | None:
        """Record ``job``'s ``slot`` as passed over (``error``: why), unless a run for it or a later
        slot is recorded already (by another process, say); then None."""
        self._run_owner_columns()
        now = time.time()
        values = {"id": uuid.uuid4().hex, "job": job, "slot": slot, "status": "skipped", "started_at": now,
                  "finished_at": now, **_this_process(), **values}
        with self.transaction() as db:
            if db.execute("SELECT 1 FROM runs WHERE job = ? AND slot >= ?", (job, slot)).fetchone():
                return None
            db.execute(f"INSERT INTO runs ({', '.join(values)}) VALUES ({', '.join('?' * len(values))})",
                       tuple(values.values()))
        return self.run(values["id"])

    def finish_run(self, run_id: str, status: str, **changes) -> Run:
        """Record how a run ended: its status, and output_path, signals or error."""
        changes = {"status": status, "finished_at": time.time(), **changes}
        with self.transaction() as db:
            db.execute(f"UPDATE runs SET {', '.join(f'{k} = ?' for k in changes)} WHERE id = ?",
                       (*changes.values(), run_id))
        return self.run(run_id)

    def succeed_run(self, run_id: str, **changes) -> Run:
        """A run's notebook succeeded: release its staged signals to the runner and record it
        ``succeeded`` with their number, in one transaction (a process killed in between leaves
        neither a failed run whose signals trade nor a succeeded one whose signals never do). A
        run no longer ``running`` (stopped, or failed as an orphan meanwhile) is left as it is."""
        with self.transaction() as db:
            if db.execute("SELECT status FROM runs WHERE id = ?", (run_id,)).fetchone()["status"] == "running":
                released = self._release_staged(db, run_id)
                changes = {"status": "succeeded", "finished_at": time.time(), "signals": released, **changes}
                db.execute(f"UPDATE runs SET {', '.join(f'{k} = ?' for k in changes)} WHERE id = ?",
                           (*changes.values(), run_id))
        return self.run(run_id)

    def fail_run(self, run_id: str, error: str, **changes) -> Run:
        """Record a ``running`` run ``failed`` with ``error`` and cancel its staged signals, in one
        transaction; a run that has ended already is left as it is (the first end recorded holds)."""
        with self.transaction() as db:
            row = db.execute("SELECT status FROM runs WHERE id = ?", (run_id,)).fetchone()
            if row["status"] == "running":
                self._fail_runs(db, [run_id], error, **changes)
        return self.run(run_id)

    def fail_orphaned_runs(self) -> list[Run]:
        """Record ``failed``, their staged signals cancelled, the runs left ``running`` by a process
        that has ended (killed: SIGKILL, a crash, a power cut): those owned by this host whose owner
        process is gone, or whose pid now belongs to a process started after the run (reused), and
        those recorded before runs had owners. Runs of live processes and of other hosts are left
        alone. Staged signals left behind by a failed run are cancelled too. One transaction."""
        self._run_owner_columns()
        host = _this_host()
        with self.transaction() as db:
            orphans = []
            for row in db.execute("SELECT id, started_at, owner_pid, owner_host, owner_started FROM runs "
                                  "WHERE status = 'running'"):
                if row["owner_host"] is None:
                    orphans.append((row["id"], "left running by a process of an earlier qdibkr version, now "
                                               "presumed ended"))
                elif row["owner_host"] == host and not _process_owns(row["owner_pid"], row["owner_started"],
                                                                     row["started_at"]):
                    orphans.append((row["id"], f"left running by process {row['owner_pid']} on {host}, which "
                                               f"has ended (killed?) without recording how the run ended"))
            for run_id, error in orphans:
                self._fail_runs(db, [run_id], error)
            left = [row["id"] for row in db.execute(
                "SELECT DISTINCT runs.id FROM runs JOIN signals ON signals.run_id = runs.id "
                "WHERE runs.status = 'failed' AND signals.status = 'staged'")]
            for run_id in left:
                error = db.execute("SELECT error FROM runs WHERE id = ?", (run_id,)).fetchone()["error"]
                self._discard_staged(db, run_id, f"notebook run {run_id[:8]} failed: {error}")
        runs = [self.run(run_id) for run_id, _ in orphans]
        for run in runs:
            log.warning("run %s of %s: %s", run.id[:8], run.notebook, run.error)
        return runs

    def _fail_runs(self, db, run_ids: list[str], error: str, **changes):
        changes = {"status": "failed", "finished_at": time.time(), "error": error, **changes}
        for run_id in run_ids:
            db.execute(f"UPDATE runs SET {', '.join(f'{k} = ?' for k in changes)} WHERE id = ?",
                       (*changes.values(), run_id))
            self._discard_staged(db, run_id, f"notebook run {run_id[:8]} failed: {error}")

    @staticmethod
    def _release_staged(db, run_id: str) -> int:
        """``release_run`` within the caller's transaction."""
        return db.execute("UPDATE signals SET status = 'pending', updated_at = ? WHERE run_id = ? "
                          "AND status = 'staged'", (time.time(), run_id)).rowcount

    @staticmethod
    def _discard_staged(db, run_id: str, reason: str) -> int:
        """``discard_run`` within the caller's transaction: the run's staged signals cancelled, their
        idempotency keys set aside so that a repeat of the run may emit them afresh."""
        return db.execute("UPDATE signals SET status = 'cancelled', reason = ?, updated_at = ?, "
                          "idempotency_key = idempotency_key || ' discarded by run ' || run_id "
                          "WHERE run_id = ? AND status = 'staged'", (reason, time.time(), run_id)).rowcount

    def run(self, run_id: str) -> Run | None:
        rows = self._query("SELECT * FROM runs WHERE id = ?", (run_id,))
        return self._run(rows[0]) if rows else None

    def runs(self, job: str | None = None, limit: int | None = None) -> list[Run]:
        """Runs, the latest last; of one job if given."""
        sql = "SELECT * FROM runs" + (" WHERE job = ?" if job else "") + " ORDER BY started_at DESC"
        if limit:
            sql += f" LIMIT {int(limit)}"
        return [self._run(r) for r in reversed(self._query(sql, (job,) if job else ()))]

    def last_slot(self, job: str) -> float | None:
        """The latest schedule slot a job has run for, or passed over."""
        return self._query("SELECT MAX(slot) FROM runs WHERE job = ?", (job,))[0][0]


def _this_host() -> str:
    import socket

    return socket.gethostname()


def _process_start(pid: int) -> tuple[str, int] | None:
    """Process ``pid``'s state letter and when it started, in clock ticks after the host booted (from
    /proc/<pid>/stat); None where there is no /proc (macOS) or no such process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return stat[0], int(stat[19])
    except (OSError, IndexError, ValueError):
        return None


def _this_process() -> dict:
    """The owner columns of a run this process records."""
    started = _process_start(os.getpid())
    return {"owner_pid": os.getpid(), "owner_host": _this_host(), "owner_started": started and started[1]}


def _process_owns(pid: int | None, started_ticks: int | None, since: float) -> bool:
    """Whether process ``pid`` of this host is alive and is the one that recorded a run: not a zombie,
    and (where /proc tells) started at the ``started_ticks`` recorded with the run (else its pid was
    reused). The start is compared in the kernel's ticks since boot, never with the wall clock, which
    may be set back or forward meanwhile. A run recorded without them (by an earlier qdibkr) is owned
    by a process started no later than the run (``since``)."""
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: alive
        pass
    state = _process_start(pid)
    if state is None:
        return True  # no /proc (macOS): alive is all we know
    letter, ticks = state
    if letter in ("Z", "X"):  # ended, not yet reaped by its parent
        return False
    if started_ticks is not None:
        return ticks == started_ticks
    try:
        boot = next(float(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines()
                    if line.startswith("btime "))
    except (OSError, StopIteration):
        return True
    return boot + ticks / os.sysconf("SC_CLK_TCK") <= since + 2  # btime is whole seconds
