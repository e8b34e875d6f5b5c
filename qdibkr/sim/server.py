"""The simulated gateway's socket server: one asyncio loop, one Session per client.

A Session reads a client's frames, answers each request as TWS does, and keeps
the client's subscriptions (positions, account updates, market data, and the
``streams``: real-time bars, tick-by-tick, market depth, P&L). A request it
does not serve gets an error on its own reqId, which ends it in the client. The
gateway owns what all clients share: the broker (accounts, orders, fills), the
price model, the clock, the registry of client ids, and a market loop that
matches resting orders, streams quotes and saves state.

Run it with ``qdibkr sim`` or from Python::

    gateway = SimGateway(port=0).start_in_thread()   # port 0: any free port
    ...  # connect ib_insync to 127.0.0.1:gateway.port
    gateway.stop()

``gateway.freeze()`` and ``gateway.thaw()`` suspend and resume it as a stopped
process would be, leaving clients on half-open connections (for tests);
``thaw(drop_connections=True)`` ends the outage as a network that forgot the
connections would.
"""

import asyncio
import dataclasses
import datetime as dt
import logging
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from zoneinfo import ZoneInfo

from . import catalogue, incoming, messages as msg, streams, wire
from .broker import Broker, Filled, OrderChanged, OrderRequest, OrderWarning, PositionChanged, Rejection
from .catalogue import Listing
from .clock import SimClock
from .market import MAX_BOOK_LEVELS, PriceModel, bar_seconds, head_timestamp, parse_what_to_show
from .pacing import (MAX_DEPTH_SUBSCRIPTIONS, MAX_OPEN_HISTORICAL, MAX_TICK_BY_TICK_SUBSCRIPTIONS, HistoricalPacing,
                     MessageRate)
from .sessions import Sessions
from .state import COMPACT_AFTER, StateFile

log = logging.getLogger("qdibkr.sim")

DEFAULT_ACCOUNTS = ("DU1234567",)
MAX_CLIENTS = 32
# A connection that has not finished the API handshake (``API\0``, the version exchange, startApi)
# within this many seconds is closed, so sockets that never speak cannot pile up. IB does not
# document TWS's own limit; a real client finishes in milliseconds (ib_insync's connect
# times out after 4 s by default).
HANDSHAKE_TIMEOUT = 10.0
FARM_STATUS = (
    (2104, "Market data farm connection is OK:usfarm"),
    (2104, "Market data farm connection is OK:hkfarm"),
    (2106, "HMDS data farm connection is OK:ushmds"),
    (2158, "Sec-def data farm connection is OK:secdefnj"),
)
NO_SECURITY = "No security definition has been found for the request"
PACING_VIOLATION = "Historical data request pacing violation"
# What TWS answers (error 162, "...:Time length exceed max.") to a duration too long for the bar
# size, as IB client libraries quote it in their error tables and comments; the price model raises
# it with its own explanation after these words.
TOO_LONG = "Time length exceed max"
DELAY_SECONDS = 15 * 60
PORTFOLIO_REFRESH_SECONDS = 3.0

# Market data types a client may ask for, and the tick types each quote field uses.
LIVE, FROZEN, DELAYED, DELAYED_FROZEN = 1, 2, 3, 4
LIVE_TICKS = {"bid": 1, "ask": 2, "last": 4, "high": 6, "low": 7, "close": 9, "open": 14, "volume": 8}
DELAYED_TICKS = {"bid": 66, "ask": 67, "last": 68, "high": 72, "low": 73, "close": 75, "open": 76, "volume": 74}
SIZES = {"bid": "bid_size", "ask": "ask_size", "last": "last_size"}
REAL_TIME_BAR_TYPES = ("TRADES", "MIDPOINT", "BID", "ASK")


def market_of(listing: Listing) -> str:
    """The market-data permission a listing needs: "US" or "HK"."""
    return "HK" if listing.currency == "HKD" else "US"


@dataclasses.dataclass
class Subscription:
    listing: Listing
    delayed: bool
    last_sent: dict


