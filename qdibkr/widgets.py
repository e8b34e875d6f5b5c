"""Jupyter widgets for trading by hand: connection form, order ticket, positions, queue and quotes.

::

    from qdibkr.widgets import dashboard
    ui = dashboard(port=7497)                     # all of them, sharing one connection
    ibkr = await ui.connection.connect_async()    # in a notebook cell: the same as pressing Connect

Or one at a time, sharing a ``Session``: ``ConnectionForm(session)``,
``OrderTicket(session)``, ``PositionsView(session)``, ``QueueView(session)``,
``QuoteBox(session)``.

They never block the notebook, and keep updating while the kernel is idle:

- a button schedules the session's async IBKR call as a task on the kernel's
  running event loop (ipykernel runs one) and returns at once; the task writes
  its answer, or the error in plain words, into the widget;
- the positions view follows what TWS sends (the session's ``updated`` events:
  it re-renders when the portfolio it keeps changes) and the order ticket its
  order's status events (``order_updated``): nothing is re-requested in a loop;
- an order from the ticket passes the session's gate (``gate.Gate``), as every
  order from every face does: the kill switch, the risk limits, the short-sale
  rule and board lots. Check shows what the gate would refuse (its preview);
  Send to TWS asks the gate again, at the moment the order goes;
- the queue (SQLite, written by the runner in another process) is watched
  through SQLite's data_version, which changes only when another connection
  commits: a cheap look twice a second, re-rendering only on a change.
"""

import asyncio
import datetime as dt
import html
import logging
import re

import ipywidgets as widgets

from . import hours
from .broker import OrderResult, TWSMessage
from .config import PRESETS, load_settings
from .display import cell
from .errors import InputError, QdibkrError
from .gate import Refused
from .ibkr import IBKR
from .live import projected
from .model import Side
from .orders import terms
from .signals import default_store, emit, wake_runner
from .store import Store
from .symbols import parse_symbol

log = logging.getLogger("qdibkr.widgets")

QUEUE_LOOK = 0.5  # seconds between looks at the queue's data_version
TOTALS_EVERY = 1.0  # seconds: the account totals are refreshed at most this often while TWS sends updates
PORTS = [("TWS paper 7497", PRESETS["tws-paper"]), ("TWS live 7496", PRESETS["tws-live"]),
         ("IB Gateway paper 4002", PRESETS["gateway-paper"]), ("IB Gateway live 4001", PRESETS["gateway-live"]),
         ("other port", 0)]
INFO_CODES = range(2100, 2200)  # TWS's notices ("market data farm connection is OK"): not shown
NOTICE_CODES = {202, 354, 10089, 10167, 10168}  # worth knowing, not errors: shown in grey
LABELS = {"description_width": "initial"}  # descriptions in full
PLAIN = {  # TWS's error codes, in the words a user needs
    100: "too many messages per second: TWS may disconnect this client",
    162: "IB refused the historical data request (too many requests, or no data)",
    200: "IB knows no such contract: check the symbol",
    201: "IB rejected the order",
    202: "the order was cancelled",
    321: "TWS refused a request as invalid",
    326: "this client id is in use by another program: choose another",
    354: "no market data subscription for this symbol: delayed data is used instead",
    502: "could not connect: is TWS / IB Gateway running, with the API enabled, on this port?",
    504: "not connected to TWS",
    1100: "TWS lost its connection to IB's servers; it reconnects by itself",
    1101: "TWS is connected to IB again; market data subscriptions were lost",
    1102: "TWS is connected to IB again; nothing was lost",
    10167: "showing delayed market data (no live subscription)",
}


def plain(code: int, text: str) -> str:
    """A TWS error in plain words, with TWS's own text after it."""
    return f"{PLAIN[code]} (TWS error {code}: {text})" if code in PLAIN else f"TWS error {code}: {text}"


def line(text: str, kind: str = "") -> str:
    """One status line as HTML: kind "ok" green, "error" red, "note" grey, "" plain."""
    color = {"ok": "#15803d", "error": "#b91c1c", "note": "#6b7280"}.get(kind, "inherit")
    return f'<span style="color:{color}">{html.escape(text, quote=False)}</span>'


