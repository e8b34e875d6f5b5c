"""The broker adapter, the one module that imports ib_insync: a persistent connection and the operations on it.

``Broker`` holds one ib_insync ``IB`` connection and offers what TWS does
(status, account, positions, open orders, executions, sending and cancelling
orders, quotes, bars) in qdibkr's terms: symbols as users write them, plain
dataclasses and pandas DataFrames back, and TWS's errors turned into
exceptions that say what to do. It decides nothing: whether an order may go is
the gate's business (``gate.py``), and the user's session (``ibkr.IBKR``) puts
the two together. Every operation has an ``async`` form (for the HTTP server
and async code) and a blocking form (for scripts, the CLI and notebooks, where
nested event loops are enabled automatically).
"""

import asyncio
import datetime as dt
import logging
import math
import socket
from dataclasses import asdict, dataclass

import nest_asyncio2
from eventkit import Event
from ib_insync import IB, Contract, Order, Stock, TagValue, Trade, TradeLogEntry, util

from .config import PRESET_LIST, Settings, load_settings
from .errors import (ConnectError, ContractError, InputError, NotConnectedError, OrderRejected, PacingError,
                     TWSError, UnknownOrder)
from .orders import LIMITED, STOPS, OrderType, Terms
from .symbols import FORMATS, HK_SHARE, SIMULATOR_TAG, US_STOCK, Symbol, parse_symbol

log = logging.getLogger("qdibkr")

ACK_TIMEOUT = 10.0
QUOTE_SETTLE = 1.0  # seconds a new streaming subscription may take to show both bid and ask
MARKET_FILL_WAIT = 2.0
DONE_STATUSES = {"Filled", "Cancelled", "ApiCancelled", "Inactive"}
ACKED_STATUSES = DONE_STATUSES | {"PreSubmitted", "Submitted"}
ORDER_MESSAGE = 399  # "Order Message: ... Warning: your order will not be placed at the exchange until ..."
ORDER_ERRORS = {110, 201, 202, 103, 104, 135, 10148, 436, 200, 321, 320}
LIVE_DATA, DELAYED_DATA = 1, 3
NOT_SUBSCRIBED = {354, 10089, 10168}
EXCHANGE_ZONES = {US_STOCK: "America/New_York", HK_SHARE: "Asia/Hong_Kong"}  # bar times are exchange-local
HISTORY_TIMEOUT = 60.0
BAR_COLUMNS = ["open", "high", "low", "close", "volume", "wap", "count"]


@dataclass(frozen=True)
class Status:
    connected: bool
    host: str
    port: int
    client_id: int
    account: str
    server_version: int | None
    server_time: dt.datetime | None
    data_source: str | None  # connected: "ib" (TWS, IB Gateway) or "simulated-seed<N>" (IBKR.data_source)


@dataclass(frozen=True)
class AccountSummary:
    account: str
    base_currency: str
    net_liquidation: float
    buying_power: float
    available_funds: float
    cash: dict[str, float]
    unrealized_pnl: float
    realized_pnl: float


@dataclass(frozen=True)
class OrderResult:
    order_id: int
    perm_id: int
    symbol: str
    side: str
    quantity: float
    order_type: str
    limit_price: float | None
    stop_price: float | None  # a stop or stop-limit order's trigger (a trailing stop's moves: see TWS)
    tif: str
    status: str
    filled: float
    remaining: float
    avg_fill_price: float | None
    order_ref: str
    message: str = ""


@dataclass(frozen=True)
class Execution:
    """One execution (fill) of an order, with what IB charged for it once its commission report came."""

    exec_id: str
    order_id: int
    order_ref: str
    symbol: str
    side: str  # BUY or SELL
    shares: float
    price: float
    time: dt.datetime
    commission: float | None  # None until TWS's commission report for it has come
    commission_currency: str
    realized_pnl: float  # ib_insync reports 0 for opening fills
    currency: str  # the contract's
    account: str


@dataclass(frozen=True)
class KnownOrders:
    """What TWS knows of the orders whose orderRef starts with a prefix: for the runner's reconcile."""

    orders: dict[str, OrderResult]  # by orderRef: open (of any client) or completed today
    executions: list[Execution]  # of those orders, as far as TWS still reports them (the day's)
    # shares an order filled beyond the executions TWS still reports: filled on an earlier day
    unreported: dict[str, float]


@dataclass(frozen=True)
class TWSMessage:
    """An error or notice TWS sent: its request or order id (-1: none), code and text."""

    req_id: int
    code: int
    text: str


@dataclass(frozen=True)
class Quote:
    symbol: str
    currency: str
    bid: float | None
    ask: float | None
    last: float | None
    close: float | None
    volume: float | None
    time: dt.datetime | None
    delayed: bool


def read_utc_execution_times(ib: IB):
    """Make ib_insync read TWS's zone-less UTC execution times as UTC.

    TWS lately sends an execution's time as ``20231214-20:57:37``, in UTC, and ib_insync reads any
    time without a zone as the host's local time: a fill's time is then off by the host's UTC offset
    (https://github.com/erdewit/ib_insync/issues/671, ib_async issue 230). This names the zone in
    that one form before ib_insync parses it; the older ``20230224  12:04:56`` (TWS's local time) and
    zoned times pass unchanged."""
    decoder = ib.client.decoder
    exec_details = decoder.handlers[11]
    time_field = 15  # msgId, reqId, orderId, the 11 contract fields, execId, then the time

    def read(fields):
        text = fields[time_field]
        if len(text) == 17 and text[8] == "-":
            fields = [*fields[:time_field], f"{text[:8]} {text[9:]} UTC", *fields[time_field + 1:]]
        exec_details(fields)

    decoder.handlers[11] = read


async def until(ib: IB, condition, timeout: float) -> bool:
    """Wait until ``condition()`` holds, re-checking after every message batch from TWS.

    The handler is attached before the first check and nothing yields between a
    check and the wait, so no update can slip by unseen (``IB.waitOnUpdate``
    can miss one that lands while it is still starting). Returns False on timeout.
    """
    changed = asyncio.Event()

    def on_update(*_):
        changed.set()

    ib.updateEvent += on_update
    try:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not condition():
            changed.clear()
            left = deadline - loop.time()
            if left <= 0:
                return False
            try:
                await asyncio.wait_for(changed.wait(), left)
            except asyncio.TimeoutError:
                return condition()
        return True
    finally:
        ib.updateEvent -= on_update