class Session(asyncio.Protocol):
    """One client connection, from the ``API\\0`` greeting to the close."""

    def __init__(self, gateway: "SimGateway"):
        self.gateway = gateway
        self.transport = None
        self.peer = "?"
        self.greeted = False
        self.reader = wire.FrameReader()
        self.version = 0
        self.client_id: int | None = None
        self.rate = MessageRate(gateway.max_rate)
        self.market_data_type = LIVE
        self.quotes: dict[int, Subscription] = {}
        self.wants_positions = False
        self.account_updates: str | None = None
        self.account_sent: dict[object, dict] = {}  # channel -> {(key, currency): value last sent}
        self.accounts_changed: set[str] = set()  # accounts whose values to resend on the next market pass
        self.account_multi: dict[int, str] = {}
        self.streams: dict[int, object] = {}  # reqId -> a stream of streams.py
        self.historical: dict[int, asyncio.Task] = {}  # reqId -> its bars, computing or waiting to
        self.bar_turn = asyncio.Lock()  # held while the bar worker computes one of this client's requests
        # By message id (see incoming.REQUESTS for the names); any other is refused.
        self.handlers = {
            1: self.req_mkt_data, 2: self.cancel_mkt_data, 3: self.place_order, 4: self.cancel_order,
            5: self.req_open_orders, 6: self.req_account_updates, 7: self.req_executions, 8: self.req_ids,
            9: self.req_contract_details, 10: self.req_mkt_depth, 11: self.cancel_stream, 15: self.ignore,
            16: self.req_all_open_orders, 17: self.req_managed_accounts, 20: self.req_historical_data,
            25: self.cancel_historical_data, 49: self.req_current_time, 50: self.req_real_time_bars, 51: self.cancel_stream,
            58: self.req_global_cancel, 59: self.req_market_data_type, 61: self.req_positions,
            62: self.req_account_summary, 63: self.ignore, 64: self.cancel_positions, 71: self.start_api,
            76: self.req_account_updates_multi, 77: self.cancel_account_updates_multi,
            81: self.req_matching_symbols, 82: self.req_mkt_depth_exchanges, 87: self.req_head_timestamp,
            90: self.ignore, 91: self.req_market_rule, 92: self.req_pnl, 93: self.cancel_stream,
            94: self.req_pnl_single, 95: self.cancel_stream, 97: self.req_tick_by_tick, 98: self.cancel_stream,
            99: self.req_completed_orders,
        }

    # ------------------------------------------------------------ transport
    def connection_made(self, transport):
        self.gateway.connections.add(self)
        self.transport = transport
        host, port = transport.get_extra_info("peername")[:2]
        self.peer = f"{host}:{port}"
        self.handshake_timer = asyncio.get_running_loop().call_later(
            self.gateway.handshake_timeout, self.handshake_expired)

    def handshake_expired(self):
        if self.client_id is None:
            self.close(f"no API handshake within {self.gateway.handshake_timeout:g} seconds")

    def connection_lost(self, exc):
        self.handshake_timer.cancel()
        for task in self.historical.values():
            task.cancel()
        self.gateway.connections.discard(self)
        self.gateway.forget(self)
        log.info("client %s (%s) disconnected", self.client_id, self.peer)

    def close(self, why: str):
        log.warning("closing connection from %s (client %s): %s", self.peer, self.client_id, why)
        self.transport.close()

    def send(self, fields: list):
        if not self.transport.is_closing():
            self.transport.write(wire.encode(fields))

    def error(self, req_id: int, code: int, text: str):
        self.send(msg.error(self.version, req_id, code, text))

    def invalid(self, req_id: int, field: str, cause: str):
        """TWS's error 321: a field of the request it cannot accept, and why."""
        self.error(req_id, 321, f"Error validating request.-'{field}' : cause - {cause}")

    def data_received(self, data: bytes):
        if not self.greeted:
            data = self.greet(data)
            if data is None:
                return
        try:
            frames = self.reader.feed(data)
        except wire.FrameError as e:
            self.close(str(e))
            return
        for fields in frames:
            if self.transport.is_closing():
                return
            if not self.version:
                self.negotiate(fields)
            else:
                self.handle(fields)

    def greet(self, data: bytes) -> bytes | None:
        """Consume the ``API\\0`` prefix; anything else is not a TWS API client."""
        buffered = getattr(self, "_greeting", b"") + data
        if len(buffered) < len(wire.HANDSHAKE_PREFIX):
            self._greeting = buffered
            return None
        if not buffered.startswith(wire.HANDSHAKE_PREFIX):
            self.close(f"not a TWS API client: it began with {buffered[:8]!r}")
            return None
        self.greeted = True
        return buffered[len(wire.HANDSHAKE_PREFIX):]

    def negotiate(self, fields: list[str]):
        """Answer the client's version range with the highest version both sides speak."""
        try:
            offered = wire.parse_version_range(fields[0] if fields else "")
        except wire.FrameError as e:
            self.close(str(e))
            return
        if offered.high < msg.MIN_VERSION or offered.low > msg.MAX_VERSION:
            self.close(
                f"client offers API versions {offered.low}..{offered.high}; this simulated gateway serves "
                f"{msg.MIN_VERSION}..{msg.MAX_VERSION} (use ib_insync >= 0.9.86 or ib_async)")
            return
        self.version = min(offered.high, msg.MAX_VERSION)
        log.info("client at %s speaks v%d..%d: serving v%d", self.peer, offered.low, offered.high, self.version)
        self.send(msg.handshake(self.version, self.gateway.clock.now()))

    def handle(self, fields: list[str]):
        count = self.rate.arrived(time.monotonic())
        if count is not None:
            self.error(-1, 100, f"Max rate of messages per second has been exceeded:max={self.rate.limit} rec={count} ({self.rate.violations})")
            if self.rate.must_disconnect:
                self.close(f"repeated pacing violations ({self.rate.violations})")
                return
        try:
            msg_id = int(fields[0])
        except (IndexError, ValueError):
            log.warning("client %s sent a message without a numeric id: %r", self.client_id, fields[:3])
            self.error(-1, 320, "Error reading request: the message id is missing or not a number")
            return
        if self.client_id is None and msg_id != 71:
            log.warning("client at %s sent message %d before startApi", self.peer, msg_id)
            return
        handler = self.handlers.get(msg_id)
        if handler is None:
            self.refuse(msg_id, fields)
            return
        try:
            handler(fields)
        except (IndexError, ValueError) as e:
            log.warning("client %s sent a malformed message %d: %s (%r)", self.client_id, msg_id, e, fields[:6])
            self.error(incoming.req_id(fields), 320, f"Error reading request: malformed {incoming.name(msg_id)}: {e}")
        except Exception:  # a bug of ours must not cost the client its connection
            log.exception("simulated gateway failed on message %d from client %s", msg_id, self.client_id)
            self.error(incoming.req_id(fields), 320,
                       f"Error processing request: the simulated gateway failed on {incoming.name(msg_id)}")

    def refuse(self, msg_id: int, fields: list[str]):
        """Answer a request the simulator does not serve as TWS answers one it cannot: with an
        error on the request's own reqId (or orderId), which ends the request in the client.
        A request without one also gets an empty answer where one exists (see
        ``messages.EMPTY_ANSWERS``), or its caller would wait forever."""
        name = incoming.name(msg_id)
        if incoming.is_cancel(msg_id):  # what it would cancel was refused when it was asked for
            log.debug("client %s sent %s, which the simulated gateway does not serve", self.client_id, name)
            return
        log.warning("client %s sent %s, which the simulated gateway does not support", self.client_id, name)
        # 322, not 321: ib_async takes 321 for a warning, which ends no request.
        self.error(incoming.req_id(fields), 322,
                   f"Error processing request.-'{name}' : cause - the simulated gateway does not support {name}")
        if name in msg.EMPTY_ANSWERS:
            self.send(msg.EMPTY_ANSWERS[name])

    # ------------------------------------------------------------ connection
    def start_api(self, fields):
        if self.client_id is not None:
            return
        client_id = int(fields[2])
        gateway = self.gateway
        if client_id in gateway.sessions:
            self.error(-1, 326, "Unable to connect as the client id is already in use. Retry with a unique client id.")
            self.close(f"client id {client_id} is already in use")
            return
        if len(gateway.sessions) >= gateway.max_clients:
            self.error(-1, 502, f"Couldn't connect to TWS: the maximum of {gateway.max_clients} API clients is connected.")
            self.close("too many clients")
            return
        self.client_id = client_id
        self.handshake_timer.cancel()
        gateway.sessions[client_id] = self
        log.info("client %d connected from %s", client_id, self.peer)
        self.send([msg.MANAGED_ACCOUNTS, 1, ",".join(gateway.broker.accounts)])
        self.send([msg.NEXT_VALID_ID, 1, gateway.broker.next_order_id])
        for code, text in FARM_STATUS:
            self.error(-1, code, text)

    def ignore(self, fields):
        pass

    def req_ids(self, fields):
        self.send([msg.NEXT_VALID_ID, 1, self.gateway.broker.next_order_id])

    def req_managed_accounts(self, fields):
        self.send([msg.MANAGED_ACCOUNTS, 1, ",".join(self.gateway.broker.accounts)])

    def req_current_time(self, fields):
        self.send([msg.CURRENT_TIME, 1, int(self.gateway.clock.now())])

    # ------------------------------------------------------------ contracts
    def find(self, contract: list[str]) -> list[Listing]:
        """Listings matching a 12-field contract as the client sent it."""
        con_id, symbol, sec_type, _, _, _, _, exchange, primary, currency, local_symbol, _ = contract
        return catalogue.find(symbol, sec_type=sec_type, exchange=exchange, primary_exchange=primary,
                              currency=currency, con_id=int(con_id or 0), local_symbol=local_symbol)

    def find_one(self, req_id: int, contract: list[str]) -> Listing | None:
        found = self.find(contract)
        if len(found) == 1:
            return found[0]
        if found:
            self.error(req_id, 200, f"The contract description specified for {contract[1]} is ambiguous.")
        else:
            self.error(req_id, 200, NO_SECURITY)
        return None

    def req_contract_details(self, fields):
        req_id = int(fields[2])
        found = self.find(fields[3:15])
        if not found:
            self.error(req_id, 200, NO_SECURITY)
            return
        now = self.gateway.clock.now()
        for listing in found:
            self.send(msg.contract_data(self.version, req_id, listing, now))
        self.send([msg.CONTRACT_DATA_END, 1, req_id])

    def req_matching_symbols(self, fields):
        req_id, pattern = int(fields[1]), fields[2]
        self.send(msg.symbol_samples(self.version, req_id, catalogue.search(pattern)))

    def req_market_rule(self, fields):
        """The price ladder behind contract details' marketRuleIds. The request has no reqId:
        an unknown rule id can only be reported on -1 (ib_insync gives up after a second)."""
        rule_id = int(fields[1])
        if rule_id not in catalogue.MARKET_RULES:
            known = ", ".join(map(str, catalogue.MARKET_RULES))
            self.invalid(-1, "marketRuleId", f"no market rule {rule_id} (the simulated gateway has {known})")
            return
        self.send(msg.market_rule(rule_id))

    # ------------------------------------------------------------ market data
    def req_market_data_type(self, fields):
        self.market_data_type = int(fields[2])

    def req_mkt_data(self, fields):
        req_id = int(fields[2])
        listing = self.find_one(req_id, fields[3:15])
        if listing is None:
            return
        rest = fields[15:]
        if rest and rest[0] == "1":  # a delta-neutral contract follows
            rest = rest[3:]
        snapshot = len(rest) > 2 and rest[2] == "1"
        live = market_of(listing) in self.gateway.live_data
        if not live and self.market_data_type in (LIVE, FROZEN):
            self.error(req_id, 354, f"Requested market data is not subscribed. Delayed market data is available.{listing.symbol} {listing.primary_exchange}/TOP/ALL")
            return
        delayed = not live
        self.send([msg.MARKET_DATA_TYPE, 1, req_id, DELAYED if delayed else LIVE])
        self.send([msg.TICK_REQ_PARAMS, req_id, catalogue.min_tick(listing, listing.base_price), "9c0001", 3])
        if delayed:
            self.error(req_id, 10167, "Requested market data is not subscribed. Displaying delayed market data.")
        subscription = Subscription(listing, delayed, {})
        self.send_quote(req_id, subscription, self.gateway.clock.now())
        if snapshot:
            self.send([msg.TICK_SNAPSHOT_END, 1, req_id])
        else:
            self.quotes[req_id] = subscription

    def cancel_mkt_data(self, fields):
        self.quotes.pop(int(fields[2]), None)

    def live(self, listing: Listing) -> bool:
        """Whether this login has live (not only delayed) market data for the listing's market."""
        return market_of(listing) in self.gateway.live_data

    def start_stream(self, req_id: int, stream):
        """Keep a stream of streams.py for the market passes, and send what it has now."""
        self.streams[req_id] = stream
        for message in stream.update(self.stream_time(stream, self.gateway.clock.now())):
            self.send(message)

    def stream_time(self, stream, now: float) -> float:
        """The instant a stream shows: tick-by-tick data and depth stand still while their market is
        closed, as quotes do; real-time bars already skip closed hours, P&L follows the marks."""
        if isinstance(stream, (streams.TickByTick, streams.MarketDepth)):
            return self.gateway.broker.sessions.market_time(stream.listing, now)
        return now

    def cancel_stream(self, fields):
        self.streams.pop(incoming.req_id(fields), None)

    def req_real_time_bars(self, fields):
        """Real-time bars need live data, and count against historical data pacing, as at IB."""
        req_id = int(fields[2])
        listing = self.find_one(req_id, fields[3:15])
        if listing is None:
            return
        bar_size, what, use_rth = fields[15], fields[16].strip().upper(), fields[17] == "1"
        if int(bar_size or 0) != streams.REAL_TIME_BAR_SECONDS:
            self.invalid(req_id, "barSize", f"real-time bars are 5 seconds long, not {bar_size}")
            return
        if what not in REAL_TIME_BAR_TYPES:
            self.invalid(req_id, "whatToShow", f"real-time bars show one of {', '.join(REAL_TIME_BAR_TYPES)}, not {what}")
            return
        if not self.live(listing):
            self.error(req_id, 420, f"Invalid Real-time Query:No market data permissions for {listing.primary_exchange} STK")
            return
        request = ("real-time bars", listing.con_id, what, use_rth)
        why = self.gateway.historical_pacing.check(time.monotonic(), request, (listing.con_id, what),
                                                   streams.REAL_TIME_BAR_SECONDS)
        if why:
            log.info("client %s: real-time bars %d refused: %s", self.client_id, req_id, why)
            self.error(req_id, 420, f"Invalid Real-time Query:{PACING_VIOLATION}")
            return
        self.start_stream(req_id, streams.RealTimeBars(req_id, listing, what, use_rth, self.gateway.model,
                                                       self.gateway.clock.now()))

    def req_tick_by_tick(self, fields):
        req_id = int(fields[1])
        listing = self.find_one(req_id, fields[2:14])
        if listing is None:
            return
        tick_type_name, number_of_ticks, ignore_size = fields[14:17]
        tick_type = msg.TICK_BY_TICK_TYPES.get(tick_type_name)
        if tick_type is None:
            self.invalid(req_id, "tickType", f"{tick_type_name!r} is not one of {', '.join(msg.TICK_BY_TICK_TYPES)}")
            return
        if int(number_of_ticks or 0):
            self.invalid(req_id, "numberOfTicks", "the simulated gateway does not send historical ticks first; "
                                                  "request with numberOfTicks=0")
            return
        if self.refused_stream(req_id, listing, streams.TickByTick, MAX_TICK_BY_TICK_SUBSCRIPTIONS, 10190,
                               "Max number of tick-by-tick requests has been reached."):
            return
        self.start_stream(req_id, streams.TickByTick(req_id, listing, tick_type, ignore_size == "1",
                                                     self.gateway.model, self.gateway.clock.now()))

    def req_mkt_depth(self, fields):
        req_id = int(fields[2])
        listing = self.find_one(req_id, fields[3:15])
        if listing is None:
            return
        rows, smart = int(fields[15] or 0), fields[16] == "1"
        if self.refused_stream(req_id, listing, streams.MarketDepth, MAX_DEPTH_SUBSCRIPTIONS, 309,
                               f"Max number ({MAX_DEPTH_SUBSCRIPTIONS}) of market depth requests has been reached"):
            return
        rows = min(max(rows, 1), MAX_BOOK_LEVELS)
        self.start_stream(req_id, streams.MarketDepth(req_id, listing, rows, smart, self.gateway.model))

    def refused_stream(self, req_id: int, listing: Listing, kind: type, limit: int, code: int, text: str) -> bool:
        """Refuse depth or tick-by-tick data without live data or beyond the login's limit of such
        subscriptions (all clients together), as TWS does; True if refused."""
        if not self.live(listing):
            self.error(req_id, 354, "Requested market data is not subscribed."
                                    f"{listing.symbol} {listing.primary_exchange}/TOP/ALL")
            return True
        if self.gateway.count_streams(kind) >= limit:
            self.error(req_id, code, text)
            return True
        return False

    def req_mkt_depth_exchanges(self, fields):
        """The exchanges with market depth: here every primary exchange of the catalogue."""
        self.send(msg.mkt_depth_exchanges(sorted({listing.primary_exchange for listing in catalogue.CATALOGUE})))

    def send_quote(self, req_id: int, sub: Subscription, now: float):
        """Send the quote's ticks that changed since the last ones sent on this request."""
        quote = self.gateway.broker.quote(sub.listing, now - DELAY_SECONDS if sub.delayed else now)
        ticks = DELAYED_TICKS if sub.delayed else LIVE_TICKS
        for name, tick_type in ticks.items():
            value = getattr(quote, name)
            size = getattr(quote, SIZES[name]) if name in SIZES else None
            if sub.last_sent.get(name) == (value, size):
                continue
            sub.last_sent[name] = (value, size)
            if name == "volume":
                self.send(msg.tick_size(req_id, tick_type, value))
            else:
                self.send(msg.tick_price(req_id, tick_type, value, size or 0))

    def req_historical_data(self, fields):
        req_id = int(fields[1])
        contract = fields[2:14]
        end, bar_size, duration, use_rth, what, format_date = fields[15:21]
        keep_up_to_date = fields[21] == "1" if len(fields) > 21 else False
        listing = self.find_one(req_id, contract)
        if listing is None:
            return
        if keep_up_to_date:
            self.invalid(req_id, "keepUpToDate", "the simulated gateway does not stream bar updates; request without keepUpToDate")
            return
        try:
            seconds = bar_seconds(bar_size)
            end_time = parse_end(end, self.gateway.clock.now())
        except ValueError as e:
            self.invalid(req_id, bar_size, str(e))
            return
        if len(self.historical) >= MAX_OPEN_HISTORICAL:
            self.error(req_id, 322, f"Error processing request:Only {MAX_OPEN_HISTORICAL} simultaneous API "
                                    "historical data requests allowed.")
            return
        request = (listing.con_id, end, bar_size, duration, use_rth, what)
        self.gateway.historical_requests.append(request)
        why = self.gateway.historical_pacing.check(time.monotonic(), request, (listing.con_id, what), seconds)
        if why:
            log.info("client %s: historical data %d refused: %s", self.client_id, req_id, why)
            self.error(req_id, 162, f"Historical Market Data Service error message:{PACING_VIOLATION}")
            return
        task = self.gateway.spawn(self.send_bars(req_id, listing, end_time, duration, bar_size, use_rth == "1",
                                                 what, int(format_date or 1)))
        self.historical[req_id] = task
        task.add_done_callback(lambda done: self.historical.get(req_id) is done and self.historical.pop(req_id))

    def cancel_historical_data(self, fields):
        """Drop a request whose bars have not been sent yet, so it no longer waits for its turn, and
        confirm it as TWS does (error 162, "API historical data query cancelled: N", as in
        ib_insync issue 268)."""
        req_id = int(fields[2])
        task = self.historical.pop(req_id, None)
        if task:
            task.cancel()
            self.error(req_id, 162, f"Historical Market Data Service error message:API historical data query "
                                    f"cancelled: {req_id}")

    def req_head_timestamp(self, fields):
        """The start of the earliest bar reqHistoricalData serves for the contract."""
        req_id = int(fields[1])
        listing = self.find_one(req_id, fields[2:14])
        if listing is None:
            return
        use_rth, what, format_date = fields[15:18]
        try:
            parse_what_to_show(what)
        except ValueError as e:
            self.error(req_id, 162, f"Historical Market Data Service error message:{e}")
            return
        t = head_timestamp(listing, use_rth == "1")
        self.send(msg.head_timestamp(req_id, t, listing.time_zone, int(format_date or 1)))

    async def send_bars(self, req_id, listing, end_time, duration, bar_size, use_rth, what, format_date):
        """Compute and encode the bars off the event loop, on the gateway's single bar worker, one
        request of this client at a time: a year of 5-minute bars (half a second of CPU or more and tens
        of megabytes) then costs one request's memory however many are asked for, other clients'
        requests take their turns between this one's, and the loop stays free to serve them."""
        def answer() -> bytes | None:
            bars = self.gateway.model.bars(listing, end_time, duration, bar_size, use_rth, what)
            if not bars:
                return None
            zone = listing.time_zone
            start_text, end_text = msg.ib_time(bars[0].start, zone), msg.ib_time(end_time, zone)
            return wire.encode(msg.historical_data(req_id, start_text, end_text, bars, zone, format_date))

        async with self.bar_turn:
            try:
                data = await asyncio.get_running_loop().run_in_executor(self.gateway.bar_worker, answer)
            except ValueError as e:
                if str(e).startswith(TOO_LONG):
                    self.error(req_id, 162, f"Historical Market Data Service error message:{TOO_LONG}.")
                else:
                    self.invalid(req_id, duration, str(e))
                return
        if data is None:
            self.error(req_id, 162, "Historical Market Data Service error message:HMDS query returned no data")
        elif not self.transport.is_closing():
            self.transport.write(data)

    # ------------------------------------------------------------ orders
    def place_order(self, fields):
        order_id = int(fields[1])
        listing = self.find_one(order_id, fields[2:14])
        if listing is None:
            return
        tail = order_tail(fields)
        unsupported = unsupported_order_features(fields, tail)
        if unsupported:
            self.error(order_id, 201, f"Order rejected - reason:{unsupported} is not supported by the simulated gateway")
            return
        tif = (fields[21] or "DAY").upper()
        good_till_date = fields[38]
        try:
            good_till = parse_end(good_till_date, 0.0) if tif == "GTD" and good_till_date.strip() else None
        except (ValueError, KeyError):  # KeyError: ZoneInfo's for an unknown zone
            self.error(order_id, 201, f"Order rejected - reason:the goodTillDate {good_till_date!r} is not "
                                      "'YYYYMMDD HH:MM:SS [zone]'")
            return
        request = OrderRequest(
            action=fields[16].upper(), quantity=float(fields[17] or 0), order_type=fields[18].upper(),
            limit_price=price_field(fields[19]), tif=tif,
            account=fields[23], order_ref=fields[26], outside_rth=fields[33] == "1",
            e_trade_only=fields[53] == "1", firm_quote_only=fields[54] == "1",
            aux_price=price_field(fields[20]), oca_group=fields[22], transmit=fields[27] != "0",
            parent_id=int(fields[28] or 0), oca_type=int(fields[47] or 0),
            good_till_date=good_till_date,
            good_till=good_till,
            trail_stop_price=tail.trail_stop_price, trailing_percent=tail.trailing_percent,
            lmt_price_offset=tail.lmt_price_offset, algo_strategy=tail.algo_strategy,
            algo_params=tail.algo_params)
        self.gateway.broker_call(self, order_id, lambda b: b.place(self.client_id, order_id, listing, request))

    def cancel_order(self, fields):
        order_id = int(fields[2])
        self.gateway.broker_call(self, order_id, lambda b: b.cancel(self.client_id, order_id), cancelling=True)

    def req_global_cancel(self, fields):
        broker = self.gateway.broker
        for order in broker.open_orders():
            self.gateway.broker_call(self, order.order_id, lambda b, o=order: b.cancel(o.client_id, o.order_id), cancelling=True)

    def send_order(self, order):
        self.send(msg.open_order(self.version, order))
        self.send(msg.order_status(order))

    def send_fill(self, order, execution):
        """A fill as TWS reports it: execDetails, the order's new state (openOrder, orderStatus), the
        order again with its commission so far, then the fill's commission report. Captured from
        TWS by rust-ibapi (https://github.com/wboayue/rust-ibapi/blob/5fddde93/src/orders/tests.rs,
        place_order: a market order that fills)."""
        self.send(msg.execution(-1, execution))
        self.send_order(order)
        self.send(msg.open_order(self.version, order, with_commission=True))
        self.send(msg.commission_report(execution))

    def req_open_orders(self, fields):
        for order in self.gateway.broker.open_orders():
            if order.client_id == self.client_id:
                self.send_order(order)
        self.send([msg.OPEN_ORDER_END, 1])

    def req_all_open_orders(self, fields):
        for order in self.gateway.broker.open_orders():
            self.send_order(order)
        self.send([msg.OPEN_ORDER_END, 1])

    def req_completed_orders(self, fields):
        for order in self.gateway.broker.completed_orders():
            self.send(msg.completed_order(self.version, order))
        self.send([msg.COMPLETED_ORDERS_END])

    def req_executions(self, fields):
        req_id = int(fields[2])
        client_id, account, since, symbol, sec_type, exchange, side = (fields[3:10] + [""] * 7)[:7]
        since_time = parse_end(since, 0.0) if since else self.gateway.start_of_day()
        for ex in self.gateway.broker.executions:
            listing = catalogue.by_con_id(ex.con_id)
            wanted = (
                client_id in ("", "0") or int(client_id) == ex.client_id,
                not account or account == ex.account,
                ex.time >= since_time,
                not symbol or symbol.upper() == listing.symbol,
                not sec_type or sec_type == "STK",
                not exchange or exchange in (listing.exchange, listing.primary_exchange),
                not side or side.upper().startswith("B") == ex.side.startswith("B"),
            )
            if all(wanted):
                self.send(msg.execution(req_id, ex))
                self.send(msg.commission_report(ex))
        self.send([msg.EXECUTION_DATA_END, 1, req_id])

    # ------------------------------------------------------------ account and positions
    def req_positions(self, fields):
        self.wants_positions = True
        for p in self.gateway.broker.held_positions():
            if p.quantity:
                self.send(msg.position(p))
        self.send([msg.POSITION_END, 1])

    def cancel_positions(self, fields):
        self.wants_positions = False

    def req_account_updates(self, fields):
        subscribe, account = fields[2] == "1", fields[3]
        if not subscribe:
            self.account_updates = None
            return
        account = account or next(iter(self.gateway.broker.accounts))
        if account not in self.gateway.broker.accounts:
            self.invalid(-1, "acctCode", f"unknown account {account}")
            return
        self.account_updates = account
        self.account_sent.pop("updates", None)
        self.send_account(account, portfolio=True)
        self.send([msg.ACCOUNT_DOWNLOAD_END, 1, account])

    def changed_values(self, channel, account: str):
        """Account values not yet sent on this channel (reqAccountUpdates, or a multi reqId)
        with their current value: all of them the first time, then what changed, as TWS does."""
        sent = self.account_sent.setdefault(channel, {})
        for key, value, currency in self.gateway.broker.account_values(account):
            if sent.get((key, currency)) != value:
                sent[(key, currency)] = value
                yield key, value, currency

    def send_account(self, account: str, portfolio: bool):
        """Changed account values and, with ``portfolio``, every portfolio row revalued."""
        gateway = self.gateway
        for key, value, currency in self.changed_values("updates", account):
            self.send(msg.account_value(key, value, currency, account))
        if portfolio:
            for p in gateway.broker.held_positions(account):
                self.send(msg.portfolio_value(p, gateway.broker.mark_price(catalogue.by_con_id(p.con_id))))
        self.send(msg.account_update_time(gateway.clock.now()))

    def known_account(self, req_id: int, account: str) -> bool:
        """True if the account is this login's; else tell the client so."""
        if account in self.gateway.broker.accounts:
            return True
        self.invalid(req_id, "account", f"unknown account {account}")
        return False

    def req_account_updates_multi(self, fields):
        req_id, account = int(fields[2]), fields[3]
        if not self.known_account(req_id, account):
            return
        self.account_multi[req_id] = account
        self.account_sent.pop(req_id, None)
        self.send_account_multi(req_id, account)
        self.send([msg.ACCOUNT_UPDATE_MULTI_END, 1, req_id])

    def send_account_multi(self, req_id: int, account: str):
        for key, value, currency in self.changed_values(req_id, account):
            self.send([msg.ACCOUNT_UPDATE_MULTI, 1, req_id, account, "", key, value, currency])

    def cancel_account_updates_multi(self, fields):
        self.account_multi.pop(int(fields[2]), None)

    def req_pnl(self, fields):
        req_id, account = int(fields[1]), fields[2]
        if not self.known_account(req_id, account):
            return
        broker = self.gateway.broker
        self.start_stream(req_id, streams.PnL(lambda: broker.account_pnl(account),
                                              lambda figures: msg.pnl(req_id, *figures)))

    def req_pnl_single(self, fields):
        req_id, account, con_id = int(fields[1]), fields[2], int(fields[4] or 0)
        if not self.known_account(req_id, account):
            return
        if catalogue.by_con_id(con_id) is None:
            self.error(req_id, 200, NO_SECURITY)
            return
        broker = self.gateway.broker
        self.start_stream(req_id, streams.PnL(lambda: broker.position_pnl(account, con_id),
                                              lambda pnl: msg.pnl_single(req_id, pnl)))

    def req_account_summary(self, fields):
        """Summary tags are read in USD (the base currency); ``$LEDGER[:CUR|:ALL]`` adds per-currency rows."""
        req_id, tags = int(fields[2]), fields[4]
        wanted = {t.strip() for t in tags.split(",") if t.strip()}
        ledger = {t.partition(":")[2] or "BASE" for t in wanted if t.startswith("$LEDGER")}
        for account in self.gateway.broker.accounts:
            for key, value, currency in self.gateway.broker.account_values(account):
                summary_row = key in wanted and currency in ("USD", "")
                ledger_row = bool(currency) and ("ALL" in ledger or currency in ledger)
                if summary_row or ledger_row:
                    self.send([msg.ACCOUNT_SUMMARY, 1, req_id, account, key, value, currency])
        self.send([msg.ACCOUNT_SUMMARY_END, 1, req_id])

    # ------------------------------------------------------------ pushes from the gateway
    def position_changed(self, account: str, con_id: int):
        broker = self.gateway.broker
        p = broker.position(account, con_id)
        if self.wants_positions:
            self.send(msg.position(p))
        if self.account_updates == account:
            self.send(msg.portfolio_value(p, broker.mark_price(catalogue.by_con_id(con_id))))
        # Account values follow on the next market pass: a burst of fills costs one update.
        self.accounts_changed.add(account)

    def refresh(self, now: float, portfolio_due: bool):
        """Called by the market loop: stream quotes, send changed account values, and
        now and then revalue the portfolio."""
        for req_id, sub in self.quotes.items():
            self.send_quote(req_id, sub, now)
        if self.streams:  # most clients have none: keep their pass as cheap as before
            for stream in self.streams.values():
                for message in stream.update(self.stream_time(stream, now)):
                    self.send(message)
        if self.account_updates and (portfolio_due or self.account_updates in self.accounts_changed):
            self.send_account(self.account_updates, portfolio=portfolio_due)
        for req_id, account in self.account_multi.items():
            if portfolio_due or account in self.accounts_changed:
                self.send_account_multi(req_id, account)
        self.accounts_changed.clear()