def html_table(rows: list[dict], empty: str = "(none)") -> str:
    """Rows as a small HTML table, numbers right-aligned."""
    if not rows:
        return f"<i>{html.escape(empty)}</i>"
    columns = list(rows[0])
    head = "".join(f'<th style="text-align:left;padding:2px 8px">{html.escape(c)}</th>' for c in columns)
    body = ""
    for row in rows:
        cells = ""
        for c in columns:
            value = row[c]
            align = "right" if isinstance(value, (int, float)) and not isinstance(value, bool) else "left"
            cells += f'<td style="text-align:{align};padding:2px 8px">{html.escape(cell(value), quote=False)}</td>'
        body += f"<tr>{cells}</tr>"
    return f'<table style="border-collapse:collapse;font-size:13px"><tr>{head}</tr>{body}</table>'


def money(value) -> float | None:
    """Rounded to cents for display; None stays None."""
    return None if value is None else round(float(value), 2)


class Session:
    """What the widgets share: one IBKR connection, the queue, and who to tell when either changes.

    The connection is the widgets' face (``face="widgets"``: client id 3 unless configured otherwise)
    and its gate uses this session's queue (``store``, default: the configured one) for the kill switch
    and the journal of orders sent. ``settings`` (host, port, client_id, account, live) override the
    configured connection; an ``ibkr`` given is used as it is."""

    def __init__(self, ibkr: IBKR | None = None, store: Store | None = None, **settings):
        self.store = store or default_store()
        self.ibkr = ibkr or IBKR(face="widgets", store=self.store, **settings)
        self.tasks: set[asyncio.Task] = set()
        self._connection_listeners = []
        self._queue_listeners = []
        self._soon: set = set()
        self._watcher = None
        self.ibkr.disconnected += self.connection_changed

    # ------------------------------------------------------------ running without blocking
    def spawn(self, coro):
        """Run ``coro`` without blocking the notebook: as a task on the running event loop; with no
        loop running (a plain script), to completion at once. Its QdibkrErrors are the widgets' to
        show; anything else is logged."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            try:
                self.ibkr.run(coro)
            except QdibkrError:
                pass
            return
        task = loop.create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self._done)
        self._watch_queue_on(loop)

    def _done(self, task: asyncio.Task):
        self.tasks.discard(task)
        if not task.cancelled() and task.exception() and not isinstance(task.exception(), QdibkrError):
            log.error("a widget's task failed", exc_info=task.exception())

    async def settle(self):
        """Wait until every task the widgets started (and any they start meanwhile) has ended."""
        while self.tasks:
            await asyncio.gather(*self.tasks, return_exceptions=True)

    def soon(self, render):
        """Call ``render`` once the current burst of events has been handled (once however many
        events asked for it); at once when no loop is running."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            render()
            return
        if render not in self._soon:
            self._soon.add(render)
            loop.call_soon(self._render, render)

    def _render(self, render):
        self._soon.discard(render)
        try:
            render()
        except Exception:
            log.exception("a widget failed to update")

    # ------------------------------------------------------------ change notifications
    def on_connection(self, listener):
        self._connection_listeners.append(listener)

    def connection_changed(self, *_):
        for listener in self._connection_listeners:
            self.soon(listener)

    def on_queue(self, listener):
        """Call ``listener`` whenever the queue changes (watched from the running loop, or from the
        first one a widget's task runs on)."""
        self._queue_listeners.append(listener)
        try:
            self._watch_queue_on(asyncio.get_running_loop())
        except RuntimeError:
            pass

    def _watch_queue_on(self, loop):
        if self._queue_listeners and (self._watcher is None or self._watcher.done()):
            self._watcher = loop.create_task(self._watch_queue())

    def queue_changed(self):
        for listener in self._queue_listeners:
            self.soon(listener)

    async def _watch_queue(self):
        version = self.store.data_version()
        while True:
            await asyncio.sleep(QUEUE_LOOK)
            latest = self.store.data_version()
            if latest != version:
                version = latest
                self.queue_changed()


