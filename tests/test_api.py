"""The HTTP API end to end: `qdibkr serve` in its own process, the simulated gateway, real loopback sockets.

Every test starts its own server (it is listening when it prints its address)
with its own queue database, and talks to it with curl or httpx.
"""

import asyncio
import json
import os
import re
import shutil
import socket
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from ib_insync import IB
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (content_type_conformance, negative_data_rejection,
                                               response_headers_conformance, response_schema_conformance,
                                               status_code_conformance)

from qdibkr.api import MAX_BODY, create_app
from qdibkr.config import Settings
from qdibkr.errors import InputError
from qdibkr.store import HALTED_KEY
from qdibkr.store import Store

TOKEN = "t0ken-4-tests-only-9f3b"
JSON = {"Content-Type": "application/json"}  # what every POST and DELETE must say, even without a body


# ---------------------------------------------------------------- a server per test
def server_env(tmp_path, **extra) -> dict:
    """The environment without the developer's QDIBKR_* settings, with a queue of the test's own."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("QDIBKR_")}
    env.update({"QDIBKR_CONFIG": str(tmp_path / "no-config.toml"), "QDIBKR_DB": str(tmp_path / "queue.sqlite"),
                **extra})
    return env


@contextmanager
def serving(tmp_path, *args, env=None):
    """Run `qdibkr [args] serve --port 0 ...` and yield its base URL once it listens."""
    log_path = tmp_path / "serve.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "qdibkr", *args], stdout=subprocess.PIPE, stderr=log,
                                text=True, env=env or server_env(tmp_path))
        try:
            line = proc.stdout.readline()  # printed once the socket listens
            found = re.search(r"listening on (http://\S+):(\d+)", line)
            assert found, f"qdibkr serve did not start: {line}{log_path.read_text()}"
            yield f"{found.group(1)}:{found.group(2)}"
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)  # uvicorn lets requests in flight finish, for at most 5 s
            except subprocess.TimeoutExpired:
                proc.kill()
                raise


@pytest.fixture
def server(tmp_path):
    with serving(tmp_path, "serve", "--port", "0") as url:
        yield url


@pytest.fixture
def client(server):
    with httpx.Client(base_url=server, timeout=30) as c:
        yield c


@pytest.fixture
def connected(client, gateway):
    """The server connected to the simulated gateway as client id 1."""
    data = ok(client.post("/api/ibkr/connect", json={"port": gateway.port}))
    assert data["connected"] and data["account"] == "DU1234567"
    return client


@pytest.fixture
def store(tmp_path):
    s = Store(tmp_path / "queue.sqlite")
    yield s
    s.close()


def ok(response: httpx.Response):
    """The data of a success response, after checking its shape."""
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == {"success", "data"} and body["success"] is True
    return body["data"]


def refused(response: httpx.Response, status: int, field: str | None = None) -> dict:
    """An error response of this status (naming ``field``, if given), after checking its shape."""
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"success", "error", "field", "twsCode"} and body["success"] is False and body["error"]
    if field is not None:
        assert body["field"] == field, body
    return body


def order_count(gateway) -> int:
    return len(gateway.broker.orders)


def bid(client, symbol: str) -> float:
    return ok(client.get("/api/ibkr/quote", params={"symbol": symbol}))["bid"]


# ---------------------------------------------------------------- the brief's examples
# The product brief's curl examples, verbatim; the tests change only host and port.
BRIEF_CONNECT = """curl -X POST http://localhost:5000/api/ibkr/connect \\
  -H "Content-Type: application/json" \\
  -d '{"host": "127.0.0.1", "port": 7497, "clientId": 1}'"""
BRIEF_MARKET_BUY = """curl -X POST http://localhost:5000/api/ibkr/order \\
  -H "Content-Type: application/json" \\
  -d '{"symbol": "AAPL", "side": "buy", "quantity": 10, "marketType": "USStock"}'"""
BRIEF_LIMIT_SELL = """curl -X POST http://localhost:5000/api/ibkr/order \\
  -H "Content-Type: application/json" \\
  -d '{"symbol": "0700.HK", "side": "sell", "quantity": 100, "marketType": "HShare", "orderType": "limit", "price": 300}'"""


def brief_request(example: str) -> dict:
    """The method, path and JSON body of a brief's curl example, to send with httpx too."""
    found = re.search(r"-X (\w+) http://localhost:5000(\S+).*-d '(.*)'", example, re.S)
    return {"method": found.group(1), "url": found.group(2), "content": found.group(3),
            "headers": {"Content-Type": "application/json"}}


