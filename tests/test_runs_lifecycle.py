"""A run's end is always recorded: a run that hangs times out; SIGINT or SIGTERM of `qdibkr run` or
`qdibkr schedule` records the runs under way failed before the process exits (and the scheduler exits
within 2 s); a run left `running` by a process killed outright is recorded failed at the next start.
Real papermill runs, real SQLite files, real processes and signals."""

import os
import signal
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import pytest

from qdibkr.cli import main
from qdibkr.kernels import Kernel
from qdibkr.runs import run_notebook
from qdibkr.store import Store
from tests.notebook_files import write_notebook
from tests.test_runs import EMIT


@pytest.fixture
def hanging(tmp_path) -> tuple[Path, Path]:
    """A notebook that emits two orders, then reads a FIFO nobody writes to unless the test does:
    it hangs there, its signals staged. Returns (notebook, FIFO)."""
    gate = tmp_path / "gate"
    os.mkfifo(gate)
    notebook = write_notebook(tmp_path / "hanging.ipynb",
                              f'strategy = "hang"\norders = [["AAPL", 5], ["MSFT", 3]]\ngate = "{gate}"',
                              EMIT, "open(gate).read()")
    yield notebook, gate
    release(gate)


def release(gate: Path):
    """Let a notebook still reading ``gate`` (a failed test) go on: end its read."""
    try:
        os.close(os.open(gate, os.O_WRONLY | os.O_NONBLOCK))
    except OSError:
        pass  # nobody is reading


@contextmanager
def staged(gate: Path, timeout: float = 60):
    """Wait until the notebook reads ``gate``, past its emits (opening a FIFO to write returns when
    a reader opens it: the event to wait for); the notebook waits on until the block ends."""
    opened = []
    opener = threading.Thread(target=lambda: opened.append(open(gate, "w")), daemon=True)
    opener.start()
    opener.join(timeout)
    if not opened:
        os.close(os.open(gate, os.O_RDONLY | os.O_NONBLOCK))  # lets the opener go
        raise AssertionError(f"the notebook did not reach its gate in {timeout} s")
    try:
        yield
    finally:
        opened[0].close()  # nothing written: no broken pipe if the reader has died


def qdibkr(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "qdibkr", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=Path(__file__).parent.parent)


def children(pid: int) -> list[int]:
    """The processes ``pid`` started (any of its threads), from /proc."""
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found += [int(child) for child in (task / "children").read_text().split()]
    return found