# ------------------------------------------------------------------ connection
class ConnectionForm(widgets.VBox):
    """Host, port (by preset, live ports only with the live opt-in), client id, account; connect,
    disconnect, a status line and TWS's errors in plain words."""

    def __init__(self, session: Session):
        super().__init__()
        self.session = session
        s = session.ibkr.settings
        known = {port for _, port in PORTS}
        self.host = widgets.Text(s.host, description="host")
        self.preset = widgets.Dropdown(options=PORTS, value=s.port if s.port in known else 0, description="preset")
        self.port = widgets.IntText(s.port, description="port")
        self.live = widgets.Checkbox(s.live, description="live trading: I mean to use real money", indent=False)
        self.client_id = widgets.IntText(s.client_id, description="client id", style=LABELS)
        self.account = widgets.Text(s.account, description="account", placeholder="the only one")
        self.connect_button = widgets.Button(description="Connect", button_style="primary")
        self.disconnect_button = widgets.Button(description="Disconnect")
        self.status = widgets.HTML()
        self.messages = widgets.HTML()
        self._messages: list[str] = []
        self._attempt = ""  # what the last connection attempt is doing, or why it failed
        self.preset.observe(lambda change: change.new and setattr(self.port, "value", change.new), names="value")
        self.port.observe(lambda change: setattr(self.preset, "value", change.new if change.new in known else 0),
                          names="value")
        self.connect_button.on_click(lambda _: session.spawn(self.connect_async()))
        self.disconnect_button.on_click(lambda _: self.disconnect())
        session.ibkr.message += self._on_message
        session.on_connection(self.show_status)
        self.children = [
            widgets.HBox([self.host, self.preset, self.port]),
            widgets.HBox([self.client_id, self.account, self.live]),
            widgets.HBox([self.connect_button, self.disconnect_button, self.status]),
            self.messages,
        ]
        self.show_status()

    async def connect_async(self) -> IBKR:
        """Connect with the form's settings (after disconnecting, if connected)."""
        ibkr = self.session.ibkr
        try:
            settings = load_settings(host=self.host.value.strip() or None, port=self.port.value,
                                     client_id=self.client_id.value, account=self.account.value.strip() or None,
                                     live=self.live.value, face="widgets")
            ibkr.disconnect()
            ibkr.settings = settings
            self._attempt = f"connecting to {settings.host}:{settings.port} ..."
            self.show_status()
            await ibkr.connect_async()
        except QdibkrError as e:
            self._attempt = f"not connected: {e}"
            self.show_status()
            raise
        self._attempt = ""
        self.session.connection_changed()
        return ibkr

    def disconnect(self):
        self._attempt = ""
        self.session.ibkr.disconnect()
        self.session.connection_changed()

    def show_status(self):
        ibkr = self.session.ibkr
        s = ibkr.settings
        if ibkr.is_connected() and ibkr.account:
            mode = "paper" if ibkr.account.startswith("DU") else "LIVE"
            where = "the simulated gateway" if ibkr.data_source != "ib" else "TWS"
            self.status.value = line(f"connected: account {ibkr.account} ({mode}) at {s.host}:{s.port} "
                                     f"({where}), client id {s.client_id}", "ok")
        else:
            self.status.value = line(self._attempt or "not connected",
                                     "error" if self._attempt.startswith("not connected") else "")

    def _on_message(self, message: TWSMessage):
        """TWS's latest five distinct messages, errors in red, notices in grey."""
        if message.code in INFO_CODES:
            return
        message = line(plain(message.code, message.text), "note" if message.code in NOTICE_CODES else "error")
        self._messages = [m for m in self._messages if m != message][-4:] + [message]
        self.messages.value = "<br>".join(self._messages)