def check_limit_sell(status: int, body: dict, market_bid: float):
    """The brief's limit sell of 100 Tencent at 300: filled or resting if 300 is within 10% of the
    bid, else refused by IB (as TWS paper does) for a limit that far through the market."""
    if 300 >= market_bid * 0.9:
        assert status == 200 and body["data"]["status"] in ("Filled", "Submitted"), body
    else:
        assert status == 502 and body["twsCode"] == 201 and "below the market bid" in body["error"], body


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not on PATH; the httpx test sends the same requests")
def test_brief_curl_examples_verbatim(server, gateway):
    def curl(example: str) -> dict:
        command = example.replace("http://localhost:5000", server).replace('"port": 7497', f'"port": {gateway.port}')
        done = subprocess.run(["bash", "-c", command], capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)

    connected = curl(BRIEF_CONNECT)
    assert connected["success"] and connected["data"]["connected"] and connected["data"]["clientId"] == 1
    bought = curl(BRIEF_MARKET_BUY)
    assert bought["success"] and bought["data"]["status"] == "Filled" and bought["data"]["filled"] == 10
    with httpx.Client(base_url=server) as client:
        ok(client.post("/api/ibkr/order", json={"symbol": "0700.HK", "side": "buy", "quantity": 100}))
        market_bid = bid(client, "0700.HK")
    sold = curl(BRIEF_LIMIT_SELL)
    check_limit_sell(200 if sold["success"] else 502, sold, market_bid)
    positions = {p["symbol"]: p["quantity"] for p in httpx.get(f"{server}/api/ibkr/positions").json()["data"]}
    assert positions["AAPL"] == 10


