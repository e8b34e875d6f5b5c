"""The two databases a queue can live in: a SQLite file (one host) or PostgreSQL (a desk of hosts).

The store (``store.py``) writes its SQL once, in words both understand (``?``
placeholders, upserts with ``ON CONFLICT``, SQLite's type names in its schema),
and gets from here only what differs between them:

- connecting, and the two kinds of transaction. A write transaction shuts out
  every other writer from its first statement (SQLite: ``BEGIN IMMEDIATE``;
  PostgreSQL: an advisory transaction lock taken first), so that a check and
  the write it guards see the same state however many hosts emit at once. A
  read transaction sees one consistent state and blocks no one;
- the schema's type names (PostgreSQL's ``REAL`` keeps 6 digits: times need
  ``DOUBLE PRECISION``);
- the clock a lease expires by (PostgreSQL: the server's, which every host shares);
- waking the runner: a datagram on loopback (SQLite), ``NOTIFY``/``LISTEN`` (PostgreSQL);
- a number that changes when anything is committed (the widgets watch it).

Which one a queue is comes from where it is: ``postgresql://user@host/db`` (or
``postgres://``) is PostgreSQL, anything else a SQLite file's path.
"""

import functools
import logging
import os
import re
import sqlite3
import threading
import time
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path

from .config import is_database_url
from .errors import QdibkrError

log = logging.getLogger("qdibkr.queue")

CONNECT_TIMEOUT = 5  # seconds: an unreachable database is reported, not waited on
RECONNECT_DELAY = (0.2, 0.5, 1.0, 2.0, 5.0)  # seconds between attempts of the runner's listener


class QueueUnavailable(QdibkrError):
    """The queue's database cannot be reached (or the connection dropped during an operation)."""


def open_database(where) -> "SQLite | PostgreSQL":
    """The database a queue lives in, by where it is: a PostgreSQL URL, else a SQLite file's path."""
    return PostgreSQL(where) if is_database_url(where) else SQLite(where)


class _Database:
    """What both kinds share: one connection per process (shared by its threads under a lock) and
    the shape of a transaction. Subclasses say how to connect and how a write transaction begins."""

    kind: str
    begin_write: tuple[str, ...]
    begin_read: str

    def __init__(self):
        self._lock = threading.RLock()
        self._conn = None

    @contextmanager
    def write(self):
        """One atomic change that no other writer interleaves with."""
        with self._transaction(self.begin_write) as db:
            yield db

    @contextmanager
    def read(self):
        """One consistent view that writes nothing."""
        with self._transaction((self.begin_read,)) as db:
            yield db

    @contextmanager
    def _transaction(self, begin: tuple[str, ...]):
        with self._lock:
            db = self._begin(begin)
            try:
                yield db
            except BaseException as e:
                self._rollback(db)
                raise self._unavailable(e) if self._lost(e) else e
            try:
                db.execute("COMMIT")
            except Exception as e:
                if self._lost(e):
                    raise self._unavailable(e, committing=True) from e
                raise

    def _begin(self, begin: tuple[str, ...]):
        db = self._connection()
        for statement in begin:
            db.execute(statement)
        return db

    def _rollback(self, db):
        try:
            db.execute("ROLLBACK")
        except Exception as e:
            if not self._lost(e):
                raise

    def query(self, sql: str, args=(), fetch=True) -> list:
        """The rows of one statement that may be repeated harmlessly (a read), outside any transaction."""
        with self._lock:
            cursor = self._connection().execute(sql, args)
            return cursor.fetchall() if fetch else []

    def _lost(self, error: BaseException) -> bool:
        """Whether ``error`` means the connection to the database is gone."""
        return False

    def _unavailable(self, error, committing=False):
        return error


