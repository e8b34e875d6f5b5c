"""The simulated market: a deterministic, seeded price path for every listing.

Every price is a pure function of (seed, listing, time), so two simulators
started with the same seed show the same quotes and bars at the same moments,
and a test can ask for any time, past or future, in any order. Times are POSIX
epoch seconds (UTC). The simulator trades around the clock, so that offline
users and CI can trade at night: the path moves continuously, while daily and
intraday *bars* follow the exchange's sessions, as IB's do.

The log price is a random walk built from the top down, each level a Brownian
bridge pinned to the level above, so that any day can be drawn on its own:

- one normal step per UTC day since 2000-01-01, with the listing's annual
  volatility spread over 365 days, anchored at ``base_price`` on 2026-01-01;
- a bridge at 1-minute resolution through each UTC day (1441 points);
- a bridge at 1-second resolution through each minute (61 points), linear
  between seconds. A 1-minute bar's close is therefore exactly the live price
  at the minute's end.

Each level draws from numpy's counter-based Philox generator, keyed by a stable
hash of (seed, symbol) and positioned by (stream, block): random access, no
sequential state. The 1-minute level is drawn a calendar month per block, so
ten years of daily bars take 120 draws rather than 3,650.

The 1-second level does not draw 60 numbers for every minute: that would be
86,400 a day, too slow for years of daily bars. Instead each (seed, symbol) has
a bank of 4096 unit bridge shapes, and the minute level picks one per minute,
scaled to the listing's volatility. Every high and low is then exact and cheap:
daily bars, intraday bars, quotes and ``low_high`` all read the same 1-second
path, so a daily high is the highest 1-minute high, and a quote's high only
rises.

Volume follows a U-shaped intraday profile around a per-listing daily level,
busier in minutes where the price moves more. The quote's cumulative volume and
the bars' volumes come from the same minute volumes.

The order book (``book_side``) stacks levels one ladder step apart behind the
quote's bid and ask; tick-by-tick data (``tops``) is the quote at each second.
"""

import hashlib
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass, fields
from datetime import date, datetime, timedelta
from functools import lru_cache
from zoneinfo import ZoneInfo

import numpy as np
import pandas as pd

from .catalogue import Listing, SessionTable, min_tick, round_to_tick, session_table

DAY = 86_400
_EPOCH = date(2000, 1, 1)  # day 0 of the daily walk
_EPOCH_DAY = (_EPOCH - date(1970, 1, 1)).days  # the same day in days since 1970
_ANCHOR = (date(2026, 1, 1) - _EPOCH).days  # where the walk equals log(base_price)
_DAYS = (date(2050, 1, 1) - _EPOCH).days  # the walk covers 2000-2049

# Philox streams: daily steps, daily volume levels, the minute level (by month)
# and the bank of 1-second shapes.
_LEVELS, _VOLUMES, _MINUTES, _SECONDS = range(4)
_SHAPE_COUNT = 4096  # 1-second bridge shapes per (seed, symbol)

SPREAD_BP = 0.5  # quoted spread in basis points of the price, at least one tick (AAPL: a cent or two)
MAX_BOOK_LEVELS = 10  # price levels a side of the order book
EXTENDED_ACTIVITY = 0.02  # an extended-hours minute trades 2% of an average RTH minute
_U_SHAPE = 2.0  # the open and close trade 3x as much as midday
_MINUTE_FRACTIONS = np.arange(1441) / 1440  # time through the day at each minute point
_SECOND_FRACTIONS = np.arange(61) / 60  # time through the minute at each second point


@dataclass(frozen=True)
class Quote:
    bid: float
    ask: float
    last: float
    bid_size: int
    ask_size: int
    last_size: int
    open: float  # today's regular session so far
    high: float
    low: float
    close: float  # the previous session's close, as IB reports it
    volume: int  # shares traded in today's regular session so far
    time: float


@dataclass(frozen=True)
class Tops:
    """The top of book at consecutive whole seconds, one list entry per second."""

    time: list[int]
    bid: list[float]
    ask: list[float]
    last: list[float]
    bid_size: list[int]
    ask_size: list[int]
    last_size: list[int]


@dataclass(frozen=True)
class Bar:
    start: float  # epoch seconds
    day: date | None  # set for daily, weekly and monthly bars
    open: float
    high: float
    low: float
    close: float
    volume: int  # -1 when not TRADES, as IB reports
    wap: float  # -1 when not TRADES
    count: int  # -1 when not TRADES


# ------------------------------------------------------------------ the price path


@lru_cache(maxsize=None)
def _key(seed: int, symbol: str) -> int:
    """A stable 128-bit Philox key (Python's hash() changes between runs)."""
    return int.from_bytes(hashlib.blake2b(f"{seed}:{symbol}".encode(), digest_size=16).digest(), "little")


