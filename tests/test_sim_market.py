"""The simulator's contract catalogue and seeded price model."""

import re
from datetime import date, datetime, timezone
from zoneinfo import ZoneInfo

import numpy as np
import pytest

from qdibkr.sim import catalogue, market
from qdibkr.sim.catalogue import find, round_to_tick
from qdibkr.sim.market import PriceModel

AAPL = find("AAPL")[0]
TENCENT = find("700")[0]
NEW_YORK, HONG_KONG = ZoneInfo("America/New_York"), ZoneInfo("Asia/Hong_Kong")


def at(zone, *fields) -> float:
    return datetime(*fields, tzinfo=zone).timestamp()


def clear_caches():
    for value in vars(market).values():
        if hasattr(value, "cache_clear"):
            value.cache_clear()


def on_ladder(listing, price) -> bool:
    return round_to_tick(listing, price) == pytest.approx(price, abs=1e-9)


# ------------------------------------------------------------------ catalogue

def test_find_matches_like_tws():
    assert [listing.con_id for listing in find("BRK.B")] == [72063691]
    assert find("brk b", exchange="NYSE", currency="usd")[0].symbol == "BRK B"
    assert find("AAPL", exchange="SMART", primary_exchange="NASDAQ", sec_type="STK") == [AAPL]
    assert find("AAPL", exchange="NYSE") == []
    assert find("AAPL", sec_type="OPT") == []
    assert find("", con_id=265598) == [AAPL]
    assert find("MSFT", con_id=265598) == []
    assert find("700", exchange="SEHK", currency="HKD") == [TENCENT]
    assert find("700", exchange="SMART") == []
    assert find("0700") == []  # IB's HK symbols have no leading zeros
    assert find("") == []
    assert catalogue.by_con_id(756733).stock_type == "ETF"
    assert catalogue.by_con_id(1) is None


def test_catalogue_is_consistent():
    con_ids = [listing.con_id for listing in catalogue.CATALOGUE]
    assert len(set(con_ids)) == len(con_ids)
    assert sum(listing.currency == "USD" for listing in catalogue.CATALOGUE) >= 12
    assert sum(listing.currency == "HKD" for listing in catalogue.CATALOGUE) >= 10
    assert {listing.symbol: listing.board_lot for listing in catalogue.CATALOGUE if listing.currency == "HKD"} == {
        "700": 100, "5": 400, "9988": 100, "1299": 200, "3690": 100, "388": 100,
        "941": 500, "1810": 200, "2318": 500, "2800": 500}
    assert find("MSFT")[0].trading_class == "NMS" and find("JPM")[0].trading_class == "JPM"


@pytest.mark.parametrize("price, direction, expected", [
    (412.3, "down", 412.2), (412.3, "up", 412.4), (512.3, "up", 512.5), (512.3, "down", 512.0),
    (412.4, "down", 412.4), (99.98, "nearest", 100.0), (100.04, "nearest", 100.0),
    (100.06, "nearest", 100.1), (0.2513, "nearest", 0.25), (9.996, "up", 10.0), (10.01, "up", 10.02),
    (6123.0, "nearest", 6125.0),
])
def test_hk_ladder_rounding(price, direction, expected):
    assert round_to_tick(TENCENT, price, direction) == expected


def test_us_ticks():
    assert catalogue.min_tick(AAPL, 230.0) == 0.01
    assert catalogue.min_tick(AAPL, 0.5) == 0.0001
    assert round_to_tick(AAPL, 230.456, "up") == 230.46
    assert round_to_tick(AAPL, 0.123456) == 0.1235
    assert catalogue.min_tick(TENCENT, 412.3) == 0.2 and catalogue.min_tick(TENCENT, 512.3) == 0.5


def test_trading_hours_show_holidays_half_days_and_lunch():
    now = datetime(2026, 11, 25, 10, 0, tzinfo=timezone.utc)
    trading, liquid = catalogue.trading_hours(AAPL, now, days=4)  # Saturday the 28th, at the end, left out
    assert trading == ("20261125:0400-20261125:2000;20261126:CLOSED;"
                       "20261127:0400-20261127:1700")
    assert liquid == ("20261125:0930-20261125:1600;20261126:CLOSED;"
                      "20261127:0930-20261127:1300")
    trading, liquid = catalogue.trading_hours(TENCENT, now, days=1)
    assert trading == liquid == "20261125:0930-20261125:1200;20261125:1300-20261125:1600"


# ------------------------------------------------------------------ price path

def test_same_seed_same_prices_in_any_order_other_seed_differs():
    times = [at(NEW_YORK, 2026, 11, 25, 10, 15, 7) + 0.25, at(NEW_YORK, 2024, 3, 1, 23, 59, 59) + 0.5,
             at(HONG_KONG, 2031, 6, 2, 14, 0)]
    first = [PriceModel(7).mid(AAPL, t) for t in times]
    bars = PriceModel(7).bars(AAPL, times[0], "2 D", "5 mins")
    clear_caches()
    # Drawn again from scratch, latest first: every block is drawn on its own.
    assert [PriceModel(7).mid(AAPL, t) for t in reversed(times)] == first[::-1]
    assert PriceModel(7).bars(AAPL, times[0], "2 D", "5 mins") == bars
    assert all(PriceModel(8).mid(AAPL, t) != m for t, m in zip(times, first))
    assert PriceModel(7).mid(find("MSFT")[0], times[0]) != first[0] * 500 / 270


