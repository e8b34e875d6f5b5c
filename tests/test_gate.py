"""The one pre-trade gate, on every face that sends orders: the CLI, the HTTP API, the Python API and the runner.

A matrix of order path x rule. Each cell configures one rule (the ``[risk]`` section of a config file at
``QDIBKR_CONFIG``, the kill switch in the queue, or the account's state at the simulated gateway), sends an
order that breaks it through one path and checks that:

- it is refused, naming the rule, in the same words on every face: the ``Breach`` text (written out
  once per rule below, and equal to what ``Gate.preview`` of a separate Python session reports);
- nothing reached the gateway: no order placed (the gateway's broker is spied on, so even an order the
  gateway itself would reject counts), no order stored, no execution;
- nothing was journalled: the queue's ``orders`` table is unchanged.

Each path also has a positive control (a compliant order is sent, journalled and fills), and the Python
cells send the same order once the rule is lifted, so each cell's order would otherwise go.
Then the issue's reproductions: five strategies against one ``max_position``, a runner's close the account
cannot cover, and orders per day counted by when they were sent.
"""

import asyncio
import threading
import time
from dataclasses import dataclass, field

import httpx
import pytest

from qdibkr import IBKR, Refused, emit
from qdibkr.api import create_app
from qdibkr.cli import main
from qdibkr.config import RiskSource, Settings
from qdibkr.orders import terms
from qdibkr.risk import RiskConfig
from qdibkr.runner import Runner, runner_settings
from qdibkr.sim import catalogue
from qdibkr.sim.broker import OrderRequest
from qdibkr.store import Store

ACCOUNT = "DU1234567"  # the simulated gateway's default paper account
AAPL = 265598  # its conId
STRATEGY = "gate"  # the runner path's signals come from this strategy
HALT_REASON = "checking the books"
PATHS = ("cli", "http", "python", "runner")


# ---------------------------------------------------------------- the world of one test
@dataclass(frozen=True)
class Order:
    side: str  # buy or sell
    symbol: str
    quantity: int
    limit: float | None = None


@dataclass
class Outcome:
    """What a path did with an order: ``sent``, or refused with ``shown``, the text that face shows."""

    sent: bool
    shown: str = ""
    detail: dict = field(default_factory=dict)  # per face: exit code, HTTP status and body, signal...


@dataclass
class World:
    gateway: object
    store: Store
    tmp_path: object
    monkeypatch: object
    capsys: object
    placed: list  # every placeOrder that reached the gateway's broker, accepted or not

    @property
    def port(self) -> int:
        return self.gateway.port

    def configure(self, risk: str = ""):
        """Write the config file's [risk] section; the runner may send at any hour (the simulated market
        never closes, and the tests must pass whatever the host's clock says)."""
        path = self.tmp_path / "config.toml"
        path.write_text(f'[risk]\noutside_hours = "send"\n{risk}')
        self.monkeypatch.setenv("QDIBKR_CONFIG", str(path))

    def at_gateway(self) -> tuple[int, int, int]:
        """Orders that reached the gateway, orders it holds, executions it made."""
        broker = self.gateway.broker
        return len(self.placed), len(broker.orders), len(broker.executions)

    def journalled(self) -> int:
        return self.store.read(lambda db: db.execute("SELECT COUNT(*) FROM orders").fetchone()[0])

    def quote(self, symbol: str):
        [listing] = catalogue.find(symbol)
        return self.gateway.broker.quote(listing, self.gateway.clock.now())

    def held(self, con_id: int = AAPL) -> int:
        return self.gateway.broker.position(ACCOUNT, con_id).quantity

    def other_client(self, client_id: int = 7, store: Store | None = None) -> IBKR:
        """Another client of the same account (another program, another queue): no limits of its own."""
        return IBKR(port=self.port, client_id=client_id, store=store or Store(self.tmp_path / "elsewhere.sqlite"),
                    risk=RiskSource.fixed(RiskConfig())).connect()


@pytest.fixture
def world(gateway, store, tmp_path, monkeypatch, capsys) -> World:
    placed = []
    place = gateway.broker.place

    def spy(client_id, order_id, listing, request):
        placed.append((client_id, order_id, listing.symbol, request.action, request.quantity))
        return place(client_id, order_id, listing, request)

    gateway.broker.place = spy  # called on the gateway's thread for each placeOrder it receives
    monkeypatch.setenv("QDIBKR_DB", str(store.location))  # the CLI finds the queue as a user's would
    w = World(gateway, store, tmp_path, monkeypatch, capsys, placed)
    w.configure()
    return w