def _random(seed: int, listing: Listing, stream: int, block: int) -> np.random.Generator:
    """The generator of one (stream, block): it draws the same numbers on every call."""
    bits = np.random.Philox(key=_key(seed, listing.symbol), counter=[0, 0, block, stream])
    return np.random.Generator(bits)


def _daily_sigma(listing: Listing) -> float:
    return listing.annual_vol / math.sqrt(365)


def _second_sigma(listing: Listing) -> float:
    return _daily_sigma(listing) / math.sqrt(DAY)


def _day_index(epoch_day: int) -> int:
    day = epoch_day - _EPOCH_DAY
    if not 0 <= day < _DAYS:
        raise ValueError("the simulated market covers 2000-01-01 to 2049-12-31 (UTC) only")
    return day


def _read_only(array: np.ndarray) -> np.ndarray:
    """Cached arrays are shared by every caller: make an accidental write fail loudly."""
    array.setflags(write=False)
    return array


def _bridge(steps: np.ndarray, fractions: np.ndarray, gap) -> np.ndarray:
    """Random walks from 0 along the last axis, tilted so that each ends at ``gap``."""
    walk = np.zeros(steps.shape[:-1] + (steps.shape[-1] + 1,))
    np.cumsum(steps, axis=-1, out=walk[..., 1:])
    return walk + fractions * (gap - walk[..., -1:])


@lru_cache(maxsize=64)
def _daily(seed: int, listing: Listing) -> tuple[np.ndarray, np.ndarray]:
    """Log price at each UTC midnight of 2000-2049 (and 2050-01-01), and each day's volume factor."""
    steps = _random(seed, listing, _LEVELS, 0).standard_normal(_DAYS) * _daily_sigma(listing)
    levels = np.concatenate([[0.0], np.cumsum(steps)])
    levels += math.log(listing.base_price) - levels[_ANCHOR]
    # Lognormal around 1 (its mean is exp(-0.045 + 0.3**2 / 2) = 1).
    volume_factor = np.exp(0.3 * _random(seed, listing, _VOLUMES, 0).standard_normal(_DAYS) - 0.045)
    return _read_only(levels), _read_only(volume_factor)


def _month_index(when: date) -> int:
    """Months since 2000-01."""
    return (when.year - _EPOCH.year) * 12 + when.month - 1


