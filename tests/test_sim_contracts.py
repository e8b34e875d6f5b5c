"""Contract details and fill venues as real TWS sends them, read through the real ib_insync client.

The expected values are real TWS's, from published captures (the sources are listed at the top of
``qdibkr/sim/catalogue.py``) and from the listings' own records (ISINs), written out here rather than
read from the simulator's catalogue. The gateway's clock starts on Tuesday 24 November 2026 at 15:00
UTC (10:00 in New York, 23:00 in Hong Kong), the week of Thanksgiving, whatever the host's date.
"""

import datetime as dt
from zoneinfo import ZoneInfo

import pytest
from ib_insync import IB, MarketOrder, Stock, TagValue

from qdibkr import IBKR
from qdibkr.sim import catalogue

from .conftest import wait_until

TUESDAY = dt.datetime(2026, 11, 24, 15, tzinfo=dt.timezone.utc).timestamp()

ISINS = {  # each checked against the issuer's or the exchange's listing records
    "AAPL": "US0378331005", "MSFT": "US5949181045", "TSLA": "US88160R1014", "GOOGL": "US02079K3059",
    "AMZN": "US0231351067", "NVDA": "US67066G1040", "META": "US30303M1027", "BRK B": "US0846707026",
    "JPM": "US46625H1005", "SPY": "US78462F1030", "QQQ": "US46090E1038", "IWM": "US4642876555",
    "700": "KYG875721634", "5": "GB0005405286", "9988": "KYG017191142", "1299": "HK0000069689",
    "3690": "KYG596691041", "388": "HK0388045442", "941": "HK0941009539", "1810": "KYG9830T1067",
    "2318": "CNE1000003X6", "2800": "HK2800008867",
}


@pytest.fixture
def gateway(gateway_at):
    return gateway_at(TUESDAY)


@pytest.fixture
def ib(gateway):
    client = IB()
    client.connect("127.0.0.1", gateway.port, clientId=1, timeout=5)
    yield client
    client.disconnect()


def test_aapl_details_as_tws_sends_them(ib, gateway):
    [d] = ib.reqContractDetails(Stock("AAPL", "SMART", "USD"))
    assert (d.minTick, d.minSize, d.sizeIncrement, d.suggestedSizeIncrement) == (0.01, 0.0001, 0.0001, 100)
    assert d.secIdList == [TagValue("ISIN", "US0378331005")]
    assert d.timeZoneId == "US/Eastern"
    assert d.marketRuleIds == ",".join(["26"] * len(d.validExchanges.split(",")))
    # Six calendar days from today less the weekend at the end: pre- and post-market in trading hours,
    # the regular session in liquid hours; Thanksgiving closed, the Friday after it closing at 13:00
    # (post-market to 17:00).
    assert d.tradingHours == ("20261124:0400-20261124:2000;20261125:0400-20261125:2000;20261126:CLOSED;"
                              "20261127:0400-20261127:1700")
    assert d.liquidHours == ("20261124:0930-20261124:1600;20261125:0930-20261125:1600;20261126:CLOSED;"
                             "20261127:0930-20261127:1300")
    first = d.liquidSessions()[0]  # ib_insync reads the hours in the zone TWS names
    assert first.start == dt.datetime(2026, 11, 24, 14, 30, tzinfo=dt.timezone.utc)

    # qdibkr reads a board lot from minSize: AAPL's 0.0001 (fractional shares) is a lot of one whole share
    ibkr = IBKR(host="127.0.0.1", port=gateway.port, client_id=3).connect()
    try:
        lots = {symbol: ibkr.run(ibkr.contract_async(symbol))[2] for symbol in ("AAPL", "0700.HK", "0005.HK")}
    finally:
        ibkr.disconnect()
    assert lots == {"AAPL": 1, "0700.HK": 100, "0005.HK": 400}


def test_tencent_min_tick_is_the_spread_tables_smallest_step(ib):
    [d] = ib.reqContractDetails(Stock("700", "SEHK", "HKD"))
    assert (d.minTick, d.minSize, d.sizeIncrement, d.suggestedSizeIncrement) == (0.001, 100, 100, 100)
    assert d.secIdList == [TagValue("ISIN", "KYG875721634")] and d.timeZoneId == "Hongkong"
    increments = ib.reqMarketRule(int(d.marketRuleIds.split(",")[0]))
    assert min(i.increment for i in increments) == d.minTick
    # a price on the ladder anywhere is a whole number of minTicks (0.5 was not, at 0.2 steps)
    assert all(round(i.increment / d.minTick, 9).is_integer() for i in increments)
    # Hong Kong's lunch break splits each session; the weekend at the end is left out
    week = ";".join(f"2026112{day}:0930-2026112{day}:1200;2026112{day}:1300-2026112{day}:1600"
                    for day in (4, 5, 6, 7))
    assert d.tradingHours == week and d.liquidHours == week


def test_every_listing_reports_its_isin_and_tws_time_zone(ib):
    zones = {"USD": ("US/Eastern", -5), "HKD": ("Hongkong", 8)}  # TWS's id, UTC offset in November
    last_close = {"USD": "20261127:1700", "HKD": "20261127:1600"}  # Friday's, before the weekend
    for listing in catalogue.CATALOGUE:
        [d] = ib.reqContractDetails(Stock(conId=listing.con_id))
        assert d.secIdList == [TagValue("ISIN", ISINS[listing.symbol])], listing.symbol
        zone, hours = zones[listing.currency]
        assert d.timeZoneId == zone, listing.symbol
        assert ZoneInfo(zone).utcoffset(dt.datetime(2026, 11, 24)) == dt.timedelta(hours=hours)
        assert d.tradingHours.startswith("20261124:") and d.tradingHours.endswith(last_close[listing.currency])


def test_fills_report_the_venues_exchange_code(ib):
    orders = {}
    for symbol, venue in (("AAPL", "ISLAND"), ("BRK B", "NYSE"), ("SPY", "ARCA")):
        contract = Stock(symbol, "SMART", "USD")
        ib.qualifyContracts(contract)
        orders[venue] = ib.placeOrder(contract, MarketOrder("BUY", 1))
    wait_until(ib, lambda: all(t.isDone() and t.fills for t in orders.values()))
    for venue, trade in orders.items():
        assert {f.execution.exchange for f in trade.fills} == {venue}
    assert {f.execution.exchange for f in ib.reqExecutions()} == {"ISLAND", "NYSE", "ARCA"}
