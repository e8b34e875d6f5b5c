"""Schedules: slots on trading days only, no overlap, the missed-slot policy, with a controllable clock
and real papermill runs."""

import datetime as dt
import os
import threading
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from qdibkr.cli import main
from qdibkr.errors import InputError
from qdibkr.config import RUN_TIMEOUT
from qdibkr.schedule import JobBusy, Scheduler, load_job, load_jobs
from tests.notebook_files import outputs, write_notebook

NY, HK = ZoneInfo("America/New_York"), ZoneInfo("Asia/Hong_Kong")


def at(zone, *fields) -> dt.datetime:
    return dt.datetime(*fields, tzinfo=zone)


@pytest.fixture
def folder(tmp_path) -> Path:
    """A schedules folder beside a quick notebook that waits on a FIFO when given one."""
    write_notebook(tmp_path / "quick.ipynb", 'strategy = "quick"\ngate = ""\nmode = "research"\nsymbols = []',
                   "if gate:\n    open(gate).read()")
    (tmp_path / "schedules").mkdir()
    return tmp_path / "schedules"


def schedule(folder: Path, name: str, text: str) -> Path:
    path = folder / f"{name}.toml"
    path.write_text(f'notebook = "../quick.ipynb"\n{text}\n')
    return path


# ------------------------------------------------------------------ slots
def test_slots_fall_on_trading_days_only(folder):
    cron = load_job(schedule(folder, "ny", 'cron = "35 9 * * *"\ncalendar = "XNYS"'))
    assert cron.timezone == "America/New_York"  # the calendar's, unless given
    thanksgiving = at(NY, 2026, 11, 26, 12, 0)
    assert cron.previous_slot(thanksgiving) == at(NY, 2026, 11, 25, 9, 35)
    assert cron.next_slot(at(NY, 2026, 11, 25, 9, 35)) == at(NY, 2026, 11, 27, 9, 35)  # strictly after
    assert cron.previous_slot(at(NY, 2026, 11, 25, 9, 35)) == at(NY, 2026, 11, 25, 9, 35)  # at or before
    assert cron.next_slot(at(NY, 2026, 11, 27, 10, 0)) == at(NY, 2026, 11, 30, 9, 35)  # over the weekend

    close = load_job(schedule(folder, "hk", 'at = "close-15m"\ncalendar = "XHKG"'))
    assert close.next_slot(at(HK, 2026, 12, 24, 8, 0)) == at(HK, 2026, 12, 24, 11, 45)  # Christmas Eve closes at noon
    assert close.next_slot(at(HK, 2026, 12, 24, 11, 45)) == at(HK, 2026, 12, 28, 15, 45)  # Christmas, Boxing Day
    opening = load_job(schedule(folder, "open", 'at = "open+30m"\ncalendar = "XNYS"'))
    assert opening.previous_slot(at(NY, 2026, 11, 29, 12, 0)) == at(NY, 2026, 11, 27, 10, 0)

    every_day = load_job(schedule(folder, "utc", 'cron = "0 12 * * *"'))
    assert every_day.timezone == "UTC" and every_day.next_slot(thanksgiving) == at(dt.timezone.utc, 2026, 11, 27, 12, 0)


