"""The HTTP API: the product brief's ``/api/ibkr`` endpoints and the signal queue, over one IBKR session.

``qdibkr serve`` runs this ASGI app (Starlette under uvicorn) on the event loop
that also carries the ib_insync connection. Every endpoint awaits IBKR's
``*_async`` methods, so one connection serves every request, nothing
reconnects per call, and a request waiting on TWS never holds up another.
What requests accept and return is defined once, in ``apispec``; this module
turns HTTP requests into calls of the Python API, and their results or errors
into JSON of one of two shapes::

    {"success": true, "data": ...}
    {"success": false, "error": "what went wrong and what to do", "field": "quantity" | null, "twsCode": 201 | null}

The status says which failure: 400 bad input (``field`` names it), 401 missing
or wrong token, 403 live trading not enabled on this server or a web page of
another origin asking, 404 no such open order, 409 not connected or halted,
413 body over 64 KiB, 415 a POST, PATCH or DELETE not sent as application/json,
502 TWS refused or could not be reached, 503 the queue's database could not be
reached (a PostgreSQL queue's server down). A 500 is a bug in qdibkr.

Security. The server listens on loopback unless an API token is configured
(``QDIBKR_API_TOKEN``, or ``token`` in the config file's ``[api]`` section);
with a token, every request needs ``Authorization: Bearer <token>`` (compared
in constant time) and a request without it reaches no endpoint. Without one,
only requests addressed to a loopback name are served, so a web page cannot
reach the API by DNS rebinding. Every POST, PATCH and DELETE must say
``Content-Type: application/json`` (an empty body too), which a page cannot
send to another origin without the browser asking first (CORS preflight); and
a request whose ``Origin`` is not the server's own is refused outright, so a
page of another origin can neither change nor read anything. Pages of the
origins in the config file's ``[api] cors_origins`` are let through, with CORS
headers; there are none unless configured. These checks run before any
endpoint, so a refused request changes nothing.
Live ports stay behind the server's own ``--live``: no request can opt in.
The token is never logged.
"""

import asyncio
import dataclasses
import datetime as dt
import gc
import hmac
import ipaddress
import json
import math
import os
import re
import socket
from contextlib import asynccontextmanager, contextmanager
from urllib.parse import urlsplit

from starlette.applications import Starlette
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from . import apispec
from .apispec import JSON_METHODS, camel, read
from .config import Settings, config_file
from .databases import QueueUnavailable
from .errors import (ContractError, InputError, LiveTradingRefused, NotConnectedError, QdibkrError, TWSError,
                     UnknownOrder)
from .gate import Refused
from .ibkr import IBKR
from .signals import emit
from .store import Store
from .symbols import HK_SHARE, parse_symbol

MAX_BODY = 64 * 1024
# Python's names of arguments the API spells differently: InputErrors from below name the HTTP field.
HTTP_NAMES = {"signal_type": "signalType", "limit": "price", "order_id": "id", "order_type": "orderType",
              "stop": "stopPrice", "trail_amount": "trailAmount", "trail_percent": "trailPercent",
              "limit_offset": "limitOffset", "adaptive": "algo", "outside_rth": "outsideRth",
              "good_till": "goodTill"}


class ApiError(QdibkrError):
    """A refusal that only HTTP has (a token, a body, the kill switch): its status and what to do."""

    def __init__(self, status: int, message: str, field: str | None = None, headers: dict | None = None):
        super().__init__(message)
        self.status = status
        self.field = field
        self.headers = headers


# ------------------------------------------------------------------ JSON in and out
def jsonable(value):
    """A result as plain JSON values: dataclasses and DataFrame rows as objects with camelCase
    keys, NaN (TWS's "no value") as null, times in ISO 8601, numpy scalars as numbers."""
    if dataclasses.is_dataclass(value):
        value = dataclasses.asdict(value)
    elif hasattr(value, "to_dict"):  # a DataFrame: its rows
        value = value.to_dict("records")
    if isinstance(value, dict):
        return {camel(str(k)): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dt.datetime):
        return value.isoformat()
    if hasattr(value, "item"):  # numpy scalar
        return jsonable(value.item())
    return value