def make_reentrant(loop: asyncio.AbstractEventLoop):
    """Let blocking code run ``loop``, which is already running (Jupyter's), until its coroutine is done.

    With nest_asyncio2, the maintained fork of nest_asyncio (what ib_insync's ``util.patchAsyncio``
    applies), because of how ipykernel 7 handles requests: each one reaching the kernel's shell channel
    (a cell's execute_request, a widget's comm message, a completion) gets a task created in one
    contextvars.Context that all of them share. A cell's code runs inside a step of such a task, so that
    Context stays entered while a blocking call in the cell runs the loop nested. nest_asyncio runs
    every ready handle, so when another request arrives meanwhile (JupyterLab's Run All sends every cell
    at once; a widget is clicked), the first step of its task enters the same Context again, which
    Python refuses: "RuntimeError: cannot enter context: <_contextvars.Context ...> is already entered".
    That request is dropped: a cell that never runs, a kernel that never goes idle. nest_asyncio2 holds
    back the handles whose Context is entered until the nested run ends, so those requests are handled
    after the call, as after any blocking cell, while the rest (ib_insync's socket, the widgets'
    updates) runs meanwhile.
    """
    if hasattr(loop, "_nest_patched") and not hasattr(loop, "_nest_asyncio2"):
        # Patched by nest_asyncio already, as by ib_insync's util.startLoop(), which its docs tell notebook
        # users to call: nest_asyncio2 leaves a loop carrying that mark alone, so take it off first.
        del type(loop)._nest_patched
    nest_asyncio2.apply(loop)


def frame(rows: list[dict], columns: list[str]):
    """A pandas DataFrame of ``rows``. pandas is imported here, on first use, because
    it costs more start-up time than a whole ``qdibkr quote`` otherwise needs."""
    import pandas as pd

    return pd.DataFrame(rows, columns=columns)


def _num(x) -> float | None:
    """ib_insync marks a missing price as NaN (or -1 for some sizes, or an order's unset price as the largest
    float); we say None."""
    if x is None or (isinstance(x, float) and (math.isnan(x) or x == -1 or x > 1e300)):
        return None
    return float(x)


def _filled(trade: Trade) -> float:
    """Shares filled: the live status's count, or for an order known only as completed (no status this
    session), the order's filledQuantity (which ib_insync leaves at its huge 'unset' value otherwise)."""
    completed = trade.order.filledQuantity
    return trade.orderStatus.filled or (completed if completed < 1e300 else 0.0)


def _reason(text: str) -> str:
    """IB's rejection text after its ``Order rejected - reason:`` prefix."""
    return text.split("reason:", 1)[1].strip() if "reason:" in text else text


def ib_order(terms: Terms) -> Order:
    """ib_insync's Order for the terms of an order (without its side, size and ids). A trailing stop's
    amount goes in auxPrice, as TWS reads it; its first stop price, if given, in trailStopPrice."""
    trails = terms.type in (OrderType.TRAIL, OrderType.TRAIL_LIMIT)
    order = Order(orderType=str(terms.type), tif=terms.tif, outsideRth=terms.outside_rth,
                  goodTillDate=terms.good_till or "")
    if terms.limit is not None:
        order.lmtPrice = float(terms.limit)
    if terms.stop is not None and not trails:
        order.auxPrice = float(terms.stop)
    if trails:
        if terms.trail_amount is not None:
            order.auxPrice = float(terms.trail_amount)
        else:
            order.trailingPercent = float(terms.trail_percent)
        if terms.stop is not None:
            order.trailStopPrice = float(terms.stop)
    if terms.limit_offset is not None:
        order.lmtPriceOffset = float(terms.limit_offset)
    if terms.adaptive:
        order.algoStrategy = "Adaptive"
        order.algoParams = [TagValue("adaptivePriority", terms.adaptive.title())]
    return order


# What a modification may change besides the size: the prices ``ib_order`` sets (the type stays).
PRICE_FIELDS = ("lmtPrice", "auxPrice", "trailingPercent", "trailStopPrice", "lmtPriceOffset")


def order_terms(order: Order) -> Terms:
    """The terms of a working order, as ``ib_order`` would have made them: what a modification starts
    from. A trailing stop's first stop price is left out: it has moved with the market since, and
    sending it again would set the stop back there."""
    kind = OrderType(order.orderType)
    trails = kind in (OrderType.TRAIL, OrderType.TRAIL_LIMIT)
    adaptive = next((p.value.lower() for p in order.algoParams or () if p.tag == "adaptivePriority"), None)
    return Terms(kind, limit=_num(order.lmtPrice) if kind in LIMITED else None,
                 stop=_num(order.auxPrice) if kind in STOPS else None,
                 trail_amount=_num(order.auxPrice) if trails and _num(order.trailingPercent) is None else None,
                 trail_percent=_num(order.trailingPercent) if trails else None,
                 limit_offset=_num(order.lmtPriceOffset) if kind == OrderType.TRAIL_LIMIT else None,
                 adaptive=adaptive if order.algoStrategy == "Adaptive" else None, outside_rth=order.outsideRth,
                 tif=order.tif or "DAY", good_till=order.goodTillDate or None)


