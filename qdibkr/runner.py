"""The runner: turns queued signals into orders exactly once, paced, within the user's limits.

It holds one connection to TWS (its own client id) and the queue's lease (one
runner per queue, decided by the queue itself: ``Store.take_lease``).
It wakes within milliseconds of a new signal (the emitter sends it a datagram
on loopback, or a PostgreSQL NOTIFY; a slow safety poll covers a lost one),
reads what changed in the queue since it last looked (never the whole queue:
a queue of 100,000 finished signals costs an order what an empty one does),
and for each signal that
may go (the strategy's earlier signals on that symbol are final, the trading
hours allow it) it asks the gate (``gate.py``: the kill switch, the risk
limits, the short-sale rule, board lots, measured now, since positions and
limits change while a signal waits), which in one transaction:

1. records ``submitting`` with the order id it is about to use, then the runner
2. sends the order with ``orderRef = qd-<signal id>``.

After any start or reconnect it first reconciles: every signal it may have
sent is looked up at TWS by orderRef (open orders of all clients, completed
orders, executions). What TWS has is adopted; a ``submitting`` signal TWS
never received goes back to ``pending``. So a runner killed at any moment and
started again neither loses a signal nor sends one twice.

Fills, positions and trades are recorded from TWS's events only (commission
reports, which carry the execution), never from what was asked. ib_insync
throttles sending to 45 messages a second, under IB's 50.

A heartbeat watches the connection, because TWS can vanish without closing it
(the machine sleeps, a NAT forgets the flow, the process freezes): the socket
stays "connected" and the runner would wait for ever. Any message from TWS
proves it alive; after ``heartbeat_interval`` seconds of silence the runner
asks it the time, and if nothing arrives within ``heartbeat_timeout`` it drops
the connection and reconnects, reconciling as after any reconnect.

If the queue's database becomes unreachable (a PostgreSQL server restarting,
the network to it down), the runner keeps its connection to TWS, says so, and
tries again with backoff; once the database answers it reconciles, so whatever
TWS reported meanwhile (fills, statuses) is recorded then.
"""

import asyncio
import functools
import logging
import signal as signals
import threading
import time
import uuid
from contextlib import asynccontextmanager

from . import hours
from .broker import Broker, Execution, OrderResult
from .config import CLIENT_IDS, Heartbeat, RiskSource, Settings, load_config, load_settings
from .errors import ConnectError, ContractError, QdibkrError
from .gate import Gate, Refused
from .model import FINAL, IN_FLIGHT, WAITING
from .orders import terms
from .risk import RiskConfig
from .store import CANCEL_OPEN_KEY, HALTED_KEY, Fill, LeaseLost, QueueUnavailable, Signal, Store

log = logging.getLogger("qdibkr.runner")

RUNNER_CLIENT_ID = CLIENT_IDS["runner"]
REF_PREFIX = "qd-"
SAFETY_POLL = 2.0  # seconds; wake-ups normally come by datagram or NOTIFY within a millisecond
BACKOFF = (0.5, 1.0, 2.0, 5.0, 10.0, 30.0)  # seconds between reconnection attempts
# The queue's lease: renewed every third of its term. A runner killed on this host is replaced at once
# (its pid is gone); on another host, a successor waits out the term.
LEASE_TTL = 15.0
# Other clients' open orders, as the gate counts them, may be this old (the runner's own are followed
# live): one reqAllOpenOrders per order would halve the orders a second IB's pacing allows.
OPEN_ORDERS_MAX_AGE = 1.0
# Rules whose breach no waiting mends by itself are rejected; the kill switch holds; the risk limits do
# as `on_breach` says.
REJECTED_RULES = ("board_lot", "short_sale")


def _logged(handler, unrecorded):
    """An event handler whose failure is logged, never swallowed: a lost update must be seen. An event
    the queue could not take (its database unreachable, or the connection dropped mid-write) goes to
    ``unrecorded(error)``, which has it recorded later."""
    @functools.wraps(handler)
    def wrapper(*args):
        try:
            handler(*args)
        except QueueUnavailable as e:
            unrecorded(e)
        except Exception:
            log.exception("runner failed to handle %s", handler.__name__)
    return wrapper


class RunnerBusy(QdibkrError):
    """Another runner holds this queue."""


def runner_settings(**overrides) -> Settings:
    """Connection settings for the runner: the user's, with the runner's own client id by default."""
    return load_settings(face="runner", **overrides)