def _no_constant(name: str):
    raise ValueError(f"{name} is not a JSON number")


async def json_body(request: Request) -> dict:
    """The request's JSON object, {} when it has no body; at most MAX_BODY bytes are read."""
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY:
            raise ApiError(413, f"the body is larger than {MAX_BODY // 1024} KiB; no request needs that much")
        chunks.append(chunk)
    raw = b"".join(chunks)
    if not raw.strip():
        return {}
    try:  # Guard checked its Content-Type at the door
        value = json.loads(raw, parse_constant=_no_constant)
    except (ValueError, RecursionError) as e:
        raise InputError("body", f"is not valid JSON ({e})") from None
    if not isinstance(value, dict):
        raise InputError("body", "must be a JSON object of the request's fields")
    return value


@contextmanager
def http_names():
    """Around a call of the Python API: its InputErrors name the field as the request does."""
    try:
        yield
    except InputError as e:
        if e.field not in HTTP_NAMES:
            raise
        raise type(e)(HTTP_NAMES[e.field], e.message) from None


def limit_price(given: dict) -> float | None:
    """The limit of an order or signal: its ``price`` for orderType limit, None for market."""
    if given.get("orderType", "market") == "limit":
        if "price" not in given:
            raise InputError("price", "a limit order needs a price")
        return given["price"]
    if "price" in given:
        raise InputError("price", "a market order takes no price; send orderType limit for a limit order")
    return None


# ------------------------------------------------------------------ errors
def failure(exc: Exception) -> tuple[int, str, str | None, int | None]:
    """An exception as (status, message, field, TWS error code)."""
    if isinstance(exc, ApiError):
        return exc.status, str(exc), exc.field, None
    if isinstance(exc, HTTPException):
        hint = {404: "no such path; /openapi.json lists the API", 405: "the path does not take this method"}
        return exc.status_code, hint.get(exc.status_code, exc.detail), None, None
    if isinstance(exc, Refused) and exc.rule == "halted":
        return 409, str(exc), exc.field, None
    if isinstance(exc, InputError):
        return (404 if isinstance(exc, UnknownOrder) else 400), str(exc), exc.field, None
    if isinstance(exc, ContractError):
        return 400, str(exc), "symbol", exc.code
    if isinstance(exc, LiveTradingRefused):
        return 403, str(exc), None, None
    if isinstance(exc, NotConnectedError):
        return 409, "not connected to TWS/IB Gateway; POST /api/ibkr/connect first", None, None
    if isinstance(exc, TWSError):
        return 502, str(exc), None, exc.code
    if isinstance(exc, QueueUnavailable):
        return 503, str(exc), None, None
    if isinstance(exc, OSError):  # ConnectError, and ib_insync's connection lost or timed out mid-request
        return (502, str(exc) or f"TWS/IB Gateway did not answer ({type(exc).__name__})", None,
                getattr(exc, "code", None))
    return 500, "internal error in qdibkr; the server's log has the details", None, None


def error_response(request: Request | None, exc: Exception) -> JSONResponse:
    status, message, field, code = failure(exc)
    headers = getattr(exc, "headers", None)
    return JSONResponse({"success": False, "error": message, "field": field, "twsCode": code}, status, headers)


# ------------------------------------------------------------------ who may ask
def loopback_name(host: str) -> bool:
    """Whether a host name or address (without port) is this machine's loopback."""
    name = host.strip("[]").lower()
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def origin_of(url: str) -> str | None:
    """An origin as browsers write it in ``Origin`` (scheme://host[:port], lower case, no default
    port); None if ``url`` is not one (another scheme, a path, "null", "*")."""
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError:
        return None
    default = {"http": 80, "https": 443}.get(parts.scheme)
    if default is None or not parts.hostname or parts.path not in ("", "/") or parts.query or parts.fragment \
            or parts.username is not None or parts.password is not None:
        return None
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    return f"{parts.scheme}://{host}" + (f":{port}" if port not in (None, default) else "")