def readme_curl_examples() -> list[str]:
    """The curl commands of the README's HTTP API section, each on one line."""
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    section = readme.split("\n### HTTP API\n", 1)[1].split("\n#", 1)[0]
    block = section.split("```bash\n", 1)[1].split("```", 1)[0]
    return [line for line in block.replace("\\\n", " ").splitlines() if line.startswith("curl ")]


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not on PATH")
def test_readme_curl_examples_verbatim(server, gateway):
    examples = readme_curl_examples()
    assert len(examples) >= 4 and any("disconnect" in example for example in examples)
    for example in examples:
        command = example.replace("http://localhost:5000", server).replace('"port": 7497', f'"port": {gateway.port}')
        done = subprocess.run(["bash", "-c", command], capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        answer = json.loads(done.stdout)
        assert answer["success"] is True, (example, answer)


def test_brief_requests_with_an_http_client(client, gateway):
    connect = brief_request(BRIEF_CONNECT)
    connect["content"] = connect["content"].replace('"port": 7497', f'"port": {gateway.port}')
    data = ok(client.request(**connect))
    assert data["connected"] and data["port"] == gateway.port and data["clientId"] == 1
    assert ok(client.request(**connect))["connected"]  # connecting again to the same place is fine

    bought = ok(client.request(**brief_request(BRIEF_MARKET_BUY)))
    assert (bought["symbol"], bought["side"], bought["status"], bought["filled"]) == ("AAPL", "BUY", "Filled", 10)
    ok(client.post("/api/ibkr/order", json={"symbol": "0700.HK", "side": "buy", "quantity": 100}))
    market_bid = bid(client, "0700.HK")
    sold = client.request(**brief_request(BRIEF_LIMIT_SELL))
    check_limit_sell(sold.status_code, sold.json(), market_bid)

    quote = ok(client.get("/api/ibkr/quote?symbol=AAPL&marketType=USStock"))  # the brief's quote path
    assert quote["symbol"] == "AAPL" and quote["bid"] < quote["ask"] and quote["delayed"] is False


# ---------------------------------------------------------------- connection
def test_status_connect_and_disconnect(client, gateway):
    status = ok(client.get("/api/ibkr/status"))
    assert status["connected"] is False and status["port"] == 7497 and status["serverTime"] is None

    data = ok(client.post("/api/ibkr/connect", json={"host": "127.0.0.1", "port": gateway.port, "clientId": 3}))
    assert data["connected"] and data["clientId"] == 3 and data["serverVersion"] >= 157 and data["serverTime"]
    assert data["dataSource"] == "simulated-seed0" and status["dataSource"] is None
    assert set(gateway.sessions) == {3}
    body = refused(client.post("/api/ibkr/connect", json={"port": gateway.port, "clientId": 4}), 409)
    assert "disconnect first" in body["error"]

    assert ok(client.post("/api/ibkr/disconnect", headers=JSON))["connected"] is False
    for path in ("/api/ibkr/account", "/api/ibkr/positions", "/api/ibkr/orders", "/api/ibkr/quote?symbol=AAPL"):
        assert "POST /api/ibkr/connect" in refused(client.get(path), 409)["error"]
    refused(client.post("/api/ibkr/order", json={"symbol": "AAPL", "side": "buy", "quantity": 1}), 409)
    refused(client.delete("/api/ibkr/order/1", headers=JSON), 409)


def test_connect_failures(client, gateway):
    with socket.socket() as closed:  # a port nothing listens on
        closed.bind(("127.0.0.1", 0))
        free_port = closed.getsockname()[1]
    body = refused(client.post("/api/ibkr/connect", json={"port": free_port}), 502)
    assert "nothing is listening" in body["error"]
    assert ok(client.get("/api/ibkr/status"))["connected"] is False

    refused(client.post("/api/ibkr/connect", json={"port": gateway.port, "account": "DU999"}), 400, "account")
    refused(client.post("/api/ibkr/connect", json={"port": "7497"}), 400, "port")
    refused(client.post("/api/ibkr/connect", json={"port": 70000}), 400, "port")
    refused(client.post("/api/ibkr/connect", json={"clientId": True}), 400, "clientId")
    refused(client.post("/api/ibkr/connect", json={"host": "bad host\x00"}), 400, "host")
    refused(client.post("/api/ibkr/connect", json={"port": gateway.port, "live": True}), 400, "live")
    assert gateway.sessions == {}

    holder = IB().connect("127.0.0.1", gateway.port, clientId=8, timeout=5)  # another program, client id 8
    try:
        body = refused(client.post("/api/ibkr/connect", json={"port": gateway.port, "clientId": 8}), 502)
        assert body["twsCode"] == 326 and '"clientId": 9' in body["error"]
    finally:
        holder.disconnect()


def test_live_port_needs_the_servers_opt_in(client):
    """Port 7496 (TWS live) is refused before anything is sent, whatever the body says."""
    with socket.socket() as live:
        try:
            live.bind(("127.0.0.1", 7496))
        except OSError:
            pytest.skip("port 7496 is in use here (TWS live?); this test must not connect to it")
        live.listen()
        live.setblocking(False)
        body = refused(client.post("/api/ibkr/connect", json={"port": 7496}), 403)
        assert "--live" in body["error"]
        with pytest.raises(BlockingIOError):
            live.accept()  # a connection attempt would have been accepted before the answer came


def test_connection_flags_set_where_connect_goes(tmp_path, gateway):
    with serving(tmp_path, "serve", "--port", "0", "--tws-port", str(gateway.port), "--client-id", "7") as url:
        data = ok(httpx.post(f"{url}/api/ibkr/connect", json={}))
    assert data["connected"] and data["port"] == gateway.port and data["clientId"] == 7


def test_a_slow_tws_does_not_hold_up_other_requests(client):
    """While the server waits for a TWS that accepted the connection but never answers, it answers
    other requests at once; when that TWS hangs up, the waiting connect gets 502."""
    with socket.create_server(("127.0.0.1", 0)) as silent, ThreadPoolExecutor(1) as pool:
        port = silent.getsockname()[1]
        connecting = pool.submit(httpx.post, f"{client.base_url}/api/ibkr/connect", json={"port": port}, timeout=30)
        tws, _ = silent.accept()  # the server is now in the API handshake with it
        status = ok(client.get("/api/ibkr/status"))
        assert ok(client.get("/api/ibkr/queue"))["signals"] == []
        assert not connecting.done()
        assert status["connected"] is False
        tws.close()
        refused(connecting.result(), 502)


def test_one_connection_serves_concurrent_requests(connected, gateway):
    session = gateway.sessions[2]
    paths = ["/api/ibkr/positions", "/api/ibkr/quote?symbol=AAPL", "/api/ibkr/quote?symbol=0700.HK",
             "/api/ibkr/account", "/api/ibkr/orders", "/api/ibkr/status"] * 10

    async def ask_all():
        async with httpx.AsyncClient(base_url=connected.base_url, timeout=30) as c:
            return await asyncio.gather(*(c.get(path) for path in paths))

    for response in asyncio.run(ask_all()):
        ok(response)
    assert gateway.sessions == {2: session}  # the same connection (the API's client id 2), never another


def test_a_wait_cut_short_by_disconnecting_is_not_inherited(gateway):
    """The server's requests take turns at ib_insync's one-answer requests (open orders, current
    time, ...). An answer ib_insync will never give (it drops pending ones on an explicit disconnect)
    must not hold the turn: the waiting caller gets ConnectionError, and after reconnecting the
    next caller is answered."""
    from qdibkr.ibkr import IBKR

    async def scenario():
        session = IBKR(host="127.0.0.1", port=gateway.port, client_id=5)
        await session.connect_async()
        never = asyncio.get_running_loop().create_future()  # an answer that will not come
        waiting = asyncio.ensure_future(session._request("openOrders", lambda: never))
        await asyncio.sleep(0)  # let it take the turn
        session.disconnect()
        with pytest.raises(ConnectionError):
            await asyncio.wait_for(waiting, 5)
        await session.connect_async()
        try:
            return await asyncio.wait_for(session.orders_async(), 5)
        finally:
            session.disconnect()

    assert asyncio.run(scenario()).empty


# ---------------------------------------------------------------- account, positions, orders
def test_account_positions_and_orders(connected, gateway):
    account = ok(connected.get("/api/ibkr/account"))
    assert account["account"] == "DU1234567" and account["cash"]["USD"] > 0 and account["netLiquidation"] > 0

    ok(connected.post("/api/ibkr/order", json={"symbol": "MSFT", "side": "buy", "quantity": 3}))
    ok(connected.post("/api/ibkr/order", json={"symbol": "700", "side": "buy", "quantity": 100}))
    positions = {p["symbol"]: p for p in ok(connected.get("/api/ibkr/positions"))}
    assert positions["MSFT"]["quantity"] == 3 and positions["0700.HK"]["currency"] == "HKD"
    assert positions["MSFT"]["marketValue"] == pytest.approx(3 * positions["MSFT"]["marketPrice"])

    limit = round(bid(connected, "AAPL") * 0.95, 2)  # below the market: it rests
    placed = ok(connected.post("/api/ibkr/order", json={"symbol": "AAPL", "side": "buy", "quantity": 2,
                                                       "orderType": "limit", "price": limit, "tif": "GTC"}))
    assert placed["status"] == "Submitted" and placed["limitPrice"] == limit and placed["tif"] == "GTC"
    listed = {o["orderId"]: o for o in ok(connected.get("/api/ibkr/orders"))}
    assert listed[placed["orderId"]]["clientId"] == 2 and listed[placed["orderId"]]["account"] == "DU1234567"

    cancelled = ok(connected.delete(f"/api/ibkr/order/{placed['orderId']}", headers=JSON))
    assert cancelled["status"] == "Cancelled"
    assert placed["orderId"] not in {o["orderId"] for o in ok(connected.get("/api/ibkr/orders"))}
    refused(connected.delete(f"/api/ibkr/order/{placed['orderId']}", headers=JSON), 404, "id")
    refused(connected.delete("/api/ibkr/order/12x", headers=JSON), 400, "id")


def test_invalid_orders_send_nothing(connected, gateway, store):
    before = order_count(gateway)
    bad = [
        ({"symbol": "AAPL", "side": "hold", "quantity": 1}, "side"),
        ({"symbol": "AAPL", "side": "buy", "quantity": 0}, "quantity"),
        ({"symbol": "AAPL", "side": "buy", "quantity": 2.5}, "quantity"),
        ({"symbol": "AAPL", "side": "buy"}, "quantity"),
        ({"symbol": "700", "side": "buy", "quantity": 150}, "quantity"),  # Tencent trades in lots of 100
        ({"symbol": "AAPL", "side": "buy", "quantity": 1, "orderType": "limit"}, "price"),
        ({"symbol": "AAPL", "side": "buy", "quantity": 1, "price": 200}, "price"),  # a market order with a price
        ({"symbol": "AAPL", "side": "buy", "quantity": 1, "orderType": "limit", "price": -1}, "price"),
        ({"symbol": "AAPL", "side": "buy", "quantity": 1, "prise": 200}, "prise"),
        ({"symbol": "AAPL", "side": "buy", "quantity": 1, "tif": "IOC"}, "tif"),
        ({"symbol": "AAPL", "side": "buy", "quantity": 1, "marketType": "HShare"}, "symbol"),
        ({"symbol": "AAPL", "side": "buy", "quantity": 1, "marketType": "Crypto"}, "marketType"),
        ({"symbol": "AAPL", "side": "buy", "quantity": 1, "account": "DU7654321"}, "account"),
        ({"symbol": "$$$", "side": "buy", "quantity": 1}, "symbol"),
    ]
    for body, field in bad:
        refused(connected.post("/api/ibkr/order", json=body), 400, field)
    unknown = refused(connected.post("/api/ibkr/order", json={"symbol": "ZZZZ", "side": "buy", "quantity": 1}),
                      400, "symbol")
    assert unknown["twsCode"] == 200
    assert order_count(gateway) == before

    store.set(HALTED_KEY, "stopped for the test")
    body = refused(connected.post("/api/ibkr/order", json={"symbol": "AAPL", "side": "buy", "quantity": 1}), 409)
    assert "halted (stopped for the test)" in body["error"]
    assert order_count(gateway) == before

    store.set(HALTED_KEY, None)
    short = refused(connected.post("/api/ibkr/order", json={"symbol": "AAPL", "side": "sell", "quantity": 5}),
                    400, "quantity")
    assert "would sell short" in short["error"] and order_count(gateway) == before  # refused before TWS sees it
    rejected = refused(connected.post("/api/ibkr/order", json={"symbol": "AAPL", "side": "buy", "quantity": 100_000}),
                       502)
    assert rejected["twsCode"] == 201 and "insufficient cash" in rejected["error"]  # IB's reason, passed on


# ---------------------------------------------------------------- quotes
def test_quotes(connected):
    aapl = ok(connected.get("/api/ibkr/quote", params={"symbol": "AAPL", "marketType": "USStock"}))
    assert aapl["currency"] == "USD" and aapl["delayed"] is False and aapl["time"]
    tencent = ok(connected.get("/api/ibkr/quote", params={"symbol": "00700"}))
    assert tencent["symbol"] == "0700.HK" and tencent["currency"] == "HKD" and tencent["delayed"] is True
    refused(connected.get("/api/ibkr/quote"), 400, "symbol")
    refused(connected.get("/api/ibkr/quote", params={"symbol": ""}), 400, "symbol")
    refused(connected.get("/api/ibkr/quote", params={"symbol": "AAPL", "marketType": "Bonds"}), 400, "marketType")
    refused(connected.get("/api/ibkr/quote", params={"symbol": "AAPL", "marketType": "HShare"}), 400, "symbol")
    assert refused(connected.get("/api/ibkr/quote", params={"symbol": "ZZZZ"}), 400, "symbol")["twsCode"] == 200


# ---------------------------------------------------------------- signals and the queue
def test_signals_queue_with_the_python_calls_rules(client, gateway, store):
    signal = {"signalType": "open_long", "symbol": "AAPL", "quantity": 10, "strategy": "sma", "key": "sma-1"}
    first = ok(client.post("/api/ibkr/signal", json=signal))  # no connection needed for a US stock
    assert (first["status"], first["source"], first["orderType"], first["idempotencyKey"]) == \
           ("pending", "api", "MKT", "sma-1")
    again = ok(client.post("/api/ibkr/signal", json={**signal, "quantity": 99}))
    assert again["id"] == first["id"] and again["quantity"] == 10  # the same key: the same signal
    assert [s.id for s in store.signals()] == [first["id"]]  # as the Python API stores it

    limit = ok(client.post("/api/ibkr/signal", json={"signalType": "open_long", "symbol": "MSFT", "quantity": 1,
                                                     "strategy": "sma", "orderType": "limit", "price": 400}))
    assert (limit["orderType"], limit["limitPrice"]) == ("LMT", 400)
    bad = [
        ({**signal, "signalType": "open_short", "key": None}, "signalType"),
        ({**signal, "strategy": " ", "key": None}, "strategy"),
        ({"signalType": "open_long", "symbol": "AAPL", "strategy": "sma"}, "quantity"),
        ({"signalType": "reduce_long", "symbol": "AAPL", "quantity": 11, "strategy": "sma"}, "quantity"),
        ({**signal, "orderType": "limit", "key": None}, "price"),
        ({**signal, "tif": "day", "key": None}, "tif"),
        ({**signal, "key": ""}, "key"),
    ]
    for body, field in bad:
        refused(client.post("/api/ibkr/signal", json=body), 400, field)

    hk = {"signalType": "open_long", "symbol": "700", "quantity": 100, "strategy": "hk"}
    assert "connect" in refused(client.post("/api/ibkr/signal", json=hk), 409)["error"]  # board lot unknown yet
    ok(client.post("/api/ibkr/connect", json={"port": gateway.port}))
    assert ok(client.post("/api/ibkr/signal", json=hk))["symbol"] == "0700.HK"
    assert store.board_lot("0700.HK") == 100
    refused(client.post("/api/ibkr/signal", json={**hk, "quantity": 150}), 400, "quantity")

    queue = ok(client.get("/api/ibkr/queue"))
    assert queue["halted"] is None and [s["symbol"] for s in queue["signals"]] == ["AAPL", "MSFT", "0700.HK"]
    latest = ok(client.get("/api/ibkr/queue", params={"strategy": "sma", "limit": 1}))["signals"]
    assert [s["symbol"] for s in latest] == ["MSFT"]
    refused(client.get("/api/ibkr/queue", params={"limit": 0}), 400, "limit")
    refused(client.get("/api/ibkr/queue", params={"limit": "ten"}), 400, "limit")
    store.set(HALTED_KEY, "maintenance")
    assert ok(client.get("/api/ibkr/queue"))["halted"] == "maintenance"


# ---------------------------------------------------------------- requests the server refuses
def test_bodies_must_be_small_json_objects(connected, gateway):
    before = order_count(gateway)
    order = '{"symbol": "AAPL", "side": "buy", "quantity": 1}'
    refused(connected.post("/api/ibkr/order", content=order, headers={"Content-Type": "text/plain"}), 415)
    refused(connected.post("/api/ibkr/order", content=order), 415)  # no content type at all
    big = '{"symbol": "AAPL", "side": "buy", "quantity": 1, "key": "' + "x" * MAX_BODY + '"}'
    refused(connected.post("/api/ibkr/order", content=big, headers={"Content-Type": "application/json"}), 413)
    for content in ("{", "[1, 2]", '"AAPL"', '{"symbol": "AAPL", "side": "buy", "quantity": NaN}', "[" * 50_000):
        refused(connected.post("/api/ibkr/order", content=content, headers={"Content-Type": "application/json"}),
                400, "body")
    assert order_count(gateway) == before
    refused(connected.get("/api/ibkr/nothing-here"), 404)
    assert "method" in refused(connected.put("/api/ibkr/order"), 405)["error"]


def test_only_loopback_names_without_a_token(client):
    for host in ("localhost:5000", "127.0.0.1", "[::1]:5000"):
        ok(client.get("/api/ibkr/status", headers={"Host": host}))
    refused(client.get("/api/ibkr/status", headers={"Host": "rebound.example:5000"}), 400, "Host")


def test_a_token_guards_every_request(tmp_path, gateway):
    env = server_env(tmp_path, QDIBKR_API_TOKEN=TOKEN)
    store = Store(tmp_path / "queue.sqlite")
    with serving(tmp_path, "-v", "serve", "--port", "0", env=env) as url:
        with httpx.Client(base_url=url) as anyone, \
                httpx.Client(base_url=url, headers={"Authorization": f"Bearer {TOKEN}"}) as holder:
            for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN},
                            {"Authorization": f"Basic {TOKEN}"}):
                response = anyone.get("/api/ibkr/status", headers=headers)
                refused(response, 401)
                assert response.headers["WWW-Authenticate"] == "Bearer"
            refused(anyone.get("/openapi.json"), 401)
            refused(anyone.post("/api/ibkr/connect", json={"port": gateway.port}), 401)
            assert gateway.sessions == {}

            ok(holder.post("/api/ibkr/connect", json={"port": gateway.port}))
            before = order_count(gateway)
            refused(anyone.post("/api/ibkr/order", json={"symbol": "AAPL", "side": "buy", "quantity": 1}), 401)
            refused(anyone.post("/api/ibkr/signal", json={"signalType": "open_long", "symbol": "AAPL",
                                                          "quantity": 1, "strategy": "x"}), 401)
            assert order_count(gateway) == before and store.signals() == []

            ok(holder.post("/api/ibkr/order", json={"symbol": "AAPL", "side": "buy", "quantity": 1}))
            assert order_count(gateway) == before + 1
            ok(holder.get("/api/ibkr/status", headers={"Host": "trading-box.lan:5000"}))  # any name, with the token
            document = holder.get("/openapi.json").json()
            assert document["security"] == [{"bearer": []}]
    store.close()
    assert TOKEN not in (tmp_path / "serve.log").read_text()  # even logging everything (-v)