class Runner:
    def __init__(self, store: Store, settings: Settings | None = None,
                 risk: RiskConfig | RiskSource | None = None, heartbeat: Heartbeat | None = None):
        config = load_config(face="runner") if None in (settings, risk, heartbeat) else None
        self.store = store
        self.ibkr = Broker(settings or config.connection)
        self.risk = RiskSource.fixed(risk) if isinstance(risk, RiskConfig) else risk or config.risk
        self.heartbeat = heartbeat or config.heartbeat
        self.lease_holder = uuid.uuid4().hex
        self.gate = Gate(self.ibkr, store, self.risk, "runner", lease_holder=self.lease_holder,
                         open_orders_max_age=OPEN_ORDERS_MAX_AGE)
        self.wake = asyncio.Event()
        self.stopping = False
        self._cancels_sent: set[str] = set()
        # The signals to mind (waiting or in flight) by id, as of queue revision `_revision`: kept between
        # wake-ups and brought up to date from what changed since (`_refresh`).
        self._open: dict[str, Signal] = {}
        self._revision = 0
        self._last_heard = time.monotonic()  # when TWS last sent anything; see _heartbeat
        self._unrecorded = False  # an event of TWS's could not be written to the queue: reconcile
        self.ibkr.order_updated += _logged(self._on_order, self._could_not_record)
        self.ibkr.executed += _logged(self._on_execution, self._could_not_record)
        self.ibkr.disconnected += self.wake.set
        self.ibkr.updated += self._heard  # after each batch of incoming messages

    # ------------------------------------------------------------ lifecycle
    @asynccontextmanager
    async def lease(self, wait: bool = False):
        """One runner per queue: the queue's lease, held while this runner lives and renewed meanwhile.
        Taken already: ``RunnerBusy``, or with ``wait`` the runner waits until it is free."""
        while (holder := self.store.take_lease(self.lease_holder, LEASE_TTL)) is not None:
            if not wait:
                raise RunnerBusy(f"another runner holds the queue {self.store.where} ({holder}); stop it first, "
                                 f"or start this one with --wait to take over when it stops")
            log.info("waiting for the runner of %s (%s) to stop", self.store.where, holder)
            await asyncio.sleep(LEASE_TTL / 3)
        renewing = asyncio.ensure_future(self._renew_lease())
        try:
            yield
        finally:
            renewing.cancel()
            self.store.release_lease(self.lease_holder)

    async def _renew_lease(self):
        while True:
            await asyncio.sleep(LEASE_TTL / 3)
            try:
                self.store.renew_lease(self.lease_holder, LEASE_TTL)
            except LeaseLost as e:
                log.error("%s; stopping", e)
                self.stop()
                return
            except QueueUnavailable as e:  # renewed at the next turn; the gate checks the lease before any send
                log.warning("could not renew the runner's lease: %s", e)

    async def run(self, once: bool = False, wait: bool = False):
        """Work until stopped; with ``once``, until nothing is waiting to be sent or in flight."""
        async with self.lease(wait), self.store.wakeups(self.wake):
            loop = asyncio.get_running_loop()
            reloads = threading.current_thread() is threading.main_thread()
            if reloads:  # `kill -HUP`: read the risk limits again now (they are also re-read when the file changes)
                loop.add_signal_handler(signals.SIGHUP, self.risk.reload)
            try:
                while not self.stopping:
                    await self.connect()
                    if await self._serve_while_alive(once):
                        break
            finally:
                if reloads:
                    loop.remove_signal_handler(signals.SIGHUP)
                self.ibkr.disconnect()

    def stop(self):
        self.stopping = True
        self.wake.set()

    def idle(self) -> bool:
        """Nothing in flight, and nothing pending that may be sent now: while halted nothing may, and
        a signal queued behind a held one of its strategy and symbol waits for that one (until the
        market opens, say), which a ``--once`` run from cron must not sit out."""
        self._refresh()
        signals = self._open.values()
        if self.store.get(HALTED_KEY):
            return not any(s.status in IN_FLIGHT for s in signals)
        held = {(s.strategy, s.symbol) for s in signals if s.status == "held"}
        return all(s.status == "held" or (s.status == "pending" and (s.strategy, s.symbol) in held)
                   for s in signals)

    async def connect(self):
        """Connect, retrying with backoff while TWS is away."""
        for attempt in range(1_000_000):
            try:
                await self.ibkr.connect_async()
                break
            except ConnectError as e:  # TWS away (it restarts daily): try again; other errors are the user's
                delay = BACKOFF[min(attempt, len(BACKOFF) - 1)]
                log.warning("runner cannot connect (%s); retrying in %g s", e, delay)
                await asyncio.sleep(delay)
        log.info("runner connected as client %d; reconciling", self.ibkr.settings.client_id)

    async def _serve_while_alive(self, once: bool) -> bool:
        """Serve the connection while the heartbeat watches it. If TWS stops answering, the serving is
        cancelled and the connection dropped; if TWS closes it while the serving awaits an answer, the
        serving ends with ConnectionError. Either way this returns False: the caller reconnects.

        Cancelling is safe at any of the serving's awaits: a signal's state changes only between them
        (``send`` records ``submitting`` and sends without awaiting), and the reconcile after the
        reconnect settles whatever was sent into the silence."""
        serving = asyncio.ensure_future(self._serve(once))
        heartbeat = asyncio.ensure_future(self._heartbeat())
        try:
            await asyncio.wait({serving, heartbeat}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            serving.cancel()  # no effect on a task already finished
            heartbeat.cancel()
            await asyncio.wait({serving, heartbeat})
        if serving.cancelled():
            heartbeat.result()  # a failure of the heartbeat itself is raised, not taken for a dead TWS
        else:
            try:
                return serving.result()
            except ConnectionError as e:  # TWS closed the connection while the runner awaited an answer
                log.warning("the connection to TWS ended during a request (%s); reconnecting", e)
        self.ibkr.disconnect()
        self.ibkr.forget_session()  # an order sent into the silence must not look known to the reconcile
        return False

    async def _serve(self, once: bool) -> bool:
        """Reconcile, then send as signals arrive until the connection ends or the runner is stopped
        (False), or, with ``once``, until nothing is waiting to be sent or in flight (True)."""
        await self._reconcile_when_the_queue_answers()
        while self.ibkr.is_connected() and not self.stopping:
            self.wake.clear()
            if self._unrecorded:  # the queue missed what TWS said (its database was unreachable): ask again
                self._unrecorded = False
                await self._reconcile_when_the_queue_answers()
            try:
                await self.work()
                if once and self.idle():
                    return True
            except QueueUnavailable as e:
                log.error("%s; the runner keeps its connection to TWS and waits for the queue", e)
                self._unrecorded = True
                continue
            try:
                await asyncio.wait_for(self.wake.wait(), SAFETY_POLL)
            except asyncio.TimeoutError:
                pass
        return False

    async def _reconcile_when_the_queue_answers(self):
        """Reconcile, retrying with backoff while the queue's database is unreachable."""
        for attempt in range(1_000_000):
            try:
                await self.reconcile()
                return
            except QueueUnavailable as e:
                delay = BACKOFF[min(attempt, len(BACKOFF) - 1)]
                log.warning("cannot reconcile: %s; retrying in %g s", e, delay)
                await asyncio.sleep(delay)

    def _heard(self):
        self._last_heard = time.monotonic()

    async def _heartbeat(self):
        """Return when the connection is gone: closed, or silent for ``interval`` and then still
        silent ``timeout`` after a probe. Any message from TWS counts as an answer, so a busy
        connection is never probed, and a probe that waits behind a burst of requests (ib_insync
        paces sending) is not needed while TWS answers the burst."""
        beat = self.heartbeat
        while self.ibkr.is_connected():
            silent = time.monotonic() - self._last_heard
            if silent < beat.interval:
                await asyncio.sleep(beat.interval - silent)
                continue
            probed = time.monotonic()
            # ib_insync's Watchdog probes with a historical data request, which needs a data farm;
            # the current time is the cheapest request there is, and TWS answers it by itself.
            self.ibkr.probe()
            if not await self.ibkr.wait_until(lambda: self._last_heard > probed, beat.timeout):
                log.warning("TWS sent nothing for %.1f s and did not answer within %g s: the connection is "
                            "dead (TWS frozen, or the network dropped it); reconnecting",
                            time.monotonic() - self._last_heard, beat.timeout)
                return

    async def reconcile(self):
        """Adopt what TWS has for every signal that may have been sent; resend nothing it has."""
        known = await self.ibkr.known_orders_async(REF_PREFIX)
        for order in known.orders.values():
            self._on_order(order)
        for execution in known.executions:
            if execution.commission is not None:
                self._record(execution)
        for ref, missing in known.unreported.items():
            self._flag_missing_executions(ref[len(REF_PREFIX):], missing)
        for signal in self.store.signals(statuses=IN_FLIGHT):
            if signal.order_ref in known.orders:
                continue
            if signal.status == "submitting":
                self.store.update_signal(signal.id, status="pending", order_id=None, reason="")
                log.info("signal %s never reached TWS; it will be sent", signal.id[:8])
            else:
                filled = sum(f.shares for f in self.store.fills(signal_id=signal.id))
                final = "filled" if filled >= (signal.order_quantity or 0) else "cancelled"
                self.store.update_signal(signal.id, status=final, filled=filled,
                                         reason="" if final == "filled" else "TWS no longer knows this order")
        self._open.clear()
        signals, self._revision = self.store.open_signals()
        self._open.update((s.id, s) for s in signals)

    def _flag_missing_executions(self, signal_id: str, missing: float):
        """TWS reports only the day's executions: shares filled on an earlier day while no runner
        was connected can not be recorded (their price and commission are gone). Say so on the
        signal, rather than let its strategy's positions silently fall short of the account's."""
        signal = self.store.signal(signal_id)
        if signal is None:
            return
        reason = (f"{missing:g} shares filled at IB while no runner was connected, on an earlier day: TWS no longer "
                  f"reports those executions, so strategy {signal.strategy}'s positions lack them; "
                  f"`qdibkr reconcile` shows the difference")
        if signal.reason != reason:
            log.warning("signal %s: %s", signal_id[:8], reason)
            self.store.update_signal(signal_id, reason=reason)

    # ------------------------------------------------------------ sending
    async def work(self):
        """One pass over the queue: cancel what the user asked to, send what may go."""
        if self.store.get(CANCEL_OPEN_KEY):
            self._cancel_open()
            self.store.set(CANCEL_OPEN_KEY, None)
        busy = set()  # (strategy, symbol): an earlier signal there is not final yet
        self._refresh()
        for signal in sorted(self._open.values(), key=lambda s: s.seq):
            key = (signal.strategy, signal.symbol)
            if signal.cancel_requested and signal.status in IN_FLIGHT:
                self._cancel(signal)
            if key in busy:
                continue
            busy.add(key)
            if signal.status in WAITING and self.ibkr.is_connected() and not self.stopping:
                await self.send(signal)

    def _refresh(self):
        """Bring the open signals up to date with what changed in the queue since the last look."""
        changed, self._revision = self.store.changed_since(self._revision)
        for signal in changed:
            if signal.status in WAITING + IN_FLIGHT:
                self._open[signal.id] = signal
            else:
                self._open.pop(signal.id, None)

    async def send(self, signal: Signal):
        """Send one signal's order if the trading hours and the gate let it go; else hold or reject it,
        with the reason stored. Trading hours are judged by TWS's clock, not this host's."""
        risk = self.risk()
        if risk.outside_hours != "send":
            now = await self.ibkr.server_time_async()
            if not hours.is_open(signal.market, now):
                opens = hours.next_open(signal.market, now)
                self._refuse(signal, f"outside trading hours; the market opens {opens:%Y-%m-%d %H:%M} UTC",
                             risk.outside_hours)
                return
        held = self.store.positions(signal.strategy)
        position = next((p.quantity for p in held if p.symbol == signal.symbol), 0)
        quantity = signal.quantity if signal.quantity is not None else position
        if quantity <= 0:
            self._refuse(signal, f"order refused: short_sale: strategy {signal.strategy!r} holds {position} "
                                 f"{signal.symbol}; nothing to close", "reject")
            return
        order = terms(limit=signal.limit_price, tif=signal.tif)
        try:
            admitted = await self.gate.admit(signal.symbol, signal.action, quantity, order,
                                             strategy=signal.strategy, market_type=signal.market, signal=signal)
        except ContractError as e:
            self._refuse(signal, str(e), "reject")
            return
        except Refused as e:
            action = "hold" if e.rule == "halted" else "reject" if e.rule in REJECTED_RULES else risk.on_breach
            self._refuse(signal, e.message, action)
            return
        except LeaseLost as e:
            log.error("%s; stopping", e)
            self.stop()
            return
        # The gate recorded `submitting` before this send: a restart finds it at TWS by orderRef, or knows it never went.
        self.ibkr.submit(admitted.contract, signal.action, quantity, order, order_ref=signal.order_ref,
                         order_id=admitted.order_id)

    def _refuse(self, signal: Signal, reason: str, action: str):
        status = "held" if action == "hold" else "rejected"
        if (signal.status, signal.reason) != (status, reason):
            self.store.update_signal(signal.id, status=status, reason=reason)

    def _cancel(self, signal: Signal):
        if signal.id not in self._cancels_sent and self.ibkr.cancel_by_ref(signal.order_ref):
            self._cancels_sent.add(signal.id)

    def _cancel_open(self):
        """The kill switch's --cancel-open: cancel every working order this runner placed."""
        self.ibkr.cancel_all_by_ref(REF_PREFIX)

    # ------------------------------------------------------------ TWS events
    def _could_not_record(self, error: QueueUnavailable):
        """A status or fill from TWS could not be written to the queue (the connection to its database
        dropped): TWS sends it only once, so the runner reconciles before its next pass, which asks TWS
        again and records what it has (fills by exec id: never twice)."""
        log.warning("%s; what TWS reported is recorded by a reconcile", error)
        self._unrecorded = True
        self.wake.set()

    def _on_order(self, order: OrderResult):
        if not order.order_ref.startswith(REF_PREFIX):
            return
        signal = self.store.signal(order.order_ref[len(REF_PREFIX):])
        if signal is None or signal.is_final:
            return
        status, reason = self._status_of(order)
        if status is None:
            return
        if status == "filled" and self.ibkr.awaiting_commission(order.order_ref):
            return  # filled once its fills are in the store: TWS sends their commission reports after this
        # A completed order that TWS reports (reqCompletedOrders) carries order id 0: keep the one sent.
        changes = dict(status=status, order_id=order.order_id or signal.order_id,
                       perm_id=order.perm_id or signal.perm_id, filled=int(order.filled),
                       avg_price=order.avg_fill_price or signal.avg_price, reason=reason)
        if any(getattr(signal, k) != v for k, v in changes.items()):
            self.store.update_signal(signal.id, **changes)
        if status in FINAL:
            self.wake.set()  # the next signal of this strategy and symbol may go now

    @staticmethod
    def _status_of(order: OrderResult) -> tuple[str | None, str]:
        """The signal's status for a TWS order status, and the reason to store with it."""
        if order.status in ("PreSubmitted", "Submitted"):
            return ("partially_filled" if order.filled else "submitted"), ""
        if order.status == "Filled":
            return "filled", ""
        if order.status in ("Cancelled", "ApiCancelled", "Inactive"):
            if order.message:  # TWS's error on the order: it refused or dropped it
                return "rejected", order.message
            return "cancelled", "cancelled at IB" + (f" after {order.filled:g} filled" if order.filled else "")
        return None, ""

    def _on_execution(self, execution: Execution):
        """A fill with its commission report: recorded, and the order's status (Filled came before
        the report) taken up again."""
        if not execution.order_ref.startswith(REF_PREFIX):
            return
        self._record(execution)
        order = self.ibkr.order_by_ref(execution.order_ref)
        if order is not None:
            self._on_order(order)

    def _record(self, execution: Execution):
        signal = self.store.signal(execution.order_ref[len(REF_PREFIX):])
        if signal is None:
            return
        self.store.record_fill(Fill(
            exec_id=execution.exec_id, signal_id=signal.id, strategy=signal.strategy, symbol=signal.symbol,
            side=execution.side, shares=int(execution.shares), price=execution.price,
            time=execution.time.timestamp(), commission=execution.commission,
            commission_currency=execution.commission_currency), currency=execution.currency)


def summary(store: Store) -> str:
    """One line for a terminal: signals by status (from the queue's counters: as cheap with a million
    signals as with none), and whether sending is halted."""
    counts = store.status_counts()
    halted = store.get(HALTED_KEY)
    parts = [f"{status} {counts.get(status, 0)}" for status in
             ("pending", "held", "submitting", "submitted", "partially_filled", "filled", "cancelled", "rejected")
             if counts.get(status, 0)]
    return f"{time.strftime('%H:%M:%S')} " + (" | ".join(parts) or "queue empty") + \
        (f" | HALTED: {halted}" if halted else "")
