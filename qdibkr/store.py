"""The durable pending-order queue: signals, their orders' progress, fills and per-strategy positions.

All SQL lives here, written once for both databases a queue can live in
(``databases.py``): a SQLite file (``config.queue_location``, the default) for
one host, or PostgreSQL (``QDIBKR_DB=postgresql://user@host/db``) for a desk whose
notebooks run on several hosts and whose one runner sits beside TWS. Every
operation is atomic inside the store (one transaction, named for what it does:
emit, admit an order, record a fill, halt, take the runner's lease...), so
callers never hold a transaction, and no writer on any host interleaves with
it. Opening a store brings the database's schema to this version (``MIGRATIONS``).

Every order sent, from any face, is journalled in ``orders`` by the gate in
the same transaction that checked it, and counted per trading day in
``order_counts``: what "orders per day" reads. The cost of an order does not
grow with the signals ever stored: each change to a signal takes the next
revision (``changed_since`` reads only what changed), statuses are counted as
they change, every per-order query has its index, and finished signals can be
moved to archive tables (``archive``, ``qdibkr queue archive``).

One runner per queue: the runner holds a lease in the ``lease`` row, renewed
while it lives; whatever path reaches the file (a symlink, a relative path), or
whichever host, a second runner finds the lease taken.

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
import time
from dataclasses import dataclass, fields
from pathlib import Path

from .databases import QueueUnavailable, Taken, open_database
from .errors import QdibkrError
from .model import FINAL, IN_FLIGHT, WAITING, SignalStatus, SignalType, check_transition

log = logging.getLogger("qdibkr.queue")

HALTED_KEY, CANCEL_OPEN_KEY, WAKE_PORT_KEY = "halted", "cancel_open", "runner.wake_port"
_FINAL_SQL = ", ".join(f"'{s}'" for s in FINAL)
_IN_FLIGHT_SQL = ", ".join(f"'{s}'" for s in IN_FLIGHT)
# Signals whose shares still count in a strategy's projected position: emitted and not final (a staged
# signal's run may yet fail). Listed rather than excluded, so the (strategy, symbol, status) index seeks.
_ON_THE_WAY_SQL = ", ".join(f"'{s}'" for s in WAITING + IN_FLIGHT)

# The schema, version by version: a database is brought to the last one when the store opens it, in one
# transaction, whichever backend (DDL in SQLite's words; ``databases.PostgreSQL.ddl`` translates).
# Version 1 is the queue as first released (a database from before versions existed has its tables).
MIGRATIONS: list[tuple[int, str, list[str]]] = [
    (1, "the queue as first released", [
        """CREATE TABLE IF NOT EXISTS signals (
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
            cancel_requested INTEGER NOT NULL DEFAULT 0)""",
        "CREATE INDEX IF NOT EXISTS signals_status ON signals (status)",
        """CREATE TABLE IF NOT EXISTS orders (
            seq INTEGER PRIMARY KEY AUTOINCREMENT,
            sent_at REAL NOT NULL,
            trading_day TEXT NOT NULL,
            origin TEXT NOT NULL,
            strategy TEXT,
            symbol TEXT NOT NULL,
            side TEXT NOT NULL,
            quantity INTEGER NOT NULL,
            order_id INTEGER,
            signal_id TEXT)""",
        "CREATE INDEX IF NOT EXISTS orders_day ON orders (trading_day, strategy)",
        """CREATE TABLE IF NOT EXISTS lease (
            name TEXT PRIMARY KEY,
            holder TEXT NOT NULL,
            host TEXT NOT NULL,
            pid INTEGER NOT NULL,
            since REAL NOT NULL,
            expires_at REAL NOT NULL)""",
        """CREATE TABLE IF NOT EXISTS fills (
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
            realized_pnl REAL)""",
        """CREATE TABLE IF NOT EXISTS positions (
            strategy TEXT NOT NULL,
            symbol TEXT NOT NULL,
            currency TEXT NOT NULL,
            quantity INTEGER NOT NULL,
            avg_cost REAL NOT NULL,
            realized_pnl REAL NOT NULL,
            PRIMARY KEY (strategy, symbol))""",
        "CREATE TABLE IF NOT EXISTS board_lots (symbol TEXT PRIMARY KEY, lot INTEGER NOT NULL)",
        """CREATE TABLE IF NOT EXISTS runs (
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
            error TEXT NOT NULL DEFAULT '')""",
        "CREATE INDEX IF NOT EXISTS runs_job_slot ON runs (job, slot)",
        "CREATE TABLE IF NOT EXISTS control (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    ]),
    # A run records its owner, the process executing it (``owner_pid`` on ``owner_host``, which started
    # ``owner_started`` clock ticks after the host booted), so that a run left ``running`` by a killed
    # process can be told from one still going in another, and a pid reused since from its owner.
    # (Added only where missing: qdibkr versions before schema versions added them on first use.)
    (2, "runs record the process that owns them", [
        "ALTER TABLE runs ADD COLUMN owner_pid INTEGER",
        "ALTER TABLE runs ADD COLUMN owner_host TEXT",
        "ALTER TABLE runs ADD COLUMN owner_started INTEGER",
    ]),
    # The cost of an order must not grow with the signals ever stored: every change to a signal takes
    # the next ``revision`` (so the runner reads only what changed since it last looked), counters answer
    # "signals by status" and "orders today", indexes serve each per-order query, and finished signals
    # can be moved out of the way to the archive tables (``Store.archive``).
    (3, "cost per order independent of the queue's size", [
        "ALTER TABLE signals ADD COLUMN rev INTEGER NOT NULL DEFAULT 0",
        "UPDATE signals SET rev = seq",
        "CREATE INDEX signals_rev ON signals (rev)",
        "DROP INDEX IF EXISTS signals_strategy_symbol",
        "CREATE INDEX signals_strategy_symbol_status ON signals (strategy, symbol, status)",
        "CREATE INDEX signals_symbol_status ON signals (symbol, status)",
        "CREATE INDEX signals_strategy_seq ON signals (strategy, seq)",
        "CREATE INDEX signals_run ON signals (run_id)",
        "CREATE INDEX fills_signal ON fills (signal_id)",
        "CREATE TABLE counters (name TEXT PRIMARY KEY, n INTEGER NOT NULL)",
        "INSERT INTO counters SELECT 'revision', COALESCE(MAX(rev), 0) FROM signals",
        "INSERT INTO counters SELECT 'status.' || status, COUNT(*) FROM signals GROUP BY status",
        """CREATE TABLE order_counts (
            trading_day TEXT NOT NULL,
            strategy TEXT NOT NULL,
            n INTEGER NOT NULL,
            PRIMARY KEY (trading_day, strategy))""",
        "INSERT INTO order_counts SELECT trading_day, COALESCE(strategy, ''), COUNT(*) FROM orders GROUP BY 1, 2",
        "CREATE TABLE signals_archive AS SELECT * FROM signals WHERE 1 = 0",
        "CREATE TABLE fills_archive AS SELECT * FROM fills WHERE 1 = 0",
    ]),
]
SCHEMA_VERSION = MIGRATIONS[-1][0]


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


# The columns a row is read into, named once (``dataclasses.fields`` is slow to ask per row).
_SIGNAL_COLUMNS = tuple(f.name for f in fields(Signal))
_RUN_COLUMNS = tuple(f.name for f in fields(Run))


class LeaseLost(QdibkrError):
    """The runner no longer holds the queue's lease: another runner took it (this one stalled past its expiry)."""