def test_schedule_files_are_checked(folder):
    bad = {
        'cron = "35 9 * * *"\nat = "close"': "either cron",
        'notebook = "missing.ipynb"\ncron = "* * * * *"': "does not exist",
        'cron = "61 9 * * *"': "not a cron expression",
        'cron = "* * * * *"\ncalendar = "XXXX"': "not an exchange calendar",
        'at = "close"': "name the exchange",
        'at = "noon"\ncalendar = "XNYS"': "write open or close",
        'cron = "* * * * *"\ntimezone = "Mars/Olympus"': "not a time zone",
        'cron = "* * * * *"\nmissed = "later"': "use skip or run",
        'cron = "* * * * *"\ngrace = "soon"': "not a time span",
        'cron = "* * * * *"\ntimeout = "later"': "not a time span",
        'cron = "* * * * *"\ntimeout = -1': "not a time span",
        'cron = "* * * * *"\ncolour = "red"': r"unknown setting\(s\) colour",
    }
    for text, problem in bad.items():
        path = folder / "bad.toml"
        path.write_text(('' if text.startswith("notebook") else 'notebook = "../quick.ipynb"\n') + text)
        with pytest.raises(InputError, match=problem):
            load_job(path)
    path.unlink()
    schedule(folder, "one", 'name = "same"\ncron = "* * * * *"')
    schedule(folder, "two", 'name = "same"\ncron = "* * * * *"')
    with pytest.raises(InputError, match="two schedules in .* name the job 'same'"):
        load_jobs(folder)


def test_yaml_schedules_take_the_same_settings(folder):
    toml = load_job(schedule(folder, "us_toml", 'at = "close-10m"\ncalendar = "XNYS"\nmissed = "run"\n'
                                           '[parameters]\nmode = "live"\nsymbols = ["AAPL", "MSFT"]'))
    (folder / "us.yaml").write_text('name: us\nnotebook: ../quick.ipynb\nat: close-10m\ncalendar: XNYS\n'
                                    'missed: run\nparameters:\n  mode: live\n  symbols: [AAPL, MSFT]\n')
    yaml = load_job(folder / "us.yaml")
    assert {**vars(yaml), "source": None} == {**vars(toml), "name": "us", "source": None}
    (folder / "us.yaml").unlink()
    (folder / "bad.yml").write_text("notebook: [unclosed\n")
    with pytest.raises(InputError, match=r"bad.yml is not valid YAML"):
        load_jobs(folder)
    (folder / "bad.yml").write_text("- a list, not settings\n")
    with pytest.raises(InputError, match=r"bad.yml: write the settings as a mapping"):
        load_jobs(folder)


# ------------------------------------------------------------------ the scheduler
def test_only_trading_days_run_and_a_missed_slot_runs_once_or_is_skipped(folder, store, tmp_path):
    schedule(folder, "late", 'cron = "35 9 * * *"\ncalendar = "XNYS"\nmissed = "run"\ngrace = "2m"')
    schedule(folder, "strict", 'cron = "35 9 * * *"\ncalendar = "XNYS"\nmissed = "skip"\ngrace = "2m"')
    monday = at(NY, 2026, 11, 23, 9, 35)
    scheduler = Scheduler(load_jobs(folder), store, output_dir=tmp_path / "runs", clock=lambda: monday)

    def tick(when):
        for thread in scheduler.tick(when):
            thread.join(60)
        return [(r.job, dt.datetime.fromtimestamp(r.slot, NY), r.status) for r in store.runs()]

    on_time = [("late", monday, "succeeded"), ("strict", monday, "succeeded")]
    assert sorted(tick(monday + dt.timedelta(seconds=30))) == on_time
    assert sorted(tick(monday + dt.timedelta(minutes=5))) == on_time  # that slot is done
    # The scheduler was down Tuesday and Wednesday; Thursday is Thanksgiving, no slot.
    thanksgiving = at(NY, 2026, 11, 26, 12, 0)
    wednesday = at(NY, 2026, 11, 25, 9, 35)
    after = sorted(tick(thanksgiving))
    assert after == sorted(on_time + [("late", wednesday, "succeeded"), ("strict", wednesday, "skipped")])
    [skipped] = [r for r in store.runs() if r.status == "skipped"]
    assert "missed by 1585 min (grace 2 min)" in skipped.error and skipped.output_path == ""
    assert sorted(tick(thanksgiving + dt.timedelta(hours=3))) == after  # a holiday: nothing more
    assert scheduler.due(at(NY, 2026, 11, 27, 9, 34)) == []
    assert [job.name for job, _ in scheduler.due(at(NY, 2026, 11, 27, 9, 35))] == ["late", "strict"]