@lru_cache(maxsize=64)
def _month(seed: int, listing: Listing, month: int) -> tuple[np.ndarray, np.ndarray]:
    """One month (months since 2000-01) of the minute level, a row per UTC day:
    the log price at the day's 1441 minute boundaries, and the shape of each of
    its 1440 minutes (an index into ``_shapes``)."""
    first = date(_EPOCH.year + month // 12, month % 12 + 1, 1)
    after = date(first.year + first.month // 12, first.month % 12 + 1, 1)
    day, days = (first - _EPOCH).days, (after - first).days
    levels, _ = _daily(seed, listing)
    random = _random(seed, listing, _MINUTES, month)
    steps = random.standard_normal((days, 1440)) * _daily_sigma(listing) / math.sqrt(1440)
    start = levels[day:day + days, None]
    points = start + _bridge(steps, _MINUTE_FRACTIONS, levels[day + 1:day + days + 1, None] - start)
    return _read_only(points), _read_only(random.integers(0, _SHAPE_COUNT, (days, 1440), dtype=np.int16))


def _day(seed: int, listing: Listing, day: int) -> tuple[np.ndarray, np.ndarray]:
    """Minute points (1441) and minute shapes (1440) of UTC day ``day`` (days since 2000)."""
    when = _EPOCH + timedelta(days=day)
    points, shapes = _month(seed, listing, _month_index(when))
    return points[when.day - 1], shapes[when.day - 1]


@lru_cache(maxsize=64)
def _shapes(seed: int, listing: Listing) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The bank of 1-second bridge shapes (steps of unit size, zero at both ends),
    with each shape's lowest and highest point."""
    steps = _random(seed, listing, _SECONDS, 0).standard_normal((_SHAPE_COUNT, 60))
    shapes = _bridge(steps, _SECOND_FRACTIONS, 0.0)
    return _read_only(shapes), _read_only(shapes.min(axis=1)), _read_only(shapes.max(axis=1))


def _minute_extremes(seed: int, listing: Listing, start, end, shape) -> tuple[np.ndarray, np.ndarray]:
    """Exact low and high of the 1-second path in minutes with these end points and shapes (log)."""
    shapes, _, _ = _shapes(seed, listing)
    seconds = (start[:, None] + _SECOND_FRACTIONS * (end - start)[:, None]
               + _second_sigma(listing) * shapes[shape])
    return seconds.min(axis=1), seconds.max(axis=1)


def _by_day(units: np.ndarray, per_day: int):
    """Split epoch minute or second indices by UTC day: yields (day since 2000, mask, offset in day)."""
    epoch_days = units // per_day
    for epoch_day in np.unique(epoch_days):
        mask = epoch_days == epoch_day
        yield _day_index(int(epoch_day)), mask, units[mask] - epoch_day * per_day


def _at_seconds(seed: int, listing: Listing, seconds: np.ndarray) -> np.ndarray:
    """Log price at whole epoch seconds."""
    shapes, _, _ = _shapes(seed, listing)
    out = np.empty(len(seconds))
    for day, mask, offset in _by_day(seconds, DAY):
        points, shape = _day(seed, listing, day)
        minute, second = offset // 60, offset % 60
        out[mask] = (points[minute] + second / 60 * (points[minute + 1] - points[minute])
                     + _second_sigma(listing) * shapes[shape[minute], second])
    return out


def _minutes(seed: int, listing: Listing, minutes: np.ndarray):
    """Log (start, end, low, high) of each epoch minute."""
    start, end, low, high = (np.empty(len(minutes)) for _ in range(4))
    for day, mask, offset in _by_day(minutes, 1440):
        points, shape = _day(seed, listing, day)
        start[mask], end[mask] = points[offset], points[offset + 1]
        low[mask], high[mask] = _minute_extremes(seed, listing, start[mask], end[mask], shape[offset])
    return start, end, low, high


def _log_mid(seed: int, listing: Listing, t: float) -> float:
    second = math.floor(t)
    before, after = _at_seconds(seed, listing, np.array([second, second + 1]))
    return before + (t - second) * (after - before)


def _log_low_high(seed: int, listing: Listing, t0: float, t1: float) -> tuple[float, float]:
    """Exact extremes of the path over [t0, t1]: it is linear between whole seconds,
    so they lie at t0, t1 or a whole second in between; whole minutes inside the
    span are taken at once."""
    values = [np.array([_log_mid(seed, listing, t0), _log_mid(seed, listing, t1)])]
    s0, s1 = math.ceil(t0), math.floor(t1)
    if s0 <= s1:
        m0, m1 = -(-s0 // 60), s1 // 60  # whole minutes [m0, m1) lie inside the span
        if m0 < m1:
            _, _, lows, highs = _minutes(seed, listing, np.arange(m0, m1))
            values += [lows, highs]
            seconds = np.concatenate([np.arange(s0, m0 * 60 + 1), np.arange(m1 * 60, s1 + 1)])
        else:
            seconds = np.arange(s0, s1 + 1)
        values.append(_at_seconds(seed, listing, seconds))
    every = np.concatenate(values)
    return float(every.min()), float(every.max())


# ------------------------------------------------------------------ quotes

def bid_ask(listing: Listing, mid):
    """The quoted bid and ask around ``mid`` (a float or an array): on the tick
    ladder, bid <= mid <= ask, about SPREAD_BP apart and at least one tick."""
    mids = np.asarray(mid, dtype=float)
    tick = min_tick(listing, mids)
    ticks = np.maximum(1, np.round(mids * SPREAD_BP / 10_000 / tick))
    bid = round_to_tick(listing, mids - (ticks - 1) * tick / 2, "down")
    ask = round_to_tick(listing, mids + (ticks - 1) * tick / 2, "up")
    # A mid exactly on a tick rounds to itself both ways: open a one-tick spread.
    ask = np.where(ask > bid, ask, round_to_tick(listing, bid + min_tick(listing, bid), "up"))
    if mids.ndim == 0:
        return float(bid), float(ask)
    return bid, ask


def _lot(listing: Listing) -> int:
    """The size unit quotes show: US round lots of 100, HK board lots."""
    return 100 if listing.board_lot == 1 else listing.board_lot


def _displayed_sizes(seed: int, listing: Listing, t: float) -> tuple[int, int, int]:
    """Bid, ask and last sizes in whole lots, changing every second."""
    digest = hashlib.blake2b(f"{seed}:{listing.symbol}:{math.floor(t)}".encode(), digest_size=3).digest()
    lot = _lot(listing)
    return lot * (1 + digest[0] % 15), lot * (1 + digest[1] % 15), lot * (1 + digest[2] % 5)


def _deeper_sizes(seed: int, listing: Listing, t: float) -> tuple[list[int], list[int]]:
    """Sizes of the book's bid and ask levels below the best, 1 to 15 lots each, changing every
    second. Always the whole book's: a hash's bytes depend on how many are asked for."""
    deeper = MAX_BOOK_LEVELS - 1
    digest = hashlib.blake2b(f"{seed}:{listing.symbol}:{math.floor(t)}:book".encode(), digest_size=2 * deeper).digest()
    sizes = [_lot(listing) * (1 + byte % 15) for byte in digest]
    return sizes[:deeper], sizes[deeper:]


def _next_price(listing: Listing, price: float, direction: int) -> float:
    """The next price on the ladder above (direction 1) or below (-1) ``price``. A band's low
    edge belongs to it, so the step down from an edge is the increment of the band below."""
    tick = min_tick(listing, price if direction > 0 else price - 1e-6)
    return round_to_tick(listing, price + direction * tick)


# ------------------------------------------------------------------ sessions and volume

@dataclass(frozen=True, eq=False)
class _Stats:
    """Regular-session figures of consecutive sessions, as arrays (prices unrounded)."""

    open: np.ndarray
    high: np.ndarray
    low: np.ndarray
    close: np.ndarray
    volume: np.ndarray
    wap: np.ndarray


def _join(parts: list[_Stats]) -> _Stats:
    return _Stats(*(np.concatenate([getattr(p, f.name) for p in parts]) for f in fields(_Stats)))


def _take(stats: _Stats, rows: slice) -> _Stats:
    return _Stats(*(getattr(stats, f.name)[rows] for f in fields(_Stats)))


def _minute_volumes(seed: int, listing: Listing, table: SessionTable, sessions, minutes, moves) -> np.ndarray:
    """Whole shares traded in each epoch minute of the given sessions (arrays broadcast).

    ``moves`` is each minute's absolute log-price change: busier when the price
    moves, about 1x on average. Regular minutes follow the U-shaped profile and
    add up to the day's volume; minutes outside it are extended hours.
    """
    t = minutes * 60.0
    opens, closes = table.open[sessions], table.close[sessions]
    break_start, break_end = table.break_start[sessions], table.break_end[sessions]
    lunch = np.nan_to_num(break_end - break_start)
    regular = (t >= opens) & (t < closes) & ~((t >= break_start) & (t < break_end))
    elapsed = t - opens - np.where(t >= break_end, lunch, 0.0)
    length = closes - opens - lunch
    x = (elapsed + 30) / length  # the minute's middle, as a fraction of the session
    profile = np.where(regular, (1 + _U_SHAPE * (2 * x - 1) ** 2) / (1 + _U_SHAPE / 3), EXTENDED_ACTIVITY)
    sigma = _daily_sigma(listing) / math.sqrt(1440)
    activity = 0.5 + 0.5 * moves / (sigma * math.sqrt(2 / math.pi))
    _, volume_factor = _daily(seed, listing)
    day = (table.day[sessions] - np.datetime64(_EPOCH, "D")).astype(np.int64)
    per_minute = listing.daily_volume * volume_factor[day] * 60 / length
    return np.round(per_minute * profile * activity)


def _exact_extremes(seed: int, listing: Listing, points: np.ndarray, shape: np.ndarray,
                    counted: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per row, the exact low and high (log) of the 1-second path over the counted minutes.

    Minute points lie on the path, so the best of them is a first answer; a
    minute can only beat it if its shape reaches that far, and only those few
    minutes are checked second by second.
    """
    _, shape_low, shape_high = _shapes(seed, listing)
    sigma = _second_sigma(listing)
    start, end = points[:, :-1], points[:, 1:]
    top, bottom = np.maximum(start, end), np.minimum(start, end)
    high = np.where(counted, top, -np.inf).max(axis=1)
    low = np.where(counted, bottom, np.inf).min(axis=1)
    reach = counted & ((top + sigma * shape_high[shape] > high[:, None])
                       | (bottom + sigma * shape_low[shape] < low[:, None]))
    rows, cols = np.nonzero(reach)
    lows, highs = _minute_extremes(seed, listing, start[rows, cols], end[rows, cols], shape[rows, cols])
    np.maximum.at(high, rows, highs)
    np.minimum.at(low, rows, lows)
    return low, high


def _session_stats(seed: int, listing: Listing, table: SessionTable, sessions: np.ndarray,
                   upto: float = math.inf) -> _Stats:
    """Open, high, low, close, volume and VWAP of each session's regular hours up to ``upto``.

    Vectorised over sessions: a row of minutes per session. Regular hours never
    cross midnight UTC for the calendars here, so a row is a slice of one UTC
    day of the minute level.
    """
    opens, closes = table.open[sessions], table.close[sessions]
    break_start, break_end = table.break_start[sessions, None], table.break_end[sessions, None]
    epoch_days = (opens // DAY).astype(np.int64)
    first_col = ((opens - epoch_days * DAY) // 60).astype(np.int64)
    col0, col1 = int(first_col.min()), int(((closes - epoch_days * DAY) // 60).max())
    days = [_day(seed, listing, _day_index(int(d))) for d in epoch_days]
    points = np.stack([day_points[col0:col1 + 1] for day_points, _ in days])
    shape = np.stack([day_shapes[col0:col1] for _, day_shapes in days])
    minutes = epoch_days[:, None] * 1440 + np.arange(col0, col1)
    starts = minutes * 60.0
    trading = ((starts >= opens[:, None]) & (starts < closes[:, None])
               & ~((starts >= break_start) & (starts < break_end)))
    whole = trading & (starts + 60 <= upto)

    # Prices over the whole minutes done by ``upto``; the close is where the last one ended.
    rows = np.arange(len(sessions))
    open_ = points[rows, first_col - col0]
    low, high = _exact_extremes(seed, listing, points, shape, whole)
    close = points[rows, whole.shape[1] - np.argmax(whole[:, ::-1], axis=1)]

    # Volume, the minute under way at ``upto`` counted pro rata.
    done = np.clip((upto - starts) / 60, 0.0, 1.0)
    volumes = _minute_volumes(seed, listing, table, sessions[:, None], minutes, np.abs(np.diff(points, axis=1)))
    volumes = np.where(trading, np.floor(volumes * done), 0.0)
    volume = volumes.sum(axis=1)
    prices = np.exp(points)
    typical = (prices[:, :-1] + prices[:, 1:]) / 2
    wap = np.divide((volumes * typical).sum(axis=1), volume, out=np.exp(close), where=volume > 0)

    # A session still trading at ``upto`` adds the minute under way and ends at the live price.
    live = (opens <= upto) & (upto < closes) & ~((upto >= break_start[:, 0]) & (upto < break_end[:, 0]))
    if live.any():
        part_low, part_high = _log_low_high(seed, listing, math.floor(upto / 60) * 60, upto)
        low = np.where(live, np.minimum(low, part_low), low)
        high = np.where(live, np.maximum(high, part_high), high)
        close = np.where(live, _log_mid(seed, listing, upto), close)
    return _Stats(np.exp(open_), np.exp(high), np.exp(low), np.exp(close), volume.astype(np.int64), wap)


def _month_sessions(table: SessionTable, month: int) -> tuple[int, int]:
    """Table indices [lo, hi) of the sessions dated in a month (months since 2000-01)."""
    first = np.datetime64(_EPOCH, "M") + month
    lo, hi = np.searchsorted(table.day, [first.astype("datetime64[D]"), (first + 1).astype("datetime64[D]")])
    return int(lo), int(hi)


@lru_cache(maxsize=1024)
def _month_stats(seed: int, listing: Listing, month: int) -> _Stats:
    """Complete-session figures for one month's sessions, cached: daily bars reuse them."""
    table = session_table(listing.calendar)
    return _session_stats(seed, listing, table, np.arange(*_month_sessions(table, month)))


def _daily_stats(seed: int, listing: Listing, first: int, last: int, upto: float) -> _Stats:
    """Figures of sessions ``first``..``last`` (table indices); the last one only up to ``upto``."""
    table = session_table(listing.calendar)
    parts = []
    for month in range(_month_index(table.day[first].item()), _month_index(table.day[last].item()) + 1):
        lo, hi = _month_sessions(table, month)
        block = _month_stats(seed, listing, month)
        parts.append(_take(block, slice(max(first, lo) - lo, min(last + 1, hi) - lo)))
    stats = _join(parts)
    if upto < table.close[last]:
        partial = _session_stats(seed, listing, table, np.array([last]), upto)
        stats = _join([_take(stats, slice(0, -1)), partial])
    return stats


def _last_opened(opens: np.ndarray, t: float) -> int:
    """Index of the last session whose window opened at or before ``t`` (-1 if none)."""
    return int(np.searchsorted(opens, t, side="right")) - 1


# ------------------------------------------------------------------ bar requests

BAR_SIZES = {
    "1 secs": 1, "5 secs": 5, "10 secs": 10, "15 secs": 15, "30 secs": 30,
    "1 min": 60, "2 mins": 120, "3 mins": 180, "5 mins": 300, "10 mins": 600, "15 mins": 900,
    "20 mins": 1200, "30 mins": 1800, "1 hour": 3600, "2 hours": 7200, "3 hours": 10800,
    "4 hours": 14400, "8 hours": 28800, "1 day": DAY, "1 week": 7 * DAY, "1 month": 30 * DAY,
}
WHAT_TO_SHOW = ("TRADES", "MIDPOINT", "BID", "ASK", "ADJUSTED_LAST")

# IB's step-size limits, kept small: the longest duration served per bar size,
# looser than IB's old table where today's TWS is known to serve more (5 D of
# 1-minute bars). Daily and longer bars may span the whole 2000-2049 range.
_MAX_DURATION = {
    "1 secs": "2000 S", "5 secs": "10000 S", "10 secs": "14400 S", "15 secs": "14400 S",
    "30 secs": "28800 S", "1 min": "1 M", "2 mins": "1 M", "3 mins": "1 M",
}
_MAX_INTRADAY_DURATION = "1 Y"  # 5 mins to 8 hours
_UNIT_SECONDS = {"S": 1, "D": DAY, "W": 7 * DAY, "M": 31 * DAY, "Y": 366 * DAY}  # upper bounds
_DURATION = re.compile(r"^([1-9]\d*) ([SDWMY])$")


def bar_seconds(bar_size: str) -> int:
    """Length of an IB bar size in seconds (a month counts 30 days); ValueError if IB would refuse it."""
    try:
        return BAR_SIZES[bar_size.strip()]
    except KeyError:
        raise ValueError(f"Historical data bar size setting is invalid: {bar_size!r}. "
                         f"Legal ones are: {', '.join(BAR_SIZES)}") from None


def parse_what_to_show(text: str) -> str:
    """A bar request's whatToShow, normalised; ValueError if the bars cannot show it."""
    what = text.strip().upper()
    if what not in WHAT_TO_SHOW:
        raise ValueError(f"Historical data type whatToShow={text!r} is not supported; "
                         f"use one of {', '.join(WHAT_TO_SHOW)}")
    return what


def head_timestamp(listing: Listing, use_rth: bool) -> float:
    """When the earliest bar the model serves starts (reqHeadTimeStamp): the first session's
    open, or its extended-hours open without ``use_rth``. The path begins in January 2000."""
    table = session_table(listing.calendar)
    return float(table.open[0] if use_rth else table.ext_open[0])


def _parse_duration(duration: str) -> tuple[int, str]:
    match = _DURATION.match(duration.strip())
    if not match:
        raise ValueError(f"Historical data duration is invalid: {duration!r}. "
                         "Use a whole number and a unit: S, D, W, M or Y, as in '3600 S', '5 D' or '1 Y'")
    return int(match[1]), match[2]


def _check_step(duration: str, bar_size: str, count: int, unit: str):
    if BAR_SIZES[bar_size] >= DAY:
        return
    limit = _MAX_DURATION.get(bar_size, _MAX_INTRADAY_DURATION)
    limit_count, limit_unit = _parse_duration(limit)
    if count * _UNIT_SECONDS[unit] > limit_count * _UNIT_SECONDS[limit_unit]:
        raise ValueError(f"Time length exceed max: duration {duration!r} is too long for {bar_size!r} bars "
                         f"(at most {limit})")


def _duration_start(end: float, count: int, unit: str, zone: str) -> float:
    """``end`` minus the duration, calendar-wise in the exchange's zone for W, M and Y."""
    if unit == "S":
        return end - count
    offset = {"D": pd.DateOffset(days=count), "W": pd.DateOffset(weeks=count),
              "M": pd.DateOffset(months=count), "Y": pd.DateOffset(years=count)}[unit]
    return (pd.Timestamp(end, unit="s", tz="UTC").tz_convert(zone) - offset).timestamp()


def _group_starts(keys: np.ndarray) -> np.ndarray:
    """Start index of each run of equal, sorted keys."""
    return np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]])


class PriceModel:
    """Quotes and bars of every listing, from one seed."""

    def __init__(self, seed: int = 0):
        self.seed = seed

    def mid(self, listing: Listing, t: float) -> float:
        """The unrounded mid price at ``t``."""
        return math.exp(_log_mid(self.seed, listing, t))

    def low_high(self, listing: Listing, t0: float, t1: float) -> tuple[float, float]:
        """The lowest and highest mid price over [t0, t1], exactly (the path is linear between seconds)."""
        low, high = _log_low_high(self.seed, listing, min(t0, t1), max(t0, t1))
        return math.exp(low), math.exp(high)

    def quote(self, listing: Listing, t: float) -> Quote:
        """The top of book at ``t``, with today's session figures.

        "Today" is the last session whose regular hours have opened, so before
        the open the quote still shows the previous session's figures.
        """
        mid = self.mid(listing, t)
        bid, ask = bid_ask(listing, mid)
        table = session_table(listing.calendar)
        today = _last_opened(table.open, t)
        if today < 1:
            raise ValueError("the simulated market starts trading in January 2000")
        stats = _daily_stats(self.seed, listing, today - 1, today, t)
        bid_size, ask_size, last_size = _displayed_sizes(self.seed, listing, t)
        return Quote(
            bid=bid, ask=ask, last=round_to_tick(listing, mid),
            bid_size=bid_size, ask_size=ask_size, last_size=last_size,
            open=round_to_tick(listing, stats.open[1]), high=round_to_tick(listing, stats.high[1]),
            low=round_to_tick(listing, stats.low[1]), close=round_to_tick(listing, stats.close[0]),
            volume=int(stats.volume[1]), time=t)

    def previous_close(self, listing: Listing, t: float) -> tuple[float, float]:
        """When the session before "today" (as ``quote`` reckons it) closed, and its closing
        price: the quote's ``close``, from which daily P&L is counted."""
        table = session_table(listing.calendar)
        previous = _last_opened(table.open, t) - 1
        if previous < 0:
            raise ValueError("the simulated market starts trading in January 2000")
        stats = _daily_stats(self.seed, listing, previous, previous, math.inf)
        return float(table.close[previous]), round_to_tick(listing, stats.close[0])

    def book_side(self, listing: Listing, t: float, side: str, levels: int) -> Iterator[tuple[float, int]]:
        """One side ("BID" or "ASK") of the order book at ``t``: (price, size) levels, best first.

        The best level is the quote's bid or ask with its displayed size; each
        deeper level is the next price on the ladder and shows 1 to 15 lots. The
        broker's marketable orders sweep this book, so market depth shows what an
        order would fill against. Levels are priced as they are read: a sweep that
        fills at the best price prices no others.
        """
        if not 1 <= levels <= MAX_BOOK_LEVELS:
            raise ValueError(f"the book has 1 to {MAX_BOOK_LEVELS} levels a side, not {levels}")
        bid, ask = bid_ask(listing, self.mid(listing, t))
        bid_size, ask_size, _ = _displayed_sizes(self.seed, listing, t)
        deeper_bids, deeper_asks = _deeper_sizes(self.seed, listing, t)
        if side == "BID":
            price, sizes, direction = bid, [bid_size, *deeper_bids], -1
        else:
            price, sizes, direction = ask, [ask_size, *deeper_asks], 1
        for size in sizes[:levels]:
            yield price, size
            price = _next_price(listing, price, direction)

    def tops(self, listing: Listing, first: int, last: int) -> Tops:
        """The top of book at each whole second from ``first`` to ``last`` (epoch seconds):
        the same bid, ask, last and sizes as ``quote`` at those instants."""
        seconds = np.arange(first, last + 1)
        mids = np.exp(_at_seconds(self.seed, listing, seconds))
        bids, asks = bid_ask(listing, mids)
        sizes = [_displayed_sizes(self.seed, listing, second) for second in seconds.tolist()]
        bid_sizes, ask_sizes, last_sizes = zip(*sizes) if sizes else ((), (), ())
        return Tops(time=seconds.tolist(), bid=bids.tolist(), ask=asks.tolist(),
                    last=round_to_tick(listing, mids).tolist(), bid_size=list(bid_sizes),
                    ask_size=list(ask_sizes), last_size=list(last_sizes))

    def bars(self, listing: Listing, end: float, duration: str, bar_size: str,
             use_rth: bool = True, what_to_show: str = "TRADES") -> list[Bar]:
        """Historical bars ending at ``end``, as reqHistoricalData returns them.

        ``duration`` is IB's "N S|D|W|M|Y"; "N D" means the last N sessions.
        Bars cover sessions only: regular hours with ``use_rth``, else the
        extended hours (US 04:00-20:00; HK has none), never a lunch break.
        Intraday bars align to the clock in the exchange's zone; daily bars
        are the regular session whatever ``use_rth``. A bar still forming at
        ``end`` closes at the live price. Raises ValueError, in IB's words
        where it has them, for a request IB would refuse.
        """
        seconds = bar_seconds(bar_size)
        bar_size = bar_size.strip()
        count, unit = _parse_duration(duration)
        what = parse_what_to_show(what_to_show)
        _check_step(duration, bar_size, count, unit)
        table = session_table(listing.calendar)
        if seconds >= DAY:
            return self._daily_bars(listing, table, end, count, unit, bar_size, what)
        return self._intraday_bars(listing, table, end, count, unit, seconds, use_rth, what)

    def _daily_bars(self, listing, table, end, count, unit, bar_size, what) -> list[Bar]:
        last = _last_opened(table.open, end)
        if unit == "D":
            first = last - count + 1
        elif unit == "S":
            first = int(np.searchsorted(table.close, end - count, side="right"))
        else:
            start = _duration_start(end, count, unit, listing.time_zone)
            start_day = np.datetime64(datetime.fromtimestamp(start, ZoneInfo(listing.time_zone)).date(), "D")
            first = int(np.searchsorted(table.day, start_day, side="right"))
        first = max(first, 0)
        if last < first:
            return []
        stats = _daily_stats(self.seed, listing, first, last, end)
        days = table.day[first:last + 1]
        if bar_size == "1 week":
            groups = _group_starts((days.astype(np.int64) + 3) // 7)  # weeks from Monday
        elif bar_size == "1 month":
            groups = _group_starts(days.astype("datetime64[M]"))
        else:
            groups = np.arange(len(days))
        ends = np.r_[groups[1:], len(days)] - 1
        volume = np.add.reduceat(stats.volume, groups)
        value = np.add.reduceat(stats.wap * stats.volume, groups)
        return self._make_bars(
            listing, what, table.open[first:last + 1][groups], days[groups].tolist(),
            stats.open[groups], np.maximum.reduceat(stats.high, groups),
            np.minimum.reduceat(stats.low, groups), stats.close[ends], volume,
            np.divide(value, volume, out=stats.close[ends].copy(), where=volume > 0))

    def _intraday_bars(self, listing, table, end, count, unit, seconds, use_rth, what) -> list[Bar]:
        window_open = table.open if use_rth else table.ext_open
        window_close = table.close if use_rth else table.ext_close
        last = _last_opened(window_open, end)
        if unit == "D":
            first = max(last - count + 1, 0)
        else:
            start = _duration_start(end, count, unit, listing.time_zone)
            first = int(np.searchsorted(window_close, start, side="right"))
        if last < first:
            return []
        if unit == "D":
            start = window_open[first]

        # Trading windows of each session: around its lunch break when it has one.
        sessions = np.arange(first, last + 1)
        has_break = ~np.isnan(table.break_start[sessions])
        starts = np.stack([window_open[sessions], table.break_end[sessions]], axis=1).ravel()
        stops = np.stack([np.where(has_break, table.break_start[sessions], window_close[sessions]),
                          window_close[sessions]], axis=1).ravel()
        keep = np.stack([np.ones_like(has_break), has_break], axis=1).ravel()
        owner = np.repeat(sessions, 2)[keep]
        starts, stops = starts[keep], stops[keep]

        # Elements: the minutes (or seconds, for bars under a minute) of those
        # windows between the duration's start and ``end``.
        step = 1 if seconds < 60 else 60
        starts = np.maximum(starts, math.floor(start / step) * step)
        stops = np.minimum(stops, end)
        first_unit = np.ceil(starts / step).astype(np.int64)
        counts = np.maximum(np.ceil(stops / step).astype(np.int64) - first_unit, 0)
        units = np.repeat(first_unit - (np.cumsum(counts) - counts), counts) + np.arange(counts.sum())
        if not len(units):
            return []
        owner = np.repeat(owner, counts)
        t = units * float(step)
        minutes = units * step // 60
        m_open, m_close, m_low, m_high = _minutes(self.seed, listing, minutes)
        volume = _minute_volumes(self.seed, listing, table, owner, minutes, np.abs(m_close - m_open)) * step / 60
        if step == 1:  # linear between seconds: a second's extremes are its ends
            open_ = _at_seconds(self.seed, listing, units)
            close = _at_seconds(self.seed, listing, units + 1)
            low, high = np.minimum(open_, close), np.maximum(open_, close)
        else:
            open_, close, low, high = m_open, m_close, m_low, m_high
        if t[-1] + step > end:  # the element under way at ``end``
            close[-1] = _log_mid(self.seed, listing, end)
            low[-1], high[-1] = _log_low_high(self.seed, listing, t[-1], end)
            volume[-1] *= (end - t[-1]) / step

        # Bars: elements grouped by clock-aligned buckets in local time.
        groups = _group_starts((t + table.utc_offset[owner]) // seconds)
        ends = np.r_[groups[1:], len(t)] - 1
        open_, close, low, high = np.exp(open_), np.exp(close), np.exp(low), np.exp(high)
        bar_volume = np.add.reduceat(volume, groups)
        value = np.add.reduceat(volume * (open_ + close) / 2, groups)
        return self._make_bars(
            listing, what, t[groups], [None] * len(groups), open_[groups],
            np.maximum.reduceat(high, groups), np.minimum.reduceat(low, groups), close[ends],
            np.round(bar_volume), np.divide(value, bar_volume, out=close[ends].copy(), where=bar_volume > 0))

    @staticmethod
    def _make_bars(listing, what, starts, days, open_, high, low, close, volume, wap) -> list[Bar]:
        """Bar objects from unrounded prices: onto the ladder, or bid/ask/midpoint of it."""
        if what in ("TRADES", "ADJUSTED_LAST"):
            prices = [round_to_tick(listing, p) for p in (open_, high, low, close)]
            volume = volume.astype(np.int64)
            count = -(-volume // max(100, 2 * listing.board_lot))  # trades of a typical size, rounded up
            figures = volume.tolist(), np.round(wap, 4).tolist(), count.tolist()
        else:
            # bid_ask rises with the mid, so the mid's extremes give the quote's.
            quoted = [bid_ask(listing, p) for p in (open_, high, low, close)]
            if what == "BID":
                prices = [bid for bid, _ in quoted]
            elif what == "ASK":
                prices = [ask for _, ask in quoted]
            else:  # MIDPOINT: may fall between ticks, as IB's does
                prices = [np.round((bid + ask) / 2, 6) for bid, ask in quoted]
            figures = [-1] * len(starts), [-1.0] * len(starts), [-1] * len(starts)
        columns = zip(np.asarray(starts, dtype=float).tolist(), days, *(p.tolist() for p in prices), *figures)
        return [Bar(*row) for row in columns]
