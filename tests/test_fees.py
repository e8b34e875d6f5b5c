"""What an order costs at IB, worked out by hand: fixed-pricing commission plus the fees IB passes on.

Each figure below is computed in its comment from the published rate (the sources are in
``qdibkr/commissions.py``); the simulated gateway's commission reports must show the same.
"""

import datetime as dt
import math

import pytest
from ib_insync import IB, MarketOrder, Stock

from qdibkr.commissions import charges, commission

from .conftest import wait_until

JUNE_2026 = dt.date(2026, 6, 1)  # SEC fee USD 20.60 per million, FINRA TAF USD 0.000195 a share (cap 9.79)


# ---------------------------------------------------------------- Hong Kong
def test_hk_buy_of_100_tencent_at_400():
    # value 40,000: commission 0.08% = 32.00; stamp duty 0.1% = 40.00, a whole dollar already;
    # SFC levy 0.0027% = 1.08; AFRC levy 0.00015% = 0.06
    assert charges("HKD", "BUY", 100, 40_000.0, JUNE_2026) == {
        "IBKR commission": 32.0, "stamp duty": 40.0, "SFC transaction levy": 1.08, "AFRC transaction levy": 0.06}
    assert commission("HKD", "BUY", 100, 40_000.0, JUNE_2026) == 73.14


def test_hk_stamp_duty_is_paid_on_sales_too_and_rounds_up_to_a_dollar():
    # 400 shares at 100.05 = 40,020: stamp duty 40.02 -> 41; commission 32.016 -> 32.02;
    # SFC levy 1.08054 -> 1.08; AFRC levy 0.06003 -> 0.06; 32.02 + 41 + 1.08 + 0.06
    assert commission("HKD", "SELL", 400, 40_020.0, JUNE_2026) == 74.16


def test_hk_minimum_commission_with_the_fees_on_top():
    # 400 HSBC at 5 = 2,000: 0.08% = 1.60, so the HKD 18 minimum; stamp duty 2; SFC 0.054 -> 0.05;
    # AFRC 0.003 -> 0.00; 18 + 2 + 0.05
    assert commission("HKD", "BUY", 400, 2_000.0, JUNE_2026) == 20.05


def test_hk_stamp_duty_fell_from_013_to_01_percent_on_17_november_2023():
    assert charges("HKD", "BUY", 100, 40_000.0, dt.date(2023, 11, 16))["stamp duty"] == 52.0  # 0.13%
    assert charges("HKD", "BUY", 100, 40_000.0, dt.date(2023, 11, 17))["stamp duty"] == 40.0  # 0.1%


# ---------------------------------------------------------------- United States
def test_us_buys_pay_the_commission_only():
    # 100 x 270 = 27,000: 100 x 0.005 = 0.50, so the USD 1 minimum; no fees on purchases
    assert charges("USD", "BUY", 100, 27_000.0, JUNE_2026) == {"IBKR commission": 1.0}


def test_us_sale_pays_the_sec_fee_and_finra_taf():
    # 1,000 x 200 = 200,000: commission 5.00; SEC fee 200,000 x 20.60 / 1,000,000 = 4.12;
    # TAF 1,000 x 0.000195 = 0.195, rounded up to 0.20
    assert charges("USD", "SELL", 1_000, 200_000.0, JUNE_2026) == {
        "IBKR commission": 5.0, "SEC fee": 4.12, "FINRA TAF": 0.2}
    assert commission("USD", "SELL", 1_000, 200_000.0, JUNE_2026) == 9.32


def test_us_small_sale_rounds_each_fee_up_to_a_cent():
    # 10 x 100 = 1,000: commission the USD 1 minimum; SEC fee 0.0206 -> 0.03; TAF 0.00195 -> 0.01
    assert commission("USD", "SELL", 10, 1_000.0, JUNE_2026) == 1.04


def test_us_taf_cap_per_trade():
    # 100,000 x 10 = 1,000,000: commission 500 (0.005 a share, under the 1% cap of 10,000);
    # SEC fee 20.60; TAF 19.50 capped at 9.79
    assert commission("USD", "SELL", 100_000, 1_000_000.0, JUNE_2026) == 530.39


def test_us_fee_rates_follow_the_trade_date():
    sale = ("USD", "SELL", 1_000, 200_000.0)
    # 2025-12-01: no SEC fee (USD 0 per million from 14 May 2025); TAF 0.000166 -> 0.166 -> 0.17
    assert commission(*sale, dt.date(2025, 12, 1)) == 5.17
    # 2026-11-27: FINRA paused the TAF for October to December 2026; SEC fee 4.12
    assert commission(*sale, dt.date(2026, 11, 27)) == 9.12
    # 2027-01-05: TAF 0.000232 -> 0.232 -> 0.24; 5 + 4.12 + 0.24
    assert commission(*sale, dt.date(2027, 1, 5)) == 9.36


def test_a_side_must_be_buy_or_sell():
    with pytest.raises(ValueError, match="side must be BUY or SELL"):
        commission("USD", "SLD", 1, 100.0, JUNE_2026)


# ---------------------------------------------------------------- the simulator's commission reports
def _fill_all(ib: IB, contract, action: str, quantity: int):
    trade = ib.placeOrder(contract, MarketOrder(action, quantity))
    wait_until(ib, lambda: trade.isDone() and trade.fills and all(f.commissionReport.execId for f in trade.fills))
    value = sum(f.execution.shares * f.execution.price for f in trade.fills)
    return value, round(sum(f.commissionReport.commission for f in trade.fills), 2)


def test_simulator_charges_a_us_sale_its_fees(gateway_at):
    # Tuesday 2 June 2026, 15:00 UTC: 11:00 in New York
    gateway = gateway_at(dt.datetime(2026, 6, 2, 15, tzinfo=dt.timezone.utc).timestamp())
    ib = IB()
    ib.connect("127.0.0.1", gateway.port, clientId=1, timeout=5)
    try:
        aapl = Stock("AAPL", "SMART", "USD")
        ib.qualifyContracts(aapl)
        _, bought = _fill_all(ib, aapl, "BUY", 1_000)
        value, sold = _fill_all(ib, aapl, "SELL", 1_000)
    finally:
        ib.disconnect()
    assert bought == 5.0  # 1,000 x 0.005, nothing more on a purchase
    sec = math.ceil(round(value * 20.60e-6 * 100, 6)) / 100  # rounded up to the cent
    assert sold == pytest.approx(5.0 + sec + 0.2)  # TAF 1,000 x 0.000195 = 0.195 -> 0.20


def test_simulator_charges_a_hk_purchase_stamp_duty_and_levies(gateway_at):
    # Tuesday 2 June 2026, 02:00 UTC: 10:00 in Hong Kong
    gateway = gateway_at(dt.datetime(2026, 6, 2, 2, tzinfo=dt.timezone.utc).timestamp())
    ib = IB()
    ib.connect("127.0.0.1", gateway.port, clientId=1, timeout=5)
    try:
        tencent = Stock("700", "SEHK", "HKD")
        ib.qualifyContracts(tencent)
        value, paid = _fill_all(ib, tencent, "BUY", 100)
    finally:
        ib.disconnect()
    cents = round(value * 100)  # the value in cents, to round each charge as the published rules say
    expected = (max(1800, round(cents * 0.0008)) + math.ceil(cents / 100_000) * 100  # stamp duty: whole dollars
                + math.floor(cents * 0.000027 + 0.5) + math.floor(cents * 0.0000015 + 0.5)) / 100
    assert paid == pytest.approx(expected)