def in_thread(make_coroutine, timeout: float = 30.0):
    """Run a coroutine on an event loop of its own thread (as a server or a runner process has), so that
    this thread keeps the loop ib_insync's blocking calls use."""
    result = {}

    def target():
        try:
            result["value"] = asyncio.run(make_coroutine())
        except BaseException as e:  # handed to the test
            result["error"] = e

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(timeout)
    assert not thread.is_alive(), "did not finish"
    if "error" in result:
        raise result["error"]
    return result["value"]


def run_once(w: World) -> Runner:
    """A runner (limits from the config file, like `qdibkr runner --once`) until nothing is waiting or in flight."""
    async def go():
        runner = Runner(w.store, runner_settings(port=w.port))
        await runner.run(once=True)
        return runner
    return in_thread(go)


# ---------------------------------------------------------------- the four paths
def via_cli(w: World, order: Order) -> Outcome:
    argv = ["order", order.side, order.symbol, str(order.quantity), "--port", str(w.port), "--json"]
    if order.limit is not None:
        argv += ["--limit", f"{order.limit:.2f}"]
    w.capsys.readouterr()
    code = main(argv)
    out, err = w.capsys.readouterr()
    prefix = "qdibkr: "
    shown = err[len(prefix):].rstrip("\n") if err.startswith(prefix) else err
    return Outcome(code == 0, shown, {"code": code, "out": out, "err": err})


def via_http(w: World, order: Order) -> Outcome:
    body = {"symbol": order.symbol, "side": order.side, "quantity": order.quantity}
    if order.limit is not None:
        body.update(orderType="limit", price=order.limit)

    async def go():
        app = create_app(Settings(port=w.port, client_id=2), w.store)
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://127.0.0.1",
                                     timeout=30) as client:
            connected = await client.post("/api/ibkr/connect", json={})
            assert connected.status_code == 200, connected.text
            try:
                return await client.post("/api/ibkr/order", json=body)
            finally:
                gone = await client.post("/api/ibkr/disconnect", json={})
                assert gone.status_code == 200 and not gone.json()["data"]["connected"], gone.text

    response = in_thread(go)
    answer = response.json()
    return Outcome(response.status_code == 200, answer.get("error", ""),
                   {"status": response.status_code, "body": answer})


def via_python(w: World, order: Order) -> Outcome:
    with IBKR(port=w.port, store=w.store) as ibkr:  # qdibkr.connect(): the Python face, client id 4
        try:
            result = ibkr.place_order(order.symbol, order.side, order.quantity, limit=order.limit)
        except Refused as e:
            return Outcome(False, str(e), {"refused": e})
    return Outcome(True, "", {"result": result})


def via_runner(w: World, order: Order) -> Outcome:
    signal_type = "open_long" if order.side == "buy" else "reduce_long"
    signal = emit(signal_type, order.symbol, order.quantity, strategy=STRATEGY, limit=order.limit, store=w.store)
    run_once(w)
    signal = w.store.signal(signal.id)
    sent = signal.status not in ("rejected", "held")
    return Outcome(sent, "" if sent else signal.reason, {"signal": signal})


VIA = {"cli": via_cli, "http": via_http, "python": via_python, "runner": via_runner}


# ---------------------------------------------------------------- the rules
@dataclass(frozen=True)
class Cell:
    """One rule's setting, the order that breaks it, the Breach as ``str(Breach)`` shows it, and the field."""

    risk: str  # the [risk] lines that set the rule ("" when the rule is not a config setting)
    order: Order
    breach: str
    field: str
    compliant: Order | None = None  # for rules that cannot be lifted: the order that keeps to them


def halted(w: World) -> Cell:
    w.store.halt(HALT_REASON)
    return Cell("", Order("buy", "AAPL", 1),
                f"halted: trading is halted ({HALT_REASON}); `qdibkr resume` lifts the kill switch", "halted")


def max_order_quantity(w: World) -> Cell:
    return Cell("max_order_quantity = 50\n", Order("buy", "AAPL", 60),
                "max_order_quantity: 60 shares exceed the global max_order_quantity of 50", "quantity")


def max_order_notional(w: World) -> Cell:
    limit = round(w.quote("AAPL").ask * 1.01, 2)  # marketable: it would fill at once if sent
    return Cell("max_order_notional = 100\n", Order("buy", "AAPL", 10, limit),
                f"max_order_notional: a notional of {10 * limit:,.2f} exceeds the global max_order_notional "
                f"of 100.00", "quantity")


