"""Direct orders of every type (stop, stop-limit, trailing, on-close, Adaptive, outside regular hours, GTD)
from each face that places them: the Python API, the CLI and the HTTP API, against the simulated gateway.

Each order is checked where it lands, in the simulated gateway's book, field by field; a mistake is
refused naming the field, and a type the listing lacks naming the type and the exchange, with nothing
sent. Prices are taken from the gateway's own quote, so orders meant to rest rest whatever the market.
"""

import datetime as dt
import json

import pytest

from qdibkr.broker import ib_order
from qdibkr.config import RiskSource
from qdibkr.errors import InputError
from qdibkr.gate import Refused
from qdibkr.ibkr import IBKR
from qdibkr.orders import terms
from qdibkr.risk import Limits, RiskConfig
from qdibkr.sim import catalogue

from .test_api import client, connected, ok, refused, server  # noqa: F401  (fixtures of the HTTP API's tests)
from .test_cli import cli  # noqa: F401


def quote(gateway, symbol="AAPL"):
    [listing] = catalogue.find(symbol)
    return gateway.broker.quote(listing, gateway.clock.now())


def good_till(days: float) -> str:
    """A GTD end ``days`` from now (negative: past), as TWS reads it; the gateway's clock is the host's."""
    return (dt.datetime.now(dt.UTC) + dt.timedelta(days=days)).strftime("%Y%m%d %H:%M:%S") + " UTC"


def cases(gateway) -> dict[str, tuple[dict, list[str], dict, dict]]:
    """Each type, as (Python keywords, CLI flags, HTTP fields, what the gateway's order must hold), priced
    so that a buy rests: stops above the market, limits below it."""
    q = quote(gateway)
    stop, limit, below = round(q.ask * 1.05, 2), round(q.ask * 1.06, 2), round(q.bid * 0.95, 2)
    end = good_till(2)
    return {
        "stop": (dict(stop=stop), ["--stop", str(stop)], {"orderType": "stop", "stopPrice": stop},
                 dict(order_type="STP", aux_price=stop, limit_price=None)),
        "stop_limit": (dict(stop=stop, limit=limit), ["--stop-limit", str(stop), str(limit)],
                       {"orderType": "stop_limit", "stopPrice": stop, "price": limit},
                       dict(order_type="STP LMT", aux_price=stop, limit_price=limit)),
        "trail_amount": (dict(trail_amount=1.5), ["--trail", "1.5"], {"orderType": "trailing", "trailAmount": 1.5},
                         dict(order_type="TRAIL", aux_price=1.5, trailing_percent=None)),
        "trail_percent": (dict(trail_percent=2), ["--trail", "2%"], {"orderType": "trailing", "trailPercent": 2},
                          dict(order_type="TRAIL", aux_price=None, trailing_percent=2)),
        "trail_limit": (dict(trail_amount=1, limit_offset=0.1), ["--trail", "1", "--limit-offset", "0.1"],
                        {"orderType": "trailing", "trailAmount": 1, "limitOffset": 0.1},
                        dict(order_type="TRAIL LIMIT", aux_price=1, lmt_price_offset=0.1)),
        "moc": (dict(at_close=True), ["--at-close"], {"orderType": "moc"}, dict(order_type="MOC", limit_price=None)),
        "loc": (dict(at_close=True, limit=below), ["--at-close", "--limit", str(below)],
                {"orderType": "loc", "price": below}, dict(order_type="LOC", limit_price=below)),
        "adaptive": (dict(limit=below, adaptive="patient"), ["--limit", str(below), "--adaptive", "patient"],
                     {"orderType": "limit", "price": below, "algo": "adaptive", "priority": "patient"},
                     dict(order_type="LMT", algo_strategy="Adaptive", algo_params={"adaptivePriority": "Patient"})),
        "outside_rth": (dict(limit=below, outside_rth=True), ["--limit", str(below), "--outside-rth"],
                        {"orderType": "limit", "price": below, "outsideRth": True},
                        dict(order_type="LMT", outside_rth=True)),
        "gtd": (dict(stop=stop, tif="GTD", good_till=end), ["--stop", str(stop), "--tif", "GTD", "--good-till", end],
                {"orderType": "stop", "stopPrice": stop, "tif": "GTD", "goodTill": end},
                dict(order_type="STP", tif="GTD", good_till_date=end)),
    }


def at_gateway(gateway, order_id: int):
    [order] = [o for (_, i), o in gateway.broker.orders.items() if i == order_id]
    return order


def assert_holds(order, expected: dict):
    for name, value in expected.items():
        assert getattr(order, name) == (pytest.approx(value) if isinstance(value, float) else value), name


