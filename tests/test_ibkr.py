"""qdibkr's client layer against the simulated gateway over a real socket."""

import logging
import math
import socket
import time

import pytest
from ib_insync import util

from qdibkr import (IBKR, ConnectError, ContractError, InputError, LiveTradingRefused, OrderRejected,
                    SimGateway)

from .conftest import wait_until


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------- connection
def test_status(ibkr, gateway):
    status = ibkr.status()
    assert status.connected and status.port == gateway.port and status.client_id == 1
    assert status.account == "DU1234567" and status.server_version == 176
    assert status.server_time is not None
    assert status.data_source == "simulated-seed0"  # the simulator says so; TWS would give "ib"


def test_one_connection_is_reused(ibkr):
    first = ibkr.ib.client.connectionStats()
    ibkr.quote("AAPL")
    ibkr.positions()
    assert ibkr.ib.client.connectionStats().startTime == first.startTime


def test_nothing_listening_says_start_tws_and_lists_presets():
    with pytest.raises(ConnectError, match="nothing is listening there.*Start TWS or IB Gateway.*tws-paper 7497"):
        IBKR(port=free_port()).connect()


def test_a_host_name_that_does_not_resolve_says_so():
    # .invalid is reserved (RFC 2606): it never resolves, so no handshake was tried to blame
    with pytest.raises(ConnectError, match="host name 'tws.invalid' cannot be resolved.*127.0.0.1") as e:
        IBKR(host="tws.invalid", port=free_port()).connect()
    assert "handshake" not in str(e.value)


def test_client_id_in_use_suggests_another_quickly(ibkr, gateway):
    started = time.monotonic()
    with pytest.raises(ConnectError, match="client id 1 is already in use.*--client-id 2"):
        IBKR(port=gateway.port, client_id=1, timeout=5).connect()
    assert time.monotonic() - started < 2, "a hang-up during the handshake must not wait out the timeout"


def test_live_port_is_refused_before_connecting():
    with pytest.raises(LiveTradingRefused, match="tws-live port"):
        IBKR(preset="tws-live").connect()


@pytest.fixture
def gateway_with(tmp_path):
    started = []

    def start(**kwargs) -> SimGateway:
        gw = SimGateway(port=0, always_open=True, **kwargs).start_in_thread()
        started.append(gw)
        return gw

    yield start
    for gw in started:
        gw.stop()


def test_live_account_needs_opt_in(gateway_with):
    gw = gateway_with(accounts=("U7654321",))
    with pytest.raises(LiveTradingRefused, match="U7654321 is not a paper account"):
        IBKR(port=gw.port).connect()
    with IBKR(port=gw.port, live=True) as ibkr:
        assert ibkr.account == "U7654321"


def test_several_accounts_need_one_named(gateway_with):
    gw = gateway_with(accounts=("DU111", "DU222"))
    with pytest.raises(InputError, match="several accounts \\(DU111, DU222\\)") as e:
        IBKR(port=gw.port).connect()
    assert e.value.field == "account"
    with pytest.raises(InputError, match="DU333 is not managed by this login; its accounts are DU111, DU222"):
        IBKR(port=gw.port, account="DU333").connect()
    with IBKR(port=gw.port, account="DU222") as ibkr:
        assert ibkr.account_summary().account == "DU222"
        ibkr.place_order("AAPL", "buy", 1)
        assert gw.broker.position("DU222", 265598).quantity == 1
        assert gw.broker.position("DU111", 265598).quantity == 0


# ---------------------------------------------------------------- symbols and contracts
def test_hk_spellings_qualify_to_the_same_contract(ibkr):
    contracts = [ibkr.run(ibkr.contract_async(s))[1] for s in ("0700.HK", "00700", "700")]
    assert {c.conId for c in contracts} == {contracts[0].conId}
    assert contracts[0].exchange == "SEHK" and contracts[0].currency == "HKD"
    brk = [ibkr.run(ibkr.contract_async(s))[1] for s in ("BRK.B", "BRK B")]
    assert brk[0].conId == brk[1].conId == 72063691


def test_unknown_symbol_explains_the_formats(ibkr):
    with pytest.raises(ContractError, match="'ZZZZ' has no security definition.*error 200.*0700.HK, 00700 or 700"):
        ibkr.quote("ZZZZ")


# ---------------------------------------------------------------- quotes
def test_quotes_live_and_delayed_in_one_call(ibkr):
    aapl, tencent = ibkr.quote("AAPL", "0700.HK")
    assert aapl.symbol == "AAPL" and not aapl.delayed and aapl.currency == "USD"
    assert 0 < aapl.bid < aapl.ask and aapl.last and aapl.close and aapl.volume
    assert tencent.symbol == "0700.HK" and tencent.delayed  # the paper account has no HK subscription
    assert 0 < tencent.bid < tencent.ask and tencent.currency == "HKD"


def test_quote_needs_a_symbol(ibkr):
    with pytest.raises(InputError, match="at least one symbol"):
        ibkr.quote()