class Broker:
    """A connection to TWS / IB Gateway, and everything TWS does for qdibkr.

    Create it with settings (see ``config.load_settings``), then ``connect()``;
    the connection is kept and reused by every call until ``disconnect()``.
    """

    def __init__(self, settings: Settings | None = None, **overrides):
        self.settings = settings or load_settings(**overrides)
        self.ib = IB()
        read_utc_execution_times(self.ib)
        self.account = ""
        self._contracts: dict[Symbol, tuple[Contract, float]] = {}
        self._order_types: dict[int, frozenset[str]] = {}  # by conId: the listing's orderTypes, see order_types
        self._tickers: dict[Symbol, object] = {}  # streaming subscriptions kept for price_async
        self._errors: dict[int, list[tuple[int, str]]] = {}
        self._one_at_a_time: dict[str, asyncio.Lock] = {}  # see _request
        self._all_open: tuple[float, list[Trade]] | None = None  # see open_orders_async
        self.ib.errorEvent += self._on_error
        # qdibkr's own events, for the faces and the runner (which never touch ib_insync's):
        self.updated = Event("updated")  # after each batch of messages from TWS: any sign of life
        self.disconnected = Event("disconnected")
        self.order_updated = Event("order_updated")  # OrderResult, on each order status TWS reports
        self.executed = Event("executed")  # Execution, once its commission report has come
        self.message = Event("message")  # TWSMessage
        self.ib.updateEvent += self.updated.emit
        self.ib.disconnectedEvent += self.disconnected.emit
        self.ib.orderStatusEvent += lambda trade: self.order_updated.emit(self._result(trade))
        self.ib.commissionReportEvent += lambda trade, fill, report: self.executed.emit(self._execution(fill))
        self._server_clock: tuple[float, float] | None = None  # see server_time_async
        self._unposted: dict[tuple[str, int], float] = {}  # see unposted
        self.ib.execDetailsEvent += self._on_fill
        self.ib.positionEvent += self._on_position

    # ------------------------------------------------------------ plumbing
    def _on_error(self, req_id, code, text, contract):
        self._errors.setdefault(req_id, []).append((code, text))
        if code == 110:
            self._end_refused_order(req_id, code, text)
        self.message.emit(TWSMessage(req_id, code, text))
        if code == 100:
            log.warning("IB pacing: more than 50 messages per second were sent; TWS may disconnect. %s", text)
        elif code in (1100, 1101, 1102):
            log.warning("TWS connectivity: %s", text)

    def _on_fill(self, trade: Trade, fill):
        e = fill.execution
        key = (e.acctNumber, fill.contract.conId)
        self._unposted[key] = self._unposted.get(key, 0.0) + (e.shares if e.side == "BOT" else -e.shares)

    def _on_position(self, position):
        self._unposted.pop((position.account, position.contract.conId), None)

    def _end_refused_order(self, order_id: int, code: int, text: str):
        """Error 110 (a limit price off the tick ladder) refuses a new order: TWS takes none in. ib_insync
        takes 110 for a warning and would leave the trade pending for ever; end it, as ib_async does."""
        wrapper = self.ib.wrapper
        trade = wrapper.trades.get((wrapper.clientId, order_id))
        if trade is None or trade.orderStatus.status != "PendingSubmit":
            return  # a refused modification: the order works on as it was
        trade.orderStatus.status = "Cancelled"
        trade.log.append(TradeLogEntry(wrapper.lastTime, "Cancelled", f"Error {code}, reqId {order_id}: {text}", code))
        self.ib.orderStatusEvent.emit(trade)
        trade.statusEvent.emit(trade)
        trade.cancelledEvent.emit(trade)

    def run(self, coro):
        """Run a coroutine to completion from blocking code, also inside Jupyter's running loop."""
        policy = asyncio.get_event_loop_policy()
        try:
            loop = policy.get_event_loop()
        except RuntimeError:  # this thread's loop was closed (after asyncio.run, say): start another
            loop = policy.new_event_loop()
            policy.set_event_loop(loop)
        if loop.is_running():
            make_reentrant(loop)
        return util.run(coro)

    async def _request(self, kind: str, request):
        """Await an ib_insync request of a kind it keeps a single answer slot for ("currentTime",
        "accountValues", "openOrders", "completedOrders"), after any of that kind still out: one
        sent meanwhile would take the slot, and the first caller would wait forever. Concurrent
        callers (the HTTP server's requests) thus take turns.

        The wait also ends when the connection does: ib_insync leaves an answer pending for ever
        after an explicit disconnect, and the next caller must not inherit that wait."""
        async with self._one_at_a_time.setdefault(kind, asyncio.Lock()):
            answer = asyncio.ensure_future(request())
            gone = asyncio.get_running_loop().create_future()

            def on_disconnect():
                if not gone.done():
                    gone.set_result(None)

            self.ib.disconnectedEvent += on_disconnect
            try:
                await asyncio.wait({answer, gone}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                self.ib.disconnectedEvent -= on_disconnect
            if not answer.done():
                answer.cancel()
                raise ConnectionError(f"the connection to TWS ended before it answered ({kind})")
            return answer.result()

    def _require_connection(self):
        if not self.ib.isConnected():
            s = self.settings
            raise NotConnectedError(f"not connected to TWS/IB Gateway ({s.host}:{s.port}); call connect() first")

    def __enter__(self):
        return self.connect()

    def __exit__(self, *exc):
        self.disconnect()

    # ------------------------------------------------------------ connection
    async def connect_async(self) -> "Broker":
        if self.ib.isConnected():
            return self
        s = self.settings
        s.check_port()
        self._tickers.clear()  # subscriptions end with the connection they were made on
        self._unposted.clear()  # TWS reports every position afresh on connecting
        self._all_open = None
        errors = self._errors.setdefault(-1, [])
        errors.clear()
        try:
            await self._connect_or_hang_up()
        except socket.gaierror as e:  # before OSError: no handshake was ever tried, the name is the problem
            raise ConnectError(
                f"could not connect to TWS/IB Gateway at {s.host}:{s.port}: the host name {s.host!r} cannot be "
                f"resolved ({e.strerror}). Check the host (--host, QDIBKR_HOST, host=...); TWS on this machine "
                f"is 127.0.0.1.") from None
        except ConnectionRefusedError:
            raise ConnectError(
                f"could not connect to TWS/IB Gateway at {s.host}:{s.port}: nothing is listening there. "
                f"Start TWS or IB Gateway and log in, check the API socket port (Configure > API > Settings), "
                f"and enable the API ('Enable ActiveX and Socket Clients'). Ports: {PRESET_LIST}.") from None
        except (asyncio.TimeoutError, ConnectionError, OSError) as e:
            if any(code == 326 for code, _ in errors):
                raise ConnectError(
                    f"client id {s.client_id} is already in use by another program connected to this TWS/Gateway. "
                    f"Use a different client id: --client-id {s.client_id + 1}, client_id={s.client_id + 1}, "
                    f"\"clientId\": {s.client_id + 1} over HTTP, or QDIBKR_CLIENT_ID.", code=326) from None
            raise ConnectError(
                f"TWS/IB Gateway at {s.host}:{s.port} did not complete the API handshake ({type(e).__name__}). "
                f"Enable the API (Configure > API > Settings > 'Enable ActiveX and Socket Clients'), allow "
                f"connections from localhost, accept TWS's incoming-connection prompt, and check the port "
                f"({PRESET_LIST}).") from None
        try:
            self.account = self._choose_account(self.ib.managedAccounts())
            s.check_account(self.account)
        except Exception:
            self.ib.disconnect()
            raise
        return self

    async def _connect_or_hang_up(self):
        """ib_insync's connect, but ending as soon as TWS hangs up during the handshake
        (as it does after error 326) instead of waiting out the whole timeout."""
        s = self.settings
        connecting = asyncio.ensure_future(
            self.ib.connectAsync(s.host, s.port, clientId=s.client_id, timeout=s.timeout, account=s.account))
        hung_up = asyncio.get_running_loop().create_future()

        def on_api_error(message):
            if not hung_up.done():
                hung_up.set_result(message)

        self.ib.client.apiError += on_api_error
        try:
            await asyncio.wait({connecting, hung_up}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            self.ib.client.apiError -= on_api_error
        if not connecting.done():
            connecting.cancel()
            self.ib.disconnect()
            raise ConnectionError(hung_up.result())
        connecting.result()

    def connect(self) -> "Broker":
        return self.run(self.connect_async())

    def _choose_account(self, accounts: list[str]) -> str:
        wanted = self.settings.account
        if wanted:
            if wanted not in accounts:
                raise InputError("account", f"{wanted} is not managed by this login; its accounts are {', '.join(accounts)}")
            return wanted
        if len(accounts) > 1:
            raise InputError(
                "account", f"this login manages several accounts ({', '.join(accounts)}); name one with "
                           f"account=..., --account or QDIBKR_ACCOUNT")
        return accounts[0]

    def disconnect(self):
        self.ib.disconnect()

    async def settle_async(self):
        """A round trip to TWS: what it sent before answering (positions after a fill, say) is processed
        when this returns."""
        await self._request("currentTime", self.ib.reqCurrentTimeAsync)

    def is_connected(self) -> bool:
        return self.ib.isConnected()

    async def server_time_async(self, max_age: float = 1.0) -> dt.datetime:
        """TWS's clock (UTC, whole seconds as TWS tells it): the one trading hours and trading days are
        judged by, so that qdibkr agrees with TWS on a host whose clock is off, and with the simulated
        gateway's clock wherever a user or a test has set it. A reading up to ``max_age`` seconds old
        is carried forward by the host's clock instead of asking again (so a simulated clock running
        faster than real time is seen up to that much late)."""
        loop = asyncio.get_running_loop()
        if self._server_clock is None or loop.time() - self._server_clock[1] > max_age:
            told = await self._request("currentTime", self.ib.reqCurrentTimeAsync)
            self._server_clock = told.timestamp(), loop.time()
        told, at = self._server_clock
        return dt.datetime.fromtimestamp(told + loop.time() - at, dt.timezone.utc)

    def probe(self):
        """Ask TWS something it answers by itself (the time), without waiting: any answer, on
        ``updated``, shows the connection alive."""
        self.ib.client.reqCurrentTime()

    async def wait_until(self, condition, timeout: float) -> bool:
        """Wait until ``condition()`` holds, re-checked after each batch of messages from TWS; False
        on timeout."""
        return await until(self.ib, condition, timeout)

    def forget_session(self):
        """Forget the orders and fills of the session just ended. ib_insync does so when its socket is
        lost but not on an explicit disconnect, and an order sent into a silent connection must not look
        known (as ib_insync's own PendingSubmit copy) although TWS may never have got it."""
        self.ib.wrapper.reset()

    @property
    def data_source(self) -> str:
        """Where this connection's market data comes from, as a name to keep it under: "ib" for TWS and
        IB Gateway (paper and live logins see the same market data), "simulated-seed<N>" for qdibkr's
        simulated gateway (its prices depend on nothing but the seed). ib_insync has the account values,
        which carry the simulator's tag, before ``connect`` returns."""
        seed = next((v.value for v in self.ib.accountValues() if v.tag == SIMULATOR_TAG), None)
        return "ib" if seed is None else f"simulated-seed{int(seed)}"  # int: it names a folder

    async def status_async(self) -> Status:
        s = self.settings
        connected = self.ib.isConnected()
        server_time = await self.server_time_async(max_age=0) if connected else None
        return Status(connected, s.host, s.port, s.client_id, self.account,
                      self.ib.client.serverVersion() if connected else None, server_time,
                      self.data_source if connected else None)

    def status(self) -> Status:
        return self.run(self.status_async())

    # ------------------------------------------------------------ contracts
    async def contract_async(self, symbol: str, market_type: str | None = None) -> tuple[Symbol, Contract, float]:
        """The qualified contract and board lot of a user's symbol, cached for the session."""
        self._require_connection()
        sym = parse_symbol(symbol, market_type)
        if sym not in self._contracts:
            contract = Stock(sym.ib_symbol, sym.exchange, sym.currency)
            details = await self.ib.reqContractDetailsAsync(contract)
            if len(details) != 1:
                what = "is ambiguous" if details else "has no security definition at IB"
                raise ContractError(200, f"{symbol!r} {what} (error 200). Symbol formats: {FORMATS}.")
            found = details[0].contract
            if sym.exchange == "SMART":
                found.exchange = "SMART"
            # TWS's minSize is the board lot on SEHK, 0.0001 (fractional shares) for a US stock, and
            # unset (0) before version 164; qdibkr trades whole shares, so those are lots of one.
            self._contracts[sym] = (found, max(1, int(details[0].minSize)))
            self._order_types[found.conId] = frozenset(filter(None, details[0].orderTypes.split(",")))
        contract, lot = self._contracts[sym]
        return sym, contract, lot

    def order_types(self, contract: Contract) -> frozenset[str]:
        """The order types the listing of a contract from ``contract_async`` takes, as its contract
        details name them (MKT, LMT, STPLMT, MOC, ALGO...)."""
        return self._order_types[contract.conId]

    # ------------------------------------------------------------ account
    async def account_async(self) -> AccountSummary:
        self._require_connection()
        values = self.ib.accountValues(self.account)
        if not values:
            await self._request("accountValues", lambda: self.ib.reqAccountUpdatesAsync(self.account))
            values = self.ib.accountValues(self.account)
        by_key = {(v.tag, v.currency): v.value for v in values}

        def value(tag, currency="USD") -> float:
            try:
                return float(by_key.get((tag, currency), "nan"))
            except ValueError:
                return math.nan

        base = next((v.value for v in values if v.tag == "Currency" and v.currency == "BASE"), "USD")
        base = "USD" if base == "BASE" else base
        cash = {v.currency: float(v.value) for v in values
                if v.tag == "CashBalance" and v.currency not in ("BASE", "")}
        return AccountSummary(
            account=self.account, base_currency=base,
            net_liquidation=value("NetLiquidation", base), buying_power=value("BuyingPower", base),
            available_funds=value("AvailableFunds", base), cash=cash,
            unrealized_pnl=value("UnrealizedPnL", "BASE"), realized_pnl=value("RealizedPnL", "BASE"))

    def account_summary(self) -> AccountSummary:
        return self.run(self.account_async())

    def positions(self) -> "pandas.DataFrame":
        """IB's positions of the account, valued at the market: value = price x quantity."""
        return frame(self.position_rows(), ["symbol", "quantity", "avg_cost", "market_price", "market_value",
                                            "unrealized_pnl", "realized_pnl", "currency", "account"])

    def position_rows(self) -> list[dict]:
        """The rows of ``positions`` as dicts, for callers that ask often (the HTTP server): TWS keeps
        the portfolio current, so this is a read of local state, and a DataFrame would cost more."""
        self._require_connection()
        return [{
            "symbol": self._display(item.contract),
            "quantity": item.position,
            "avg_cost": item.averageCost,
            "market_price": item.marketPrice,
            "market_value": item.marketValue,
            "unrealized_pnl": item.unrealizedPNL,
            "realized_pnl": item.realizedPNL,
            "currency": item.contract.currency,
            "account": item.account,
        } for item in self.ib.portfolio(self.account) if item.position]

    @staticmethod
    def _display(contract: Contract) -> str:
        market = HK_SHARE if contract.currency == "HKD" else None
        return parse_symbol(contract.symbol, market).display

    # ------------------------------------------------------------ orders
    async def orders_async(self) -> "pandas.DataFrame":
        """Open orders of every client connected to this TWS, as TWS reports them."""
        self._require_connection()
        await self._request("openOrders", self.ib.reqAllOpenOrdersAsync)
        rows = [self._order_row(t) for t in self.open_trades()]
        return frame(rows, list(OrderResult.__dataclass_fields__) + ["client_id", "account"])

    def orders(self) -> "pandas.DataFrame":
        return self.run(self.orders_async())

    def open_trades(self) -> list[Trade]:
        """This session's trades still working. Not ib_insync's ``openTrades()``, which keeps an order TWS
        rejected: TWS reports it Inactive after the error (ib_insync issue 554), a state ib_insync
        does not count as done."""
        return [t for t in self.ib.openTrades() if t.orderStatus.status not in DONE_STATUSES]

    def _order_row(self, trade: Trade) -> dict:
        row = asdict(self._result(trade))
        row.update(client_id=trade.order.clientId, account=trade.order.account)
        return row

    def _result(self, trade: Trade, message: str = "") -> OrderResult:
        """An order as TWS last reported it; ``message``, unless given, is TWS's last error on it."""
        o, st = trade.order, trade.orderStatus
        if not message:
            errors = [e.message for e in trade.log if e.errorCode and e.errorCode != 202]
            # TWS's warning 399 on an order it holds (until the market opens, say) says when it will act;
            # ib_insync keeps warnings off the trade's log.
            notices = [text for code, text in self._errors.get(o.orderId, ()) if code == ORDER_MESSAGE]
            message = errors[-1] if errors else notices[-1] if notices else ""
        return OrderResult(
            order_id=o.orderId, perm_id=o.permId, symbol=self._display(trade.contract), side=o.action,
            quantity=o.totalQuantity, order_type=o.orderType,
            limit_price=_num(o.lmtPrice) if o.orderType in LIMITED else None,
            stop_price=_num(o.auxPrice) if o.orderType in STOPS else None, tif=o.tif,
            status=st.status, filled=_filled(trade), remaining=st.remaining,
            avg_fill_price=st.avgFillPrice or None, order_ref=o.orderRef, message=message)

    def _execution(self, fill) -> Execution:
        e, report = fill.execution, fill.commissionReport
        return Execution(
            exec_id=e.execId, order_id=e.orderId, order_ref=e.orderRef, symbol=self._display(fill.contract),
            side="BUY" if e.side == "BOT" else "SELL", shares=e.shares, price=e.price, time=fill.time,
            commission=report.commission if report.execId else None, commission_currency=report.currency, realized_pnl=report.realizedPNL,
            currency=fill.contract.currency, account=e.acctNumber)

    async def place_async(self, contract: Contract, action: str, quantity: float, terms: Terms = Terms(), *,
                          order_ref: str = "", order_id: int = 0) -> OrderResult:
        """Send an order and return once TWS answers (a market order: once it fills, or after a moment);
        raise ``OrderRejected`` with IB's reason if TWS refuses it."""
        trade = self.submit(contract, action, quantity, terms, order_ref=order_ref, order_id=order_id)
        order_id = trade.order.orderId
        errors = self._errors.setdefault(order_id, [])
        if not await until(self.ib, lambda: trade.orderStatus.status in ACKED_STATUSES or errors, ACK_TIMEOUT):
            return self._result(trade, f"TWS has not acknowledged order {order_id} within {ACK_TIMEOUT:g} s")
        if terms.type == OrderType.MARKET and not trade.isDone():
            # A market order normally fills at once: give the fill a moment to arrive.
            await until(self.ib, trade.isDone, MARKET_FILL_WAIT)
        elif trade.orderStatus.status == "PreSubmitted":
            # TWS takes an order in (PreSubmitted) before its own checks, which may still refuse it
            # (error 201, then Inactive): one round trip lets a refusal sent at once arrive.
            await self.settle_async()
        refusals = [(c, t) for c, t in errors if c in ORDER_ERRORS and c != 202]
        if refusals:
            code, text = refusals[0]
            raise OrderRejected(code, f"IB rejected order {order_id} (error {code}): {_reason(text)}")
        if trade.fills:
            await self.settle_async()  # the position updates sent with the fill: positions() read next agree
        return self._result(trade)

    def submit(self, contract: Contract, action: str, quantity: float, terms: Terms = Terms(), *,
               order_ref: str = "", order_id: int = 0) -> Trade:
        """Send an order as given, without waiting: its Trade follows TWS's answers.

        ``order_id`` 0 takes the next id; the runner passes the id it recorded before sending."""
        order = ib_order(terms)
        order.action, order.totalQuantity = action, quantity
        order.orderId, order.orderRef, order.account = order_id, order_ref, self.account
        return self.ib.placeOrder(contract, order)

    def next_order_id(self) -> int:
        return self.ib.client.getReqId()

    async def open_orders_async(self, contract: Contract, max_age: float = 0.0,
                                except_order: int = 0) -> list[tuple[str, str, float]]:
        """(orderRef, side, shares left) of every open order of any client for ``contract``, but this
        client's order ``except_order`` (one being modified: its new terms replace it).

        Other clients' orders are as TWS listed them (reqAllOpenOrders) at most ``max_age`` seconds ago
        (0: asked now); this client's own are followed live, including those TWS has not acknowledged."""
        self._require_connection()
        loop = asyncio.get_running_loop()
        if self._all_open is None or loop.time() - self._all_open[0] > max_age:
            listed = await self._request("openOrders", self.ib.reqAllOpenOrdersAsync)
            self._all_open = loop.time(), listed
        mine = self.settings.client_id
        trades = [t for t in self._all_open[1] if t.order.clientId != mine and not t.isDone()]
        trades += [t for t in self.open_trades() if t.order.clientId == mine and t.order.orderId != except_order]
        return [(t.order.orderRef, t.order.action, t.order.totalQuantity - t.orderStatus.filled) for t in trades
                if t.contract.conId == contract.conId and t.order.account in ("", self.account)]

    def held(self, contract: Contract) -> float:
        """Shares of ``contract`` the account holds, as TWS last reported (it pushes every change)."""
        return sum(p.position for p in self.ib.positions(self.account) if p.contract.conId == contract.conId)

    def unposted(self, contract: Contract) -> float:
        """Shares by which this session's own fills of ``contract`` have changed the account's holding
        since TWS last reported its position (bought positive, sold negative): TWS reports a fill's new
        position in a message of its own, which may come after the order's Filled status."""
        return self._unposted.get((self.account, contract.conId), 0.0)

    async def known_orders_async(self, ref_prefix: str) -> KnownOrders:
        """Every order TWS knows (open, of any client, or completed today) whose orderRef starts with
        ``ref_prefix``, with the executions TWS still reports for them."""
        self._require_connection()
        await self._request("openOrders", self.ib.reqAllOpenOrdersAsync)
        await self._request("completedOrders", lambda: self.ib.reqCompletedOrdersAsync(apiOnly=True))
        await self.ib.reqExecutionsAsync()
        trades = {t.order.orderRef: t for t in self.ib.trades() if t.order.orderRef.startswith(ref_prefix)}
        # The session's fills, which carry the commission reports (a repeated reqExecutions returns copies).
        executions = [self._execution(f) for f in self.ib.fills() if f.execution.orderRef.startswith(ref_prefix)]
        executed: dict[str, float] = {}
        for e in executions:
            executed[e.order_ref] = executed.get(e.order_ref, 0.0) + e.shares
        # An order known only as completed (no live status this session) that filled more than today's
        # executions show: the rest filled on an earlier day, and TWS reports only the day's executions.
        unreported = {ref: _filled(t) - executed.get(ref, 0.0) for ref, t in trades.items()
                      if not t.orderStatus.filled and _filled(t) > executed.get(ref, 0.0)}
        return KnownOrders({ref: self._result(t) for ref, t in trades.items()}, executions, unreported)

    def _trade_by_ref(self, order_ref: str) -> Trade | None:
        return next((t for t in reversed(self.ib.trades()) if t.order.orderRef == order_ref), None)

    def order_by_ref(self, order_ref: str) -> OrderResult | None:
        """This session's order with this orderRef, as TWS last reported it."""
        trade = self._trade_by_ref(order_ref)
        return None if trade is None else self._result(trade)

    def awaiting_commission(self, order_ref: str) -> bool:
        """Whether a fill of this order has come without its commission report: TWS sends the report
        after the order's Filled status, so a fill is complete (its cost known) only a moment later."""
        trade = self._trade_by_ref(order_ref)
        return trade is not None and any(not f.commissionReport.execId for f in trade.fills)

    def cancel_by_ref(self, order_ref: str) -> bool:
        """Ask TWS to cancel the working order with this orderRef, placed by this client; without
        waiting. False if this session knows no such working order."""
        trade = next((t for t in self.open_trades() if t.order.orderRef == order_ref), None)
        if trade is not None:
            self.ib.cancelOrder(trade.order)
        return trade is not None

    def cancel_all_by_ref(self, ref_prefix: str) -> int:
        """Ask TWS to cancel every working order of this client whose orderRef starts with the prefix."""
        trades = [t for t in self.open_trades() if t.order.orderRef.startswith(ref_prefix)]
        for trade in trades:
            self.ib.cancelOrder(trade.order)
        return len(trades)

    async def _streaming_ticker(self, symbol: str, market_type: str | None):
        """The session's streaming subscription to a symbol (live where subscribed, else delayed),
        made on first use and kept: reading it again costs TWS no further messages."""
        sym, contract, _ = await self.contract_async(symbol, market_type)
        ticker = self._tickers.get(sym)
        if ticker is None:
            self.ib.reqMarketDataType(DELAYED_DATA)  # live where subscribed, else delayed
            ticker = self._tickers[sym] = self.ib.reqMktData(contract)
            # A new subscription's ticks arrive one by one: give the other side of the book a moment,
            # or the first quote could show a bid and no ask. (A one-sided market just costs the wait.)
            await until(self.ib, lambda: _num(ticker.bid) and _num(ticker.ask), QUOTE_SETTLE)
        return sym, ticker

    async def streaming_quote_async(self, symbol: str, market_type: str | None = None) -> Quote:
        """The current quote from the session's streaming subscription: for callers that ask
        often, like the HTTP server (each ``quotes_async`` snapshot costs TWS messages)."""
        sym, ticker = await self._streaming_ticker(symbol, market_type)
        priced = lambda: any(_num(p) for p in (ticker.bid, ticker.ask, ticker.last, ticker.close))  # noqa: E731
        if not await until(self.ib, priced, ACK_TIMEOUT):
            raise TWSError(354, f"no quote for {sym} within {ACK_TIMEOUT:g} s: is there a market data subscription?")
        return self._quote(sym, ticker)

    async def price_async(self, symbol: str, market_type: str | None = None) -> float:
        """A current price (last, else the bid-ask midpoint) from the session's streaming
        subscription: repeated calls cost TWS no further messages."""
        sym, ticker = await self._streaming_ticker(symbol, market_type)

        def price() -> float | None:
            last = _num(ticker.last)
            if last:
                return last
            bid, ask = _num(ticker.bid), _num(ticker.ask)
            return (bid + ask) / 2 if bid and ask else None

        if not await until(self.ib, lambda: price() is not None, ACK_TIMEOUT):
            raise TWSError(354, f"no price for {sym} within {ACK_TIMEOUT:g} s: is there a market data subscription?")
        return price()

    def rate_to_base(self, currency: str) -> float:
        """How many units of the base currency one unit of ``currency`` is worth (TWS's ExchangeRate)."""
        for v in self.ib.accountValues(self.account):
            if v.tag == "ExchangeRate" and v.currency == currency:
                return float(v.value)
        raise TWSError(0, f"TWS reported no exchange rate for {currency} in account {self.account}")

    def own_open_trade(self, order_id: int) -> Trade:
        """This client's working order with this id, or ``UnknownOrder``: only the client that placed an
        order may cancel or modify it."""
        self._require_connection()
        trade = next((t for t in self.open_trades()
                      if t.order.orderId == order_id and t.order.clientId == self.settings.client_id), None)
        if trade is None:
            raise UnknownOrder("order_id", f"no open order {order_id} was placed by client id "
                                         f"{self.settings.client_id}; `qdibkr orders` lists open orders and "
                                         f"their client ids (an order is cancelled or modified by the client "
                                         f"that placed it)")
        return trade

    async def modify_async(self, trade: Trade, quantity: float, terms: Terms) -> OrderResult:
        """Send a working order again under its own id with a new size and prices (TWS's way to modify
        one); return once TWS has had a round trip to answer, or raise ``OrderRejected`` with its
        reason, the order then working on as it was."""
        order = trade.order
        before = {name: getattr(order, name) for name in ("totalQuantity", *PRICE_FIELDS)}
        fresh = ib_order(terms)
        for name in PRICE_FIELDS:
            setattr(order, name, getattr(fresh, name))
        order.totalQuantity = quantity
        status = trade.orderStatus.status
        errors = self._errors.setdefault(order.orderId, [])
        errors.clear()
        self.ib.placeOrder(trade.contract, order)
        # TWS answers a modification with the order's new terms or an error, before it answers a request
        # sent after it: one round trip sees either.
        await self.settle_async()
        refusals = [(c, t) for c, t in errors if c in ORDER_ERRORS and c != 202]
        if refusals:
            # TWS keeps the order working as it was; ib_insync takes any error on an order for its end
            # (Cancelled), so its terms and status are put back.
            for name, value in before.items():
                setattr(order, name, value)
            trade.orderStatus.status = status
            trade.log.append(TradeLogEntry(self.ib.wrapper.lastTime, status, "modification refused: works on"))
            code, text = refusals[0]
            raise OrderRejected(code, f"IB rejected the modification of order {order.orderId} (error {code}): "
                                      f"{_reason(text)}")
        return self._result(trade)

    async def cancel_order_async(self, order_id: int) -> OrderResult:
        trade = self.own_open_trade(order_id)
        errors = self._errors.setdefault(order_id, [])
        errors.clear()
        self.ib.cancelOrder(trade.order)
        refused = lambda: [(c, t) for c, t in errors if c != 202]  # noqa: E731
        await until(self.ib, lambda: trade.orderStatus.status in DONE_STATUSES or refused(), ACK_TIMEOUT)
        if refused():
            code, text = refused()[-1]
            raise TWSError(code, f"TWS could not cancel order {order_id} (error {code}): {text}")
        return self._result(trade)

    def cancel_order(self, order_id: int) -> OrderResult:
        return self.run(self.cancel_order_async(order_id))

    async def trades_async(self) -> "pandas.DataFrame":
        """Today's executions, each with its commission in the currency IB charged it."""
        self._require_connection()
        # Refresh from TWS, then read the session's fills: ib_insync attaches commission
        # reports to those, not to the copies a repeated reqExecutions returns.
        await self.ib.reqExecutionsAsync()
        columns = ["time", "symbol", "side", "shares", "price", "commission", "commission_currency",
                   "realized_pnl", "order_id", "order_ref", "exec_id", "account"]
        executions = sorted((self._execution(f) for f in self.ib.fills()), key=lambda e: e.time)
        return frame([{c: getattr(e, c) for c in columns} for e in executions], columns)

    def trades(self) -> "pandas.DataFrame":
        return self.run(self.trades_async())

    # ------------------------------------------------------------ quotes
    async def quotes_async(self, *symbols: str, market_type: str | None = None) -> list[Quote]:
        """Snapshot quotes; symbols without a live subscription fall back to delayed data."""
        if not symbols:
            raise InputError("symbol", f"give at least one symbol ({FORMATS})")
        resolved = [await self.contract_async(s, market_type) for s in symbols]
        contracts = [c for _, c, _ in resolved]
        tickers, refused = await self._snapshots(contracts, LIVE_DATA)
        unsubscribed = [i for i, c in enumerate(contracts) if c.conId in refused]
        if unsubscribed:
            delayed, _ = await self._snapshots([contracts[i] for i in unsubscribed], DELAYED_DATA)
            for i, ticker in zip(unsubscribed, delayed):
                tickers[i] = ticker
        return [self._quote(sym, ticker) for (sym, _, _), ticker in zip(resolved, tickers)]

    def quote(self, *symbols: str, market_type: str | None = None) -> list[Quote]:
        return self.run(self.quotes_async(*symbols, market_type=market_type))

    async def _snapshots(self, contracts: list[Contract], data_type: int):
        """Snapshot tickers, and the conIds TWS refused for want of a live data subscription."""
        refused = set()

        def on_error(req_id, code, text, contract):
            if code in NOT_SUBSCRIBED and contract is not None:
                refused.add(contract.conId)

        self.ib.errorEvent += on_error
        self.ib.reqMarketDataType(data_type)
        try:
            tickers = await self.ib.reqTickersAsync(*contracts)
        finally:
            self.ib.errorEvent -= on_error
            if data_type != LIVE_DATA:
                self.ib.reqMarketDataType(LIVE_DATA)
        return tickers, refused

    @staticmethod
    def _quote(sym: Symbol, ticker) -> Quote:
        return Quote(symbol=sym.display, currency=sym.currency, bid=_num(ticker.bid), ask=_num(ticker.ask),
                     last=_num(ticker.last), close=_num(ticker.close), volume=_num(ticker.volume),
                     time=ticker.time, delayed=ticker.marketDataType in (3, 4))

    # ------------------------------------------------------------ historical bars
    async def bars_async(self, symbol: str, *, end: "str | dt.datetime" = "", duration: str = "1 Y",
                         bar_size: str = "1 day", use_rth: bool = True, what_to_show: str = "TRADES",
                         market_type: str | None = None) -> "pandas.DataFrame":
        """One historical data request, as IB takes it: the bars of ``duration`` ("N S|D|W|M|Y")
        ending at ``end`` ("" for now, or a timezone-aware datetime).

        A DataFrame of open, high, low, close, volume, wap and count (the last three -1 unless
        TRADES), indexed by each bar's start in the exchange's time zone (America/New_York,
        Asia/Hong_Kong); daily, weekly and monthly bars by the local midnight of their first
        session's date. No bars in the range: an empty frame. For long ranges in pieces, pacing
        and a local cache, see ``qdibkr.bars``.
        """
        import pandas as pd

        sym, contract, _ = await self.contract_async(symbol, market_type)
        zone = EXCHANGE_ZONES[sym.market]
        loop = asyncio.get_running_loop()
        started = loop.time()
        bars = await self.ib.reqHistoricalDataAsync(contract, end, duration, bar_size, what_to_show, use_rth,
                                                    formatDate=2, timeout=HISTORY_TIMEOUT)
        errors = self._errors.pop(bars.reqId, [])
        if not bars:
            self._history_refused(sym, errors, loop.time() - started)
        frame = pd.DataFrame([(b.open, b.high, b.low, b.close, b.volume, b.average, b.barCount) for b in bars],
                             columns=BAR_COLUMNS, dtype=float)
        dates = pd.DatetimeIndex([b.date for b in bars], name="time").as_unit("ns")  # one resolution for all
        if len(dates) and isinstance(bars[0].date, dt.datetime):
            frame.index = dates.tz_convert(zone)
        else:
            frame.index = dates.tz_localize(zone)
        return frame

    def bars(self, symbol: str, **kwargs) -> "pandas.DataFrame":
        return self.run(self.bars_async(symbol, **kwargs))

    @staticmethod
    def _history_refused(sym: Symbol, errors: list[tuple[int, str]], waited: float):
        """Raise the reason TWS sent no bars, in plain words; return if it simply has none in the range."""
        for code, text in errors:
            if code == 162 and "pacing" in text.lower():
                raise PacingError(162, f"IB refused historical data for {sym}: too many requests too quickly "
                                       f"(error 162, {text}). For bars of 30 s or less IB allows no identical "
                                       f"request within 15 s, at most 5 per contract in 2 s and 60 in 10 "
                                       f"minutes; qdibkr.bars paces its requests to stay inside these limits")
            if code == 162 and "no data" in text.lower():
                return
            if code == 162 and "time length exceed" in text.lower():
                raise TWSError(162, f"IB refused historical data for {sym}: the duration is longer than it serves "
                                    f"in one request for that bar size (error 162, {text}). Ask for less, or let "
                                    f"qdibkr.bars.fetch split the range into requests IB accepts")
            if code == 321:
                raise TWSError(321, f"IB refused the historical data request for {sym} as invalid (error 321): "
                                    f"{text}. Check the bar size, the duration ('N S|D|W|M|Y', within IB's "
                                    f"limit for that bar size) and what to show (TRADES, MIDPOINT, BID, ASK)")
            if code < 2100 or code >= 2200:  # 2100-2199 are TWS's warnings
                raise TWSError(code, f"IB sent no historical data for {sym} (error {code}): {text}")
        if waited >= HISTORY_TIMEOUT:
            raise TWSError(0, f"TWS sent no historical data for {sym} within {HISTORY_TIMEOUT:g} s")