# ------------------------------------------------------------------ order ticket
class OrderTicket(widgets.VBox):
    """An order, checked before it goes (quote, notional, and what the gate would refuse: the kill
    switch, risk limits, short sales, board lots), sent to TWS at once through the gate or queued as
    a signal for the runner; its status then follows TWS's (or the runner's)."""

    def __init__(self, session: Session, symbol: str = "AAPL", quantity: int = 1):
        super().__init__()
        self.session = session
        self.symbol = widgets.Text(symbol, description="symbol", placeholder="AAPL, BRK.B, 0700.HK, 00700, 700")
        self.market = widgets.Dropdown(options=[("from the symbol", ""), ("US stock", "USStock"),
                                                ("HK share", "HShare")], description="market")
        self.side = widgets.ToggleButtons(options=["buy", "sell"], description="side")
        self.quantity = widgets.IntText(quantity, description="quantity")
        self.order_type = widgets.ToggleButtons(options=["market", "limit"], description="type")
        self.limit = widgets.FloatText(0.0, description="limit price", disabled=True, style=LABELS)
        self.tif = widgets.Dropdown(options=["DAY", "GTC"], description="time in force", style=LABELS)
        self.route = widgets.ToggleButtons(options=[("to TWS now", "direct"), ("as a signal for the runner", "signal")],
                                           description="send", style={"button_width": "auto"})
        self.strategy = widgets.Text("manual", description="strategy")
        self.check_button = widgets.Button(description="Check")
        self.send_button = widgets.Button(description="Send", button_style="success")
        self.preview = widgets.HTML()
        self.status = widgets.HTML()
        self._order_id: int | None = None
        self._signal_id: str | None = None
        self.order_type.observe(lambda change: setattr(self.limit, "disabled", change.new == "market"),
                                names="value")
        self.check_button.on_click(lambda _: session.spawn(self.check_async()))
        self.send_button.on_click(lambda _: session.spawn(self.send_async()))
        session.ibkr.order_updated += self._on_order_status
        session.on_queue(self._show_signal)
        self.children = [
            widgets.HBox([self.symbol, self.market]),
            self.side, widgets.HBox([self.quantity, self.tif]),
            self.order_type, self.limit,
            self.route, self.strategy,
            widgets.HBox([self.check_button, self.send_button]),
            self.preview, self.status,
        ]

    @property
    def action(self) -> str:
        return self.side.value.upper()

    @property
    def limit_price(self) -> float | None:
        return self.limit.value if self.order_type.value == "limit" else None

    @property
    def strategy_name(self) -> str | None:
        """The strategy a signal is for; None for an order to TWS now (judged in the global scope only)."""
        return self.strategy.value.strip() if self.route.value == "signal" else None

    async def check_async(self) -> list[str]:
        """Show the quote, the notional and every problem found (the input's, and each rule the gate
        would refuse the order for, as "rule: message"); return the problems."""
        ibkr, store = self.session.ibkr, self.session.store
        quantity, limit, strategy = self.quantity.value, self.limit_price, self.strategy_name
        problems = []
        if quantity <= 0:
            problems.append("quantity: give a positive whole number of shares")
        if limit is not None and limit <= 0:
            problems.append("limit price: give a positive price, or choose a market order")
        if strategy == "":
            problems.append("strategy: name the strategy the signal is for")
        try:
            sym, _, lot = await ibkr.contract_async(self.symbol.value, self.market.value or None)
            [quote] = await ibkr.quotes_async(sym.display)
            if not problems:  # the gate judges a well-formed order only
                breaches = await ibkr.gate.preview(sym.display, Side(self.action), quantity, terms(limit=limit),
                                                   strategy=strategy, market_type=sym.market)
                problems += [str(b) for b in breaches]
        except QdibkrError as e:
            self.preview.value = line(str(e), "error")
            raise
        price = limit or (quote.ask if self.action == "BUY" else quote.bid) or quote.last or quote.close
        notional = quantity * price if price else None
        notes = []
        if self.route.value == "signal" and not hours.is_open(sym.market, await ibkr.server_time_async()):
            notes.append("the market is closed now: the runner holds the signal until it opens, unless "
                         "its outside_hours setting says otherwise")
        if self.route.value == "signal" and sym.market == "HShare":
            store.remember_board_lot(sym.display, int(lot))  # emit checks the lot without asking TWS
        quoted = html_table([{"symbol": quote.symbol, "bid": quote.bid, "ask": quote.ask, "last": quote.last,
                              "data": "delayed" if quote.delayed else "live"}])
        size = (f"{self.side.value} {quantity} {sym} ({'limit ' + cell(limit) if limit else 'market'}, "
                f"{self.tif.value}): notional {sym.currency} {notional:,.2f}" if notional else
                f"{self.side.value} {quantity} {sym}: no price to value it at")
        self.preview.value = quoted + line(size) + "".join(
            "<br>" + line(p, "error") for p in problems) + "".join("<br>" + line(n) for n in notes) + (
            "<br>" + line("no problem found", "ok") if not problems else "")
        return problems

    async def send_async(self):
        """Check, then send to TWS or queue for the runner; nothing is sent while a problem remains.
        An order to TWS passes the gate again as it goes: its refusal (``gate.Refused``, say when trading
        was halted meanwhile) is shown like any other error, and nothing is sent."""
        self.status.value = line("checking ...")
        try:
            problems = await self.check_async()
        except QdibkrError as e:
            self.status.value = line(f"not sent: {e}", "error")
            raise
        if problems:
            self.status.value = line("not sent: " + "; ".join(problems), "error")
            return None
        try:
            if self.route.value == "direct":
                return await self._send_direct()
            return self._queue_signal()
        except Refused as e:  # its rules name themselves: "order refused: halted: trading is halted (...)"
            self.status.value = line(f"not sent: {e.message}", "error")
            raise
        except QdibkrError as e:
            self.status.value = line(f"not sent: {e}", "error")
            raise

    async def _send_direct(self):
        self.status.value = line("sending to TWS ...")
        self._order_id, self._signal_id = None, None
        result = await self.session.ibkr.place_order_async(
            self.symbol.value, self.side.value, self.quantity.value, limit=self.limit_price, tif=self.tif.value,
            market_type=self.market.value or None)
        self._order_id = result.order_id
        self._show_order(result.order_id, result.status, result.filled, result.quantity, result.avg_fill_price)
        return result

    def _queue_signal(self):
        store, strategy = self.session.store, self.strategy_name
        symbol, quantity = self.symbol.value, self.quantity.value
        if self.action == "BUY":
            signal_type = "open_long" if projected(store, strategy, self._display(symbol)) == 0 else "add_long"
        else:
            holding = projected(store, strategy, self._display(symbol))
            signal_type = "close_long" if quantity == holding else "reduce_long"
        signal = emit(signal_type, symbol, quantity, strategy=strategy, limit=self.limit_price, tif=self.tif.value,
                      market_type=self.market.value or None, source="ticket", store=store)
        self._order_id, self._signal_id = None, signal.id
        self.session.queue_changed()
        self._show_signal()
        return signal

    def _display(self, symbol: str) -> str:
        return parse_symbol(symbol, self.market.value or None).display

    def _show_order(self, order_id, status, filled, quantity, avg_price):
        done = status == "Filled"
        price = f" at {avg_price:,.4g}" if avg_price else ""
        self.status.value = line(f"order {order_id}: {status}, {filled:g} of {quantity:g} filled{price}",
                                 "ok" if done else "error" if status in ("Cancelled", "Inactive") else "")

    def _on_order_status(self, result: OrderResult):
        if self._order_id is not None and result.order_id == self._order_id:
            self._show_order(result.order_id, result.status, result.filled, result.quantity, result.avg_fill_price)

    def _show_signal(self):
        if self._signal_id is None:
            return
        s = self.session.store.signal(self._signal_id)
        text = (f"signal {s.id[:8]} ({s.signal_type} {s.quantity} {s.symbol} for {s.strategy}): {s.status}"
                + (f", {s.filled} filled at {s.avg_price:,.4g}" if s.filled else "")
                + (f" ({s.reason})" if s.reason else ""))
        self.status.value = line(text, "ok" if s.status == "filled" else
                                 "error" if s.status in ("rejected", "cancelled") else "")