# ---------------------------------------------------------------- orders
def test_market_order_result_and_positions(ibkr):
    result = ibkr.place_order("0700.HK", "buy", 200, order_ref="t1")
    assert result.status == "Filled" and result.filled == 200 and result.symbol == "0700.HK"
    wait_until(ibkr.ib, lambda: len(ibkr.positions()) == 1)
    [row] = ibkr.positions().to_dict("records")
    assert row["symbol"] == "0700.HK" and row["quantity"] == 200 and row["currency"] == "HKD"
    assert row["market_value"] == pytest.approx(row["market_price"] * 200, abs=0.01)
    assert row["market_value"] != pytest.approx(row["avg_cost"] * 200)  # value, not cost basis
    trades = ibkr.trades().to_dict("records")  # one execution, or several when it swept the book
    assert sum(t["shares"] for t in trades) == 200
    assert all(t["side"] == "BUY" and t["order_ref"] == "t1" and t["commission_currency"] == "HKD" for t in trades)
    assert sum(t["commission"] for t in trades) >= 18.0


def test_board_lot_is_checked_before_sending(ibkr, gateway):
    with pytest.raises(InputError, match="board lots of 100 shares; 150 is not a multiple \\(try 100\\)") as e:
        ibkr.place_order("00700", "buy", 150)
    assert e.value.field == "quantity"
    with pytest.raises(InputError, match="board lots of 400"):
        ibkr.place_order("5", "buy", 100)
    assert gateway.broker.orders == {}


@pytest.mark.parametrize("kwargs, field", [
    (dict(symbol="AAPL", side="short", quantity=1), "side"),
    (dict(symbol="AAPL", side="buy", quantity=0), "quantity"),
    (dict(symbol="AAPL", side="buy", quantity=1.5), "quantity"),
    (dict(symbol="AAPL", side="buy", quantity=1, tif="IOC"), "tif"),
    (dict(symbol="AAPL", side="buy", quantity=1, limit=-3), "limit"),
    (dict(symbol="AAPL", side="buy", quantity=1, limit=math.inf), "limit"),  # TWS would refuse it as malformed
    (dict(symbol="AAPL", side="buy", quantity=1, limit=True), "limit"),
    (dict(symbol="AAPL", side="buy", quantity=1, market_type="HShare"), "symbol"),
])
def test_bad_order_input_names_the_field_and_sends_nothing(ibkr, gateway, kwargs, field):
    with pytest.raises(InputError) as e:
        ibkr.place_order(**kwargs)
    assert e.value.field == field
    assert gateway.broker.orders == {}


def test_rejection_shows_ibs_reason(ibkr):
    with pytest.raises(OrderRejected, match="IB rejected order \\d+ \\(error 201\\): insufficient cash"):
        ibkr.place_order("AAPL", "buy", 100_000)


def test_a_sale_beyond_what_is_held_is_refused_before_sending(ibkr, gateway):
    """No short selling: TWS would refuse it only in a cash account like the simulator's, so qdibkr
    checks the position, less what open sell orders of any client have yet to sell, itself."""
    with pytest.raises(InputError, match="short_sale: selling 5 AAPL would sell short: account holds 0") as e:
        ibkr.place_order("AAPL", "sell", 5)
    assert e.value.field == "quantity" and gateway.broker.orders == {}
    ibkr.place_order("AAPL", "buy", 5)
    [quote] = ibkr.quote("AAPL")
    with IBKR(port=gateway.port, client_id=2) as other:  # another client's resting sale of 3 of the 5
        other.place_order("AAPL", "sell", 3, limit=round(quote.ask * 1.05, 2))
    sent = len(gateway.broker.orders)
    with pytest.raises(InputError, match="holds 5 and its open orders already sell 3"):
        ibkr.place_order("AAPL", "sell", 3)
    assert len(gateway.broker.orders) == sent
    assert ibkr.place_order("AAPL", "sell", 2).status == "Filled"  # what is left to sell


def test_limit_order_listed_for_all_clients_then_cancelled(ibkr, gateway):
    [quote] = ibkr.quote("AAPL")
    limit = round(quote.bid * 0.95, 2)
    result = ibkr.place_order("AAPL", "buy", 3, limit=limit, tif="GTC")
    assert result.status == "Submitted" and result.filled == 0 and result.limit_price == limit
    with IBKR(port=gateway.port, client_id=2) as other:
        [row] = other.orders().to_dict("records")
        assert row["order_id"] == result.order_id and row["client_id"] == 1 and row["tif"] == "GTC"
        with pytest.raises(InputError, match="placed by client id 2"):
            other.cancel_order(result.order_id)
    cancelled = ibkr.cancel_order(result.order_id)
    assert cancelled.status == "Cancelled"
    assert len(ibkr.orders()) == 0


def test_account_summary(ibkr):
    before = ibkr.account_summary()
    assert before.account == "DU1234567" and before.base_currency == "USD"
    assert before.cash == {"HKD": 1_000_000.0, "USD": 1_000_000.0}
    assert before.net_liquidation == pytest.approx(1_000_000 + 1_000_000 / 7.8, abs=1)
    ibkr.place_order("AAPL", "buy", 10)
    wait_until(ibkr.ib, lambda: ibkr.account_summary().buying_power < before.buying_power)
    after = ibkr.account_summary()
    assert after.cash["USD"] < 1_000_000 and after.cash["HKD"] == 1_000_000


def test_pacing_violation_is_reported_in_plain_words(ibkr, caplog):
    caplog.set_level(logging.WARNING, logger="qdibkr")
    ibkr.ib.client.MaxRequests = 0  # as a client without ib_insync's throttle would
    for _ in range(80):
        ibkr.ib.client.reqCurrentTime()
    wait_until(ibkr.ib, lambda: any("more than 50 messages per second" in r.getMessage() for r in caplog.records))
    util.run(ibkr.status_async())  # still connected after one violation