def max_position(w: World) -> Cell:
    """The account holds 20 and another client's resting limit buy of 60 is on the way: 30 more makes 110."""
    with w.other_client() as other:
        other.place_order("AAPL", "buy", 20)
        other.place_order("AAPL", "buy", 60, limit=round(w.quote("AAPL").bid * 0.9, 2), tif="GTC")
    assert w.held() == 20 and [o.remaining for o in w.gateway.broker.open_orders()] == [60]
    return Cell("max_position = 100\n", Order("buy", "AAPL", 30),
                "max_position: a position of 110 AAPL would exceed the global max_position of 100 (held 20, "
                "60 more on the way, this order 30)", "quantity")


def max_orders_per_day(w: World) -> Cell:
    """One order sent earlier today counts; a signal created yesterday and never sent does not."""
    earlier = emit("open_long", "MSFT", 1, strategy="yesterday", store=w.store)
    with w.store.transaction() as db:
        db.execute("UPDATE signals SET created_at = created_at - 86400, updated_at = updated_at - 86400 "
                   "WHERE id = ?", (earlier.id,))
    with w.other_client(8, store=w.store) as other:  # through the gate of this queue: journalled
        other.place_order("AAPL", "buy", 1)
    return Cell("max_orders_per_day = 1\n", Order("buy", "AAPL", 1),
                "max_orders_per_day: the global max_orders_per_day of 1 has been reached (1 sent this trading "
                "day)", "symbol")


def allowed_symbols(w: World) -> Cell:
    return Cell('allowed_symbols = ["MSFT", "0700.HK"]\n', Order("buy", "AAPL", 1),
                "allowed_symbols: AAPL is not among the global allowed symbols (0700.HK, MSFT)", "symbol")


def short_sale(w: World) -> Cell:
    """Strategy `gate` bought 10 through the runner; another client rests a sale of 4: 8 cannot be sold."""
    emit("open_long", "AAPL", 10, strategy=STRATEGY, store=w.store)
    run_once(w)
    assert w.held() == 10
    with w.other_client() as other:
        other.place_order("AAPL", "sell", 4, limit=round(w.quote("AAPL").ask * 1.05, 2), tif="GTC")
    return Cell("", Order("sell", "AAPL", 8),
                "short_sale: selling 8 AAPL would sell short: account holds 10 and its open orders already "
                "sell 4; short selling is not supported", "quantity", compliant=Order("sell", "AAPL", 6))


def board_lot(w: World) -> Cell:
    # The queue remembers a stale lot (it changed since): the emitter lets 50 pass, the gate asks TWS.
    w.store.remember_board_lot("0700.HK", 50)
    return Cell("", Order("buy", "0700.HK", 50),
                "board_lot: 0700.HK trades in board lots of 100 shares; 50 is not a multiple (try 100)", "quantity",
                compliant=Order("buy", "0700.HK", 100))


RULES = {f.__name__: f for f in (halted, max_order_quantity, max_order_notional, max_position, max_orders_per_day,
                                 allowed_symbols, short_sale, board_lot)}


def preview(w: World, order: Order, strategy: str | None) -> list[str]:
    """What the gate says of the order now, asked by a separate Python session: nothing journalled or sent."""
    with IBKR(port=w.port, client_id=9, store=w.store) as ibkr:
        return [str(b) for b in ibkr.run(ibkr.gate.preview(order.symbol, order.side.upper(), order.quantity,
                                                            terms(limit=order.limit), strategy=strategy))]


def assert_refused_as_the_face_shows_it(path: str, outcome: Outcome, cell: Cell, rule: str):
    """The face's own rendering of the refusal, around the same Breach text."""
    said = f"order refused: {cell.breach}"
    if path == "cli":
        assert outcome.detail["code"] == 2  # a refusal is the user's to mend: exit code 2, as for bad input
        assert outcome.detail["err"] == f"qdibkr: {cell.field}: {said}\n" and outcome.detail["out"] == ""
    elif path == "http":
        assert outcome.detail["status"] == (409 if rule == "halted" else 400)
        assert outcome.detail["body"] == {"success": False, "error": f"{cell.field}: {said}", "field": cell.field,
                                          "twsCode": None}
    elif path == "python":
        refused = outcome.detail["refused"]
        assert refused.rule == rule and refused.field == cell.field
        assert [str(b) for b in refused.breaches] == [cell.breach]
        assert outcome.shown == f"{cell.field}: {said}"
    else:
        signal = outcome.detail["signal"]
        # The kill switch holds a signal until trading resumes; a broken limit rejects it (on_breach = "reject").
        assert signal.status == ("held" if rule == "halted" else "rejected")
        assert signal.reason == said
        assert signal.order_id is None and signal.order_quantity is None and signal.filled == 0
    assert said in outcome.shown