class SQLite(_Database):
    """A queue in a SQLite file, in WAL mode: readers never wait for the writer. ``synchronous=NORMAL``
    keeps every committed change through a crash of any process (a power cut may lose the last moment)."""

    kind = "sqlite"
    begin_write = ("BEGIN IMMEDIATE",)
    begin_read = "BEGIN"

    def __init__(self, path):
        super().__init__()
        self.path = Path(path).expanduser()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.location = str(self.path.resolve())  # what a child process is told (QDIBKR_DB)
        self.shown = str(self.path)
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=30)
        conn.row_factory = sqlite3.Row
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("PRAGMA foreign_keys=ON")
        self._conn = conn

    def _connection(self):
        return self._conn

    def close(self):
        self._conn.close()

    @staticmethod
    def ddl(statement: str) -> str:
        return statement

    def now(self, db) -> float:
        return time.time()

    def columns(self, db, table: str) -> set[str]:
        return {row["name"] for row in db.execute(f"PRAGMA table_info({table})")}

    @staticmethod
    def analyze(db, tables: str):
        """Nothing: SQLite's planner takes an index over a scan without statistics."""

    def data_version(self) -> int:
        """Changes whenever another connection commits (SQLite counts it for us, for free)."""
        return self.query("PRAGMA data_version")[0][0]

    # ------------------------------------------------------------ waking the runner
    @staticmethod
    def wake(port: str | None):
        """A datagram to the runner's port on loopback; harmless when no runner listens."""
        if port:
            import socket  # here: the queue's light commands never wake anyone

            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
                sock.sendto(b"wake", ("127.0.0.1", int(port)))

    @asynccontextmanager
    async def wakeups(self, event, announce):
        """Set ``event`` (an asyncio.Event) whenever a datagram arrives on a loopback port, which
        ``announce(port)`` publishes in the queue (and ``announce(None)`` withdraws at the end)."""
        import asyncio

        class Wakeup(asyncio.DatagramProtocol):
            def datagram_received(self, data, addr):
                event.set()

        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(Wakeup, local_addr=("127.0.0.1", 0))
        announce(str(transport.get_extra_info("sockname")[1]))
        try:
            yield
        finally:
            announce(None)
            transport.close()

    @contextmanager
    def exclusive(self, name: str):
        """Held while the block runs, by one process at a time: an OS file lock beside the queue,
        released even if the process dies. Taken already: ``Taken`` saying by whom."""
        import datetime as dt
        import fcntl
        import socket

        with open(f"{self.path}.{name}.lock", "a+") as f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                f.seek(0)
                raise Taken(f.read().strip()) from None
            f.truncate(0)
            f.write(f"pid {os.getpid()} since {dt.datetime.now():%Y-%m-%d %H:%M:%S}")
            f.flush()
            yield


class Taken(Exception):
    """An exclusive lock is held by another process (its text says which, where known)."""