def allowed_origins(given: list[str] | None = None) -> list[str]:
    """The origins whose web pages may call the API (with CORS): ``given``, else the config file's
    ``[api] cors_origins``; none unless configured. Each must be an origin, not a pattern or "*"."""
    if given is None:
        given = config_file().get("api", {}).get("cors_origins", [])
    if not isinstance(given, (list, tuple)):
        raise InputError("cors_origins", f"must be a list of origins, like [\"http://localhost:8888\"], not {given!r}")
    origins = []
    for value in given:
        origin = origin_of(value) if isinstance(value, str) else None
        if origin is None:
            raise InputError("cors_origins", f"{value!r} is not an origin: write scheme://host:port, like "
                                             f"http://localhost:8888, for each web page that may call the API")
        origins.append(origin)
    return origins


class SameOrigin:
    """Outermost: a request with an ``Origin`` header (sent by browsers, not by curl or scripts) must
    come from the server's own origin, or from one of ``allowed``; else 403, before anything else."""

    def __init__(self, app, allowed: list[str]):
        self.app = app
        self.allowed = set(allowed)

    async def __call__(self, scope, receive, send):
        refusal = self.refusal(scope) if scope["type"] == "http" else None
        if refusal:
            await error_response(None, refusal)(scope, receive, send)
        else:
            await self.app(scope, receive, send)

    def refusal(self, scope) -> ApiError | None:
        headers = Headers(scope=scope)
        given = headers.get("origin")
        if given is None:
            return None
        origin = origin_of(given)
        own = origin_of(f"{scope['scheme']}://{headers.get('host', '')}")
        if origin is not None and (origin == own or origin in self.allowed):
            return None
        return ApiError(403, f"this server does not take requests from web pages of other origins (Origin "
                             f"{given[:100]!r}, not {own or 'its own'}); to let a page call it, add the page's "
                             f"origin to cors_origins in the config file's [api] section", field="Origin")


class Guard:
    """In front of every endpoint: with a token, the request must carry it; without one, it must be
    addressed to a loopback name; a POST, PATCH or DELETE must say Content-Type: application/json.
    A refused request reaches no endpoint, so it changes nothing."""

    def __init__(self, app, token: str | None):
        self.app = app
        self.token = token.encode() if token else None

    async def __call__(self, scope, receive, send):
        refusal = self.refusal(Headers(scope=scope), scope["method"]) if scope["type"] == "http" else None
        if refusal:
            await error_response(None, refusal)(scope, receive, send)
        else:
            await self.app(scope, receive, send)

    def refusal(self, headers: Headers, method: str) -> ApiError | None:
        if self.token:
            scheme, _, given = headers.get("authorization", "").partition(" ")
            if not (scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), self.token)):
                return ApiError(401, "this server needs its API token: send Authorization: Bearer <token>",
                                headers={"WWW-Authenticate": "Bearer"})
        else:
            host = re.sub(r":[0-9]*$", "", headers.get("host", ""))
            if not loopback_name(host):
                return ApiError(400, f"this server answers requests to localhost, 127.0.0.1 or [::1] only, not "
                                     f"{host!r}; to serve other names, configure an API token", field="Host")
        media = headers.get("content-type", "").partition(";")[0].strip().lower()
        if method in JSON_METHODS and media != "application/json":
            return ApiError(415, f"a {method} must carry Content-Type: application/json (this one has "
                                 f"{media[:60] or 'none'}): send that header, with {{}} as the body when there "
                                 f"is nothing to send", field="Content-Type")
        return None


