"""Historical bars for many symbols: asked for in pieces IB accepts, paced, and cached on disk.

::

    from qdibkr.bars import fetch
    bars = fetch(ibkr, ["AAPL", "0700.HK"], duration="2 Y", bar_size="1 day")   # {"AAPL": DataFrame, ...}

Each frame is ``Broker.bars``'s (open, high, low, close, volume, wap, count, indexed
by bar start in exchange-local time) and holds the bars whose period starts in
[end - duration, end). ``end`` defaults to TWS's current time; durations are
calendar spans, "N S|D|W|M|Y" seconds, days, weeks, months or years (IB's own
"N D" counts trading days instead).

- Pieces: IB serves a limited duration per request, by bar size. A longer range
  is asked for in pieces of at most ``BAR_SIZES[bar_size].chunk``, walking back
  from the end (``plan``).
- Pacing: every request waits for its turn under IB's historical pacing rules
  (``Pacer``), so that normal use never meets error 162.
- Cache: a Parquet file per data source, symbol, bar size, data type and RTH
  setting, under ``QDIBKR_CACHE`` (default ``~/.cache/qdibkr/bars``), as
  ``<source>/TRADES/1day/rth/AAPL.parquet``. It records which spans it holds
  completely; a request reads those from the file and asks TWS only for the
  rest, and what comes back is merged in. Only finished bars are kept: a bar
  whose period has not ended at TWS's current time is returned, and asked for
  again next time.
- Data source: the connection says where its bars come from
  (``Broker.data_source``): ``ib`` for TWS and IB Gateway, ``simulated-seed<N>``
  for qdibkr's simulated gateway, which reports its seed in an account value
  no TWS sends. So the simulator's synthetic bars are never served as IB's
  history (nor one seed's as another's), whoever calls ``fetch`` and whatever
  port either listened on. Paper and live logins share the ``ib`` folder: IB
  gives both the same market data. (Files of the older layout, with no source
  folder, are not read: they may hold both kinds.)

A bar's period is clock-aligned in the exchange's zone (an hour bar of a session
opening at 09:30 is labelled 09:30 but belongs to 09:00-10:00; a daily bar's is
its date), as IB aligns bars.
"""

import asyncio
import json
import os
import re
import time
import weakref
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm.auto import tqdm

from .errors import InputError, PacingError
from .broker import BAR_COLUMNS, EXCHANGE_ZONES, Broker
from .symbols import Symbol, parse_symbol

DEFAULT_CACHE = "~/.cache/qdibkr/bars"
MAX_IN_FLIGHT = 8  # requests open at once (IB allows 50)
WHAT_TO_SHOW = ("TRADES", "MIDPOINT", "BID", "ASK", "ADJUSTED_LAST")
_COVERAGE_KEY = b"qdibkr.coverage"
_DURATION = re.compile(r"^\s*([1-9]\d*)\s*([SDWMY])\s*$")
_UNITS = {"S": "seconds", "D": "days", "W": "weeks", "M": "months", "Y": "years"}


@dataclass(frozen=True)
class BarSize:
    seconds: int  # the bar's length; daily and longer bars follow the calendar instead
    chunk: str  # the longest duration one request asks for: within IB's limit for this bar size


# IB's bar sizes. The chunks stay inside the step sizes IB documents (and the
# simulated gateway enforces); seconds for small bars, weeks for intraday bars
# (calendar units, where IB's "D" would count trading days), years for daily.
BAR_SIZES = {
    "1 secs": BarSize(1, "1800 S"), "5 secs": BarSize(5, "3600 S"), "10 secs": BarSize(10, "14400 S"),
    "15 secs": BarSize(15, "14400 S"), "30 secs": BarSize(30, "28800 S"),
    "1 min": BarSize(60, "1 W"), "2 mins": BarSize(120, "1 W"), "3 mins": BarSize(180, "1 W"),
    "5 mins": BarSize(300, "4 W"), "10 mins": BarSize(600, "4 W"), "15 mins": BarSize(900, "4 W"),
    "20 mins": BarSize(1200, "4 W"), "30 mins": BarSize(1800, "4 W"),
    "1 hour": BarSize(3600, "52 W"), "2 hours": BarSize(7200, "52 W"), "3 hours": BarSize(10800, "52 W"),
    "4 hours": BarSize(14400, "52 W"), "8 hours": BarSize(28800, "52 W"),
    "1 day": BarSize(86400, "10 Y"), "1 week": BarSize(7 * 86400, "10 Y"), "1 month": BarSize(30 * 86400, "10 Y"),
}


# ------------------------------------------------------------------ time arithmetic

