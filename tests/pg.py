"""A throwaway PostgreSQL server for the tests and the benchmarks, reached over a Unix socket only.

The binaries come from the ``pgserver`` wheel (PostgreSQL shipped on PyPI, so the README's test command needs
no system package), or from the directory named by ``QDIBKR_PG_BIN`` (e.g. Debian's
/usr/lib/postgresql/15/bin). Only the binaries are used: importing the ``pgserver`` package would create lock
files in runtime directories and, as root, create users and change the modes of parent directories.

PostgreSQL refuses to run as root, so when the tests run as root the server runs as ``nobody``. It listens on
no TCP port (``listen_addresses = ''``): its socket lives in its own short-named directory under /tmp, so
servers never race for a port and the socket path stays under the 107-character limit.

    with PostgresServer() as pg:
        url = pg.create_database()      # postgresql://postgres@/qd_<uuid>?host=/tmp/qdpg-...
"""

import importlib.util
import os
import pwd
import shutil
import subprocess
import tempfile
import uuid
import weakref
from pathlib import Path

import psycopg
from psycopg import sql

BIN_ENV = "QDIBKR_PG_BIN"
SERVER_USER = "nobody"  # who runs the server when the tests run as root

# Speed over durability: a test database lives for one test. fsync=off loses data only if the machine
# crashes; synchronous_commit stays on, so a commit is in the WAL (in the OS's cache) before it returns
# and a killed server (stop() is an immediate shutdown) recovers it. Crash tests spawn many processes.
SETTINGS = {"fsync": "off", "max_connections": "200", "listen_addresses": ""}


class PostgresUnavailable(RuntimeError):
    """The server cannot start here; the message says why and what to do."""


def binaries() -> Path:
    """The directory holding initdb, pg_ctl and postgres: ``QDIBKR_PG_BIN`` if set, else the pgserver wheel's.

    ``find_spec`` locates the package without executing it."""
    override = os.environ.get(BIN_ENV)
    if override:
        bindir, origin = Path(override), f"{BIN_ENV}={override}"
    else:
        spec = importlib.util.find_spec("pgserver")
        if spec is None or not spec.submodule_search_locations:
            raise PostgresUnavailable(
                f"no PostgreSQL binaries: `pip install pgserver==0.1.4` (in the dev extra: pip install -e '.[dev]'),"
                f" or set {BIN_ENV} to a directory holding initdb, pg_ctl and postgres")
        bindir, origin = Path(spec.submodule_search_locations[0]) / "pginstall" / "bin", "the pgserver wheel"
    missing = [name for name in ("initdb", "pg_ctl", "postgres") if not (bindir / name).is_file()]
    if missing:
        fix = (f"set {BIN_ENV} to a directory holding initdb, pg_ctl and postgres" if override else
               f"`pip install --force-reinstall pgserver==0.1.4`, or set {BIN_ENV} to a directory holding initdb,"
               f" pg_ctl and postgres")
        raise PostgresUnavailable(f"{', '.join(missing)} missing from {bindir} ({origin}): {fix}")
    return bindir


def _readable_copy(bindir: Path) -> Path:
    """A copy of the installation holding ``bindir`` in a directory under /tmp that every user may read, made
    once per installation and reused; returns the copy's bin directory. The copy keeps the layout the binaries
    look around them for: their bin/, lib/ and share/, and, for the pgserver wheel, the libraries auditwheel
    put in site-packages/pgserver.libs (initdb's RPATH is ``$ORIGIN/../../../pgserver.libs``)."""
    install = bindir.parent
    postgres = (bindir / "postgres").stat()  # copies keep it: one copy serves the same build wherever it lies
    stamp = f"{postgres.st_size}:{postgres.st_mtime_ns}"
    copy = Path(tempfile.gettempdir()) / f"qdpg-install-{uuid.uuid5(uuid.NAMESPACE_URL, stamp).hex[:12]}"
    inside = Path(install.parent.name) / install.name  # pgserver/pginstall
    if not (copy / inside / "bin" / "postgres").is_file():
        partial = Path(tempfile.mkdtemp(prefix="qdpg-copy-"))
        for part in ("bin", "lib", "share"):
            if (install / part).is_dir():
                shutil.copytree(install / part, partial / inside / part, symlinks=True)
        wheel_libs = install.parent.parent / f"{install.parent.name}.libs"
        if wheel_libs.is_dir():
            shutil.copytree(wheel_libs, partial / wheel_libs.name, symlinks=True)
        partial.chmod(0o755)
        try:
            partial.rename(copy)  # at once: a concurrent test session finds a whole copy or none
        except OSError:
            shutil.rmtree(partial, ignore_errors=True)  # another session's copy came first
    return copy / inside / "bin"


def _identity() -> dict:
    """subprocess.run arguments that run the server as ``nobody`` when we are root, else as ourselves."""
    if os.geteuid() != 0:
        return {}
    try:
        user = pwd.getpwnam(SERVER_USER)
    except KeyError:
        raise PostgresUnavailable(
            f"PostgreSQL refuses to run as root and there is no user {SERVER_USER!r} to run it as:"
            f" run the tests as another user") from None
    return {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []}