def unsupported_order_features(fields: list[str], tail: "OrderTail") -> str:
    """Name an order feature the simulator would silently get wrong, else ''."""
    if fields[4] and fields[4] != "STK":
        return f"security type {fields[4]}"
    if tail.what_if:
        return "a what-if order"
    if tail.conditions:
        return "an order with conditions"
    return ""


@dataclasses.dataclass
class OrderTail:
    """The placeOrder fields after the fixed part that the simulator reads."""

    trail_stop_price: float | None = None
    trailing_percent: float | None = None
    algo_strategy: str = ""
    algo_params: dict = dataclasses.field(default_factory=dict)
    what_if: bool = False
    conditions: int = 0
    lmt_price_offset: float | None = None


def price_field(text: str) -> float | None:
    """A price the client may leave unset: empty, or the unset double, is None."""
    value = float(text) if text else None
    return None if value is None or value >= wire.UNSET_DOUBLE else value


def order_tail(fields: list[str]) -> OrderTail:
    """Walk placeOrder's variable-length tail (see ib_insync Client.placeOrder): trailing stop
    price and percent, the algo and its parameters, whatIf, the conditions and lmtPriceOffset."""
    tail = OrderTail()
    i = 35 + 1 + 31  # hidden, then '' .. deltaNeutralAuxPrice
    if fields[i - 2]:  # deltaNeutralOrderType
        i += 8
    tail.trail_stop_price, tail.trailing_percent = price_field(fields[i + 2]), price_field(fields[i + 3])
    i += 4 + 3  # continuousUpdate .. trailingPercent, scale sizes and increment
    increment = fields[i - 1]
    if increment and 0 < float(increment) < wire.UNSET_DOUBLE:
        i += 7
    i += 4  # scaleTable, activeStartTime, activeStopTime, hedgeType
    if fields[i - 1]:
        i += 1
    i += 4  # optOutSmartRouting, clearingAccount, clearingIntent, notHeld
    i += 1 + (3 if fields[i] == "1" else 0)  # delta-neutral contract
    tail.algo_strategy = fields[i]
    i += 1
    if tail.algo_strategy:
        count = int(fields[i] or 0)
        tail.algo_params = dict(zip(fields[i + 1:i + 1 + 2 * count:2], fields[i + 2:i + 2 + 2 * count:2]))
        i += 1 + 2 * count
    i += 1  # algoId
    tail.what_if = fields[i] == "1"
    i += 1 + 4  # orderMiscOptions, solicited, randomizeSize, randomizePrice
    if fields[18].upper() == "PEG BENCH":
        i += 5
    tail.conditions = int(fields[i] or 0)
    if not tail.conditions:
        tail.lmt_price_offset = price_field(fields[i + 3])  # after adjustedOrderType, triggerPrice
    return tail


