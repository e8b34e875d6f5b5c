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
from qdibkr.schedule import JobBusy, Scheduler, load_job, load_jobs
from tests.notebook_files import outputs, write_notebook

NY, HK = ZoneInfo("America/New_York"), ZoneInfo("Asia/Hong_Kong")


def at(zone, *fields) -> dt.datetime:
    return dt.datetime(*fields, tzinfo=zone)


@pytest.fixture
def folder(tmp_path) -> Path:
    """A schedules folder beside a quick notebook that waits on a FIFO when given one."""
    write_notebook(tmp_path / "quick.ipynb", 'strategy = "quick"\ngate = ""', "if gate:\n    open(gate).read()")
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
    scheduler = Scheduler(load_jobs(folder), store, output_dir=tmp_path / "runs")

    def tick(when):
        for thread in scheduler.tick(when):
            thread.join(60)
        return [(r.job, dt.datetime.fromtimestamp(r.slot, NY), r.status) for r in store.runs()]

    monday = at(NY, 2026, 11, 23, 9, 35)
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


def test_one_job_never_runs_twice_at_once(folder, store, tmp_path):
    gate = tmp_path / "gate"
    os.mkfifo(gate)
    path = schedule(folder, "slow", f'cron = "*/5 * * * *"\n[parameters]\ngate = "{gate}"')
    scheduler = Scheduler(load_jobs(folder), store, output_dir=tmp_path / "runs")
    elsewhere = Scheduler([load_job(path)], store, output_dir=tmp_path / "runs")  # as another process
    first = at(dt.timezone.utc, 2026, 11, 25, 10, 0)
    try:
        [thread] = scheduler.tick(first)
        with open(gate, "w") as writer:  # the run is under way: its notebook waits to read
            assert scheduler.tick(first + dt.timedelta(minutes=5)) == []
            assert scheduler.due(first + dt.timedelta(minutes=5)) == []
            with pytest.raises(JobBusy, match="job slow is running already"):
                elsewhere.run(elsewhere.job("slow"), first + dt.timedelta(minutes=5))
            writer.write("done\n")
        thread.join(60)
        [second] = scheduler.tick(first + dt.timedelta(minutes=6))
        with open(gate, "w") as writer:
            writer.write("done\n")
        second.join(60)
    finally:
        release(gate)
    runs = store.runs("slow")
    assert [(r.status, r.slot) for r in runs] == [("succeeded", first.timestamp()),
                                                   ("succeeded", (first + dt.timedelta(minutes=5)).timestamp())]
    assert runs[0].finished_at <= runs[1].started_at


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
    [first, second] = store.runs("minutely")  # the minute started in the past, skipped; the next one, run
    assert (first.status, second.status) == ("skipped", "succeeded")
    assert second.slot - first.slot == 60
    assert second.started_at + offset.total_seconds() - second.slot < 2  # started on time, by the moved clock


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
    common = ["--dir", str(folder), "--db", str(store.path), "--runs", str(tmp_path / "runs")]
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
    assert jobs["us_sma"].next_slot(at(NY, 2026, 11, 27, 9, 0)) == at(NY, 2026, 11, 27, 12, 50)  # early close
    assert jobs["hk_sma"].next_slot(at(HK, 2026, 12, 24, 16, 0)) == at(HK, 2026, 12, 28, 15, 30)