class PostgresServer:
    """One PostgreSQL server in its own temporary directory, for a test session or a benchmark.

    ``start()`` creates the cluster the first time; ``stop()`` kills the server (an immediate shutdown, as if
    it crashed) and keeps its data, so ``start()`` again brings it back as a real server outage would end;
    ``close()`` stops it and removes the directory. Leaving a ``with`` block closes it, and so does the
    interpreter's exit if nobody did."""

    def __init__(self):
        self.dir: Path | None = None  # holds data/, log and the socket
        self._bindir: Path | None = None
        self._identity: dict = {}
        self._finalizer = None

    def __enter__(self) -> "PostgresServer":
        return self.start()

    def __exit__(self, *exc):
        self.close()

    def start(self) -> "PostgresServer":
        """Start the server, creating its cluster first if it has none; returns once it accepts connections."""
        if self.dir is None:
            self._create()
        self._run("pg_ctl", "-D", self.dir / "data", "-l", self.dir / "log", "-w", "start")
        return self

    def stop(self):
        """Kill the server at once (``pg_ctl stop -m immediate``): clients lose their connections, data stays."""
        if self.dir is not None:
            _stop(self._bindir, self.dir, self._identity)

    def close(self):
        """Stop the server and remove its directory."""
        if self._finalizer is not None:
            self._finalizer()

    def url(self, dbname: str = "postgres") -> str:
        """The libpq URL of a database on this server (the host is the socket's directory)."""
        return f"postgresql://postgres@/{dbname}?host={self.dir}"

    def create_database(self, name: str | None = None) -> str:
        """Create an empty database (a fresh uuid-based name unless given) and return its URL."""
        name = name or f"qd_{uuid.uuid4().hex}"
        with self._admin() as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return self.url(name)

    def drop_database(self, name: str):
        """Drop a database, terminating any connection still open to it."""
        with self._admin() as conn:
            conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))

    def terminate(self, dbname: str, application_name: str | None = None) -> int:
        """Kill the server processes serving connections to a database (only those whose application_name is
        given, if it is), as a lost network or a restarted server would; returns how many were killed.

        Each is waited for (up to 5 s), so the killed connection's next query fails with
        psycopg.OperationalError."""
        query = ("SELECT count(*) FILTER (WHERE pg_terminate_backend(pid, 5000)) FROM pg_stat_activity"
                 " WHERE datname = %s AND pid <> pg_backend_pid() AND (%s::text IS NULL OR application_name = %s)")
        with self._admin() as conn:
            return conn.execute(query, (dbname, application_name, application_name)).fetchone()[0]

    def _admin(self) -> psycopg.Connection:
        return psycopg.connect(self.url(), autocommit=True)

    def _create(self):
        """Make the directory (owned by the server's user), check the binaries run as that user, initdb."""
        self._bindir = binaries()
        self._identity = _identity()
        self.dir = Path(tempfile.mkdtemp(prefix="qdpg-", dir="/tmp"))
        self._finalizer = weakref.finalize(self, _remove, self._bindir, self.dir, self._identity)
        if self._identity:
            os.chown(self.dir, self._identity["user"], self._identity["group"])
        try:
            self._run("postgres", "--version")
        except PermissionError:
            # The checkout lies where the server's user may not look (root's home, a 0700 CI folder): run a copy
            # of the installation (binaries find their lib/ and share/ beside them) from a directory it may read.
            self._bindir = _readable_copy(self._bindir)
            self._finalizer.detach()
            self._finalizer = weakref.finalize(self, _remove, self._bindir, self.dir, self._identity)
            try:
                self._run("postgres", "--version")
            except PermissionError as e:
                raise PostgresUnavailable(
                    f"{self._bindir} cannot be run by user {SERVER_USER!r} ({e}): make it and its parent"
                    f" directories readable and searchable by others (chmod o+rX), or set {BIN_ENV} to binaries"
                    f" that are") from None
        self._run("initdb", "-D", self.dir / "data", "-U", "postgres", "--auth=trust", "-E", "utf8",
                  "--no-locale", "--no-sync")
        settings = dict(SETTINGS, unix_socket_directories=str(self.dir))
        with open(self.dir / "data" / "postgresql.conf", "a") as conf:
            conf.write("\n# qdibkr tests (tests/pg.py)\n")
            conf.writelines(f"{name} = '{value}'\n" for name, value in settings.items())

    def _run(self, program: str, *args):
        """Run one of the binaries as the server's user; a failure raises PostgresUnavailable with its output
        and the end of the server's log."""
        return _run(self._bindir, self.dir, self._identity, program, *args)


def _run(bindir: Path, directory: Path, identity: dict, program: str, *args) -> subprocess.CompletedProcess:
    # cwd: the server's user may not be able to read the caller's working directory.
    # PG* variables (PGPORT, PGDATA...) would change the socket's name or the cluster the server uses.
    env = {name: value for name, value in os.environ.items() if not name.startswith("PG")}
    done = subprocess.run([bindir / program, *map(str, args)], cwd=directory, env=env, capture_output=True,
                          text=True, **identity)
    if done.returncode != 0:
        log = directory / "log"
        tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
        raise PostgresUnavailable(f"{program} {' '.join(map(str, args))} failed ({done.returncode}):\n"
                                  f"{done.stdout}{done.stderr}{tail}")
    return done


def _stop(bindir: Path, directory: Path, identity: dict):
    """An immediate shutdown, if the server runs (its pid file is there); returns once it has exited."""
    if (directory / "data" / "postmaster.pid").exists():
        _run(bindir, directory, identity, "pg_ctl", "-D", directory / "data", "-m", "immediate", "-w", "stop")


def _remove(bindir: Path, directory: Path, identity: dict):
    """Stop the server and remove its directory, even if stopping failed. A module function, not a method:
    the finalizer that calls it at the interpreter's exit must not keep the server object alive."""
    try:
        _stop(bindir, directory, identity)
    finally:
        shutil.rmtree(directory, ignore_errors=True)