def test_token_from_the_config_file(tmp_path):
    config = tmp_path / "config.toml"
    config.write_text(f'[api]\ntoken = "{TOKEN}"\n')
    with serving(tmp_path, "serve", "--port", "0", env=server_env(tmp_path, QDIBKR_CONFIG=str(config))) as url:
        refused(httpx.get(f"{url}/api/ibkr/status"), 401)
        ok(httpx.get(f"{url}/api/ibkr/status", headers={"Authorization": f"Bearer {TOKEN}"}))


def test_refuses_to_listen_beyond_loopback_without_a_token(tmp_path):
    done = subprocess.run([sys.executable, "-m", "qdibkr", "serve", "--host", "0.0.0.0", "--port", "0"],
                          capture_output=True, text=True, env=server_env(tmp_path), timeout=60)
    assert done.returncode == 2 and "set an API token first" in done.stderr and "listening" not in done.stdout


# ---------------------------------------------------------------- web pages: content type, origin, CORS
# A web page of any origin may send a "simple" request (a POST as text/plain, form data or no body) without
# the browser asking the server first; each of these must be refused before it reaches an endpoint.
SIMPLE_CONTENT_TYPES = ("text/plain", "text/plain;charset=UTF-8", "application/x-www-form-urlencoded",
                        "multipart/form-data; boundary=x", None)