# ---------------------------------------------------------------- each type from each face
@pytest.mark.parametrize("kind", ["stop", "stop_limit", "trail_amount", "trail_percent", "trail_limit", "moc", "loc",
                                  "adaptive", "outside_rth", "gtd"])
def test_python_api_sends_each_type(ibkr, gateway, kind):
    keywords, _, _, expected = cases(gateway)[kind]
    result = ibkr.place_order("AAPL", "buy", 1, **keywords)
    assert result.status in ("PreSubmitted", "Submitted")
    assert_holds(at_gateway(gateway, result.order_id), expected)
    assert (result.order_type, result.stop_price) == (expected["order_type"], keywords.get("stop"))


def test_a_trailing_stop_with_a_first_stop_price():
    """What the broker asks of TWS (the simulated gateway ratchets a trailing stop from the market at once,
    so its first stop price is checked here): the amount in auxPrice, the first stop in trailStopPrice."""
    order = ib_order(terms(trail_amount=1, limit_offset=0.1, stop=180))
    assert (order.orderType, order.auxPrice, order.trailStopPrice, order.lmtPriceOffset) == \
        ("TRAIL LIMIT", 1, 180, 0.1)
    assert ib_order(terms(trail_percent=2)).trailingPercent == 2


def test_cli_sends_each_type(cli, gateway):
    for kind, (_, flags, _, expected) in cases(gateway).items():
        code, out, err = cli("order", "buy", "AAPL", "1", *flags, "--json")
        assert code == 0, (kind, err)
        assert_holds(at_gateway(gateway, json.loads(out)["order_id"]), expected)


def test_http_api_sends_each_type(connected, gateway):  # noqa: F811
    for kind, (_, _, fields, expected) in cases(gateway).items():
        placed = ok(connected.post("/api/ibkr/order", json={"symbol": "AAPL", "side": "buy", "quantity": 1,
                                                           **fields}))
        assert_holds(at_gateway(gateway, placed["orderId"]), expected)
        assert (placed["orderType"], placed["stopPrice"]) == (expected["order_type"], fields.get("stopPrice"))
    assert placed["tif"] == "GTD"


# ---------------------------------------------------------------- mistakes, refused before sending
@pytest.mark.parametrize("keywords, field", [
    (dict(order_type="STP"), "stop"),
    (dict(stop=-1), "stop"),
    (dict(order_type="MKT", stop=180), "stop"),
    (dict(order_type="TRAIL"), "trail_amount"),
    (dict(trail_amount=1, trail_percent=2), "trail_amount"),
    (dict(trail_percent=100), "trail_percent"),
    (dict(trail_percent=0), "trail_percent"),
    (dict(order_type="STP", stop=180, trail_amount=1), "trail_amount"),
    (dict(order_type="TRAIL LIMIT", trail_amount=1), "limit_offset"),
    (dict(limit_offset=0.1), "limit_offset"),
    (dict(order_type="LOC"), "limit"),
    (dict(order_type="MOC", limit=180), "limit"),
    (dict(stop=180, adaptive="urgent"), "adaptive"),
    (dict(adaptive="hasty"), "adaptive"),
    (dict(outside_rth=True), "outside_rth"),  # a market order
    (dict(stop=180, outside_rth=True), "outside_rth"),
    (dict(at_close=True, tif="GTC"), "tif"),
    (dict(limit=100, tif="GTD"), "good_till"),
    (dict(limit=100, tif="GTD", good_till="2026-12-31"), "good_till"),
    (dict(limit=100, tif="GTD", good_till="20261231 16:00:00 Mars/Olympus"), "good_till"),
    (dict(limit=100, good_till=good_till(2)), "good_till"),  # GTD's end on a DAY order
    (dict(limit=100, tif="GTD", good_till=good_till(-1)), "good_till"),  # passed, by TWS's clock
    (dict(order_type="IOC"), "order_type"),
])
def test_bad_terms_name_the_field_and_send_nothing(ibkr, gateway, keywords, field):
    with pytest.raises(InputError) as e:
        ibkr.place_order("AAPL", "buy", 1, **keywords)
    assert e.value.field == field
    assert gateway.broker.orders == {}


def test_cli_refuses_bad_terms_naming_them(cli, gateway, capsys):
    code, _, err = cli("order", "buy", "AAPL", "1", "--trail", "150%")
    assert code == 2 and "trail_percent" in err
    code, _, err = cli("order", "buy", "AAPL", "1", "--stop-limit", "180", "179", "--limit", "178")
    assert code == 2 and "limit: --stop-limit gives the limit already" in err
    with pytest.raises(SystemExit) as e:  # argparse's own refusal
        cli("order", "buy", "AAPL", "1", "--trail", "abc")
    assert e.value.code == 2 and "is not a trail; write 2% or 1.5" in capsys.readouterr().err
    assert gateway.broker.orders == {}