# ------------------------------------------------------------------ positions
class PositionsView(widgets.VBox):
    """Account totals, the account's positions (as TWS keeps them current: re-rendered when they
    change) and the strategies' positions from the queue's fills."""

    def __init__(self, session: Session):
        super().__init__()
        self.session = session
        self.totals = widgets.HTML()
        self.table = widgets.HTML()
        self.strategies = widgets.HTML()
        self._rows: list[dict] | None = None  # the portfolio as last shown
        self._totals_at = -TOTALS_EVERY  # the event loop's time of the last totals refresh
        self._totals_timer = None  # (loop, handle) of the totals refresh scheduled, if any
        session.ibkr.updated += lambda *_: session.soon(self._follow)
        session.on_connection(self.refresh)
        session.on_queue(self.show_strategies)
        self.children = [self.totals, self.table,
                         widgets.HTML("<b>By strategy</b> (the runner's fills, from the queue)"), self.strategies]
        self.refresh()

    def refresh(self):
        self._rows = None
        self.show_totals()
        self.show_positions()
        self.show_strategies()

    def _follow(self):
        """After messages from TWS: the positions if the portfolio changed, and the totals (which TWS's
        account values may have changed) at most once every ``TOTALS_EVERY`` seconds, the last change
        included. Reading the portfolio is a look at the session's own state, not a request."""
        if not self.session.ibkr.is_connected():
            return
        self.show_positions()
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no loop running: no burst of messages to spread either
            self.show_totals()
            return
        if self._totals_timer and self._totals_timer[0] is loop:
            return  # one is scheduled already (one scheduled on a loop that has since ended never runs)
        self._totals_timer = loop, loop.call_later(max(0.0, self._totals_at + TOTALS_EVERY - loop.time()),
                                                   self._refresh_totals)

    def _refresh_totals(self):
        self._totals_timer = None
        self._totals_at = asyncio.get_running_loop().time()
        if self.session.ibkr.is_connected():
            self.show_totals()

    def show_totals(self):
        if not self.session.ibkr.is_connected():
            self.totals.value = line("not connected")
            return
        self.session.spawn(self._totals_async())

    async def _totals_async(self):
        a = await self.session.ibkr.account_async()
        cash = ", ".join(f"{currency} {amount:,.2f}" for currency, amount in sorted(a.cash.items()))
        self.totals.value = (f"<b>{html.escape(a.account)}</b>: net liquidation {a.base_currency} "
                             f"{a.net_liquidation:,.2f} &middot; cash {html.escape(cash)} &middot; unrealised P&amp;L "
                             f"{a.unrealized_pnl:,.2f} &middot; realised P&amp;L {a.realized_pnl:,.2f}")

    def show_positions(self):
        """The account's positions, re-rendered only when they changed since last shown."""
        if not self.session.ibkr.is_connected():
            self._rows = None
            self.table.value = ""
            return
        rows = self.session.ibkr.position_rows()
        if rows == self._rows:
            return
        self._rows = rows
        self.table.value = html_table([
            {"symbol": r["symbol"], "quantity": r["quantity"], "avg cost": money(r["avg_cost"]),
             "market price": money(r["market_price"]), "value": money(r["market_value"]),
             "unrealised P&L": money(r["unrealized_pnl"]), "realised P&L": money(r["realized_pnl"]),
             "currency": r["currency"]} for r in rows], "no positions")

    def show_strategies(self):
        rows = [{"strategy": p.strategy, "symbol": p.symbol, "quantity": p.quantity, "avg cost": money(p.avg_cost),
                 "realised P&L": money(p.realized_pnl), "currency": p.currency}
                for p in self.session.store.positions() if p.quantity or p.realized_pnl]
        self.strategies.value = html_table(rows, "no strategy has traded")