# ------------------------------------------------------------------ the endpoints
class Api:
    """The endpoints, named as in ``apispec.OPERATIONS``: one IBKR session (a new one when
    /connect names another TWS or client id) and the queue."""

    def __init__(self, defaults: Settings, store: Store):
        self.defaults = defaults
        self.store = store
        self.session = IBKR(defaults, store=store, face="api")
        self.connecting = asyncio.Lock()

    async def status(self, request: Request):
        return await self.session.status_async()

    async def connect(self, request: Request):
        given = read(await json_body(request), apispec.CONNECT_FIELDS)
        wanted = dataclasses.replace(self.defaults, **{
            python: given[name] for name, python in (("host", "host"), ("port", "port"),
                                                     ("clientId", "client_id"), ("account", "account"))
            if name in given})
        async with self.connecting:
            session = self.session
            if session.is_connected():
                now = session.settings
                if (now.host, now.port, now.client_id) != (wanted.host, wanted.port, wanted.client_id) \
                        or wanted.account not in ("", session.account):
                    raise ApiError(409, f"already connected to {now.host}:{now.port} as client {now.client_id} "
                                        f"(account {session.account}); POST /api/ibkr/disconnect first")
            else:
                if session.settings != wanted:
                    self.session = session = IBKR(wanted, store=self.store, face="api")
                await session.connect_async()
        return await session.status_async()

    async def disconnect(self, request: Request):
        read(await json_body(request), ())
        async with self.connecting:
            self.session.disconnect()
        return await self.session.status_async()

    async def account(self, request: Request):
        return await self.session.account_async()

    async def positions(self, request: Request):
        return self.session.position_rows()

    async def orders(self, request: Request):
        return await self.session.orders_async()

    async def place_order(self, request: Request):
        given = read(await json_body(request), apispec.ORDER_FIELDS)
        session = self.session
        if session.is_connected() and given.get("account", session.account) != session.account:
            raise InputError("account", f"this session trades account {session.account}; to trade "
                                        f"{given['account']}, disconnect and connect with that account")
        if "priority" in given and "algo" not in given:
            raise InputError("priority", "is the Adaptive algo's priority; send algo adaptive with it")
        kind = apispec.ORDER_TYPES[given.get("orderType", "market")]
        if kind == "TRAIL" and "limitOffset" in given:
            kind = "TRAIL LIMIT"
        # Through the gate, as every face's orders: the kill switch, the risk limits, the short-sale rule.
        with http_names():
            return await session.place_order_async(
                given["symbol"], given["side"], given["quantity"], order_type=kind, limit=given.get("price"),
                stop=given.get("stopPrice"), trail_amount=given.get("trailAmount"),
                trail_percent=given.get("trailPercent"), limit_offset=given.get("limitOffset"),
                adaptive=given.get("priority", "normal") if "algo" in given else None,
                outside_rth=given.get("outsideRth", False), tif=given.get("tif", "DAY"),
                good_till=given.get("goodTill"), market_type=given.get("marketType"))

    async def modify_order(self, request: Request):
        order_id = read(request.path_params, (apispec.ORDER_ID,), query=True)["id"]
        given = read(await json_body(request), apispec.MODIFY_FIELDS)
        # Through the gate, as a new order: the kill switch, the risk limits, the short-sale rule.
        with http_names():
            return await self.session.modify_order_async(
                order_id, quantity=given.get("quantity"), limit=given.get("price"), stop=given.get("stopPrice"),
                trail_amount=given.get("trailAmount"), trail_percent=given.get("trailPercent"))

    async def cancel_order(self, request: Request):
        given = read(request.path_params, (apispec.ORDER_ID,), query=True)
        read(await json_body(request), ())  # none, or {}
        with http_names():
            return await self.session.cancel_order_async(given["id"])

    async def quote(self, request: Request):
        given = read(request.query_params, apispec.QUOTE_QUERY, query=True)
        return await self.session.streaming_quote_async(given["symbol"], given.get("marketType"))

    async def signal(self, request: Request):
        given = read(await json_body(request), apispec.SIGNAL_FIELDS)
        limit = limit_price(given)
        symbol = parse_symbol(given["symbol"], given.get("marketType"))
        if symbol.market == HK_SHARE and self.store.board_lot(symbol.display) is None:
            _, _, lot = await self.session.contract_async(symbol.display)  # once; the queue remembers it
            self.store.remember_board_lot(symbol.display, int(lot))
        with http_names():
            return emit(given["signalType"], given["symbol"], given.get("quantity"), strategy=given["strategy"],
                        limit=limit, tif=given.get("tif", "DAY"), market_type=given.get("marketType"),
                        key=given.get("key"), source="api", store=self.store)

    async def queue(self, request: Request):
        given = read(request.query_params, apispec.QUEUE_QUERY, query=True)
        return {"halted": self.store.halted(),
                "signals": self.store.signals(strategy=given.get("strategy"), limit=given.get("limit", 50))}