def parse_duration(duration: str) -> tuple[int, str]:
    match = _DURATION.match(duration or "")
    if not match:
        raise InputError("duration", f"{duration!r} is not a duration; write a whole number and a unit: "
                                     f"'3600 S', '5 D', '2 W', '6 M' or '2 Y'")
    return int(match[1]), match[2]


def before(t: pd.Timestamp, count: int, unit: str) -> pd.Timestamp:
    """``t`` less a duration: exact seconds, or calendar days, weeks, months, years on the local clock."""
    if unit == "S":
        return t - pd.Timedelta(seconds=count)
    return t - pd.DateOffset(**{_UNITS[unit]: count})


def period_start(t: pd.Timestamp, bar_size: str) -> pd.Timestamp:
    """Start of the bar period holding ``t``, on the clock of ``t``'s zone."""
    wall = t.tz_localize(None)
    if bar_size == "1 month":
        start = wall.normalize().replace(day=1)
    elif bar_size == "1 week":
        start = wall.normalize() - pd.Timedelta(days=wall.weekday())
    elif bar_size == "1 day":
        start = wall.normalize()
    else:
        start = wall.floor(f"{BAR_SIZES[bar_size].seconds}s")
    return start.tz_localize(t.tz, ambiguous=True, nonexistent="shift_forward")


def next_period(start: pd.Timestamp, bar_size: str) -> pd.Timestamp:
    """The start of the period after the one starting at ``start``."""
    step = {"1 month": pd.DateOffset(months=1), "1 week": pd.DateOffset(weeks=1), "1 day": pd.DateOffset(days=1)}
    return start + step.get(bar_size, pd.Timedelta(seconds=BAR_SIZES[bar_size].seconds))


def period_ceil(t: pd.Timestamp, bar_size: str) -> pd.Timestamp:
    """``t`` if a period starts there, else the start of the next period."""
    start = period_start(t, bar_size)
    return t if start == t else next_period(start, bar_size)


# ------------------------------------------------------------------ planning requests

@dataclass(frozen=True)
class Request:
    end: pd.Timestamp
    duration: str
    covers: tuple[pd.Timestamp, pd.Timestamp]  # every bar whose period starts in [lo, hi) comes back