def alive(pid: int) -> bool:
    """Running, not a zombie waiting to be reaped."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return False


# ------------------------------------------------------------------ timeouts
def test_a_run_that_hangs_times_out_its_kernel_killed_and_its_signals_cancelled(store, hanging, tmp_path):
    notebook, _ = hanging
    kernel = Kernel.start(notebook)
    pid = kernel.manager.provisioner.pid
    run = run_notebook(notebook, {}, store=store, output_dir=tmp_path / "runs", timeout=2, kernel=kernel)
    assert run.status == "failed" and 2 <= run.duration < 10
    assert run.error.startswith("timed out: the run took more than 2 s, its limit; raise it with "
                                "`qdibkr run --timeout SECONDS`, `timeout = \"20m\"` in the schedule file")
    assert [s.status for s in store.signals(run_id=run.id)] == ["cancelled", "cancelled"]
    assert all("failed: timed out" in s.reason for s in store.signals())
    assert not kernel.alive() and not alive(pid)
    assert Path(run.output_path).is_file()  # kept, showing where it stopped


def test_a_run_has_a_default_timeout(store, hanging, tmp_path, monkeypatch, capsys):
    """Without --timeout, `qdibkr run` stops a hanging notebook at the default (made short here)."""
    import qdibkr.runs

    notebook, _ = hanging
    monkeypatch.setattr(qdibkr.runs, "RUN_TIMEOUT", 1.5)
    assert main(["run", str(notebook), "--db", str(store.location), "--runs", str(tmp_path / "runs")]) == 1
    assert "none of its signals will trade: timed out: the run took more than 1.5 s" in capsys.readouterr().err
    [run] = store.runs()
    # Whether the kernel got as far as emitting in 1.5 s depends on the machine's load; none may trade.
    assert run.status == "failed" and all(s.status == "cancelled" for s in store.signals())


# ------------------------------------------------------------------ signals
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_to_qdibkr_run_records_the_run_failed_before_it_exits(store, hanging, tmp_path, signum):
    notebook, gate = hanging
    process = qdibkr("run", str(notebook), "--db", str(store.location), "--runs", str(tmp_path / "runs"))
    try:
        with staged(gate):
            [run] = store.runs()
            assert run.status == "running" and [s.status for s in store.signals()] == ["staged", "staged"]
            [kernel] = children(process.pid)
            process.send_signal(signum)
            assert process.wait(10) == 128 + signum
    finally:
        process.kill()
    name = signal.Signals(signum).name
    run = store.run(run.id)
    assert run.status == "failed" and run.error == f"stopped by {name}"
    assert [(s.status, s.reason) for s in store.signals()] == [
        ("cancelled", f"notebook run {run.id[:8]} failed: stopped by {name}")] * 2
    assert f"the run was stopped by {name}: recorded failed" in process.stderr.read()
    assert not alive(kernel)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_qdibkr_schedule_stops_within_2_s_of_a_signal_recording_its_run_failed(store, hanging, tmp_path, signum):
    notebook, gate = hanging
    folder = tmp_path / "schedules"
    folder.mkdir()
    (folder / "hang.toml").write_text(f'notebook = "{notebook}"\ncron = "* * * * *"\n')
    # A run recorded long ago: the job is not new, so its latest slot (this minute's) is due now.
    store.start_run(job="hang", slot=0.0, notebook=str(notebook), strategy="hang", parameters="{}",
                    status="succeeded", finished_at=1.0)
    process = qdibkr("schedule", "--dir", str(folder), "--db", str(store.location), "--runs", str(tmp_path / "runs"))
    try:
        with staged(gate):
            [run] = [r for r in store.runs("hang") if r.status == "running"]  # (a new minute's slot: skipped)
            assert [s.status for s in store.signals()] == ["staged", "staged"]
            [kernel] = [pid for pid in children(process.pid) if alive(pid)]
            sent = time.monotonic()
            process.send_signal(signum)
            assert process.wait(10) == 0
            assert time.monotonic() - sent < 2
    finally:
        process.kill()
    name = signal.Signals(signum).name
    run = store.run(run.id)
    assert run.status == "failed" and run.error == f"stopped by {name}"
    assert [s.status for s in store.signals()] == ["cancelled", "cancelled"]
    assert f"run {run.id[:8]} of job hang recorded failed" in process.stderr.read()
    assert not alive(kernel)


# ------------------------------------------------------------------ processes killed outright
@pytest.mark.parametrize("next_start", ["run", "schedule"])
def test_a_run_whose_process_was_killed_is_recorded_failed_at_the_next_start(store, hanging, tmp_path, capsys,
                                                                              next_start):
    notebook, gate = hanging
    process = qdibkr("run", str(notebook), "--db", str(store.location), "--runs", str(tmp_path / "runs"))
    try:
        with staged(gate):
            [kernel] = children(process.pid)
            process.kill()  # SIGKILL: nothing of it runs any more
            process.wait(10)
            [run] = store.runs()
            assert run.status == "running" and [s.status for s in store.signals()] == ["staged", "staged"]
    finally:
        process.kill()
        if alive(kernel):  # it exits by itself within a second of its parent (ipykernel's parent poller)
            os.kill(kernel, signal.SIGKILL)
    if next_start == "run":
        quick = write_notebook(tmp_path / "quick.ipynb", 'strategy = "quick"')
        assert main(["run", str(quick), "--db", str(store.location), "--runs", str(tmp_path / "runs")]) == 0
    else:
        (tmp_path / "schedules").mkdir()
        assert main(["schedule", "list", "--dir", str(tmp_path / "schedules"), "--db", str(store.location)]) == 0
    capsys.readouterr()
    orphan = store.run(run.id)
    assert orphan.status == "failed" and orphan.finished_at is not None
    assert f"left running by process {process.pid} on " in orphan.error and "has ended" in orphan.error
    assert [s.status for s in store.signals()] == ["cancelled", "cancelled"]
    assert store.signals(statuses=["staged"]) == [] and store.open_signals()[0] == []
    assert [r.status for r in store.runs()] == ["failed", "succeeded"][:2 if next_start == "run" else 1]


def insert_staged(store: Store, run_id: str):
    with store.transaction() as db:
        store.insert_signal(db, strategy="s", symbol="AAPL", market="USStock", signal_type="open_long", quantity=1,
                            order_type="MKT", tif="DAY", status="staged", run_id=run_id,
                            idempotency_key=f"key-{run_id}")


def test_only_runs_of_ended_processes_of_this_host_count_as_orphaned(tmp_path):
    path = tmp_path / "queue.sqlite"
    old = Store(path)  # a database of before runs had owners: a run it left running has none
    with old.transaction() as db:
        db.execute("INSERT INTO runs (id, notebook, strategy, parameters, status, started_at) "
                   "VALUES ('old', 'nb.ipynb', 's', '{}', 'running', 1.0)")
    insert_staged(old, "old")
    old.close()

    store = Store(path)
    ended = subprocess.Popen(["true"])
    ended.wait()
    reused = subprocess.Popen(["sleep", "60"])  # alive, but not the process that recorded the run
    try:
        runs = {name: store.start_run(notebook="nb.ipynb", strategy="s", parameters="{}", **owner) for name, owner in {
            "mine": {},  # this process: alive
            "ended": {"owner_pid": ended.pid},
            "reused": {"owner_pid": reused.pid},  # with this process's start: its pid, reused
            "elsewhere": {"owner_pid": ended.pid, "owner_host": "another-host"},
            # recorded by a qdibkr that kept no start ticks: judged by the time the run started (here long
            # before the process, however the host's clock is set)
            "reused_before_ticks": {"owner_pid": reused.pid, "owner_started": None, "started_at": 1_000_000.0},
        }.items()}
        for run in runs.values():
            insert_staged(store, run.id)
        failed = store.fail_orphaned_runs()
    finally:
        reused.kill()
        reused.wait()
    orphaned = ("ended", "reused", "reused_before_ticks")
    assert sorted(run.id for run in failed) == sorted(["old"] + [runs[name].id for name in orphaned])
    status = {run.id: run.status for run in store.runs()}
    assert status == {"old": "failed", **{run.id: "failed" if name in orphaned else "running"
                                          for name, run in runs.items()}}
    staged_runs = sorted(s.run_id for s in store.signals(statuses=["staged"]))
    assert staged_runs == sorted(run.id for name, run in runs.items() if name not in orphaned)
    assert store.fail_orphaned_runs() == []  # done once
    store.close()
