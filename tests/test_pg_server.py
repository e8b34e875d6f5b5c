"""The PostgreSQL server the tests start themselves (tests/pg.py) and the fixtures built on it."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

from .pg import BIN_ENV, PostgresServer, PostgresUnavailable, binaries

pytestmark = pytest.mark.postgresql


def tables(url: str) -> list[str]:
    with psycopg.connect(url) as conn:
        return [row[0] for row in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")]


def server_pid(server: PostgresServer) -> int:
    """The postmaster's process id, as the first line of its pid file gives it."""
    return int((server.dir / "data" / "postmaster.pid").read_text().split()[0])


def gone(pid: int) -> bool:
    """No such process, or only its exit status is left for its parent to collect."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def test_databases_are_isolated(postgres):
    first, second = postgres.create_database(), postgres.create_database()
    with psycopg.connect(first) as conn:
        conn.execute("CREATE TABLE signals (id integer)")
    assert tables(first) == ["signals"]
    assert tables(second) == []


def test_terminate_kills_only_the_named_connections(postgres):
    url = postgres.create_database("qd_terminate")
    victim = psycopg.connect(url, application_name="runner", autocommit=True)
    bystander = psycopg.connect(url, application_name="emit", autocommit=True)
    try:
        assert postgres.terminate("qd_terminate", application_name="runner") == 1
        with pytest.raises(psycopg.OperationalError):
            victim.execute("SELECT 1")
        assert bystander.execute("SELECT 1").fetchone() == (1,)
        assert postgres.terminate("qd_terminate") == 1
        with pytest.raises(psycopg.OperationalError):
            bystander.execute("SELECT 1")
    finally:
        victim.close()
        bystander.close()
    postgres.drop_database("qd_terminate")


def test_drop_database_ends_connections_left_open(postgres):
    url = postgres.create_database("qd_left_open")
    left_open = psycopg.connect(url, autocommit=True)
    postgres.drop_database("qd_left_open")
    with pytest.raises(psycopg.OperationalError):
        left_open.execute("SELECT 1")
    left_open.close()
    with pytest.raises(psycopg.OperationalError, match="does not exist"):
        psycopg.connect(url)


def test_stop_then_start_keeps_the_data_and_close_removes_everything(postgres_of_its_own):
    server = postgres_of_its_own
    url = server.create_database()
    with psycopg.connect(url) as conn:
        conn.execute("CREATE TABLE fills (quantity integer)")
        conn.execute("INSERT INTO fills VALUES (7)")
    held = psycopg.connect(url, autocommit=True)
    pid = server_pid(server)
    server.stop()
    assert gone(pid)
    with pytest.raises(psycopg.OperationalError):
        held.execute("SELECT 1")
    held.close()
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(url)

    server.start()
    with psycopg.connect(url) as conn:
        assert conn.execute("SELECT quantity FROM fills").fetchall() == [(7,)]

    pid = server_pid(server)
    server.close()
    assert gone(pid)
    assert not server.dir.exists()


def test_missing_binaries_name_the_fix(monkeypatch, tmp_path):
    monkeypatch.setenv(BIN_ENV, str(tmp_path))
    with pytest.raises(PostgresUnavailable, match=f"initdb, pg_ctl, postgres missing from {tmp_path}.*set {BIN_ENV}"):
        PostgresServer().start()


@pytest.mark.skipif(os.geteuid() != 0, reason="only root runs the server as another user")
def test_an_installation_the_server_user_cannot_read_is_run_from_a_readable_copy(monkeypatch, tmp_path):
    """CI may clone into a folder only root can enter (mode 700): the wheel's installation there is copied,
    with the libraries its binaries find beside it, to where the server's user may run it."""
    wheel = binaries().parent.parent  # site-packages/pgserver
    hidden = tmp_path / "hidden"  # root's own, mode 700: nobody cannot look inside
    hidden.mkdir(mode=0o700)
    shutil.copytree(wheel / "pginstall", hidden / "pgserver" / "pginstall", symlinks=True,
                    ignore=shutil.ignore_patterns("include"))
    shutil.copytree(wheel.parent / "pgserver.libs", hidden / "pgserver.libs")
    monkeypatch.setenv(BIN_ENV, str(hidden / "pgserver" / "pginstall" / "bin"))
    with PostgresServer() as server:
        assert not str(server._bindir).startswith(str(hidden))
        with psycopg.connect(server.create_database()) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)


@pytest.mark.skipif(os.geteuid() != 0, reason="the server runs as the tests' own user when they are not root")
def test_server_runs_as_another_user_than_root(postgres):
    assert os.stat(f"/proc/{server_pid(postgres)}").st_uid != 0
    with psycopg.connect(postgres.url()) as conn:  # and a root client reaches it through the socket
        assert conn.execute("SELECT current_user").fetchone() == ("postgres",)


def test_queue_url_is_fresh_for_each_backend(queue_url):
    if queue_url.startswith("postgresql://"):
        assert tables(queue_url) == []
    else:
        assert not Path(queue_url).exists() and Path(queue_url).parent.is_dir()


def test_a_server_left_running_is_stopped_when_its_process_exits():
    """A benchmark that forgets close() leaves no server behind."""
    script = ("from tests.pg import PostgresServer\n"
              "server = PostgresServer().start()\n"
              "print(server.dir, open(server.dir / 'data' / 'postmaster.pid').readline(), flush=True)\n")
    root = Path(__file__).resolve().parent.parent
    done = subprocess.run([sys.executable, "-c", script], cwd=root, env={**os.environ, "PYTHONPATH": str(root)},
                          capture_output=True, text=True, timeout=60, check=True)
    directory, pid = done.stdout.split()
    assert gone(int(pid))
    assert not Path(directory).exists()