PAGE = "http://localhost:8888"  # a notebook's page, say
PREFLIGHT = {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "content-type"}


def test_a_simple_post_cannot_disconnect(connected, gateway):
    for content_type in SIMPLE_CONTENT_TYPES:
        headers = {"Content-Type": content_type} if content_type else {}
        body = refused(connected.post("/api/ibkr/disconnect", content="{}", headers=headers), 415, "Content-Type")
        assert "Content-Type: application/json" in body["error"] and "{} as the body" in body["error"]
        assert ok(connected.get("/api/ibkr/status"))["connected"] is True
    refused(connected.post("/api/ibkr/disconnect", headers={"Content-Type": "text/plain"}), 415)  # no body either
    assert ok(connected.get("/api/ibkr/status"))["connected"] is True
    assert set(gateway.sessions) == {2}
    # the same request as JSON disconnects; an empty body is as {}
    assert ok(connected.post("/api/ibkr/disconnect", headers={"Content-Type": "application/json; charset=utf-8"}))[
        "connected"] is False


def test_an_empty_post_without_content_type_does_not_connect(tmp_path, gateway):
    """The server's TWS is the gateway: an accepted empty POST to /connect would connect to it."""
    with serving(tmp_path, "serve", "--port", "0", "--tws-port", str(gateway.port)) as url, \
            httpx.Client(base_url=url, timeout=30) as client:
        refused(client.post("/api/ibkr/connect"), 415, "Content-Type")
        refused(client.post("/api/ibkr/connect", content="", headers={"Content-Type": "text/plain"}), 415)
        assert ok(client.get("/api/ibkr/status"))["connected"] is False and gateway.sessions == {}
        data = ok(client.post("/api/ibkr/connect", headers=JSON))  # an empty JSON body: as {}
        assert data["connected"] and data["port"] == gateway.port