def test_one_job_never_runs_twice_at_once_and_a_slot_that_comes_meanwhile_is_skipped(folder, store, tmp_path):
    gate = tmp_path / "gate"
    os.mkfifo(gate)
    path = schedule(folder, "slow", f'cron = "*/5 * * * *"\n[parameters]\ngate = "{gate}"')
    first = at(dt.timezone.utc, 2026, 11, 25, 10, 0)
    second, third, fourth = (first + dt.timedelta(minutes=m) for m in (5, 10, 15))
    scheduler = Scheduler(load_jobs(folder), store, output_dir=tmp_path / "runs", clock=lambda: first)
    elsewhere = Scheduler([load_job(path)], store, output_dir=tmp_path / "runs", clock=lambda: first)  # as another process
    try:
        [thread] = scheduler.tick(first)
        with open(gate, "w") as writer:  # the run is under way: its notebook waits to read
            assert scheduler.tick(second) == []  # no second run: the slot is recorded skipped
            assert scheduler.due(second + dt.timedelta(minutes=1)) == []
            with pytest.raises(JobBusy, match="job slow is running already"):
                elsewhere.run(elsewhere.job("slow"), third)
            [busy] = elsewhere.tick(third)  # another scheduler meets the job's lock: skipped too
            busy.join(60)
            writer.write("done\n")
        thread.join(60)
        assert scheduler.tick(third + dt.timedelta(minutes=1)) == []  # a skipped slot does not run late
        [last] = scheduler.tick(fourth)
        with open(gate, "w") as writer:
            writer.write("done\n")
        last.join(60)
    finally:
        release(gate)
    runs = store.runs("slow")
    assert [(r.status, r.slot) for r in runs] == [("succeeded", first.timestamp()), ("skipped", second.timestamp()),
                                                   ("skipped", third.timestamp()), ("succeeded", fourth.timestamp())]
    assert runs[1].error.startswith("job slow was still running for its 2026-11-25T10:00:00+00:00 slot")
    assert runs[2].error.startswith(f"job slow is running already (pid {os.getpid()} since")
    assert runs[0].finished_at <= runs[3].started_at


def test_a_first_start_runs_no_slot_from_before_it_whatever_missed_says(folder, store, tmp_path):
    schedule(folder, "eager", 'cron = "*/5 * * * *"\nmissed = "run"\ngrace = "10m"')
    start = at(dt.timezone.utc, 2026, 11, 25, 10, 0, 30)  # 30 s after a slot, well within grace
    scheduler = Scheduler(load_jobs(folder), store, output_dir=tmp_path / "runs", clock=lambda: start)
    assert scheduler.due(start) == [] and scheduler.tick(start) == []
    assert scheduler.tick(start + dt.timedelta(minutes=3)) == [] and store.runs() == []  # nothing run, nothing skipped
    [thread] = scheduler.tick(at(dt.timezone.utc, 2026, 11, 25, 10, 5, 1))  # the first slot after the start
    thread.join(60)
    # Restarted later: the job has a run recorded now, so its missed policy holds: run once, late.
    later = at(dt.timezone.utc, 2026, 11, 25, 10, 17)
    restarted = Scheduler(load_jobs(folder), store, output_dir=tmp_path / "runs", clock=lambda: later)
    [thread] = restarted.tick(later)
    thread.join(60)
    assert [(r.status, dt.datetime.fromtimestamp(r.slot, dt.timezone.utc).strftime("%H:%M"))
            for r in store.runs("eager")] == [("succeeded", "10:05"), ("succeeded", "10:15")]


