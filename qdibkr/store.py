"""The durable pending-order queue: signals, their orders' progress, fills and per-strategy positions.

All SQL lives here, kept plain (no SQLite-only tricks beyond the pragmas) so a
PostgreSQL backend can follow. The default is a SQLite file in WAL mode at
``QDIBKR_DB``, the config file's ``[queue] db``, or ``~/.local/share/qdibkr/queue.sqlite``.
Every state change is one transaction; WAL with ``synchronous=NORMAL`` keeps
every committed change through a crash of any process (a power cut may lose
the last moment).

A signal's life: ``staged`` (emitted by a notebook run still in progress) ->
``pending`` -> ``held`` (a risk rule or the trading hours hold it) ->
``submitting`` (written before the order is sent) -> ``submitted`` ->
``partially_filled`` -> ``filled``; or it ends ``cancelled`` or ``rejected``
with a reason.

A notebook run (``qdibkr run``, a scheduled job) is recorded in ``runs``:
``running`` -> ``succeeded`` or ``failed``; a schedule slot passed over is
recorded ``skipped``.
"""

import logging
import os
import sqlite3
import threading
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, fields
from pathlib import Path

log = logging.getLogger("qdibkr.queue")

FINAL = ("filled", "cancelled", "rejected")
STATUSES = ("staged", "pending", "held", "submitting", "submitted", "partially_filled") + FINAL
DEFAULT_DB = Path("~/.local/share/qdibkr/queue.sqlite")

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
        return "BUY" if self.signal_type in ("open_long", "add_long") else "SELL"

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


def default_path(config_db: str | None = None) -> Path:
    return Path(os.environ.get("QDIBKR_DB") or config_db or DEFAULT_DB).expanduser()


class Store:
    """One process's handle on the queue database; safe to share between threads."""

    def __init__(self, path: str | os.PathLike | None = None):
        self.path = Path(path).expanduser() if path else default_path()
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
        """Every signal not yet final, in emission order."""
        return self.signals(statuses=[s for s in STATUSES if s not in FINAL and s != "staged"])

    def update_signal(self, signal_id: str, db=None, **changes) -> Signal:
        """Change a signal's columns (its status among them) in one transaction, and log it."""
        changes["updated_at"] = time.time()
        assignments = ", ".join(f"{k} = ?" for k in changes)
        if db is None:
            with self.transaction() as db:
                return self.update_signal(signal_id, db, **changes)
        db.execute(f"UPDATE signals SET {assignments} WHERE id = ?", (*changes.values(), signal_id))
        signal = self._signal(db.execute("SELECT * FROM signals WHERE id = ?", (signal_id,)).fetchone())
        if "status" in changes:
            log.info("signal %s %s %s %s: %s%s", signal.id[:8], signal.strategy, signal.signal_type, signal.symbol,
                     signal.status, f" ({signal.reason})" if signal.reason else "")
        return signal

    def pending_delta(self, db, strategy: str, symbol: str) -> tuple[int, bool]:
        """Shares the strategy's unfinished signals on a symbol will add (sells negative), and
        whether one of them closes the whole position."""
        rows = db.execute(
            f"SELECT signal_type, quantity, filled FROM signals WHERE strategy = ? AND symbol = ? "
            f"AND status NOT IN ({', '.join('?' * len(FINAL))})", (strategy, symbol, *FINAL)).fetchall()
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
            if row["status"] in ("staged", "pending", "held"):
                return self.update_signal(signal_id, db, status="cancelled", reason="cancelled by the user")
            if row["status"] not in FINAL:
                return self.update_signal(signal_id, db, cancel_requested=1)
            return self._signal(row)

    def release_run(self, run_id: str) -> int:
        """A notebook run succeeded: its staged signals go to the runner."""
        with self.transaction() as db:
            return db.execute("UPDATE signals SET status = 'pending', updated_at = ? WHERE run_id = ? "
                              "AND status = 'staged'", (time.time(), run_id)).rowcount

    def discard_run(self, run_id: str, reason: str) -> int:
        """A notebook run failed: none of its signals may trade. Their idempotency keys are set
        aside (suffixed with the run), so that a repeat of the run may emit them afresh."""
        with self.transaction() as db:
            return db.execute("UPDATE signals SET status = 'cancelled', reason = ?, updated_at = ?, "
                              "idempotency_key = idempotency_key || ' discarded by run ' || run_id "
                              "WHERE run_id = ? AND status = 'staged'", (reason, time.time(), run_id)).rowcount

    def orders_today(self, strategy: str | None, since: float) -> int:
        sql = "SELECT COUNT(*) FROM signals WHERE order_id IS NOT NULL AND created_at >= ?"
        args = [since]
        if strategy:
            sql += " AND strategy = ?"
            args.append(strategy)
        return self._query(sql, args)[0][0]

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

    def position(self, db, strategy: str, symbol: str) -> int:
        row = db.execute("SELECT quantity FROM positions WHERE strategy = ? AND symbol = ?",
                         (strategy, symbol)).fetchone()
        return row["quantity"] if row else 0

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
    # A run records its owner, the process executing it (``owner_pid`` on ``owner_host``), so that
    # a run left ``running`` by a killed process can be told from one still going in another.
    # The columns are added to an older database on first use (see ``_run_owner_columns``).
    RUN_OWNER_COLUMNS = {"owner_pid": "INTEGER", "owner_host": "TEXT"}

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
                  "owner_pid": os.getpid(), "owner_host": _this_host(), **values}
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
                  "finished_at": now, "owner_pid": os.getpid(), "owner_host": _this_host(), **values}
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
                released = db.execute("UPDATE signals SET status = 'pending', updated_at = ? WHERE run_id = ? "
                                      "AND status = 'staged'", (time.time(), run_id)).rowcount
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
            for row in db.execute("SELECT id, started_at, owner_pid, owner_host FROM runs WHERE status = 'running'"):
                if row["owner_host"] is None:
                    orphans.append((row["id"], "left running by a process of an earlier qdibkr version, now "
                                               "presumed ended"))
                elif row["owner_host"] == host and not _process_owns(row["owner_pid"], row["started_at"]):
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


def _process_owns(pid: int | None, since: float) -> bool:
    """Whether process ``pid`` of this host is alive and may own a run started at ``since``: not a
    zombie, and (where /proc tells) started no later than the run (else its pid was reused)."""
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: alive
        pass
    try:
        stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        boot = next(float(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines()
                    if line.startswith("btime "))
    except (OSError, StopIteration, IndexError, ValueError):
        return True  # no /proc (macOS): alive is all we know
    if stat[0] in ("Z", "X"):  # ended, not yet reaped by its parent
        return False
    started = boot + int(stat[19]) / os.sysconf("SC_CLK_TCK")
    return started <= since + 2  # btime is whole seconds
