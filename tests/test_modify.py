"""Modifying a working order (its size, limit, stop or trail) from each face: the Python API, the CLI and
the HTTP API, against the simulated gateway. The gateway's own order shows the new values under the same
id (no second order); a modification passes the same gate as a new order, its present size no longer
counting, and a refused one changes nothing at the gateway.
"""

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from qdibkr.config import RiskSource
from qdibkr.errors import InputError, OrderRejected, UnknownOrder
from qdibkr.gate import Refused
from qdibkr.ibkr import IBKR
from qdibkr.risk import Limits, RiskConfig

from .test_api import client, connected, ok, refused, server  # noqa: F401  (fixtures of the HTTP API's tests)
from .test_cli import cli  # noqa: F401
from .test_order_types import at_gateway, quote


def resting(gateway) -> dict:
    """Prices at which a buy rests whatever the market: a limit 10% below the bid, a stop 10% above the ask."""
    q = quote(gateway)
    return dict(limit=round(q.bid * 0.9, 2), stop=round(q.ask * 1.1, 2))


def snapshot(gateway) -> dict:
    """The gateway's orders as plain values, to show that a refusal changed nothing."""
    return {key: (o.quantity, o.order_type, o.limit_price, o.aux_price, o.trailing_percent, o.status)
            for key, o in gateway.broker.orders.items()}


# ---------------------------------------------------------------- the Python API
def test_python_api_modifies_limit_stop_and_quantity(ibkr, gateway):
    p = resting(gateway)
    limit = ibkr.place_order("AAPL", "buy", 2, limit=p["limit"])
    stop = ibkr.place_order("AAPL", "buy", 2, stop=p["stop"])
    changed = ibkr.modify_order(limit.order_id, limit=round(p["limit"] - 1, 2), quantity=3)
    assert (changed.order_id, changed.limit_price, changed.quantity) == (limit.order_id, round(p["limit"] - 1, 2), 3)
    order = at_gateway(gateway, limit.order_id)
    assert (order.order_type, order.limit_price, order.quantity) == ("LMT", pytest.approx(p["limit"] - 1), 3)
    changed = ibkr.modify_order(stop.order_id, stop=round(p["stop"] + 1, 2))
    assert (changed.stop_price, changed.quantity) == (round(p["stop"] + 1, 2), 2)
    order = at_gateway(gateway, stop.order_id)
    assert (order.order_type, order.aux_price, order.quantity) == ("STP", pytest.approx(p["stop"] + 1), 2)
    assert len(gateway.broker.orders) == 2  # the same two orders, modified


def test_python_api_modifies_a_trail_from_amount_to_percent(ibkr, gateway):
    placed = ibkr.place_order("AAPL", "buy", 1, trail_amount=5)
    ibkr.modify_order(placed.order_id, trail_percent=3)
    order = at_gateway(gateway, placed.order_id)
    assert (order.order_type, order.aux_price, order.trailing_percent) == ("TRAIL", None, 3)


@pytest.mark.parametrize("order_id, changes, error, field", [
    (999, dict(limit=1.0), UnknownOrder, "order_id"),
    (None, dict(), InputError, "quantity"),  # nothing to change
    (None, dict(stop=1.0), InputError, "stop"),  # a stop on a limit order
    (None, dict(quantity=0), InputError, "quantity"),
    (None, dict(limit=-1), InputError, "limit"),
])
def test_python_api_refusals_change_nothing(ibkr, gateway, order_id, changes, error, field):
    placed = ibkr.place_order("AAPL", "buy", 1, limit=resting(gateway)["limit"])
    before = snapshot(gateway)
    with pytest.raises(error) as e:
        ibkr.modify_order(order_id or placed.order_id, **changes)
    assert e.value.field == field
    assert snapshot(gateway) == before


def test_a_limit_on_a_market_order_is_refused_naming_it(ibkr, gateway):
    """A filled market order is no longer open; a resting market-on-close order takes no limit."""
    filled = ibkr.place_order("AAPL", "buy", 1)
    with pytest.raises(UnknownOrder):
        ibkr.modify_order(filled.order_id, limit=1.0)
    moc = ibkr.place_order("AAPL", "buy", 1, at_close=True)  # rests until the close
    before = snapshot(gateway)
    with pytest.raises(InputError) as e:
        ibkr.modify_order(moc.order_id, limit=1.0)
    assert e.value.field == "limit" and "MOC order takes no limit" in str(e.value)
    assert snapshot(gateway) == before