def parse_end(text: str, now: float) -> float:
    """IB's endDateTime: '' (now), 'YYYYMMDD HH:MM:SS[ Zone]' or 'YYYYMMDD-HH:MM:SS' (UTC)."""
    text = text.strip()
    if not text:
        return now
    if "-" in text and " " not in text:
        return dt.datetime.strptime(text, "%Y%m%d-%H:%M:%S").replace(tzinfo=dt.timezone.utc).timestamp()
    parts = text.split()
    zone = ZoneInfo(parts[2]) if len(parts) > 2 else ZoneInfo(msg.SERVER_ZONE)
    stamp = " ".join(parts[:2]) if len(parts) > 1 else parts[0] + " 23:59:59"
    return dt.datetime.strptime(stamp, "%Y%m%d %H:%M:%S").replace(tzinfo=zone).timestamp()


class SimGateway:
    """The simulated TWS / IB Gateway: accounts, orders and market data behind the real API socket."""

    def __init__(self, host: str = "127.0.0.1", port: int = 7497, *, accounts=DEFAULT_ACCOUNTS,
                 seed: int = 0, state_path: str | None = None, live_data=("US",),
                 tick_interval: float = 0.25, speed: float = 1.0, start=None, always_open: bool = False,
                 max_clients: int = MAX_CLIENTS, max_rate: int = 50, handshake_timeout: float = HANDSHAKE_TIMEOUT,
                 position_delay: float = 0.0):
        """``start`` (an ISO-8601 instant such as "2026-11-24T15:00:00Z", an aware datetime or POSIX
        seconds; default now) and ``speed`` (simulated seconds per real second) set the simulated
        clock. Orders trade in their exchange's sessions on that clock; ``always_open`` is the
        around-the-clock market instead, for offline play at any hour (see ``sessions``).
        ``position_delay`` (real seconds) reports a fill's new position that much after the fill:
        TWS sends positions in messages of their own, which may come after the order's Filled status,
        and a client must not count on them coming first."""
        self.host = host
        self.port = port
        self.position_delay = position_delay
        self.clock = SimClock(speed, start)
        self.model = PriceModel(seed)
        self.broker = Broker(list(accounts), self.model, self.clock, sessions=Sessions(always_open))
        self.state = StateFile(state_path) if state_path else None
        if self.state and self.state.load(self.broker):
            log.info("loaded simulator state from %s", state_path)
        self.live_data = set(live_data)
        self.tick_interval = tick_interval
        self.max_clients = max_clients
        self.max_rate = max_rate
        self.handshake_timeout = handshake_timeout
        self.sessions: dict[int, Session] = {}  # by client id, once the API has started
        self.connections: set[Session] = set()  # every open connection
        self.historical_pacing = HistoricalPacing()
        # The latest historical data requests received, paced or not, as (con id, end, bar size, duration,
        # RTH, what to show): which requests a client's bar fetching made.
        self.historical_requests: deque[tuple] = deque(maxlen=1000)
        # Bars are computed here, one request at a time: see Session.send_bars.
        self.bar_worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="qdibkr-sim-bars")
        self._server = None
        self._loop = None
        self._thread = None
        self._tasks: set[asyncio.Task] = set()
        self._last_portfolio = 0.0
        self._thawed = threading.Event()  # cleared while frozen: see freeze()
        self._thawed.set()
        self._drop_on_thaw = False

    # ------------------------------------------------------------ lifecycle
    async def start(self):
        loop = asyncio.get_running_loop()
        self._loop = loop
        # Exchange calendars take most of a second to load (once per process): do it
        # before listening rather than inside some client's first quote or order.
        await loop.run_in_executor(None, catalogue.load_calendars)
        self._server = await loop.create_server(lambda: Session(self), self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        self.clock.begin()
        self.spawn(self.market_loop())
        log.info("simulated gateway listening on %s:%d (accounts %s)", self.host, self.port, ",".join(self.broker.accounts))
        return self

    async def serve_forever(self):
        if self._server is None:
            await self.start()
        try:
            await self._server.serve_forever()
        finally:
            await self.close()

    async def close(self):
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._server:
            self._server.close()
        self.bar_worker.shutdown(wait=False, cancel_futures=True)
        for session in list(self.connections):
            session.transport.abort()
        # A transport closes its socket in a callback on the next loop iteration: let those
        # run, or a client would be left on a half-open connection that never ends.
        for _ in range(100):
            if not self.connections:
                break
            await asyncio.sleep(0)
        self.save(final=True)

    def start_in_thread(self) -> "SimGateway":
        """Serve from a daemon thread with its own event loop; returns once listening."""
        ready = threading.Event()
        failure = []

        def run():
            loop = asyncio.new_event_loop()
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(self.start())
            except BaseException as e:  # reported to the starting thread
                failure.append(e)
                ready.set()
                return
            ready.set()
            loop.run_forever()
            loop.run_until_complete(self.close())
            loop.close()

        self._thread = threading.Thread(target=run, name="qdibkr-sim", daemon=True)
        self._thread.start()
        ready.wait()
        if failure:
            raise failure[0]
        return self

    def stop(self):
        """Stop a gateway started with ``start_in_thread``, saving state first."""
        self.thaw()  # a frozen loop could not run the stop
        if self._thread and self._loop:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)
            self._thread = None

    def freeze(self):
        """Suspend a gateway started with ``start_in_thread`` as if its process were stopped (SIGSTOP),
        until ``thaw()``: a half-open connection for its clients, as when TWS's machine sleeps or
        its process hangs. Its loop blocks, so it reads, answers and sends nothing and no market
        pass runs, while every socket stays open: clients see no close, the kernel still accepts
        new connections and keeps what clients send. Returns once the loop is blocked."""
        if not (self._thread and self._loop):
            raise RuntimeError("freeze() needs a gateway started with start_in_thread(): it blocks the gateway's loop")
        if not self._thawed.is_set():
            return
        self._thawed.clear()
        blocked = threading.Event()

        def block():
            blocked.set()
            self._thawed.wait()
            if self._drop_on_thaw:  # before the loop reads anything
                for session in list(self.connections):
                    session.transport.abort()

        self._loop.call_soon_threadsafe(block)
        blocked.wait()

    def thaw(self, drop_connections: bool = False):
        """Resume a frozen gateway where it stopped: it then reads what clients sent meanwhile,
        including the closes of those that gave up on it (unless, as could happen with TWS, it
        first writes to one of those, whose reset discards what it had not read yet).

        With ``drop_connections``, the connections open during the freeze are first aborted
        unread, as when a NAT or firewall forgot them: what their clients sent into the outage
        never arrives."""
        self._drop_on_thaw = drop_connections
        self._thawed.set()

    def advance(self, seconds: float):
        """Move simulated time forward and run a market pass (thread-safe). A jump over a session's
        opening or an order's expiry stops there first for a pass, so an order waiting for the open
        trades at the open and a DAY order expires at its close, as if the time had passed."""
        def jump():
            target = self.clock.now() + seconds
            while (wakeup := self.broker.next_wakeup(self.clock.now())) is not None and wakeup <= target:
                self.clock.advance_to(wakeup)
                self.market_pass()
            self.clock.advance_to(target)
            self.market_pass()

        async def step():
            jump()
        if self._loop and self._thread and threading.current_thread() is not self._thread:
            asyncio.run_coroutine_threadsafe(step(), self._loop).result(timeout=30)
        else:
            jump()

    def market_state(self) -> str:
        """The clock, the mode and each exchange's state, as ``qdibkr sim`` prints them."""
        return self.broker.sessions.describe(self.clock.now())

    def spawn(self, coro) -> asyncio.Task:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def count_streams(self, kind: type) -> int:
        """Streams of this kind open across all clients: IB limits some per login."""
        return sum(isinstance(stream, kind)
                   for session in self.sessions.values() for stream in session.streams.values())

    def forget(self, session: Session):
        if session.client_id is not None and self.sessions.get(session.client_id) is session:
            del self.sessions[session.client_id]

    def persist(self, events: list):
        """Journal what the broker's events changed, durably, before any client hears of it."""
        if self.state and events:
            self.state.record(self.broker, events)
            self.broker.dirty = False  # what it changed is journaled

    def save(self, final: bool = False):
        """Rewrite the state's snapshot when the journal has grown long, when the broker changed
        something no event named, and (``final``) on a clean stop."""
        state = self.state
        if state and (final or self.broker.dirty or state.pending >= COMPACT_AFTER):
            state.compact(self.broker)

    def start_of_day(self) -> float:
        local = dt.datetime.fromtimestamp(self.clock.now(), ZoneInfo(msg.SERVER_ZONE))
        return local.replace(hour=0, minute=0, second=0, microsecond=0).timestamp()

    # ------------------------------------------------------------ market
    async def market_loop(self):
        while True:
            await asyncio.sleep(self.tick_interval)
            try:
                self.market_pass()
            except Exception:
                log.exception("market pass failed")

    def market_pass(self):
        """Match resting orders, stream quotes, revalue portfolios, persist state."""
        events = self.broker.match()
        self.persist(events)
        self.dispatch(events)
        wall = time.monotonic()
        portfolio_due = wall - self._last_portfolio >= PORTFOLIO_REFRESH_SECONDS
        if portfolio_due:
            self._last_portfolio = wall
        now = self.clock.now()
        for session in list(self.sessions.values()):
            session.refresh(now, portfolio_due)
        self.save()

    # ------------------------------------------------------------ orders
    def broker_call(self, session: Session, order_id: int, call, cancelling: bool = False):
        """Run a broker operation; report a rejection to the client, else the events."""
        try:
            events = call(self.broker)
        except Rejection as r:
            log.info("client %s order %d refused: %s", session.client_id, order_id, r.text)
            if r.order is None:
                session.error(order_id, r.code, r.text)
                return
            # Taken in, then refused: TWS reports the order PreSubmitted, then the error, then the order
            # Inactive (ib_insync issue 554; tests/fidelity/rejected_order.json).
            self.persist([OrderChanged(r.order)])
            session.send_order(dataclasses.replace(r.order, status="PreSubmitted"))
            session.error(order_id, r.code, r.text)
            session.send_order(r.order)
            return
        self.persist(events)
        if cancelling:
            # A cancel as TWS reports it: orderStatus Cancelled, then error 202 (rust-ibapi's capture in
            # https://github.com/wboayue/rust-ibapi/blob/5fddde93/src/orders/tests.rs, cancel_order).
            for event in events:
                owner = self.sessions.get(event.order.client_id)
                if owner and event.order.transmitted:
                    owner.send(msg.order_status(event.order))
                    owner.error(event.order.order_id, 202, "Order Canceled - reason:")
            return
        self.dispatch(events)

    def position_changed(self, event: PositionChanged):
        for session in list(self.sessions.values()):
            session.position_changed(event.account, event.con_id)

    def dispatch(self, events: list):
        """Report broker events to the clients concerned, in TWS's order."""
        for event in events:
            if isinstance(event, PositionChanged):
                if self.position_delay:
                    self._loop.call_later(self.position_delay, self.position_changed, event)
                else:
                    self.position_changed(event)
                continue
            owner = self.sessions.get(event.order.client_id)
            if owner is None:
                continue
            if not event.order.transmitted:
                continue  # TWS keeps an untransmitted order to itself
            if isinstance(event, OrderChanged):
                owner.send_order(event.order)
            elif isinstance(event, OrderWarning):
                owner.error(event.order.order_id, event.code, event.text)
            elif isinstance(event, Filled):
                owner.send_fill(event.order, event.execution)