def test_delete_needs_json_content_type(connected, gateway):
    limit = round(bid(connected, "AAPL") * 0.95, 2)  # below the market: it rests
    placed = ok(connected.post("/api/ibkr/order", json={"symbol": "AAPL", "side": "buy", "quantity": 1,
                                                       "orderType": "limit", "price": limit}))
    path = f"/api/ibkr/order/{placed['orderId']}"
    refused(connected.delete(path), 415, "Content-Type")
    refused(connected.request("DELETE", path, content="{}", headers={"Content-Type": "text/plain"}), 415)
    refused(connected.request("DELETE", path, json={"now": True}), 400, "now")  # its body takes no fields
    assert placed["orderId"] in {o["orderId"] for o in ok(connected.get("/api/ibkr/orders"))}
    assert ok(connected.request("DELETE", path, json={}))["status"] == "Cancelled"


def test_a_page_of_another_origin_changes_nothing(connected, gateway, store):
    own = str(connected.base_url).rstrip("/")  # http://127.0.0.1:<port>
    port = own.rsplit(":", 1)[1]
    order = {"symbol": "AAPL", "side": "buy", "quantity": 1}
    signal = {"signalType": "open_long", "symbol": "AAPL", "quantity": 1, "strategy": "page"}
    before = order_count(gateway)
    for origin in ("http://evil.example", "null", PAGE, f"https://127.0.0.1:{port}", f"http://localhost:{port}",
                   f"http://127.0.0.1:{port}.evil.example"):
        headers = {"Origin": origin}
        body = refused(connected.post("/api/ibkr/order", json=order, headers=headers), 403, "Origin")
        assert "cors_origins" in body["error"]
        refused(connected.post("/api/ibkr/signal", json=signal, headers=headers), 403, "Origin")
        refused(connected.post("/api/ibkr/disconnect", json={}, headers=headers), 403, "Origin")
        refused(connected.get("/api/ibkr/positions", headers=headers), 403, "Origin")  # nor read anything
        response = connected.options("/api/ibkr/order", headers={**headers, **PREFLIGHT})
        refused(response, 403, "Origin")
        assert "access-control-allow-origin" not in response.headers
    assert order_count(gateway) == before and store.signals() == []
    assert ok(connected.get("/api/ibkr/status"))["connected"] is True

    # the page the server itself serves from is its own origin, whichever loopback name it was asked by
    ok(connected.post("/api/ibkr/order", json=order, headers={"Origin": own}))
    ok(connected.post("/api/ibkr/order", json=order, headers={"Origin": f"http://localhost:{port}",
                                                              "Host": f"localhost:{port}"}))
    assert order_count(gateway) == before + 2