def test_the_gate_judges_the_new_size_without_counting_the_old(gateway, store):
    """max_order_quantity and the kill switch stop a modification as they stop an order; the short-sale rule
    counts the order's new size and not its old one besides; max_orders_per_day does not count it."""
    limits = Limits(max_order_quantity=10, max_orders_per_day=3)
    with IBKR(port=gateway.port, client_id=3, store=store, risk=RiskSource.fixed(RiskConfig(limits=limits))) as ibkr:
        ibkr.place_order("AAPL", "buy", 10)
        sell = ibkr.place_order("AAPL", "sell", 6, limit=round(quote(gateway).ask * 1.1, 2))
        buy = ibkr.place_order("AAPL", "buy", 5, limit=resting(gateway)["limit"])  # the day's third order
        before = snapshot(gateway)
        with pytest.raises(Refused, match="11 shares exceed the global max_order_quantity of 10") as e:
            ibkr.modify_order(buy.order_id, quantity=11)
        assert e.value.rule == "max_order_quantity"
        with pytest.raises(Refused, match="selling 11 AAPL would sell short: account holds 10") as e:
            ibkr.modify_order(sell.order_id, quantity=11)
        assert e.value.rule == "short_sale"
        assert snapshot(gateway) == before
        # 6 -> 10 sells the holding once: the order's old 6 do not count against its new 10
        assert ibkr.modify_order(sell.order_id, quantity=10).quantity == 10
        assert ibkr.modify_order(buy.order_id, quantity=7).quantity == 7  # past max_orders_per_day: no new order
        journalled = store.read(lambda db: db.execute("SELECT SUM(n) AS n FROM order_counts").fetchone()["n"])
        assert journalled == 3  # the three orders; the modifications are none
        store.halt("test")
        before = snapshot(gateway)
        with pytest.raises(Refused, match="trading is halted") as e:
            ibkr.modify_order(buy.order_id, quantity=6)
        assert e.value.rule == "halted"
        assert snapshot(gateway) == before


# ---------------------------------------------------------------- the CLI
def test_cli_modifies_limit_stop_and_quantity(cli, gateway, tmp_path):
    db = ["--db", str(tmp_path / "queue.sqlite")]
    p = resting(gateway)
    code, out, err = cli("order", "buy", "AAPL", "2", "--limit", str(p["limit"]), "--json", *db)
    limit_id = json.loads(out)["order_id"]
    code, out, err = cli("order", "buy", "AAPL", "2", "--stop", str(p["stop"]), "--json", *db)
    stop_id = json.loads(out)["order_id"]
    code, out, err = cli("modify", str(limit_id), "--limit", str(round(p["limit"] - 1, 2)), "--quantity", "3",
                         "--json", *db)
    assert code == 0, err
    shown = json.loads(out)
    assert (shown["order_id"], shown["limit_price"], shown["quantity"]) == (limit_id, round(p["limit"] - 1, 2), 3)
    code, out, err = cli("modify", str(stop_id), "--stop", str(round(p["stop"] + 1, 2)), *db)  # a table
    assert code == 0 and "stop_price" in out and str(round(p["stop"] + 1, 2)) in out, err
    assert (at_gateway(gateway, limit_id).limit_price, at_gateway(gateway, limit_id).quantity) == \
        (pytest.approx(p["limit"] - 1), 3)
    assert at_gateway(gateway, stop_id).aux_price == pytest.approx(p["stop"] + 1)
    assert len(gateway.broker.orders) == 2


def test_cli_refusals_name_the_field_and_change_nothing(cli, gateway, store):
    db = ["--db", str(store.location)]
    code, out, _ = cli("order", "buy", "AAPL", "1", "--limit", str(resting(gateway)["limit"]), "--json", *db)
    order_id = json.loads(out)["order_id"]
    before = snapshot(gateway)
    for argv, words in [(["999", "--limit", "1"], "order_id: no open order 999"),
                        ([str(order_id)], "quantity: nothing to change"),
                        ([str(order_id), "--stop", "1"], "stop: a LMT order takes no stop price"),
                        ([str(order_id), "--trail", "2%"], "trail_percent: only a trailing stop takes a trail")]:
        code, _, err = cli("modify", *argv, *db)
        assert code == 2 and words in err, (argv, err)
    store.halt("checking the books")
    code, _, err = cli("modify", str(order_id), "--quantity", "2", *db)
    assert code == 2 and "halted: trading is halted (checking the books)" in err
    assert snapshot(gateway) == before


