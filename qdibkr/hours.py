"""Exchange trading sessions (XNYS for US stocks, XHKG for Hong Kong), from exchange_calendars.

The runner asks whether a market is open before it sends an order, and when
it next opens, so orders outside trading hours can be held until the session
opens (or refused), as the configuration says. Regular hours only; the Hong
Kong lunch break counts as closed.
"""

import datetime as dt
import warnings
from contextlib import contextmanager
from functools import lru_cache

import pandas as pd

from .symbols import HK_SHARE

CALENDARS = {HK_SHARE: "XHKG"}
DEFAULT_CALENDAR = "XNYS"


SPAN = ("2000-01-01", "2049-12-31")  # one load serves the runner and the simulated gateway


@lru_cache(maxsize=None)
def load_calendar(name: str):
    """An exchange_calendars calendar by name (XNYS, XHKG), loaded once per process."""
    import exchange_calendars  # slow to import: only when hours are first asked for

    with quiet():
        return exchange_calendars.get_calendar(name, start=SPAN[0], end=SPAN[1])


@contextmanager
def quiet():
    """exchange_calendars 4.13 uses pandas APIs that pandas 3.1 deprecates (Series.values,
    DatetimeIndex.weekday): noise a user can do nothing about."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        yield


def calendar(market: str):
    return load_calendar(CALENDARS.get(market, DEFAULT_CALENDAR))


def is_open(market: str, when: dt.datetime) -> bool:
    with quiet():
        return bool(calendar(market).is_open_on_minute(pd.Timestamp(when).tz_convert("UTC").floor("min")))


def next_open(market: str, when: dt.datetime) -> dt.datetime:
    """The next trading minute after ``when``: the open, or the reopening after lunch, when closed."""
    with quiet():
        return calendar(market).next_minute(pd.Timestamp(when).tz_convert("UTC").floor("min")).to_pydatetime()