def test_cors_origins_from_the_config_file(tmp_path, gateway):
    config = tmp_path / "config.toml"
    config.write_text(f'[api]\ncors_origins = ["{PAGE}"]\n')
    env = server_env(tmp_path, QDIBKR_CONFIG=str(config))
    with serving(tmp_path, "serve", "--port", "0", env=env) as url, httpx.Client(base_url=url, timeout=30) as client:
        preflight = client.options("/api/ibkr/connect", headers={"Origin": PAGE, **PREFLIGHT})
        assert preflight.status_code == 200, preflight.text
        assert preflight.headers["access-control-allow-origin"] == PAGE
        assert "POST" in preflight.headers["access-control-allow-methods"]
        assert "content-type" in preflight.headers["access-control-allow-headers"].lower()
        answer = client.post("/api/ibkr/connect", json={"port": gateway.port}, headers={"Origin": PAGE})
        assert ok(answer)["connected"] and answer.headers["access-control-allow-origin"] == PAGE
        # the page must send JSON too, and can read why not
        answer = client.post("/api/ibkr/disconnect", content="{}",
                             headers={"Origin": PAGE, "Content-Type": "text/plain"})
        refused(answer, 415)
        assert answer.headers["access-control-allow-origin"] == PAGE

        for other in ("http://evil.example", "http://localhost:8889"):
            refused(client.options("/api/ibkr/disconnect", headers={"Origin": other, **PREFLIGHT}), 403, "Origin")
            answer = client.post("/api/ibkr/disconnect", json={}, headers={"Origin": other})
            refused(answer, 403, "Origin")
            assert "access-control-allow-origin" not in answer.headers
        assert ok(client.get("/api/ibkr/status"))["connected"] is True


def test_cors_with_a_token(tmp_path):
    """A browser's preflight carries no token: it is answered; the request itself still needs the token."""
    config = tmp_path / "config.toml"
    config.write_text(f'[api]\ntoken = "{TOKEN}"\ncors_origins = ["{PAGE}/"]\n')  # a trailing slash is forgiven
    env = server_env(tmp_path, QDIBKR_CONFIG=str(config))
    with serving(tmp_path, "serve", "--port", "0", env=env) as url, httpx.Client(base_url=url, timeout=30) as client:
        preflight = client.options("/api/ibkr/status", headers={"Origin": PAGE, "Access-Control-Request-Method": "GET",
                                                                "Access-Control-Request-Headers": "authorization"})
        assert preflight.status_code == 200 and preflight.headers["access-control-allow-origin"] == PAGE
        answer = client.get("/api/ibkr/status", headers={"Origin": PAGE})
        refused(answer, 401)
        assert answer.headers["access-control-allow-origin"] == PAGE
        ok(client.get("/api/ibkr/status", headers={"Origin": PAGE, "Authorization": f"Bearer {TOKEN}"}))
        refused(client.get("/api/ibkr/status", headers={"Origin": "http://evil.example",
                                                        "Authorization": f"Bearer {TOKEN}"}), 403, "Origin")