def _alive_here(host: str, pid: int) -> bool | None:
    """Whether process ``pid`` lives, if it is on this host (None: another host, which only the lease's
    expiry can tell about)."""
    if host != _this_host():
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Store:
    """One process's handle on the queue (a SQLite file's path, or a PostgreSQL URL); safe to share
    between threads. Opening it brings the database's schema to this version of qdibkr."""

    def __init__(self, where: str | os.PathLike):
        self.db = open_database(where if isinstance(where, str) else os.fspath(where))
        self.where = self.db.shown  # for people: a path, or a URL without its password
        self.location = self.db.location  # for a child process (QDIBKR_DB): the full path or URL
        self._migrate()

    def close(self):
        self.db.close()

    def _migrate(self):
        """Bring the schema to ``SCHEMA_VERSION``, in one transaction (two processes opening an old
        queue at once: the second finds it done). Newer than this qdibkr knows: refused."""
        with self.db.read() as db:
            if self._version(db) == SCHEMA_VERSION:
                return
        with self.transaction() as db:
            db.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
            version = self._version(db)
            if version > SCHEMA_VERSION:
                raise QdibkrError(f"the queue {self.where} has schema version {version}, newer than this qdibkr "
                                  f"knows ({SCHEMA_VERSION}): upgrade qdibkr (pip install -U qdibkr)")
            for number, what, statements in MIGRATIONS:
                if number <= version:
                    continue
                for statement in statements:
                    words = statement.split()
                    if words[:2] == ["ALTER", "TABLE"] and words[3:5] == ["ADD", "COLUMN"] \
                            and words[5] in self.db.columns(db, words[2]):
                        continue  # added by a qdibkr from before schema versions
                    db.execute(self.db.ddl(statement))
                log.info("queue %s: schema version %d (%s)", self.where, number, what)
            db.execute("DELETE FROM schema_version")
            db.execute("INSERT INTO schema_version VALUES (?)", (SCHEMA_VERSION,))
            self.db.analyze(db, "signals, fills, orders")

    def _version(self, db) -> int:
        """The schema version recorded in the database (0: a new database, or one from before versions)."""
        if not self.db.columns(db, "schema_version"):
            return 0
        row = db.execute("SELECT version FROM schema_version").fetchone()
        return row["version"] if row else 0

    def transaction(self):
        """One atomic change: no other writer, on any host, interleaves with it."""
        return self.db.write()

    def read(self, reader):
        """``reader(db)`` over one consistent view of the queue (a transaction that writes nothing)."""
        with self.db.read() as db:
            return reader(db)

    def _query(self, sql: str, args=()) -> list:
        return self.db.query(sql, args)

    def data_version(self) -> int:
        """A number that changes whenever another connection (the runner, say) commits a change:
        a cheap way to watch the queue."""
        return self.db.data_version()

    # ------------------------------------------------------------ counters
    @staticmethod
    def _count(db, name: str, by: int):
        db.execute("INSERT INTO counters VALUES (?, ?) ON CONFLICT (name) DO UPDATE SET n = counters.n + ?",
                   (name, by, by))

    @staticmethod
    def _next_revision(db) -> int:
        """The number the next change to signals is stamped with: every change, committed or not, has a
        higher one than any committed before it (writers run one at a time)."""
        # fetchall: SQLite finishes a statement with RETURNING only once all its rows are read
        return db.execute("UPDATE counters SET n = n + 1 WHERE name = 'revision' RETURNING n").fetchall()[0]["n"]

    def status_counts(self) -> dict[str, int]:
        """Signals by status, from counters kept with every change (not a count of the table)."""
        rows = self._query("SELECT name, n FROM counters WHERE name LIKE 'status.%' AND n > 0")
        return {row["name"][len("status."):]: row["n"] for row in rows}

    # ------------------------------------------------------------ signals
    @staticmethod
    def _signal(row) -> Signal:
        return Signal(**{name: row[name] for name in _SIGNAL_COLUMNS})

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
        values = {"id": _new_id(), "created_at": now, "updated_at": now, **values,
                  "rev": self._next_revision(db)}
        columns = ", ".join(values)
        db.execute(f"INSERT INTO signals ({columns}) VALUES ({', '.join('?' * len(values))})", tuple(values.values()))
        self._count(db, f"status.{values['status']}", 1)
        signal = self._signal(db.execute("SELECT * FROM signals WHERE id = ?", (values["id"],)).fetchone())
        log.info("signal %s %s %s %s %s: %s", signal.id[:8], signal.strategy, signal.signal_type, signal.symbol,
                 signal.quantity if signal.quantity is not None else "all", signal.status)
        return signal

    def signal(self, signal_id: str) -> Signal | None:
        rows = self._query("SELECT * FROM signals WHERE id = ?", (signal_id,))
        return self._signal(rows[0]) if rows else None

    def find_signal(self, id_start: str) -> Signal | None:
        """The one signal whose id starts so (as `qdibkr queue` shows ids cut short), else None."""
        # Ids are lowercase hex: those starting with `abc` lie in [abc, abc~), which the id's index finds.
        rows = self._query("SELECT * FROM signals WHERE id >= ? AND id < ? LIMIT 2",
                           (id_start.lower(), f"{id_start.lower()}~"))
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

    def open_signals(self) -> tuple[list[Signal], int]:
        """Every signal the runner has to mind (waiting or in flight), in emission order, and the
        revision they are as of (``changed_since`` tells what changed after it)."""
        def read(db):
            revision = db.execute("SELECT n FROM counters WHERE name = 'revision'").fetchone()["n"]
            rows = db.execute(f"SELECT * FROM signals WHERE status IN ({_ON_THE_WAY_SQL}) ORDER BY seq").fetchall()
            return [self._signal(r) for r in rows], revision
        return self.read(read)

    def changed_since(self, revision: int) -> tuple[list[Signal], int]:
        """The signals changed (or new) after ``revision``, and the revision they are as of: what a
        watcher reads instead of the whole queue."""
        rows = self._query("SELECT * FROM signals WHERE rev > ? ORDER BY rev", (revision,))
        return [self._signal(r) for r in rows], max((r["rev"] for r in rows), default=revision)

    def update_signal(self, signal_id: str, db=None, **changes) -> Signal:
        """Change a signal's columns (its status among them) in one transaction, and log it."""
        if db is None:
            with self.transaction() as db:
                return self.update_signal(signal_id, db, **changes)
        changes["updated_at"] = time.time()
        changes["rev"] = self._next_revision(db)
        if "status" in changes:
            old = db.execute("SELECT status FROM signals WHERE id = ?", (signal_id,)).fetchone()["status"]
            check_transition(signal_id, old, changes["status"])
            if old != changes["status"]:
                self._count(db, f"status.{old}", -1)
                self._count(db, f"status.{changes['status']}", 1)
        assignments = ", ".join(f"{k} = ?" for k in changes)
        signal = self._signal(db.execute(f"UPDATE signals SET {assignments} WHERE id = ? RETURNING *",
                                         (*changes.values(), signal_id)).fetchall()[0])
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
            f"AND status IN ({_ON_THE_WAY_SQL})", (strategy, symbol)).fetchall()
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
            return self._end_staging(db, run_id)

    def discard_run(self, run_id: str, reason: str) -> int:
        """A notebook run failed: none of its signals may trade. Their idempotency keys are set
        aside (suffixed with the run), so that a repeat of the run may emit them afresh."""
        with self.transaction() as db:
            return self._end_staging(db, run_id, reason)

    def archive(self, older_than: float) -> int:
        """Move finished signals last changed more than ``older_than`` seconds ago, with their fills, to
        the archive tables, where nothing on the way of an order reads them; returns how many moved."""
        before = time.time() - older_than
        old = f"status IN ({_FINAL_SQL}) AND updated_at < ?"
        with self.transaction() as db:
            by_status = db.execute(f"SELECT status, COUNT(*) AS n FROM signals WHERE {old} GROUP BY status",
                                   (before,)).fetchall()
            db.execute(f"INSERT INTO fills_archive SELECT * FROM fills WHERE signal_id IN "
                       f"(SELECT id FROM signals WHERE {old})", (before,))
            db.execute(f"DELETE FROM fills WHERE signal_id IN (SELECT id FROM signals WHERE {old})", (before,))
            db.execute(f"INSERT INTO signals_archive SELECT * FROM signals WHERE {old}", (before,))
            moved = db.execute(f"DELETE FROM signals WHERE {old}", (before,)).rowcount
            for row in by_status:
                self._count(db, f"status.{row['status']}", -row["n"])
            self.db.analyze(db, "signals, fills")
        log.info("archived %d finished signals of %s", moved, self.where)
        return moved

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
        """Orders sent on an exchange's ``trading_day`` (of one strategy, or all), from the counts
        ``admit`` keeps."""
        sql, args = "SELECT COALESCE(SUM(n), 0) AS n FROM order_counts WHERE trading_day = ?", [trading_day]
        if strategy is not None:
            sql += " AND strategy = ?"
            args.append(strategy)
        return db.execute(sql, args).fetchone()["n"]

    def position(self, db, strategy: str, symbol: str) -> int:
        row = db.execute("SELECT quantity FROM positions WHERE strategy = ? AND symbol = ?",
                         (strategy, symbol)).fetchone()
        return row["quantity"] if row else 0

    def admit(self, judge, order: SentOrder, *, lease_holder: str | None = None) -> Signal | None:
        """Let an order go, atomically: ``judge(db)`` measures and checks it inside this transaction and
        raises to refuse it (nothing is written then); otherwise the order is journalled and counted and,
        for a signal, the signal recorded ``submitting`` with its order id and size. A runner passes its
        ``lease_holder``: if it no longer holds the lease, ``LeaseLost`` is raised and nothing is sent."""
        with self.transaction() as db:
            if lease_holder is not None:
                row = db.execute("SELECT holder FROM lease WHERE name = 'runner'").fetchone()
                if row is None or row["holder"] != lease_holder:
                    raise LeaseLost(f"this runner lost the lease on the queue {self.where} to another runner; "
                                    f"it sends nothing more")
            judge(db)
            values = [getattr(order, f.name) for f in fields(SentOrder)]
            db.execute(f"INSERT INTO orders (sent_at, {', '.join(f.name for f in fields(SentOrder))}) "
                       f"VALUES (?, {', '.join('?' * len(values))})", (time.time(), *values))
            db.execute("INSERT INTO order_counts VALUES (?, ?, 1) ON CONFLICT (trading_day, strategy) "
                       "DO UPDATE SET n = order_counts.n + 1", (order.trading_day, order.strategy or ""))
            if order.signal_id:
                return self.update_signal(order.signal_id, db, status=SignalStatus.SUBMITTING,
                                          order_id=order.order_id, order_quantity=order.quantity, reason="")
        return None

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
            self._set(db, HALTED_KEY, reason or "halted")
            if cancel_open:
                self._set(db, CANCEL_OPEN_KEY, "1")
        log.warning("trading halted: %s", reason)

    def resume(self):
        self.set(HALTED_KEY, None)
        log.warning("trading resumed")

    # ------------------------------------------------------------ the runner's lease and wake-ups
    def take_lease(self, holder: str, ttl: float) -> Lease | None:
        """Take the runner's lease for ``ttl`` seconds if it is free, expired, held by a process of this
        host that is gone, or ours already; else return who holds it. Expiry is judged by the database's
        clock (PostgreSQL: the server's, one clock for every host)."""
        with self.transaction() as db:
            now = self.db.now(db)
            row = db.execute("SELECT * FROM lease WHERE name = 'runner'").fetchone()
            if row is not None and row["holder"] != holder and row["expires_at"] > now \
                    and _alive_here(row["host"], row["pid"]) is not False:
                return Lease(*(row[k] for k in ("holder", "host", "pid", "since", "expires_at")))
            db.execute("INSERT INTO lease VALUES ('runner', ?, ?, ?, ?, ?) ON CONFLICT (name) DO UPDATE SET "
                       "holder = excluded.holder, host = excluded.host, pid = excluded.pid, "
                       "since = excluded.since, expires_at = excluded.expires_at",
                       (holder, _this_host(), os.getpid(), now, now + ttl))
        return None

    def renew_lease(self, holder: str, ttl: float):
        """Extend our lease; ``LeaseLost`` if another runner holds it now."""
        with self.transaction() as db:
            changed = db.execute("UPDATE lease SET expires_at = ? WHERE name = 'runner' AND holder = ?",
                                 (self.db.now(db) + ttl, holder)).rowcount
        if not changed:
            raise LeaseLost(f"this runner lost the lease on the queue {self.where} to another runner")

    def release_lease(self, holder: str):
        with self.transaction() as db:
            db.execute("DELETE FROM lease WHERE name = 'runner' AND holder = ?", (holder,))

    def wake_runner(self):
        """Tell the runner the queue changed (at once; harmless when no runner listens). Best effort:
        what woke it is committed already, and the runner's safety poll finds it without a wake-up."""
        try:
            self.db.wake(self.get(WAKE_PORT_KEY) if self.db.kind == "sqlite" else None)
        except QueueUnavailable as e:
            log.warning("could not wake the runner (%s); it finds the change within its safety poll", e)

    def wakeups(self, event):
        """An async context in which ``event`` is set whenever a process wakes the runner."""
        return self.db.wakeups(event, announce=lambda port: self.set(WAKE_PORT_KEY, port))

    def exclusive(self, name: str):
        """A context held by one process at a time, on any host sharing the queue (a scheduled job's
        lock): ``Taken`` if another holds it; freed when the holder ends, however it ends."""
        return self.db.exclusive(name)

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
            db.execute("INSERT INTO positions VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (strategy, symbol) DO UPDATE SET "
                       "currency = excluded.currency, quantity = excluded.quantity, avg_cost = excluded.avg_cost, "
                       "realized_pnl = excluded.realized_pnl",
                       (fill.strategy, fill.symbol, currency, quantity, avg_cost, realized))
            values = [getattr(fill, f.name) for f in fields(Fill)]
            db.execute(f"INSERT INTO fills VALUES ({', '.join('?' * len(values))})", values)
        log.info("fill %s %s %s %d %s @ %g (commission %g %s)", fill.exec_id, fill.strategy, fill.side,
                 fill.shares, fill.symbol, fill.price, fill.commission, fill.commission_currency)
        return True

    def positions(self, strategy: str | None = None) -> list[StrategyPosition]:
        sql = "SELECT * FROM positions" + (" WHERE strategy = ?" if strategy else "") + " ORDER BY strategy, symbol"
        return [StrategyPosition(**dict(r)) for r in self._query(sql, (strategy,) if strategy else ())]

    def fills(self, strategy: str | None = None, signal_id: str | None = None) -> list[Fill]:
        """Recorded fills (of one strategy, or of one signal), in time order."""
        sql, args = "SELECT * FROM fills WHERE 1=1", []
        for column, value in (("strategy", strategy), ("signal_id", signal_id)):
            if value is not None:
                sql += f" AND {column} = ?"
                args.append(value)
        return [Fill(**dict(r)) for r in self._query(sql + " ORDER BY time, exec_id", args)]

    # ------------------------------------------------------------ board lots and control flags
    def board_lot(self, symbol: str) -> int | None:
        rows = self._query("SELECT lot FROM board_lots WHERE symbol = ?", (symbol,))
        return rows[0]["lot"] if rows else None

    def remember_board_lot(self, symbol: str, lot: int):
        with self.transaction() as db:
            db.execute("INSERT INTO board_lots VALUES (?, ?) ON CONFLICT (symbol) DO UPDATE SET lot = excluded.lot",
                       (symbol, int(lot)))

    def get(self, key: str, default: str | None = None) -> str | None:
        rows = self._query("SELECT value FROM control WHERE key = ?", (key,))
        return rows[0]["value"] if rows else default

    def set(self, key: str, value: str | None):
        with self.transaction() as db:
            if value is None:
                db.execute("DELETE FROM control WHERE key = ?", (key,))
            else:
                self._set(db, key, value)

    @staticmethod
    def _set(db, key: str, value: str):
        db.execute("INSERT INTO control VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                   (key, value))

    # ------------------------------------------------------------ notebook runs
    @staticmethod
    def _run(row) -> Run:
        return Run(**{name: row[name] for name in _RUN_COLUMNS})

    def start_run(self, **values) -> Run:
        """Record a run that is starting (or, with ``status="skipped"``, a slot passed over), owned
        by this process."""
        values = {"id": _new_id(), "started_at": time.time(), "status": "running",
                  **_this_process(), **values}
        with self.transaction() as db:
            db.execute(f"INSERT INTO runs ({', '.join(values)}) VALUES ({', '.join('?' * len(values))})",
                       tuple(values.values()))
        return self.run(values["id"])

    def skip_slot(self, job: str, slot: float, **values) -> Run | None:
        """Record ``job``'s ``slot`` as passed over (``error``: why), unless a run for it or a later
        slot is recorded already (by another process, say); then None."""
        now = time.time()
        values = {"id": _new_id(), "job": job, "slot": slot, "status": "skipped", "started_at": now,
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
                released = self._end_staging(db, run_id)
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
                self._end_staging(db, run_id, f"notebook run {run_id[:8]} failed: {error}")
        runs = [self.run(run_id) for run_id, _ in orphans]
        for run in runs:
            log.warning("run %s of %s: %s", run.id[:8], run.notebook, run.error)
        return runs

    def _fail_runs(self, db, run_ids: list[str], error: str, **changes):
        changes = {"status": "failed", "finished_at": time.time(), "error": error, **changes}
        for run_id in run_ids:
            db.execute(f"UPDATE runs SET {', '.join(f'{k} = ?' for k in changes)} WHERE id = ?",
                       (*changes.values(), run_id))
            self._end_staging(db, run_id, f"notebook run {run_id[:8]} failed: {error}")

    def _end_staging(self, db, run_id: str, reason: str | None = None) -> int:
        """A run's staged signals released to the runner (``pending``), or, given why, discarded
        (``cancelled``, their idempotency keys set aside so that a repeat of the run may emit them
        afresh); within the caller's transaction. Returns how many."""
        status, discard = ("pending", "") if reason is None else \
            ("cancelled", ", reason = ?, idempotency_key = idempotency_key || ' discarded by run ' || run_id")
        moved = db.execute(f"UPDATE signals SET status = ?, updated_at = ?, rev = ?{discard} "
                           f"WHERE run_id = ? AND status = 'staged'",
                           (status, time.time(), self._next_revision(db), *([reason] if discard else []), run_id)
                           ).rowcount
        self._count(db, "status.staged", -moved)
        self._count(db, f"status.{status}", moved)
        return moved

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
        return self._query("SELECT MAX(slot) AS slot FROM runs WHERE job = ?", (job,))[0]["slot"]


def _this_host() -> str:
    import socket  # here, not at the top: the queue's light commands never need it

    return socket.gethostname()


def _new_id() -> str:
    """A random 128-bit id in hex, as ``uuid.uuid4().hex`` but without importing uuid (and platform)."""
    return os.urandom(16).hex()


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