# ------------------------------------------------------------------ the queue
class QueueView(widgets.VBox):
    """The latest signals, newest first, with status and reason; open ones can be cancelled."""

    COLUMNS = ("time", "strategy", "signal", "symbol", "quantity", "order", "status", "filled", "reason", "")

    def __init__(self, session: Session, limit: int = 20):
        super().__init__()
        self.session = session
        self.limit = limit
        self.grid = widgets.GridBox(layout=widgets.Layout(
            grid_template_columns=f"repeat({len(self.COLUMNS) - 1}, max-content) 90px", grid_gap="2px 12px"))
        self.cancel_buttons: dict[str, widgets.Button] = {}
        session.on_queue(self.refresh)
        self.children = [self.grid]
        self.refresh()

    def refresh(self):
        old = self.grid.children
        cells = [widgets.HTML(f"<b>{c}</b>") for c in self.COLUMNS]
        self.cancel_buttons = {}
        for s in reversed(self.session.store.signals(limit=self.limit)):
            order = "market" if s.order_type == "MKT" else f"limit {cell(s.limit_price)}"
            values = (dt.datetime.fromtimestamp(s.created_at).strftime("%m-%d %H:%M:%S"), s.strategy, s.signal_type,
                      s.symbol, "all" if s.quantity is None else s.quantity, f"{order} {s.tif}", s.status,
                      s.filled, s.reason)
            cells += [widgets.HTML(html.escape(cell(v))) for v in values]
            if s.is_final or s.cancel_requested:
                cells.append(widgets.HTML(""))
            else:
                button = widgets.Button(description="Cancel", button_style="warning",
                                        layout=widgets.Layout(width="80px"))
                button.on_click(lambda _, signal_id=s.id: self.cancel(signal_id))
                self.cancel_buttons[s.id] = button
                cells.append(button)
        self.grid.children = cells
        for widget in old:
            widget.close()

    def cancel(self, signal_id: str):
        """Cancel a signal not yet sent, or ask the runner to cancel its order at IB."""
        self.session.store.cancel_signal(signal_id)
        wake_runner(self.session.store)
        self.session.queue_changed()


