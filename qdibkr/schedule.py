"""Schedules: strategy notebooks run on exchange trading days, by cron or relative to the session.

A schedule file (TOML, or YAML with the same settings; one job each, in ``schedules/``)::

    name = "us_sma"                          # default: the file's name
    notebook = "../notebooks/us_sma.ipynb"   # relative to this file
    cron = "50 15 * * *"                     # minute hour day month weekday, in `timezone`
    timezone = "America/New_York"            # default: the calendar's
    calendar = "XNYS"                        # run on this exchange's trading days only (XNYS, XHKG)
    missed = "skip"                          # a slot missed by more than `grace`: "skip" it, or "run" it once, late
    grace = "5m"                             # how late a slot still counts as on time (s, m or h)
    timeout = "10m"                          # how long a run may take (default 600 s; 0: no limit)

    [parameters]                             # papermill parameters, checked against the notebook's
    mode = "live"

Instead of ``cron``, ``at = "close-10m"`` (or ``"open"``, ``"open+30m"``,
``"close+1h"``) runs relative to each session's open or close, early closes
included (the Hong Kong open is the morning's, its close the afternoon's).

``Scheduler.serve()`` starts each job's kernel ``warm_ahead`` seconds (default
60) before its next slot, with the notebook's modules imported, so the run at
the slot begins at the notebook's first line (see ``kernels``).

``Scheduler.tick(now)`` starts, each in its own thread, every job whose latest
slot at ``now`` has not been handled (run or passed over). Only the latest slot
counts: after any gap a job runs once, late (``missed = "run"``) or not at all
(``"skip"``, recorded as a skipped run). A job that has no run recorded yet has
no missed slot: a scheduler never runs a slot from before it started for it.
One job never runs twice at once: a lock file per job, held for the run, also
keeps out another scheduler or a ``qdibkr schedule run`` in another process; a
slot that comes while its job still runs is recorded skipped, saying so. Each
run goes through ``runs.run_notebook`` with the job, slot and timeout, so its
signals reach the runner only if it succeeds, a slot run again emits nothing
twice, and a run that hangs is stopped. ``Scheduler.abort`` stops at once: the
runs under way are recorded failed, their kernels killed.
"""

import datetime as dt
import json
import logging
import os
import re
import threading
import tomllib
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import pandas as pd

from .errors import InputError, QdibkrError
from .hours import load_calendar, quiet
from .kernels import Kernel
from .config import RUN_TIMEOUT
from .runs import check_parameters, run_notebook, stop_runs, strategy_of
from .store import Run, Store, Taken

log = logging.getLogger("qdibkr.schedule")

MISSED = ("skip", "run")
MAX_WAIT = 60.0  # seconds the scheduler sleeps at most between looks at the clock
WARM_AHEAD = 60.0  # seconds before a slot that its kernel starts
_AT = re.compile(r"^(open|close)\s*(?:([+-])\s*(\d+)\s*([smh]))?$")
_SPAN = re.compile(r"^\s*(\d+)\s*([smh])\s*$")
_SECONDS = {"s": 1, "m": 60, "h": 3600}
MAX_CRON_STEPS = 100_000  # cron times tried while looking for one on a trading day


class JobBusy(QdibkrError):
    """The job is running already (in this process or another)."""


def _span(text: str, field_name: str) -> float:
    match = _SPAN.match(str(text))
    if not match:
        raise InputError(field_name, f"{text!r} is not a time span; write e.g. '90s', '5m' or '1h'")
    return int(match[1]) * _SECONDS[match[2]]


def _seconds(value, field_name: str) -> float:
    """A span ('90s', '5m', '1h') or a number of seconds."""
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0:
        return float(value)
    return _span(value, field_name)