def test_http_api_refuses_bad_terms_naming_the_field(connected, gateway):  # noqa: F811
    order = {"symbol": "AAPL", "side": "buy", "quantity": 1}
    for fields, field in [({"orderType": "stop"}, "stopPrice"),
                          ({"orderType": "trailing", "trailAmount": 1, "trailPercent": 2}, "trailAmount"),
                          ({"orderType": "trailing", "trailPercent": 100}, "trailPercent"),
                          ({"orderType": "loc"}, "price"),
                          ({"orderType": "stop", "stopPrice": 180, "algo": "adaptive"}, "algo"),
                          ({"priority": "urgent"}, "priority"),
                          ({"outsideRth": True}, "outsideRth"),
                          ({"outsideRth": "yes", "orderType": "limit", "price": 100}, "outsideRth"),
                          ({"orderType": "limit", "price": 100, "tif": "GTD"}, "goodTill"),
                          ({"orderType": "limit", "price": 100, "tif": "GTD", "goodTill": good_till(-1)}, "goodTill"),
                          ({"limitOffset": 0.1}, "limitOffset")]:
        refused(connected.post("/api/ibkr/order", json={**order, **fields}), 400, field)
    assert gateway.broker.orders == {}


# ---------------------------------------------------------------- what the listing takes
@pytest.mark.parametrize("keywords, field, message", [
    (dict(at_close=True), "order_type", "MOC is not offered for 0700.HK on SEHK; it takes MKT, LMT, STP, STP LMT, "
                                        "TRAIL, TRAIL LIMIT$"),
    (dict(at_close=True, limit=300), "order_type", "LOC is not offered for 0700.HK on SEHK"),
    (dict(adaptive="normal"), "adaptive", "the Adaptive algo is not offered for 0700.HK on SEHK"),
    (dict(limit=300, outside_rth=True), "outside_rth", "only US stocks trade outside regular hours"),
])
def test_what_the_listing_lacks_is_refused_before_sending(ibkr, gateway, keywords, field, message):
    with pytest.raises(InputError, match=message) as e:
        ibkr.place_order("0700.HK", "buy", 100, **keywords)
    assert e.value.field == field
    assert gateway.broker.orders == {}


def test_listing_refusal_on_the_cli_and_the_http_api(cli, gateway, connected):  # noqa: F811
    code, _, err = cli("order", "buy", "700", "100", "--at-close")
    assert code == 2 and "order_type: MOC is not offered for 0700.HK on SEHK" in err
    body = refused(connected.post("/api/ibkr/order", json={"symbol": "0700.HK", "side": "buy", "quantity": 100,
                                                          "orderType": "moc"}), 400, "orderType")
    assert "MOC is not offered for 0700.HK on SEHK" in body["error"]
    assert gateway.broker.orders == {}


# ---------------------------------------------------------------- the risk rules see every type
def test_stop_sells_count_against_the_holding(ibkr, gateway):
    """A resting stop or trailing sell (of any client) will sell: the short-sale rule counts it."""
    ibkr.place_order("AAPL", "buy", 5)
    stop = round(quote(gateway).bid * 0.9, 2)
    with pytest.raises(Refused, match="selling 6 AAPL would sell short: account holds 5") as e:
        ibkr.place_order("AAPL", "sell", 6, stop=stop)
    assert e.value.rule == "short_sale"
    sent = len(gateway.broker.orders)
    with IBKR(port=gateway.port, client_id=2) as other:  # another client's trailing stop sells 3 of the 5
        assert other.place_order("AAPL", "sell", 3, trail_percent=10).status == "PreSubmitted"
    ibkr.place_order("AAPL", "sell", 1, stop=stop)
    with pytest.raises(Refused, match="holds 5 and its open orders already sell 4"):
        ibkr.place_order("AAPL", "sell", 2, stop=stop)
    assert len(gateway.broker.orders) == sent + 2


def test_a_stop_is_measured_at_its_stop_price(gateway, store):
    """The notional limit: a stop's size times its stop price (a market order's, the quote)."""
    ask = quote(gateway).ask
    limits = Limits(max_order_notional=round(10 * ask * 1.2, 2))
    with IBKR(port=gateway.port, client_id=3, store=store,
              risk=RiskSource.fixed(RiskConfig(limits=limits))) as ibkr:
        with pytest.raises(Refused, match="max_order_notional"):
            ibkr.place_order("AAPL", "buy", 10, stop=round(ask * 1.3, 2))
        assert gateway.broker.orders == {}
        assert ibkr.place_order("AAPL", "buy", 10, stop=round(ask * 1.1, 2)).status == "PreSubmitted"