def plan(start: pd.Timestamp, end: pd.Timestamp, bar_size: str) -> list[Request]:
    """Requests, newest first, that together return every bar whose period starts in [start, end).

    A request's answer may begin with a partial bar (its duration can start inside a
    period), so it counts as covering only from the first whole period on
    (``_first_whole``); the next request ends there. The newest one ends inside a
    period when ``end`` does: the bar still forming then is not covered either.
    """
    most, unit = parse_duration(BAR_SIZES[bar_size].chunk)
    unit_seconds = {"S": 1, "W": 7 * 86400, "Y": 365 * 86400}[unit]
    requests = []
    while end > start:
        # The shortest duration that reaches back to ``start`` (counting up from an estimate that is
        # never too long), at most a chunk.
        count = min(most, max(1, int((end - start).total_seconds() // unit_seconds)))
        while count < most and _first_whole(end, count, unit, bar_size) > start:
            count += 1
        lo = _first_whole(end, count, unit, bar_size)
        requests.append(Request(end, f"{count} {unit}", (lo, period_start(end, bar_size))))
        end = lo
    return requests


def _first_whole(end: pd.Timestamp, count: int, unit: str, bar_size: str) -> pd.Timestamp:
    """The first bar period a request's answer surely holds whole: intraday, the first one
    starting at or after the duration's start; daily and longer, the one after the start's
    (IB counts the sessions dated after the start)."""
    start = before(end, count, unit)
    if BAR_SIZES[bar_size].seconds < 86400:
        return period_ceil(start, bar_size)
    return next_period(period_start(start, bar_size), bar_size)


# ------------------------------------------------------------------ pacing

class Pacer:
    """Spaces historical data requests to keep inside IB's pacing rules (error 162 otherwise).

    - no identical request within 15 s;
    - for bars of 30 s or less: at most 5 requests for one contract and data type
      within 2 s (IB: six or more is a violation), and at most 60 within 10 minutes.

    ``wait`` returns once a request may go, and records it; each window gets a
    margin, for the time a request takes to reach TWS.
    """

    IDENTICAL_WINDOW = 15.0
    BURST_MAX, BURST_WINDOW = 5, 2.0
    SMALL_MAX, SMALL_WINDOW = 60, 600.0
    SMALL_BAR_SECONDS = 30
    MARGIN = 0.5

    def __init__(self, clock=time.monotonic):
        self.clock = clock
        self.sent: deque[tuple[float, tuple, tuple, bool]] = deque()  # (time, request, contract, small bars)

    def delay(self, request: tuple, contract: tuple, small: bool) -> float:
        """Seconds until ``request`` may be sent; 0 if now."""
        now = self.clock()
        while self.sent and now - self.sent[0][0] > self.SMALL_WINDOW + self.MARGIN:
            self.sent.popleft()
        ready = [t + self.IDENTICAL_WINDOW for t, r, _, _ in self.sent if r == request]
        if small:
            mine = [t for t, _, c, s in self.sent if s and c == contract]
            if len(mine) >= self.BURST_MAX:
                ready.append(mine[-self.BURST_MAX] + self.BURST_WINDOW)
            smalls = [t for t, _, _, s in self.sent if s]
            if len(smalls) >= self.SMALL_MAX:
                ready.append(smalls[-self.SMALL_MAX] + self.SMALL_WINDOW)
        return max([0.0] + [t + self.MARGIN - now for t in ready])

    async def wait(self, request: tuple, contract: tuple, small: bool):
        while (delay := self.delay(request, contract, small)) > 0:
            await asyncio.sleep(delay)
        self.sent.append((self.clock(), request, contract, small))


_pacers: "weakref.WeakKeyDictionary[Broker, Pacer]" = weakref.WeakKeyDictionary()


def pacer_for(ibkr: Broker) -> Pacer:
    """The pacer of a connection: IB paces per session, so every fetch through it shares one."""
    return _pacers.setdefault(ibkr, Pacer())


# ------------------------------------------------------------------ the cache

@dataclass(frozen=True)
class CacheKey:
    source: str  # Broker.data_source: "ib", "simulated-seed0"
    symbol: str  # as displayed: "AAPL", "0700.HK"
    bar_size: str
    what_to_show: str
    use_rth: bool


class Cache:
    """Bars on disk, a Parquet file per key, with the spans each file holds completely."""

    def __init__(self, directory: str | os.PathLike | None = None):
        self.directory = Path(directory or os.environ.get("QDIBKR_CACHE") or DEFAULT_CACHE).expanduser()

    def path(self, key: CacheKey) -> Path:
        hours = "rth" if key.use_rth else "all-hours"
        return (self.directory / key.source / key.what_to_show / key.bar_size.replace(" ", "") / hours /
                f"{key.symbol}.parquet")

    def load(self, key: CacheKey) -> tuple[pd.DataFrame | None, list[tuple[pd.Timestamp, pd.Timestamp]]]:
        path = self.path(key)
        if not path.exists():
            return None, []
        table = pq.read_table(path)
        frame = table.to_pandas()
        zone = frame.index.tz  # spans back in the exchange's zone, for calendar arithmetic on them
        spans = json.loads(table.schema.metadata[_COVERAGE_KEY])
        return frame, [(pd.Timestamp(lo).tz_convert(zone), pd.Timestamp(hi).tz_convert(zone)) for lo, hi in spans]

    def save(self, key: CacheKey, frame: pd.DataFrame, coverage: list[tuple[pd.Timestamp, pd.Timestamp]]):
        """Write the file whole, then move it into place: a reader never sees half of it."""
        table = pa.Table.from_pandas(frame)
        spans = json.dumps([[lo.isoformat(), hi.isoformat()] for lo, hi in coverage]).encode()
        table = table.replace_schema_metadata({**table.schema.metadata, _COVERAGE_KEY: spans})
        path = self.path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(f".{os.getpid()}.tmp")
        pq.write_table(table, partial)
        os.replace(partial, path)


def merge_spans(spans: list[tuple]) -> list[tuple]:
    """Overlapping or touching spans joined into one; sorted."""
    merged: list[tuple] = []
    for lo, hi in sorted(s for s in spans if s[0] < s[1]):
        if merged and lo <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], hi))
        else:
            merged.append((lo, hi))
    return merged


def missing_spans(coverage: list[tuple], start, end) -> list[tuple]:
    """The parts of [start, end) that the (merged) coverage lacks."""
    gaps, cursor = [], start
    for lo, hi in coverage:
        if hi <= cursor:
            continue
        if lo >= end:
            break
        if lo > cursor:
            gaps.append((cursor, lo))
        cursor = max(cursor, hi)
    if cursor < end:
        gaps.append((cursor, end))
    return gaps


def _inside(index: pd.DatetimeIndex, spans: list[tuple]) -> np.ndarray:
    inside = np.zeros(len(index), dtype=bool)
    for lo, hi in spans:
        inside |= (index >= lo) & (index < hi)
    return inside


# ------------------------------------------------------------------ fetching