def test_the_walk_is_anchored_at_base_price_on_2026_01_01():
    model = PriceModel(0)
    assert model.mid(AAPL, at(timezone.utc, 2026, 1, 1, 0, 0)) == pytest.approx(AAPL.base_price, rel=1e-12)
    assert 0.2 < model.mid(AAPL, at(timezone.utc, 2026, 11, 25, 0, 0)) / AAPL.base_price < 5


def test_low_high_is_exact_over_a_span_crossing_midnight_utc():
    model = PriceModel(3)
    t0, t1 = at(timezone.utc, 2026, 11, 25, 23, 20, 0) + 0.3, at(timezone.utc, 2026, 11, 26, 0, 40, 0) + 0.8
    low, high = model.low_high(TENCENT, t0, t1)
    samples = [model.mid(TENCENT, t) for t in [t0, t1, *range(int(t0) + 1, int(t1) + 1)]]
    assert low == pytest.approx(min(samples), rel=1e-12)
    assert high == pytest.approx(max(samples), rel=1e-12)
    between = [model.mid(TENCENT, t) for t in np.linspace(t0, t1, 997)]
    assert low <= min(between) and max(between) <= high


def test_quotes_are_on_the_ladder_and_around_the_mid():
    model = PriceModel(1)
    for listing in (AAPL, TENCENT, find("941")[0], find("2800")[0]):
        for minute in range(0, 24 * 60, 97):
            t = at(timezone.utc, 2026, 11, 24, 0, 0) + minute * 60 + 0.37
            q, mid = model.quote(listing, t), model.mid(listing, t)
            assert q.bid < q.ask and q.bid <= mid <= q.ask
            assert q.bid <= q.last <= q.ask
            for price in (q.bid, q.ask, q.last, q.open, q.high, q.low, q.close):
                assert on_ladder(listing, price)
            assert q.low <= q.open <= q.high
            lot = 100 if listing.board_lot == 1 else listing.board_lot
            assert q.bid_size % lot == 0 and lot <= q.bid_size <= 15 * lot and q.ask_size % lot == 0


def test_quote_agrees_with_daily_bars():
    model = PriceModel(2)
    t = at(NEW_YORK, 2026, 11, 25, 11, 30, 12) + 0.5
    quote = model.quote(AAPL, t)
    yesterday, today = model.bars(AAPL, t, "2 D", "1 day")
    assert (today.open, today.high, today.low, today.close) == (quote.open, quote.high, quote.low, quote.last)
    assert today.volume == quote.volume > 0
    assert yesterday.close == quote.close
    later = model.quote(AAPL, t + 600)
    assert later.volume > quote.volume and later.high >= quote.high and later.low <= quote.low


# ------------------------------------------------------------------ bars

def test_minute_bar_closes_are_the_live_price_at_minute_ends():
    model = PriceModel(5)
    end = at(NEW_YORK, 2026, 11, 25, 10, 17, 20) + 0.6
    bars = model.bars(AAPL, end, "1 D", "1 min")
    assert len(bars) == 48 and bars[0].start == at(NEW_YORK, 2026, 11, 25, 9, 30)
    for bar in bars[:-1]:
        assert bar.close == round_to_tick(AAPL, model.mid(AAPL, bar.start + 60))
        assert bar.low <= min(bar.open, bar.close) and bar.high >= max(bar.open, bar.close)
    assert bars[-1].close == model.quote(AAPL, end).last


@pytest.mark.parametrize("listing, end", [
    (AAPL, at(NEW_YORK, 2026, 11, 24, 18, 0)), (TENCENT, at(HONG_KONG, 2026, 11, 24, 18, 0))])
def test_a_days_minute_bars_add_up_to_its_daily_bar(listing, end):
    model = PriceModel(5)
    minutes = model.bars(listing, end, "1 D", "1 min")
    (day,) = model.bars(listing, end, "1 D", "1 day")
    assert len(minutes) == (390 if listing is AAPL else 330)
    assert (minutes[0].open, minutes[-1].close) == (day.open, day.close)
    assert max(b.high for b in minutes) == day.high and min(b.low for b in minutes) == day.low
    assert sum(b.volume for b in minutes) == day.volume
    assert listing.daily_volume / 3 < day.volume < listing.daily_volume * 3


def test_quote_high_and_low_only_widen_through_the_session():
    model = PriceModel(6)
    opening = at(NEW_YORK, 2026, 11, 25, 9, 30)
    quotes = [model.quote(AAPL, opening + 0.5 + 7 * i) for i in range(600)]
    for before, after in zip(quotes, quotes[1:]):
        assert after.high >= before.high and after.low <= before.low and after.volume >= before.volume
        assert after.low <= after.last <= after.high