class PostgreSQL(_Database):
    """A queue in a PostgreSQL database, shared by every host of a desk.

    Every write transaction first takes one advisory lock, so writers run one at a time as they do
    in SQLite: a check ("no reducing more than held", an idempotency key) and its write can not be
    interleaved by another host's. Reads take no lock. The connection is opened again, once, when it
    is found dropped before a transaction has done anything; a drop in the middle raises
    ``QueueUnavailable``, and the transaction is rolled back by the server."""

    kind = "postgresql"
    WRITE_LOCK = 0x71646962  # "qdib": the queue's one advisory lock key
    begin_write = ("BEGIN", f"SELECT pg_advisory_xact_lock({WRITE_LOCK})")
    begin_read = "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY"
    WAKE_CHANNEL = "qdibkr_wake"

    def __init__(self, url: str):
        super().__init__()
        try:
            import psycopg  # noqa: F401  (only a PostgreSQL queue needs it)
        except ImportError:
            raise QdibkrError("a PostgreSQL queue needs psycopg: pip install 'psycopg[binary]'") from None
        self.location = url
        self.shown = _without_password(url)
        self._conn = self._connect()

    # ------------------------------------------------------------ connecting
    def _connect(self, transaction: bool = False):
        """A new connection; ``transaction``: for a transaction about to begin, so the error says it wrote nothing."""
        import psycopg
        from psycopg.rows import dict_row

        try:
            conn = psycopg.connect(self.location, autocommit=True, row_factory=dict_row,
                                   connect_timeout=CONNECT_TIMEOUT, application_name="qdibkr")
        except psycopg.Error as e:
            raise QueueUnavailable(f"cannot reach the queue's database {self.shown}: {_first_line(e)}"
                                   f"{'; nothing was written' if transaction else ''}; check that PostgreSQL is "
                                   f"running there and the URL (QDIBKR_DB, or [queue] db in the config file)"
                                   ) from None
        return _Placeholders(conn)

    def _connection(self):
        if self._conn is None or self._conn.closed:
            self._conn = self._connect()
        return self._conn

    def _begin(self, begin: tuple[str, ...]):
        if self._conn is None or self._conn.closed:  # closed after an earlier failure
            self._conn = self._connect(transaction=True)
        return self._again_if_dropped(lambda: super(PostgreSQL, self)._begin(begin))

    def query(self, sql: str, args=(), fetch=True) -> list:
        with self._lock:
            return self._again_if_dropped(lambda: _Database.query(self, sql, args, fetch))

    def _again_if_dropped(self, action):
        """``action()``, and if it finds the connection dropped (the server restarted, an idle timeout, a
        network blip) before it did anything (beginning a transaction, one read), once more on a new one."""
        try:
            return action()
        except Exception as e:
            if not self._lost(e):
                raise
        log.warning("the connection to the queue's database %s had dropped; reconnecting", self.shown)
        if self._conn is not None:
            self._conn.close()
        self._conn = self._connect(transaction=True)
        try:
            return action()
        except Exception as e:
            raise self._unavailable(e) if self._lost(e) else e

    def _lost(self, error: BaseException) -> bool:
        import psycopg

        return isinstance(error, psycopg.OperationalError) or (self._conn is not None and self._conn.closed)

    def _unavailable(self, error, committing=False):
        if isinstance(error, QueueUnavailable):
            return error
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        outcome = ("whether the change was committed is unknown: check before repeating it (a signal "
                   "emitted with an idempotency key can simply be emitted again)" if committing
                   else "nothing was written")
        return QueueUnavailable(f"lost the connection to the queue's database {self.shown} "
                                f"({_first_line(error)}); {outcome}")

    def close(self):
        if self._conn is not None:
            self._conn.close()

    # ------------------------------------------------------------ dialect
    @staticmethod
    @functools.lru_cache(maxsize=None)
    def ddl(statement: str) -> str:
        """SQLite's type names as PostgreSQL spells them."""
        statement = statement.replace("INTEGER PRIMARY KEY AUTOINCREMENT",
                                      "BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY")
        return re.sub(r"\bREAL\b", "DOUBLE PRECISION", re.sub(r"\bINTEGER\b", "BIGINT", statement))

    def now(self, db) -> float:
        """The server's clock: one clock for the leases of every host."""
        return db.execute("SELECT EXTRACT(EPOCH FROM clock_timestamp())::float8 AS now").fetchone()["now"]

    def columns(self, db, table: str) -> set[str]:
        rows = db.execute("SELECT column_name FROM information_schema.columns WHERE table_schema = "
                          "current_schema() AND table_name = ?", (table,))
        return {row["column_name"] for row in rows}

    @staticmethod
    def analyze(db, tables: str):
        """Gather the planner's statistics after a change of many rows (a migration, an archive): without
        them, until autovacuum comes round, PostgreSQL may scan a whole table where an index serves."""
        db.execute(f"ANALYZE {tables}")

    def data_version(self) -> int:
        """The next transaction id the server will give: it moves whenever anything writes."""
        return self.query("SELECT pg_snapshot_xmax(pg_current_snapshot())::text::bigint AS v")[0]["v"]

    # ------------------------------------------------------------ waking the runner
    def wake(self, port=None):
        """NOTIFY the runner's channel (no transaction: delivered at once)."""
        self.query(f"NOTIFY {self.WAKE_CHANNEL}", fetch=False)

    @asynccontextmanager
    async def wakeups(self, event, announce):
        """Set ``event`` (an asyncio.Event) on every NOTIFY of the wake channel, from a connection of its own that
        LISTENs, reopened after a drop (the runner's safety poll covers the gap)."""
        import asyncio

        listening = asyncio.ensure_future(self._listen(event))
        try:
            yield
        finally:
            listening.cancel()
            await asyncio.gather(listening, return_exceptions=True)

    async def _listen(self, event):
        import asyncio

        import psycopg

        attempt = 0
        while True:
            try:
                conn = await psycopg.AsyncConnection.connect(self.location, autocommit=True,
                                                             connect_timeout=CONNECT_TIMEOUT,
                                                             application_name="qdibkr runner wake-ups")
                async with conn:
                    await conn.execute(f"LISTEN {self.WAKE_CHANNEL}")
                    attempt = 0
                    event.set()  # anything emitted while no one listened is seen now
                    async for _ in conn.notifies():
                        event.set()
            except psycopg.Error as e:
                delay = RECONNECT_DELAY[min(attempt, len(RECONNECT_DELAY) - 1)]
                attempt += 1
                log.warning("runner's wake-ups from %s interrupted (%s); listening again in %g s",
                            self.shown, _first_line(e), delay)
                await asyncio.sleep(delay)

    @contextmanager
    def exclusive(self, name: str):
        """Held while the block runs, by one process of any host: a session advisory lock on a
        connection of its own, released by the server when that connection ends (the process died)."""
        import socket

        import psycopg

        key = hash_of(name)
        with psycopg.connect(self.location, autocommit=True, connect_timeout=CONNECT_TIMEOUT,
                             application_name=f"qdibkr {name}: pid {os.getpid()} on {socket.gethostname()}") as conn:
            if not conn.execute("SELECT pg_try_advisory_lock(%s)", (key,)).fetchone()[0]:
                # A bigint advisory key is kept as two 32-bit halves (classid, objid) in pg_locks.
                holder = conn.execute(
                    "SELECT application_name FROM pg_stat_activity WHERE pid IN (SELECT pid FROM pg_locks "
                    "WHERE locktype = 'advisory' AND granted AND objsubid = 1 "
                    "AND (classid::bigint << 32 | objid::bigint) = %s)", (key,)).fetchone()
                raise Taken(holder[0] if holder else "another process")
            yield


def hash_of(name: str) -> int:
    """A stable 64-bit number for a name (Python's ``hash`` changes between processes)."""
    import hashlib

    return int.from_bytes(hashlib.blake2b(name.encode(), digest_size=8).digest(), "big", signed=True)


class _Placeholders:
    """A psycopg connection that takes the store's ``?`` placeholders (psycopg's are ``%s``)."""

    def __init__(self, conn):
        self._conn = conn

    def execute(self, sql: str, args=()):
        return self._conn.execute(_percent_style(sql), args)

    @property
    def closed(self) -> bool:
        return self._conn.closed or self._conn.broken

    def close(self):
        self._conn.close()


@functools.lru_cache(maxsize=512)
def _percent_style(sql: str) -> str:
    return sql.replace("%", "%%").replace("?", "%s")


def _without_password(url: str) -> str:
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


def _first_line(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0]