async def fetch_async(ibkr: Broker, symbols, *, duration: str = "1 Y", end=None, bar_size: str = "1 day",
                      use_rth: bool = True, what_to_show: str = "TRADES", cache_dir=None,
                      progress: bool = True) -> dict[str, pd.DataFrame]:
    """Bars of every symbol over [end - duration, end); see the module's notes. ``end``: None for
    TWS's current time, or a time (naive: exchange-local). Keys are symbols as displayed ("0700.HK")."""
    if isinstance(symbols, str):
        symbols = [symbols]
    if bar_size not in BAR_SIZES:
        raise InputError("bar_size", f"{bar_size!r} is not an IB bar size; use one of {', '.join(BAR_SIZES)}")
    what = (what_to_show or "").strip().upper()
    if what not in WHAT_TO_SHOW:
        raise InputError("what_to_show", f"{what_to_show!r} is not a data type; use one of {', '.join(WHAT_TO_SHOW)}")
    count, unit = parse_duration(duration)
    parsed = [parse_symbol(s) for s in symbols]
    now = pd.Timestamp((await ibkr.status_async()).server_time)  # TWS's clock (the simulator's may run ahead)
    cache, pacer, source = Cache(cache_dir), pacer_for(ibkr), ibkr.data_source
    slots = asyncio.Semaphore(MAX_IN_FLIGHT)

    async def one(sym: Symbol, done: tqdm) -> pd.DataFrame:
        zone = EXCHANGE_ZONES[sym.market]
        stop = now.tz_convert(zone)
        if end is not None:
            asked = pd.Timestamp(end)
            stop = min(stop, asked.tz_localize(zone) if asked.tzinfo is None else asked.tz_convert(zone))
        start = period_ceil(before(stop, count, unit), bar_size)
        key = CacheKey(source, sym.display, bar_size, what, use_rth)
        frame = await _fetch_one(ibkr, sym, key, start, stop, cache, pacer, slots)
        done.update()
        return frame

    with tqdm(total=len(parsed), desc="bars", unit="symbol", disable=None if progress else True) as done:
        frames = await asyncio.gather(*(one(sym, done) for sym in parsed), return_exceptions=True)
    for frame in frames:
        if isinstance(frame, BaseException):
            raise frame
    return {sym.display: frame for sym, frame in zip(parsed, frames)}


def fetch(ibkr: Broker, symbols, **kwargs) -> dict[str, pd.DataFrame]:
    """The blocking form of ``fetch_async`` (scripts, notebooks)."""
    return ibkr.run(fetch_async(ibkr, symbols, **kwargs))


async def _fetch_one(ibkr: Broker, sym: Symbol, key: CacheKey, start, stop, cache: Cache, pacer: Pacer,
                     slots: asyncio.Semaphore) -> pd.DataFrame:
    """One symbol's bars whose period starts in [start, stop): from the cache, and from TWS for the rest."""
    cached, coverage = cache.load(key)
    pieces = [cached] if cached is not None else []
    fetched = False
    for gap_start, gap_end in missing_spans(coverage, start, stop):
        for request in plan(gap_start, gap_end, key.bar_size):
            async with slots:
                frame = await _ask(ibkr, sym, key, request, pacer)
            pieces.append(frame[frame.index >= request.covers[0]])  # a partial first bar is not kept
            coverage = merge_spans(coverage + [request.covers])
            fetched = True
    if not pieces:
        return _empty(sym)
    bars = pd.concat(pieces) if len(pieces) > 1 else pieces[0]
    bars = bars[~bars.index.duplicated(keep="last")].sort_index()
    if fetched:
        cache.save(key, bars[_inside(bars.index, coverage)], coverage)
    return bars[(bars.index >= start) & (bars.index < stop)]


async def _ask(ibkr: Broker, sym: Symbol, key: CacheKey, request: Request, pacer: Pacer) -> pd.DataFrame:
    """One request, when the pacer allows it. Another program on the same TWS may have asked the
    same moments ago (a second ``qdibkr bars`` run, say): then the pacer, which has recorded this
    request, holds the repeat until IB's window has passed, once."""
    async def send() -> pd.DataFrame:
        small = BAR_SIZES[key.bar_size].seconds <= Pacer.SMALL_BAR_SECONDS
        await pacer.wait((key, request.end, request.duration), (key.symbol, key.what_to_show), small)
        return await ibkr.bars_async(sym.display, end=request.end.to_pydatetime(), duration=request.duration,
                                     bar_size=key.bar_size, use_rth=key.use_rth, what_to_show=key.what_to_show)

    try:
        return await send()
    except PacingError:
        return await send()


def _empty(sym: Symbol) -> pd.DataFrame:
    index = pd.DatetimeIndex([], tz=EXCHANGE_ZONES[sym.market], name="time")
    return pd.DataFrame(columns=BAR_COLUMNS, index=index, dtype=float)