def test_daily_bars_only_on_trading_days():
    end = at(NEW_YORK, 2026, 12, 5, 12, 0)
    days = [bar.day for bar in PriceModel(0).bars(AAPL, end, "1 M", "1 day")]
    assert date(2026, 11, 26) not in days  # Thanksgiving
    assert all(day.weekday() < 5 for day in days)
    table = catalogue.session_table("XNYS")
    expected = table.day[(table.day > np.datetime64("2026-11-05")) & (table.day <= np.datetime64("2026-12-05"))]
    assert days == expected.tolist()


def test_one_year_of_daily_bars_and_weeks_and_months():
    model = PriceModel(0)
    end = at(NEW_YORK, 2026, 11, 25, 17, 0)
    assert 245 <= len(model.bars(AAPL, end, "1 Y", "1 day")) <= 255
    assert 52 <= len(model.bars(AAPL, end, "1 Y", "1 week")) <= 53
    assert len(model.bars(AAPL, end, "1 Y", "1 month")) == 13
    assert len(model.bars(AAPL, end, "5 D", "1 day")) == 5


def test_hk_intraday_bars_skip_the_lunch_break():
    model = PriceModel(0)
    end = at(HONG_KONG, 2026, 11, 25, 17, 0)
    minutes = model.bars(TENCENT, end, "1 D", "1 min")
    local = [datetime.fromtimestamp(bar.start, HONG_KONG) for bar in minutes]
    assert len(minutes) == 330
    assert not [t for t in local if 12 <= t.hour < 13]
    assert (local[0].hour, local[0].minute, local[-1].hour, local[-1].minute) == (9, 30, 15, 59)
    hours = model.bars(TENCENT, end, "1 D", "1 hour", use_rth=False)
    assert [datetime.fromtimestamp(b.start, HONG_KONG).strftime("%H%M") for b in hours] == [
        "0930", "1000", "1100", "1300", "1400", "1500"]


def test_us_extended_hours_bars():
    hours = PriceModel(0).bars(AAPL, at(NEW_YORK, 2026, 11, 25, 21, 0), "1 D", "1 hour", use_rth=False)
    assert [datetime.fromtimestamp(b.start, NEW_YORK).hour for b in hours] == list(range(4, 20))
    assert hours[0].volume < hours[6].volume  # pre-market is thin


def test_bid_ask_and_midpoint_bars():
    model = PriceModel(4)
    end = at(HONG_KONG, 2026, 11, 25, 11, 0)
    trades, bids, asks, mids = (model.bars(TENCENT, end, "3600 S", "5 mins", what_to_show=what)
                                for what in ("TRADES", "BID", "ASK", "MIDPOINT"))
    assert len(trades) == len(bids) == len(asks) == len(mids) == 12
    for t, b, a, m in zip(trades, bids, asks, mids):
        assert b.close < a.close and b.low <= t.low and a.high >= t.high
        assert m.close == pytest.approx((b.close + a.close) / 2)
        assert on_ladder(TENCENT, b.close) and on_ladder(TENCENT, a.high)
        assert (b.volume, b.wap, b.count) == (-1, -1.0, -1) and t.volume > 0


def test_bars_before_the_open_and_on_a_holiday():
    model = PriceModel(0)
    thanksgiving = at(NEW_YORK, 2026, 11, 26, 12, 0)
    bars = model.bars(AAPL, thanksgiving, "1 D", "1 min")
    assert datetime.fromtimestamp(bars[0].start, NEW_YORK).date() == date(2026, 11, 25)
    assert model.bars(AAPL, at(NEW_YORK, 2026, 11, 25, 9, 0), "3600 S", "1 min") == []


@pytest.mark.parametrize("duration, bar_size, bad", [
    ("1 D", "7 mins", "7 mins"), ("1 D", "1 sec", "1 sec"), ("5 X", "1 min", "5 X"),
    ("D", "1 min", "D"), ("0 D", "1 day", "0 D"), ("1 D", "1 secs", "1 D"), ("2 M", "1 min", "2 M"),
])
def test_bad_requests_name_the_bad_value(duration, bar_size, bad):
    with pytest.raises(ValueError, match=re.escape(repr(bad))):
        PriceModel(0).bars(AAPL, at(NEW_YORK, 2026, 11, 25, 12, 0), duration, bar_size)


def test_bad_what_to_show_and_bar_seconds():
    with pytest.raises(ValueError, match="'FOO'"):
        PriceModel(0).bars(AAPL, at(NEW_YORK, 2026, 11, 25, 12, 0), "1 D", "1 min", what_to_show="FOO")
    assert market.bar_seconds("5 mins") == 300 and market.bar_seconds("1 day") == 86_400
    with pytest.raises(ValueError, match="Legal ones are"):
        market.bar_seconds("1 hours")