# ---------------------------------------------------------------- the matrix
@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("path", PATHS)
def test_the_gate_refuses_on_every_path(world, path, rule):
    cell = RULES[rule](world)
    world.configure(cell.risk)
    gateway_before, journal_before = world.at_gateway(), world.journalled()

    outcome = VIA[path](world, cell.order)

    assert not outcome.sent, f"{path} sent an order breaking {rule}: {outcome.detail}"
    assert_refused_as_the_face_shows_it(path, outcome, cell, rule)
    assert world.at_gateway() == gateway_before, f"{path} let an order breaking {rule} reach the gateway"
    assert world.journalled() == journal_before
    # The same words as the gate gives the Python API (the runner's orders are judged for their strategy too).
    assert preview(world, cell.order, STRATEGY if path == "runner" else None) == [cell.breach]

    if path == "python":  # the order breaks nothing else: with the rule lifted, the same order goes
        if cell.compliant is None:
            world.store.resume()
            world.configure()
            retry = cell.order
        else:  # the short-sale rule and board lots are not settings: an order that keeps to them goes
            retry = cell.compliant
        assert via_python(world, retry).sent
        assert world.journalled() == journal_before + 1
        assert world.at_gateway()[:2] == (gateway_before[0] + 1, gateway_before[1] + 1)


LOOSE = """max_order_quantity = 1000
max_order_notional = 1000000
max_position = 1000
max_orders_per_day = 10
allowed_symbols = ["AAPL", "0700.HK"]
"""


@pytest.mark.parametrize("path", PATHS)
def test_a_compliant_order_is_sent_on_every_path(world, path):
    """The positive control: within every limit, each path sends, journals, and the order fills."""
    world.configure(LOOSE)
    (placed, orders, executions), journal = world.at_gateway(), world.journalled()
    outcome = VIA[path](world, Order("buy", "AAPL", 5))
    assert outcome.sent, outcome
    assert world.journalled() == journal + 1
    now_placed, now_orders, now_executions = world.at_gateway()
    assert (now_placed, now_orders) == (placed + 1, orders + 1) and now_executions > executions
    [order] = world.gateway.broker.orders.values()
    assert order.status == "Filled" and order.filled == 5 and world.held() == 5
    origin, sent_for = world.store.read(lambda db: tuple(db.execute(
        "SELECT origin, signal_id FROM orders").fetchone()))
    assert origin == {"cli": "cli", "http": "api", "python": "python", "runner": "runner"}[path]
    if path == "runner":
        assert sent_for == outcome.detail["signal"].id and outcome.detail["signal"].status == "filled"
        assert order.order_ref == outcome.detail["signal"].order_ref


# ---------------------------------------------------------------- the reproductions
def test_five_strategies_cannot_together_exceed_max_position(world):
    """Each strategy's open_long 60 is within max_position = 100 alone; the account must still hold at most 100."""
    world.configure("max_position = 100\n")
    strategies = [f"s{i}" for i in range(5)]
    for name in strategies:
        emit("open_long", "AAPL", 60, strategy=name, store=world.store)
    run_once(world)
    signals = world.store.signals()
    assert world.held() <= 100
    filled = [s for s in signals if s.status == "filled"]
    rejected = [s for s in signals if s.status == "rejected"]
    assert len(filled) == 1 and len(rejected) == 4 and world.held() == 60
    assert all(s.reason.startswith("order refused: max_position: a position of 120 AAPL would exceed the global "
                                   "max_position of 100") for s in rejected), [s.reason for s in rejected]
    assert world.at_gateway()[:2] == (1, 1) and world.journalled() == 1


def test_a_fill_counts_before_tws_reports_its_position(world):
    """TWS reports a fill's new position in a message of its own, which may come after the order's Filled
    status (this gateway sends it a second later): the next buy counts the fill all the same."""
    world.configure("max_position = 100\n")
    world.gateway.position_delay = 1.0
    with IBKR(port=world.port, store=world.store) as ibkr:
        assert ibkr.place_order("AAPL", "buy", 60).status == "Filled"
        assert not ibkr.ib.positions()  # TWS has not reported the position yet
        with pytest.raises(Refused, match="max_position: a position of 120 AAPL would exceed"):
            ibkr.place_order("AAPL", "buy", 60)
    assert world.at_gateway()[:2] == (1, 1) and world.held() == 60