# ------------------------------------------------------------------ quotes
class QuoteBox(widgets.VBox):
    """Ad-hoc quotes: bid, ask, last, close, volume; delayed where there is no live subscription."""

    def __init__(self, session: Session, symbols: str = "AAPL 0700.HK"):
        super().__init__()
        self.session = session
        self.symbols = widgets.Text(symbols, description="symbols", placeholder="AAPL 0700.HK ...")
        self.button = widgets.Button(description="Quote")
        self.table = widgets.HTML()
        self.button.on_click(lambda _: session.spawn(self.quote_async()))
        self.children = [widgets.HBox([self.symbols, self.button]), self.table]

    async def quote_async(self):
        symbols = [s for s in re.split(r"[\s,]+", self.symbols.value) if s]
        try:
            if not symbols:
                raise InputError("symbol", "type one or more symbols, e.g. AAPL 0700.HK")
            quotes = await self.session.ibkr.quotes_async(*symbols)
        except QdibkrError as e:
            self.table.value = line(str(e), "error")
            raise
        self.table.value = html_table([{"symbol": q.symbol, "bid": q.bid, "ask": q.ask, "last": q.last,
                                        "close": q.close, "volume": q.volume, "currency": q.currency,
                                        "data": "delayed" if q.delayed else "live"} for q in quotes])
        return quotes


# ------------------------------------------------------------------ all together
class Dashboard(widgets.VBox):
    """The connection form, order ticket, quotes, positions and queue, sharing one session."""

    def __init__(self, session: Session):
        super().__init__()
        self.session = session
        self.connection = ConnectionForm(session)
        self.ticket = OrderTicket(session)
        self.quotes = QuoteBox(session)
        self.positions = PositionsView(session)
        self.queue = QueueView(session)

        def section(title, widget):
            return widgets.VBox([widgets.HTML(f"<h4 style='margin:8px 0 4px'>{title}</h4>"), widget])

        self.children = [section("Connection", self.connection),
                         widgets.HBox([section("Order ticket", self.ticket), section("Quotes", self.quotes)]),
                         section("Positions", self.positions), section("Signal queue", self.queue)]


def dashboard(session: Session | None = None, **settings) -> Dashboard:
    """Every widget at once. ``settings`` (host, port, client_id, account, live) prefill the form."""
    return Dashboard(session or Session(**settings))