def test_cors_origins_passed_to_create_app(tmp_path):
    async def ask(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1:5000") as client:
            preflight = await client.options("/api/ibkr/status", headers={"Origin": PAGE,
                                                                          "Access-Control-Request-Method": "GET"})
            assert preflight.status_code == 200 and preflight.headers["access-control-allow-origin"] == PAGE
            assert ok(await client.get("/api/ibkr/status", headers={"Origin": PAGE}))["connected"] is False
            refused(await client.get("/api/ibkr/status", headers={"Origin": "http://evil.example"}), 403, "Origin")

    store = Store(tmp_path / "queue.sqlite")
    try:
        asyncio.run(ask(create_app(Settings(), store, cors_origins=["HTTP://LocalHost:8888"])))
        for bad in ("*", ["*"], ["localhost:8888"], ["http://localhost:8888/notebooks"], [8888]):
            with pytest.raises(InputError, match="cors_origins"):
                create_app(Settings(), store, cors_origins=bad)
    finally:
        store.close()


def test_refuses_to_start_with_a_bad_cors_origin(tmp_path):
    config = tmp_path / "config.toml"
    config.write_text('[api]\ncors_origins = ["*"]\n')
    done = subprocess.run([sys.executable, "-m", "qdibkr", "serve", "--port", "0"], capture_output=True, text=True,
                          env=server_env(tmp_path, QDIBKR_CONFIG=str(config)), timeout=60)
    assert done.returncode == 2 and "cors_origins" in done.stderr and "listening" not in done.stdout


# ---------------------------------------------------------------- the OpenAPI document
def test_openapi_document_lists_the_brief_endpoints(client):
    document = client.get("/openapi.json").json()
    assert document["openapi"] == "3.0.3" and "security" not in document
    operations = {(method.upper(), path) for path, item in document["paths"].items() for method in item}
    assert operations == {
        ("GET", "/api/ibkr/status"), ("POST", "/api/ibkr/connect"), ("POST", "/api/ibkr/disconnect"),
        ("GET", "/api/ibkr/account"), ("GET", "/api/ibkr/positions"), ("GET", "/api/ibkr/orders"),
        ("POST", "/api/ibkr/order"), ("PATCH", "/api/ibkr/order/{id}"), ("DELETE", "/api/ibkr/order/{id}"),
        ("GET", "/api/ibkr/quote"),
        ("POST", "/api/ibkr/signal"), ("GET", "/api/ibkr/queue")}
    order = document["paths"]["/api/ibkr/order"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert set(order["properties"]) == {"symbol", "side", "quantity", "marketType", "orderType", "price",
                                        "stopPrice", "trailAmount", "trailPercent", "limitOffset", "algo",
                                        "priority", "outsideRth", "tif", "goodTill", "account"}
    modify = document["paths"]["/api/ibkr/order/{id}"]["patch"]["requestBody"]["content"]["application/json"]
    assert set(modify["schema"]["properties"]) == {"quantity", "price", "stopPrice", "trailAmount", "trailPercent"}
    connect = document["paths"]["/api/ibkr/connect"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert set(connect["properties"]) == {"host", "port", "clientId", "account"}


def test_concurrent_signals_with_distinct_keys_are_each_stored_once(client, store):
    async def emit_all():
        async with httpx.AsyncClient(base_url=client.base_url, timeout=30) as c:
            return await asyncio.gather(*(
                c.post("/api/ibkr/signal", json={"signalType": "open_long", "symbol": "AAPL", "quantity": 1,
                                                 "strategy": "many", "key": f"many-{i % 40}"})
                for i in range(120)))

    ids = {ok(r)["id"] for r in asyncio.run(emit_all())}
    assert len(ids) == 40 and len(store.signals(strategy="many")) == 40



# ---------------------------------------------------------------- property-based fuzzing from the document
FUZZ_EXAMPLES = 300


def test_fuzz_from_the_openapi_document(connected, gateway):
    """Requests generated from the OpenAPI document, valid and invalid: no 5xx, every answer as the
    document says (status, content type, schema), invalid data refused, and no order reaches the
    gateway from a request the server refused. Connect and disconnect are left out: a fuzzer must
    not point the server at arbitrary hosts, and a disconnected server would only answer 409."""
    checks = [not_a_server_error, status_code_conformance, content_type_conformance, response_headers_conformance,
              response_schema_conformance, negative_data_rejection]
    ok(connected.post("/api/ibkr/order", json={"symbol": "AAPL", "side": "buy", "quantity": 50}))  # to sell
    base = str(connected.base_url)
    schema = schemathesis.openapi.from_url(f"{base}/openapi.json").exclude(operation_id=["connect", "disconnect"])
    cases = st.one_of(schema.as_strategy(GenerationMode.POSITIVE), schema.as_strategy(GenerationMode.NEGATIVE))

    @settings(max_examples=FUZZ_EXAMPLES, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(case=cases)
    def fuzz(case):
        before = order_count(gateway)
        response = case.call(base_url=base)
        case.validate_response(response, checks=checks)
        if 400 <= response.status_code < 500:
            assert order_count(gateway) == before, f"{case.method} {case.path} placed an order: {response.text}"

    fuzz()


def test_a_queue_whose_database_is_down_answers_503_and_recovers(tmp_path, postgres_of_its_own):
    """A PostgreSQL queue whose server is down: the queue's endpoints say so (503, naming the database and
    that nothing was written), and work again once it is back, without restarting the API."""
    url = postgres_of_its_own.create_database()
    signal = {"signalType": "open_long", "symbol": "AAPL", "quantity": 1, "strategy": "api"}
    with serving(tmp_path, "serve", "--port", "0", env=server_env(tmp_path, QDIBKR_DB=url)) as base, \
            httpx.Client(base_url=base, timeout=30) as client:
        first = ok(client.post("/api/ibkr/signal", json=signal))
        postgres_of_its_own.stop()
        body = refused(client.post("/api/ibkr/signal", json={**signal, "symbol": "MSFT"}), 503)
        assert "queue's database postgresql://postgres@/" in body["error"] and "nothing was written" in body["error"]
        refused(client.get("/api/ibkr/queue"), 503)
        postgres_of_its_own.start()
        assert [s["id"] for s in ok(client.get("/api/ibkr/queue"))["signals"]] == [first["id"]]
        ok(client.post("/api/ibkr/signal", json={**signal, "symbol": "MSFT"}))