def endpoint(handler):
    """An Api method as a Starlette endpoint: its result in the success shape."""
    async def respond(request: Request) -> JSONResponse:
        return JSONResponse({"success": True, "data": jsonable(await handler(request))})
    return respond


def create_app(defaults: Settings, store: Store, token: str | None = None,
               cors_origins: list[str] | None = None) -> Starlette:
    """The ASGI app: the endpoints over one session to TWS (made by POST /api/ibkr/connect,
    where ``defaults`` fill in what the body leaves out), and the queue in ``store``. Web pages
    of ``cors_origins`` (default: the config file's ``[api] cors_origins``) may call it, with CORS."""
    origins = allowed_origins(cors_origins)
    api = Api(defaults, store)
    document = apispec.document(token=bool(token))

    async def openapi(request: Request) -> JSONResponse:
        return JSONResponse(document)

    @asynccontextmanager
    async def lifespan(app):
        yield
        api.session.disconnect()

    routes = [Route(op.path, endpoint(getattr(api, op.name)), methods=[op.method]) for op in apispec.OPERATIONS]
    routes.append(Route("/openapi.json", openapi, methods=["GET"]))
    # Anything else is a bug: Starlette answers it through error_response (500) and uvicorn logs it.
    handlers = {QdibkrError: error_response, HTTPException: error_response, OSError: error_response,
                Exception: error_response}
    # Outermost first. CORS sits outside the Guard: a preflight carries no token, and the Guard's
    # refusals reach an allowed page with CORS headers, so it can read them.
    middleware = [Middleware(SameOrigin, allowed=origins)]
    if origins:
        middleware.append(Middleware(CORSMiddleware, allow_origins=origins, allow_methods=["GET", *JSON_METHODS],
                                     allow_headers=["Authorization", "Content-Type"]))
    middleware.append(Middleware(Guard, token=token))
    return Starlette(routes=routes, middleware=middleware, exception_handlers=handlers,
                     lifespan=lifespan)


# ------------------------------------------------------------------ serving
def api_token() -> str | None:
    """The API token: QDIBKR_API_TOKEN, else the config file's ``[api] token``; None if neither is set."""
    return os.environ.get("QDIBKR_API_TOKEN") or config_file().get("api", {}).get("token") or None


def listen(host: str, port: int, token: str | None) -> socket.socket:
    """A listening socket on host:port (port 0: any free port); off loopback only with a token."""
    if not loopback_name(host) and not token:
        raise InputError("host", f"{host} can be reached from other machines: set an API token first "
                                 f"(QDIBKR_API_TOKEN, or token in the config file's [api] section); "
                                 f"every request must then carry it")
    # IPPROTO_TCP named, not left 0: asyncio sets TCP_NODELAY only on sockets that say so, and without
    # it every response waits some 40 ms for the client's delayed ACK.
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise InputError("port", f"cannot listen on {host}:{port}: {e.strerror or e}") from None
    sock.listen(2048)
    return sock


def serve(host: str, port: int, defaults: Settings, store: Store, cors_origins: list[str] | None = None):
    """Serve the API until interrupted (Ctrl-C, SIGTERM), then disconnect from TWS. Web pages of
    ``cors_origins`` (default: the config file's ``[api] cors_origins``) may call it."""
    import uvicorn

    token = api_token()
    app = create_app(defaults, store, token, cors_origins)
    sock = listen(host, port, token)
    server = uvicorn.Server(uvicorn.Config(app, log_config=None, lifespan="on", timeout_graceful_shutdown=5))
    bound = sock.getsockname()
    address = f"[{bound[0]}]" if sock.family == socket.AF_INET6 else bound[0]
    print(f"qdibkr API listening on http://{address}:{bound[1]} (OpenAPI document at /openapi.json; "
          f"TWS/Gateway by default at {defaults.host}:{defaults.port}"
          f"{'; every request needs the API token' if token else ''}); Ctrl-C stops it", flush=True)
    gc.freeze()  # what start-up loaded stays put: the collector's full passes then scan only new objects
    asyncio.run(server.serve(sockets=[sock]))