@dataclass(frozen=True)
class Job:
    name: str
    notebook: Path
    parameters: dict
    timezone: str
    calendar: str | None = None
    cron: str | None = None
    at: str | None = None  # "open", "close-10m", ...: relative to the calendar's sessions
    missed: str = "skip"
    grace: float = 300.0  # seconds
    timeout: float = RUN_TIMEOUT  # seconds a run may take (0: no limit)
    source: Path | None = None

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    @property
    def when(self) -> str:
        """The schedule in a few words, for listings."""
        rule = f"cron {self.cron} {self.timezone}" if self.cron else f"at the session's {self.at}"
        return rule + (f", {self.calendar} trading days" if self.calendar else "")

    # ------------------------------------------------------------ slots
    def previous_slot(self, now: dt.datetime) -> dt.datetime | None:
        """The latest slot at or before ``now``."""
        return self._session_slot(now, before=True) if self.at else self._cron_slot(now, before=True)

    def next_slot(self, now: dt.datetime) -> dt.datetime | None:
        """The first slot after ``now``."""
        return self._session_slot(now, before=False) if self.at else self._cron_slot(now, before=False)

    def _cron_slot(self, now: dt.datetime, before: bool) -> dt.datetime | None:
        from croniter import croniter

        # croniter steps strictly past its start: start a second after now's second to include now.
        start = now.astimezone(self.zone).replace(microsecond=0) + dt.timedelta(seconds=1 if before else 0)
        times = croniter(self.cron, start)
        for _ in range(MAX_CRON_STEPS):
            slot = times.get_prev(dt.datetime) if before else times.get_next(dt.datetime)
            if self._trading_day(slot):
                return slot
        return None

    def _trading_day(self, slot: dt.datetime) -> bool:
        if not self.calendar:
            return True
        calendar = load_calendar(self.calendar)
        day = slot.astimezone(calendar.tz).date()
        first, last = calendar.sessions[0].date(), calendar.sessions[-1].date()
        if not first <= day <= last:
            raise InputError("calendar", f"{day} is outside the {self.calendar} calendar ({first} to {last})")
        with quiet():
            return bool(calendar.is_session(pd.Timestamp(day)))

    def _session_slot(self, now: dt.datetime, before: bool) -> dt.datetime | None:
        edge, sign, count, unit = _AT.match(self.at).groups()
        calendar = load_calendar(self.calendar)
        offset = pd.Timedelta(seconds=(-1 if sign == "-" else 1) * int(count or 0) * _SECONDS[unit or "s"])
        times = (calendar.opens if edge == "open" else calendar.closes) + offset
        moment = pd.Timestamp(now).tz_convert("UTC")
        i = times.searchsorted(moment, side="right") - 1 if before else times.searchsorted(moment, side="right")
        if not 0 <= i < len(times):
            return None
        return times.iloc[i].to_pydatetime().astimezone(self.zone)


SCHEDULE_FILES = ("*.toml", "*.yaml", "*.yml")


def _read_schedule(path: Path) -> dict:
    """A schedule file's settings, from TOML or (by its suffix) YAML."""
    if path.suffix == ".toml":
        try:
            with open(path, "rb") as f:
                return tomllib.load(f)
        except tomllib.TOMLDecodeError as e:
            raise InputError("schedule", f"{path} is not valid TOML: {e}") from None
    import yaml  # papermill's dependency

    try:
        spec = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise InputError("schedule", f"{path} is not valid YAML: {e}") from None
    if not isinstance(spec, dict):
        raise InputError("schedule", f"{path}: write the settings as a mapping (notebook: ..., cron: ...)")
    return spec