def test_a_misspelt_parameter_is_refused_when_the_schedule_loads(folder, store, tmp_path, capsys):
    path = schedule(folder, "typo", 'cron = "* * * * *"\n[parameters]\nmodee = "live"')
    with pytest.raises(InputError) as refused:
        load_job(path)
    assert refused.value.field == "parameter"
    assert "quick.ipynb has no parameter modee; its parameters are strategy, gate, mode, symbols" in str(refused.value)
    assert str(refused.value).startswith(f"parameter: {path}: ")
    # ... in the very words `qdibkr run` refuses it with
    assert main(["run", str(folder.parent / "quick.ipynb"), "--db", str(store.location), "-p", "modee", "live"]) == 2
    assert capsys.readouterr().err.strip().removeprefix("qdibkr: parameter: ") in refused.value.message
    assert main(["schedule", "list", "--dir", str(folder), "--db", str(store.location)]) == 2  # the scheduler won't start
    assert "has no parameter modee" in capsys.readouterr().err and store.runs() == []


def test_a_scheduled_run_that_hangs_is_stopped_at_the_jobs_timeout(folder, store, tmp_path):
    gate = tmp_path / "gate"
    os.mkfifo(gate)  # nobody writes to it: the notebook waits for ever
    schedule(folder, "hangs", f'cron = "*/5 * * * *"\ntimeout = "2s"\n[parameters]\ngate = "{gate}"')
    first = at(dt.timezone.utc, 2026, 11, 25, 10, 0)
    scheduler = Scheduler(load_jobs(folder), store, output_dir=tmp_path / "runs", clock=lambda: first)
    assert scheduler.job("hangs").timeout == 2
    try:
        [thread] = scheduler.tick(first)
        thread.join(60)
    finally:
        release(gate)
    [run] = store.runs("hangs")
    assert run.status == "failed" and run.error.startswith("timed out: the run took more than 2 s")
    assert 2 <= run.duration < 10 and not thread.is_alive()
    second = first + dt.timedelta(minutes=5)
    # Its kernel started ahead of the slot, as `qdibkr schedule` does: the 2 s are the notebook's alone, which a
    # loaded machine's slow kernel start must not eat (the notebook would never open the gate to be let through).
    scheduler.warm(scheduler.job("hangs"), second).result(60)
    [thread] = scheduler.tick(second)  # the job is free for its next slot
    with open(gate, "w") as writer:
        writer.write("go\n")
    thread.join(60)
    assert [r.status for r in store.runs("hangs")] == ["failed", "succeeded"]


def release(gate: Path):
    """Let a notebook still waiting on ``gate`` (a failed test) go on: end its read."""
    try:
        os.close(os.open(gate, os.O_WRONLY | os.O_NONBLOCK))
    except OSError:
        pass  # nobody is reading


def test_serve_wakes_at_the_slot(folder, store, tmp_path):
    schedule(folder, "minutely", 'cron = "* * * * *"\nmissed = "skip"\ngrace = "30s"')
    offset = dt.timedelta()

    def clock():  # the real clock, moved so that the next minute starts 0.3 s from now
        return dt.datetime.now(dt.timezone.utc) + offset

    now = clock()
    offset = dt.timedelta(seconds=60 - now.second - now.microsecond / 1e6 - 0.3)
    scheduler = Scheduler(load_jobs(folder), store, output_dir=tmp_path / "runs", clock=clock)
    done = threading.Event()
    run = scheduler.run

    def run_and_tell(job, slot):
        try:
            return run(job, slot)
        finally:
            done.set()

    scheduler.run = run_and_tell
    serving = threading.Thread(target=scheduler.serve, daemon=True)
    serving.start()
    assert done.wait(60)
    scheduler.stop()
    serving.join(10)
    [run] = store.runs("minutely")  # the minute started before the scheduler: no run, not even a skipped one
    assert run.status == "succeeded" and 0 < run.slot - scheduler.started.timestamp() < 1
    assert run.started_at + offset.total_seconds() - run.slot < 2  # started on time, by the moved clock