# ---------------------------------------------------------------- the HTTP API
def test_http_api_modifies_limit_stop_and_quantity(connected, gateway):  # noqa: F811
    p = resting(gateway)
    limit = ok(connected.post("/api/ibkr/order", json={"symbol": "AAPL", "side": "buy", "quantity": 2,
                                                      "orderType": "limit", "price": p["limit"]}))
    stop = ok(connected.post("/api/ibkr/order", json={"symbol": "AAPL", "side": "buy", "quantity": 2,
                                                     "orderType": "stop", "stopPrice": p["stop"]}))
    changed = ok(connected.patch(f"/api/ibkr/order/{limit['orderId']}",
                                 json={"price": round(p["limit"] - 1, 2), "quantity": 3}))
    assert (changed["orderId"], changed["limitPrice"], changed["quantity"]) == \
        (limit["orderId"], round(p["limit"] - 1, 2), 3)
    changed = ok(connected.patch(f"/api/ibkr/order/{stop['orderId']}", json={"stopPrice": round(p["stop"] + 1, 2)}))
    assert changed["stopPrice"] == round(p["stop"] + 1, 2)
    assert (at_gateway(gateway, limit["orderId"]).limit_price, at_gateway(gateway, limit["orderId"]).quantity) == \
        (pytest.approx(p["limit"] - 1), 3)
    assert at_gateway(gateway, stop["orderId"]).aux_price == pytest.approx(p["stop"] + 1)
    assert len(gateway.broker.orders) == 2


def test_http_api_refusals_change_nothing(connected, gateway, store):  # noqa: F811
    """``store`` is the server's own queue (the same file): its kill switch stops a modification too."""
    placed = ok(connected.post("/api/ibkr/order", json={"symbol": "AAPL", "side": "buy", "quantity": 1,
                                                       "orderType": "limit", "price": resting(gateway)["limit"]}))
    path = f"/api/ibkr/order/{placed['orderId']}"
    before = snapshot(gateway)
    refused(connected.patch("/api/ibkr/order/999", json={"price": 1}), 404, "id")
    refused(connected.patch(path, json={}), 400, "quantity")  # nothing to change
    refused(connected.patch(path, json={"stopPrice": 1}), 400, "stopPrice")  # a stop on a limit order
    refused(connected.patch(path, json={"trailPercent": 2}), 400, "trailPercent")
    refused(connected.patch(path, json={"orderType": "stop"}), 400, "orderType")  # not a field it takes
    refused(connected.patch(path, content=b"{}"), 415, "Content-Type")
    store.halt("test")
    assert "trading is halted" in refused(connected.patch(path, json={"quantity": 2}), 409, "halted")["error"]
    assert snapshot(gateway) == before


# ---------------------------------------------------------------- the README's examples
def readme_modify_examples() -> tuple[str, str]:
    """The README's `qdibkr modify` line and its PATCH curl, each naming order 12."""
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    [command] = [line.split("#")[0].split() for line in readme.splitlines() if line.startswith("qdibkr modify ")]
    [curl] = [line for line in readme.splitlines() if line.startswith("curl -X PATCH ")]
    return command, curl


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not on PATH")
def test_readme_modify_examples_run(cli, connected, server, gateway, tmp_path):  # noqa: F811
    """The README's examples on an order of the test's own in place of order 12, the CLI's limit a resting one
    (the README's 249.5 may lie anywhere from the simulated market, whose prices follow the host's clock)."""
    command, curl = readme_modify_examples()
    assert command[:3] == ["qdibkr", "modify", "12"] and "--limit" in command
    limit = resting(gateway)["limit"]
    db = ["--db", str(tmp_path / "queue.sqlite")]
    code, out, err = cli("order", "buy", "AAPL", "5", "--limit", str(limit), "--json", *db)
    order_id = json.loads(out)["order_id"]
    argv = [str(order_id), *command[3:]]
    argv[argv.index("--limit") + 1] = str(limit - 1)
    code, out, err = cli("modify", *argv, "--json", *db)
    assert code == 0, err
    assert (json.loads(out)["limit_price"], json.loads(out)["quantity"]) == (limit - 1, 8)
    trailing = ok(connected.post("/api/ibkr/order", json={"symbol": "AAPL", "side": "buy", "quantity": 1,
                                                         "orderType": "trailing", "trailPercent": 5}))
    done = subprocess.run(["bash", "-c", curl.replace("http://localhost:5000", server)
                           .replace("/order/12", f"/order/{trailing['orderId']}")],
                          capture_output=True, text=True, timeout=60)
    assert json.loads(done.stdout)["success"] is True, done.stdout
    assert at_gateway(gateway, trailing["orderId"]).trailing_percent == 3


def test_a_modification_tws_refuses_leaves_the_order_working(ibkr, gateway):
    """TWS refuses a buy limit far above the market (error 201) and the order works on as it was:
    ib_insync's Cancelled is undone, and the order can still be modified."""
    p = resting(gateway)
    placed = ibkr.place_order("AAPL", "buy", 1, limit=p["limit"])
    with pytest.raises(OrderRejected, match="error 201"):
        ibkr.modify_order(placed.order_id, limit=round(quote(gateway).ask * 1.5, 2))
    order = at_gateway(gateway, placed.order_id)
    assert (order.status, order.limit_price) == ("Submitted", pytest.approx(p["limit"]))
    assert ibkr.modify_order(placed.order_id, quantity=2).quantity == 2
    assert at_gateway(gateway, placed.order_id).quantity == 2