def test_the_runner_will_not_close_what_the_account_no_longer_holds(world):
    """Strategy `s` holds 100 AAPL (filled through the runner); the account then sells them directly.
    The runner's close_long for `s` would sell short: rejected, and nothing sent."""
    emit("open_long", "AAPL", 100, strategy="s", store=world.store)
    run_once(world)
    assert [p.quantity for p in world.store.positions("s")] == [100] and world.held() == 100

    with IBKR(port=world.port, store=world.store) as ibkr:  # the Python API, through the gate
        assert ibkr.place_order("AAPL", "sell", 100).status == "Filled"
    assert world.held() == 0
    gateway_before, journal_before = world.at_gateway(), world.journalled()

    close = emit("close_long", "AAPL", strategy="s", store=world.store)  # the queue still says s holds 100
    run_once(world)
    close = world.store.signal(close.id)
    assert close.status == "rejected"
    assert close.reason == ("order refused: short_sale: selling 100 AAPL would sell short: account holds 0; "
                            "short selling is not supported")
    assert world.at_gateway() == gateway_before and world.journalled() == journal_before


def test_orders_per_day_count_orders_sent_not_signals_emitted(world):
    """With max_orders_per_day = 1: a signal emitted (yesterday) but never sent takes no part of today's
    allowance; once one order is sent, the next is refused, the runner's included."""
    world.configure("max_orders_per_day = 1\n")
    waiting = emit("open_long", "AAPL", 1, strategy="late", store=world.store)
    with world.store.transaction() as db:
        db.execute("UPDATE signals SET created_at = created_at - 86400 WHERE id = ?", (waiting.id,))

    first = via_python(world, Order("buy", "MSFT", 1))
    assert first.sent and world.journalled() == 1

    again = via_python(world, Order("buy", "MSFT", 1))
    assert not again.sent and again.detail["refused"].rule == "max_orders_per_day"
    assert "(1 sent this trading day)" in again.shown
    run_once(world)
    waiting = world.store.signal(waiting.id)
    assert waiting.status == "rejected" and waiting.order_id is None
    assert waiting.reason == ("order refused: max_orders_per_day: the global max_orders_per_day of 1 has been "
                              "reached (1 sent this trading day)")
    assert world.at_gateway()[:2] == (1, 1) and world.journalled() == 1


def test_orders_per_day_count_by_the_day_an_order_was_sent(world):
    """A signal created yesterday and sent today counts today; an order sent yesterday does not."""
    world.configure("max_orders_per_day = 1\n")
    with IBKR(port=world.port, store=world.store) as ibkr:  # an order sent on the previous trading day
        ibkr.gate.clock = lambda: time.time() - 86400
        assert ibkr.place_order("AAPL", "buy", 1).status == "Filled"
    assert world.journalled() == 1

    late = emit("open_long", "AAPL", 1, strategy="late", store=world.store)
    with world.store.transaction() as db:
        db.execute("UPDATE signals SET created_at = created_at - 86400 WHERE id = ?", (late.id,))
    run_once(world)  # yesterday's order leaves today's allowance whole
    assert world.store.signal(late.id).status == "filled" and world.journalled() == 2

    refused = via_python(world, Order("buy", "AAPL", 1))  # the signal was sent today: it counts today
    assert not refused.sent and refused.detail["refused"].rule == "max_orders_per_day"
    assert "(1 sent this trading day)" in refused.shown
    assert world.at_gateway()[:2] == (2, 2) and world.journalled() == 2


def test_a_fill_that_lands_while_the_gate_measures_is_counted(world):
    """Another client's buy fills while the gate awaits TWS's list of open orders: the position update
    reaches this client before the list does (the list no longer shows the filled order), so the gate must
    read the position after the list, not before, or those shares are counted nowhere."""
    world.configure("max_position = 100\n")
    [listing] = catalogue.find("AAPL")
    with world.other_client() as other, IBKR(port=world.port, store=world.store) as ibkr:
        gateway = world.gateway
        mine, theirs = gateway.sessions[ibkr.settings.client_id], gateway.sessions[other.settings.client_id]
        list_open_orders = mine.handlers[16]  # reqAllOpenOrders

        def theirs_fill_first(fields):
            mine.handlers[16] = list_open_orders
            order_id = gateway.broker.next_order_id
            gateway.broker_call(theirs, order_id, lambda b: b.place(
                theirs.client_id, order_id, listing, OrderRequest("BUY", 60, "MKT", None, "DAY", ACCOUNT, "")))
            list_open_orders(fields)

        mine.handlers[16] = theirs_fill_first
        with pytest.raises(Refused) as refused:
            ibkr.place_order("AAPL", "buy", 60)
    assert world.held() == 60
    assert refused.value.rule == "max_position" and "(held 60, 0 more on the way, this order 60)" in str(refused.value)