def test_serve_starts_the_kernel_ahead_and_the_run_at_the_slot_takes_it(tmp_path, store):
    folder = tmp_path / "schedules"
    folder.mkdir()
    write_notebook(tmp_path / "pid.ipynb", 'strategy = "pid"', "import os\nprint(os.getpid())")
    (folder / "ahead.toml").write_text('notebook = "../pid.ipynb"\ncron = "* * * * *"\ngrace = "30s"\n')
    offset = dt.timedelta()

    def clock():  # the real clock, moved so that the next minute starts 2 s from now
        return dt.datetime.now(dt.timezone.utc) + offset

    now = clock()
    offset = dt.timedelta(seconds=60 - now.second - now.microsecond / 1e6 - 2)
    warmed, ran = [], threading.Event()

    class Watched(Scheduler):
        def warm(self, job, slot):
            kernel = super().warm(job, slot)
            warmed.append((slot, kernel))
            return kernel

        def run(self, job, slot):
            try:
                return super().run(job, slot)
            finally:
                ran.set()

    scheduler = Watched(load_jobs(folder), store, output_dir=tmp_path / "runs", clock=clock, warm_ahead=30)
    serving = threading.Thread(target=scheduler.serve, daemon=True)
    serving.start()
    assert ran.wait(60)
    scheduler.stop()
    serving.join(10)
    [(slot, kernel)] = warmed[:1]
    [*_, done] = store.runs("ahead")
    assert (done.status, done.slot) == ("succeeded", slot.timestamp())
    pid = kernel.result().manager.provisioner.pid
    assert outputs(done.output_path, "stream")[0]["text"].strip() == str(pid)  # the run had the warm kernel
    assert not kernel.result().alive()


def test_a_kernel_warmed_for_another_slot_is_shut_down_not_used(folder, store, tmp_path):
    schedule(folder, "every", 'cron = "* * * * *"')
    scheduler = Scheduler(load_jobs(folder), store, output_dir=tmp_path / "runs")
    job = scheduler.job("every")
    first = at(dt.timezone.utc, 2026, 11, 25, 10, 0)
    kernel = scheduler.warm(job, first).result()  # started, for a slot that then passes unrun
    run = scheduler.run(job, first + dt.timedelta(minutes=1))
    assert run.status == "succeeded" and not kernel.alive()


def test_qdibkr_schedule_list_and_run(folder, store, tmp_path, capsys):
    schedule(folder, "us", 'at = "close-10m"\ncalendar = "XNYS"')
    common = ["--dir", str(folder), "--db", str(store.location), "--runs", str(tmp_path / "runs")]
    assert main(["schedule", "list", *common]) == 0
    out = capsys.readouterr().out
    [row] = [line for line in out.splitlines() if line.startswith("us ")]
    assert "quick.ipynb  at the session's close-10m, XNYS trading days" in row and " EST " in row
    assert main(["schedule", "run", "us", *common]) == 0
    assert "run " in capsys.readouterr().out and [r.status for r in store.runs("us")] == ["succeeded"]
    assert main(["schedule", "run", "nope", *common]) == 2
    assert "no job 'nope'; the jobs are us" in capsys.readouterr().err


def test_the_shipped_schedules_load():
    jobs = {job.name: job for job in load_jobs(Path(__file__).parent.parent / "schedules")}
    assert set(jobs) == {"us_sma", "hk_sma"}
    assert all(job.notebook.is_file() and job.parameters["mode"] == "live" for job in jobs.values())
    assert all(job.missed == "skip" and job.timeout == RUN_TIMEOUT for job in jobs.values())  # never late, live
    assert jobs["us_sma"].next_slot(at(NY, 2026, 11, 27, 9, 0)) == at(NY, 2026, 11, 27, 12, 50)  # early close
    assert jobs["hk_sma"].next_slot(at(HK, 2026, 12, 24, 16, 0)) == at(HK, 2026, 12, 28, 15, 30)