def load_job(path: Path) -> Job:
    """One schedule file, checked: every problem is an InputError naming the file and the field."""
    path = Path(path)
    spec = _read_schedule(path)

    def problem(field_name: str, text: str):
        raise InputError(field_name, f"{path}: {text}")

    known = {"name", "notebook", "parameters", "cron", "at", "timezone", "calendar", "missed", "grace", "timeout"}
    if set(spec) - known:
        problem("schedule", f"unknown setting(s) {', '.join(sorted(set(spec) - known))}; "
                            f"known: {', '.join(sorted(known))}")
    if not spec.get("notebook"):
        problem("notebook", "name the notebook to run: notebook = \"../notebooks/us_sma.ipynb\"")
    notebook = (path.parent / spec["notebook"]).resolve()
    if not notebook.is_file():
        problem("notebook", f"{notebook} does not exist")
    if bool(spec.get("cron")) == bool(spec.get("at")):
        problem("cron", "give either cron = \"35 9 * * *\" or at = \"close-10m\", not both or neither")
    calendar = spec.get("calendar")
    if calendar:
        try:
            load_calendar(calendar)
        except Exception:
            problem("calendar", f"{calendar!r} is not an exchange calendar; use e.g. XNYS or XHKG")
    if spec.get("cron"):
        from croniter import croniter

        if not croniter.is_valid(spec["cron"]):
            problem("cron", f"{spec['cron']!r} is not a cron expression (minute hour day month weekday)")
    if spec.get("at"):
        if not _AT.match(spec["at"]):
            problem("at", f"{spec['at']!r}: write open or close, optionally with an offset: 'open+30m', 'close-10m'")
        if not calendar:
            problem("calendar", "at = ... is relative to a session: name the exchange, calendar = \"XNYS\"")
    timezone = spec.get("timezone") or (str(load_calendar(calendar).tz) if calendar else "UTC")
    try:
        ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError):
        problem("timezone", f"{timezone!r} is not a time zone; use e.g. America/New_York or Asia/Hong_Kong")
    missed = spec.get("missed", "skip")
    if missed not in MISSED:
        problem("missed", f"{missed!r}: use skip or run")
    parameters = spec.get("parameters", {})
    if not isinstance(parameters, dict):
        problem("parameters", "write the parameters as a [parameters] table")
    try:  # a misspelt parameter would run the notebook with its default: refused, as by `qdibkr run`
        check_parameters(notebook, parameters)
    except InputError as e:
        problem(e.field, e.message)
    return Job(name=spec.get("name") or path.stem, notebook=notebook, parameters=parameters, timezone=timezone,
               calendar=calendar, cron=spec.get("cron"), at=spec.get("at"), missed=missed,
               grace=_span(spec.get("grace", "5m"), "grace"),
               timeout=_seconds(spec.get("timeout", RUN_TIMEOUT), "timeout"), source=path)


def schedules_dir() -> Path:
    return Path(os.environ.get("QDIBKR_SCHEDULES") or "schedules")


def load_jobs(folder=None) -> list[Job]:
    """Every schedule (``*.toml``, ``*.yaml``, ``*.yml``) in ``folder`` (default: QDIBKR_SCHEDULES,
    else ./schedules)."""
    folder = Path(folder or schedules_dir())
    if not folder.is_dir():
        raise InputError("schedules", f"{folder} is not a folder of schedule files")
    jobs = [load_job(path) for path in sorted(p for pattern in SCHEDULE_FILES for p in folder.glob(pattern))]
    names = [job.name for job in jobs]
    for name in set(names):
        if names.count(name) > 1:
            raise InputError("name", f"two schedules in {folder} name the job {name!r}")
    return jobs


@contextmanager
def job_lock(store: Store, job: Job):
    """Held while ``job`` runs, by one scheduler on any host sharing the queue; released even if the
    process dies."""
    try:
        with store.exclusive(f"job-{job.name}"):
            yield
    except Taken as e:
        raise JobBusy(f"job {job.name} is running already ({e})") from None


def _shut_down_once_started(kernel: Future):
    """Shut down a warm kernel that no run will take: now if it has started, else when it has. It
    is killed, not asked to exit: it has run nothing but imports, and a stopping scheduler must
    not wait for it."""
    def shut_down(started: Future):
        if started.exception() is None:
            started.result().kill()
            started.result().shutdown()

    kernel.add_done_callback(shut_down)


def _in_background(function, *args) -> Future:
    """``function(*args)`` in a daemon thread: a scheduler stopping does not wait for a kernel still
    starting (one whose start outlives the process ends with it: ipykernel exits when its parent
    does)."""
    future = Future()

    def work():
        if future.set_running_or_notify_cancel():
            try:
                future.set_result(function(*args))
            except BaseException as e:
                future.set_exception(e)

    threading.Thread(target=work, name="warm-kernel", daemon=True).start()
    return future


class Scheduler:
    """Runs due jobs; see the module's notes. ``clock`` (aware datetimes) is replaceable for tests;
    ``started``: when this scheduler started (default: the clock's now), before which it runs no
    slot of a job that has no run recorded; ``warm_ahead`` 0 starts every run's kernel at its slot."""

    def __init__(self, jobs: list[Job], store: Store, *, output_dir=None, clock=None,
                 warm_ahead: float = WARM_AHEAD, started: dt.datetime | None = None):
        self.jobs = {job.name: job for job in jobs}
        self.store = store
        self.output_dir = output_dir
        self.clock = clock or (lambda: dt.datetime.now(dt.timezone.utc))
        self.started = started or self.clock()
        self.warm_ahead = warm_ahead
        self.wake = threading.Event()  # set when a run ends, or to stop
        self.stopping = False
        self._running: dict[str, tuple[threading.Thread, dt.datetime]] = {}  # job -> (its run's thread, slot)
        self._warm: dict[str, tuple[dt.datetime, Future]] = {}  # job -> (slot, its kernel to come)

    def job(self, name: str) -> Job:
        if name not in self.jobs:
            raise InputError("job", f"no job {name!r}; the jobs are {', '.join(self.jobs) or 'none'}")
        return self.jobs[name]

    def _unhandled_slot(self, job: Job, now: dt.datetime) -> dt.datetime | None:
        """``job``'s latest slot at ``now`` if it has been neither run nor passed over; a slot from
        before this scheduler started does not count for a job with no run recorded (it has no
        missed slots: a first start runs nothing from the past, whatever ``missed`` says)."""
        slot = job.previous_slot(now)
        if not slot:
            return None
        last = self.store.last_slot(job.name)
        if last is None:
            return slot if slot >= self.started else None
        return slot if slot.timestamp() > last else None

    def due(self, now: dt.datetime) -> list[tuple[Job, dt.datetime]]:
        """Jobs not running whose latest slot at ``now`` has not been handled, with that slot."""
        return [(job, slot) for job in self.jobs.values()
                if not self.running(job.name) and (slot := self._unhandled_slot(job, now))]

    def running(self, name: str) -> bool:
        thread, _ = self._running.get(name, (None, None))
        return thread is not None and thread.is_alive()

    def tick(self, now: dt.datetime | None = None) -> list[threading.Thread]:
        """Handle every job's latest slot not yet handled: pass over (record skipped) one whose job
        still runs an earlier slot, or one missed under ``missed = "skip"``; else start a run in a
        thread (returned, for whoever wants to wait)."""
        now = now or self.clock()
        started = []
        for job in self.jobs.values():
            slot = self._unhandled_slot(job, now)
            if not slot:
                continue
            if self.running(job.name):
                busy = self._running[job.name][1]
                if slot > busy:
                    limit = f"its timeout is {job.timeout:g} s" if job.timeout else "it has no timeout"
                    self.skip(job, slot, f"job {job.name} was still running for its {busy.isoformat()} slot "
                                         f"({limit})")
                continue
            late = (now - slot).total_seconds()
            if late > job.grace and job.missed == "skip":
                self.skip(job, slot, f"missed by {late / 60:.0f} min (grace {job.grace / 60:g} min); "
                                     f"the job's missed policy is skip")
                continue
            thread = threading.Thread(target=self._run_in_thread, args=(job, slot), name=f"job-{job.name}",
                                      daemon=True)
            self._running[job.name] = (thread, slot)
            thread.start()
            started.append(thread)
        return started

    def _run_in_thread(self, job: Job, slot: dt.datetime):
        try:
            self.run(job, slot)
        except JobBusy as e:
            log.info("%s", e)
            self.skip(job, slot, str(e))  # unless the other process has run it meanwhile
        except Exception:
            log.exception("job %s failed to start", job.name)
        finally:
            self.wake.set()

    def run(self, job: Job, slot: dt.datetime) -> Run | None:
        """Run ``job`` for ``slot`` under its lock; None if that slot was handled meanwhile (by
        another process), or this scheduler is stopping. Raises JobBusy while the job runs elsewhere."""
        with job_lock(self.store, job):
            last = self.store.last_slot(job.name)
            if (last is not None and slot.timestamp() <= last) or self.stopping:
                return None
            log.info("job %s: running %s for %s", job.name, job.notebook, slot.isoformat())
            run = run_notebook(job.notebook, job.parameters, job=job.name, slot=slot, store=self.store,
                               output_dir=self.output_dir, timeout=job.timeout,
                               kernel=self._warm_kernel(job, slot))
            log.info("job %s: %s in %.1f s (%s)", job.name, run.status, run.duration, run.error or run.output_path)
            return run

    def warm(self, job: Job, slot: dt.datetime) -> Future:
        """Start, in the background, the kernel for ``job``'s run at ``slot`` (once per slot); the
        run at that slot takes it. A kernel still waiting for an earlier slot is shut down."""
        if job.name in self._warm and self._warm[job.name][0] == slot:
            return self._warm[job.name][1]
        self._drop_warm(job.name)
        log.info("job %s: starting its kernel for the %s slot", job.name, slot.isoformat())
        future = _in_background(lambda: Kernel.start(job.notebook, preload=True))
        self._warm[job.name] = (slot, future)
        return future

    def _warm_kernel(self, job: Job, slot: dt.datetime) -> Kernel | None:
        """The kernel warmed for this slot, waiting for it if it is still starting; None if there is
        none or it failed to start (the run then starts its own). One pop takes it: ``stop()`` may be
        dropping the warm kernels in another thread meanwhile."""
        warm_slot, future = self._warm.pop(job.name, (None, None))
        if future is None:
            return None
        if warm_slot != slot:  # warmed for a slot that passed without a run here
            _shut_down_once_started(future)
            return None
        try:
            return future.result()
        except Exception:
            log.exception("job %s: the kernel warmed for %s failed to start", job.name, slot.isoformat())
            return None

    def _drop_warm(self, name: str):
        """Shut down the kernel warmed for job ``name``, once it has started, if there is one."""
        _, future = self._warm.pop(name, (None, None))
        if future:
            _shut_down_once_started(future)

    def skip(self, job: Job, slot: dt.datetime, reason: str) -> Run | None:
        """Record ``slot`` passed over, saying why; None if it has been handled meanwhile."""
        log.info("job %s: slot %s skipped: %s", job.name, slot.isoformat(), reason)
        return self.store.skip_slot(job.name, slot.timestamp(), notebook=str(job.notebook),
                                    strategy=strategy_of(job.notebook, job.parameters),
                                    parameters=json.dumps(job.parameters, default=str), error=reason)

    def serve(self):
        """Run due jobs until ``stop()``: wakes ``warm_ahead`` before each job's next slot to warm its
        kernel, at the slot, and when a run ends."""
        try:
            while not self.stopping:
                self.wake.clear()
                now = self.clock()
                self.tick(now)
                wakes = [MAX_WAIT]
                for job in self.jobs.values():
                    slot = job.next_slot(now)
                    if not slot:
                        continue
                    until = (slot - now).total_seconds()
                    if until <= self.warm_ahead:
                        if not self.running(job.name):  # its run takes the kernel of its own slot first
                            self.warm(job, slot)
                    else:
                        wakes.append(until - self.warm_ahead)
                    wakes.append(until)
                self.wake.wait(max(min(wakes), 0.0))
        finally:
            for name in list(self._warm):
                self._drop_warm(name)

    def stop(self):
        """Start no more runs; those under way go on (``join`` waits for them)."""
        self.stopping = True
        self.wake.set()

    def abort(self, reason: str) -> list[Run]:
        """Stop now: start no more runs, stop those under way (their kernels killed, recorded failed
        with ``reason``, their staged signals cancelled) and kill the kernels started ahead. Returns
        the stopped runs' records. Takes well under a second."""
        self.stop()
        stopped = stop_runs(reason, jobs=set(self.jobs))
        for name in list(self._warm):
            self._drop_warm(name)
        return stopped

    def join(self, timeout: float | None = None):
        """Wait for the runs started so far to end."""
        for thread, _ in list(self._running.values()):
            thread.join(timeout)
