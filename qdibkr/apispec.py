"""What the HTTP API accepts and returns: its operations, their fields, how a request's fields
are checked, and the OpenAPI document, all from the same definitions so they cannot disagree.

Request field names are the product brief's (``clientId``, ``marketType``,
``orderType``, ...). Results are qdibkr's dataclasses with camelCase keys
(``avgFillPrice``), so one naming style runs through requests and responses.
Each field's JSON Schema is what ``read`` enforces (type, enum, bounds,
length, pattern; an unknown body field is refused, so a misspelt ``price``
cannot turn a limit order into a market order) and what the document shows.
What a schema cannot say (an HK quantity in whole board lots, a price on a
market order) is checked by the Python API behind it, with the same 400.
"""

import dataclasses
import datetime as dt
import functools
import math
import re
import types
import typing
from dataclasses import dataclass

from .errors import InputError
from .broker import AccountSummary, OrderResult, Quote, Status
from .signals import SIGNAL_TYPES
from .store import Signal
from .symbols import FORMATS, MARKET_TYPES

VERSION = "1.0.0"
DESCRIPTION = """Interactive Brokers TWS / IB Gateway over HTTP: US and Hong Kong stocks, paper by default.

Every answer is JSON: `{"success": true, "data": ...}`, or `{"success": false, "error": "...", "field": ...,
"twsCode": ...}` with the status saying what kind of failure it is. Every POST, PATCH and DELETE says
`Content-Type: application/json`, with `{}` as the body when there is nothing to send (else 415); a field
not listed for a request is refused. A request with an `Origin` other than the server's own is refused
(403) unless that origin is in the server's `[api] cors_origins`."""


@functools.cache  # called for every key of every response
def camel(name: str) -> str:
    """``avg_fill_price`` -> ``avgFillPrice``: Python's field names as the API spells them."""
    head, *rest = name.split("_")
    return head + "".join(word.title() for word in rest)


# ------------------------------------------------------------------ request fields
@dataclass(frozen=True)
class Field:
    name: str
    schema: dict  # JSON Schema (OpenAPI 3.0) of its value
    description: str
    required: bool = False


SYMBOL = Field("symbol", {"type": "string", "maxLength": 32, "example": "AAPL",
                          "pattern": r"^([A-Za-z]{1,6}([ ./-][A-Za-z])?|0*[0-9]{1,5}(\.[Hh][Kk])?)$"},
               f"the stock: {FORMATS}", required=True)
MARKET_TYPE = Field("marketType", {"type": "string", "enum": list(MARKET_TYPES)},
                    "USStock or HShare; default: from the symbol's form")
QUANTITY = Field("quantity", {"type": "integer", "minimum": 1, "maximum": 1_000_000_000, "example": 10},
                 "shares; Hong Kong stocks in whole board lots (0700.HK: 100)", required=True)
ORDER_TYPE = Field("orderType", {"type": "string", "enum": ["market", "limit"], "default": "market"},
                   "market (default) or limit")
PRICE = Field("price", {"type": "number", "minimum": 0, "exclusiveMinimum": True, "maximum": 10_000_000},
              "the limit price: required for orderType limit, refused for a market order")
TIF = Field("tif", {"type": "string", "enum": ["DAY", "GTC"], "default": "DAY"}, "time in force: DAY or GTC")

CONNECT_FIELDS = (
    Field("host", {"type": "string", "pattern": r"^[A-Za-z0-9.:%_-]{1,253}$", "example": "127.0.0.1"},
          "TWS/Gateway host; default: the server's --tws-host, QDIBKR_HOST, config file, 127.0.0.1"),
    Field("port", {"type": "integer", "minimum": 1, "maximum": 65535, "example": 7497},
          "TWS/Gateway API port; live ports (7496, 4001) only when the server was started with --live"),
    Field("clientId", {"type": "integer", "minimum": 0, "maximum": 2**31 - 1, "example": 1}, "API client id"),
    Field("account", {"type": "string", "pattern": r"^[A-Za-z0-9._-]{0,32}$"},
          "account id; default: the only account of the login"),
)
# A direct order's types, as the API names them, and TWS's (a trailing order with a limitOffset is a trailing
# limit); qdibkr.orders checks which fields each takes.
ORDER_TYPES = {"market": "MKT", "limit": "LMT", "stop": "STP", "stop_limit": "STP LMT", "trailing": "TRAIL",
               "moc": "MOC", "loc": "LOC"}
POSITIVE = {"type": "number", "minimum": 0, "exclusiveMinimum": True, "maximum": 10_000_000}
ORDER_FIELDS = (
    SYMBOL,
    Field("side", {"type": "string", "enum": ["buy", "sell"]}, "buy or sell", required=True),
    QUANTITY, MARKET_TYPE,
    Field("orderType", {"type": "string", "enum": list(ORDER_TYPES), "default": "market"},
          "market (default), limit, stop, stop_limit, trailing, moc (market on close) or loc (limit on close)"),
    dataclasses.replace(PRICE, description="the limit price: required for limit, stop_limit and loc, refused "
                                           "for the other types"),
    Field("stopPrice", POSITIVE, "the stop price: required for stop and stop_limit; for trailing, its first stop "
                                 "price (default: from the market)"),
    Field("trailAmount", POSITIVE, "trailing: the stop's distance from the best price, in money (or trailPercent)"),
    Field("trailPercent", {"type": "number", "minimum": 0, "exclusiveMinimum": True, "maximum": 100},
          "trailing: the stop's distance from the best price, in percent, below 100 (or trailAmount)"),
    Field("limitOffset", {"type": "number", "minimum": 0, "maximum": 10_000_000},
          "trailing: makes it a trailing limit order, its limit this far beyond the stop"),
    Field("algo", {"type": "string", "enum": ["adaptive"]}, "adaptive: IB's Adaptive algo (market and limit only)"),
    Field("priority", {"type": "string", "enum": ["patient", "normal", "urgent"], "default": "normal"},
          "the Adaptive algo's priority; with algo adaptive"),
    Field("outsideRth", {"type": "boolean", "default": False},
          "true: a US limit or stop_limit order may also trade outside regular hours"),
    Field("tif", {"type": "string", "enum": ["DAY", "GTC", "GTD"], "default": "DAY"},
          "time in force: DAY, GTC or GTD (with goodTill)"),
    Field("goodTill", {"type": "string", "example": "20261231 16:00:00 US/Eastern",
                       "pattern": r"^[0-9]{8} [0-9]{2}:[0-9]{2}:[0-9]{2} [A-Za-z0-9_/+-]{1,40}$"},
          "tif GTD: when the order expires, as YYYYMMDD HH:MM:SS Zone, in the future"),
    Field("account", {"type": "string", "maxLength": 32},
          "the connected account, if given (an order goes to the account the session connected for)"),
)
# What a modification may change, named as the order's own fields; the order keeps its type.
MODIFY_FIELDS = (
    dataclasses.replace(QUANTITY, required=False, description="the order's new size in shares"),
    dataclasses.replace(PRICE, description="the new limit price (limit, stop_limit and loc orders only)"),
    Field("stopPrice", POSITIVE, "the new stop price (stop and stop_limit orders; a trailing order's new stop)"),
    Field("trailAmount", POSITIVE, "a trailing order's new distance from the best price, in money"),
    Field("trailPercent", {"type": "number", "minimum": 0, "exclusiveMinimum": True, "maximum": 100},
          "a trailing order's new distance from the best price, in percent, below 100"),
)
SIGNAL_FIELDS = (
    Field("signalType", {"type": "string", "enum": list(SIGNAL_TYPES)},
          "open_long, add_long (buy), close_long, reduce_long (sell)", required=True),
    SYMBOL,
    dataclasses.replace(QUANTITY, required=False,
                        description="shares; close_long may leave it out to close the strategy's whole position"),
    Field("strategy", {"type": "string", "minLength": 1, "maxLength": 64, "example": "sma"},
          "the strategy emitting it (positions and limits are kept per strategy)", required=True),
    MARKET_TYPE, ORDER_TYPE, PRICE, TIF,
    Field("key", {"type": "string", "minLength": 1, "maxLength": 128},
          "idempotency key: the same key queues one signal however often it is sent"),
)
QUOTE_QUERY = (SYMBOL, MARKET_TYPE)
QUEUE_QUERY = (
    Field("strategy", {"type": "string", "minLength": 1, "maxLength": 64}, "only this strategy's signals"),
    Field("limit", {"type": "integer", "minimum": 1, "maximum": 1000, "default": 50}, "the latest N signals"),
)
ORDER_ID = Field("id", {"type": "integer", "minimum": 0, "maximum": 2**31 - 1}, "the order id TWS gave the order",
                 required=True)


def _violation(value, schema: dict) -> str | None:
    """What is wrong with a value under the subset of JSON Schema these fields use; None if nothing."""
    kind = schema["type"]
    if kind == "string" and not isinstance(value, str):
        return "must be a string"
    if kind == "boolean" and not isinstance(value, bool):
        return "must be true or false"
    if kind == "integer" and (isinstance(value, bool) or not isinstance(value, int)):
        return "must be a whole number"
    if kind == "number" and (isinstance(value, bool) or not isinstance(value, (int, float))
                             or not math.isfinite(value)):
        return "must be a number"
    if "enum" in schema and value not in schema["enum"]:
        return f"must be one of {', '.join(map(str, schema['enum']))}"
    low, high = schema.get("minimum"), schema.get("maximum")
    if low is not None and schema.get("exclusiveMinimum") and value <= low:
        return f"must be more than {low}"
    if low is not None and value < low:
        return f"must be at least {low}"
    if high is not None and value > high:
        return f"must be at most {high}"
    if kind == "string":
        if len(value) < schema.get("minLength", 0):
            return "must not be empty"
        if len(value) > schema.get("maxLength", math.inf):
            return f"must be at most {schema['maxLength']} characters"
        # Every pattern is anchored (^...$); fullmatch keeps Python's $ from passing a trailing newline.
        if "pattern" in schema and not re.fullmatch(schema["pattern"], value):
            return "is not in the expected form"
    return None


def read(values: dict, fields: tuple[Field, ...], *, query: bool = False) -> dict:
    """The fields of a JSON body (or, with ``query``, of a query string, whose values are text)
    checked against their schemas: a dict of those given (null counts as not given).

    Raises InputError naming the first field that is missing, unknown (bodies only) or invalid.
    """
    names = [f.name for f in fields]
    if not query:
        unknown = sorted(set(values) - set(names))
        if unknown:
            raise InputError(unknown[0], f"is not a field of this request; its fields are {', '.join(names)}"
                                         if names else "this request takes no fields")
    given = {}
    for f in fields:
        value = values.get(f.name)
        if value is None:
            if f.required:
                raise InputError(f.name, f"is required ({f.description})")
            continue
        if query and f.schema["type"] == "integer":
            value = int(value) if re.fullmatch(r"-?[0-9]{1,18}", value) else value
        problem = _violation(value, f.schema)
        if problem:
            shown = f"{value!r} " if len(repr(value)) <= 40 else ""
            raise InputError(f.name, f"{shown}{problem} ({f.description})")
        given[f.name] = value
    return given


# ------------------------------------------------------------------ results
FLOAT = {"type": "number", "nullable": True}  # null where TWS reported no value


def _schema_of(kind) -> dict:
    """The JSON Schema of a Python annotation, as ``jsonable`` in qdibkr.api renders values of it."""
    args = [a for a in typing.get_args(kind) if a is not type(None)]
    if typing.get_origin(kind) in (typing.Union, types.UnionType) and len(args) == 1:
        return {**_schema_of(args[0]), "nullable": True}
    if typing.get_origin(kind) is dict:
        return {"type": "object", "additionalProperties": _schema_of(args[1])}
    simple = {bool: {"type": "boolean"}, int: {"type": "integer"}, float: FLOAT, str: {"type": "string"}}
    if kind in simple:
        return simple[kind]
    if kind is dt.datetime:
        return {"type": "string", "format": "date-time"}
    raise TypeError(f"no JSON Schema for {kind!r}")


def record(fields: dict) -> dict:
    """An object schema with exactly these fields, all present: {python_name: annotation}."""
    return {"type": "object", "additionalProperties": False, "required": [camel(n) for n in fields],
            "properties": {camel(n): _schema_of(kind) for n, kind in fields.items()}}


def dataclass_record(cls) -> dict:
    return record(typing.get_type_hints(cls))


POSITION = record({"symbol": str, "quantity": float, "avg_cost": float, "market_price": float,
                   "market_value": float, "unrealized_pnl": float, "realized_pnl": float, "currency": str,
                   "account": str})
OPEN_ORDER = record({**typing.get_type_hints(OrderResult), "client_id": int, "account": str})
SIGNAL = dataclass_record(Signal)
QUEUE = {"type": "object", "additionalProperties": False, "required": ["halted", "signals"], "properties": {
    "halted": {"type": "string", "nullable": True, "description": "why sending is halted; null when it is not"},
    "signals": {"type": "array", "items": SIGNAL}}}


# ------------------------------------------------------------------ operations
@dataclass(frozen=True)
class Operation:
    name: str  # the method of qdibkr.api.Api that serves it
    method: str
    path: str
    summary: str
    result: dict  # schema of the success response's data
    body: tuple[Field, ...] | None = None
    query: tuple[Field, ...] = ()
    errors: tuple[int, ...] = ()  # statuses it may answer besides 200, 400, 403 (Origin), 413/415 and 401 (token)


# Their requests must say Content-Type: application/json, even without a body.
JSON_METHODS = ("POST", "PATCH", "DELETE")
TWS = (409, 502)
QUEUE_DOWN = 503  # the queue's database could not be reached
OPERATIONS = (
    Operation("status", "GET", "/api/ibkr/status", "Connection status", dataclass_record(Status), errors=(502,)),
    Operation("connect", "POST", "/api/ibkr/connect", "Connect to TWS / IB Gateway (the server's settings fill "
              "in what the body leaves out)", dataclass_record(Status), body=CONNECT_FIELDS, errors=(403, 409, 502)),
    Operation("disconnect", "POST", "/api/ibkr/disconnect", "Disconnect", dataclass_record(Status), body=()),
    Operation("account", "GET", "/api/ibkr/account", "Account summary", dataclass_record(AccountSummary), errors=TWS),
    Operation("positions", "GET", "/api/ibkr/positions", "Positions at market value",
              {"type": "array", "items": POSITION}, errors=TWS),
    Operation("orders", "GET", "/api/ibkr/orders", "Open orders of every client",
              {"type": "array", "items": OPEN_ORDER}, errors=TWS),
    Operation("place_order", "POST", "/api/ibkr/order", "Place a market, limit, stop, stop-limit, trailing or "
              "on-close order; answers once TWS has (409 while the kill switch is on)", dataclass_record(OrderResult), body=ORDER_FIELDS,
              errors=(*TWS, QUEUE_DOWN)),
    Operation("modify_order", "PATCH", "/api/ibkr/order/{id}", "Change the size, limit, stop or trail of an open "
              "order this server placed (its type stays), through the same checks as a new order; answers once "
              "TWS has (409 while the kill switch is on)", dataclass_record(OrderResult), body=MODIFY_FIELDS,
              errors=(404, *TWS, QUEUE_DOWN)),
    Operation("cancel_order", "DELETE", "/api/ibkr/order/{id}", "Cancel an open order this server placed",
              dataclass_record(OrderResult), body=(), errors=(404, *TWS)),
    Operation("quote", "GET", "/api/ibkr/quote", "Bid, ask, last, close and volume (delayed when not subscribed)",
              dataclass_record(Quote), query=QUOTE_QUERY, errors=TWS),
    Operation("signal", "POST", "/api/ibkr/signal", "Queue a trading signal for the runner (the same key "
              "queues one signal)", SIGNAL, body=SIGNAL_FIELDS, errors=(*TWS, QUEUE_DOWN)),
    Operation("queue", "GET", "/api/ibkr/queue", "The latest signals and their orders' progress", QUEUE,
              query=QUEUE_QUERY, errors=(QUEUE_DOWN,)),
)

ERROR_SCHEMA = {
    "type": "object", "additionalProperties": False, "required": ["success", "error", "field", "twsCode"],
    "properties": {
        "success": {"type": "boolean", "enum": [False]},
        "error": {"type": "string", "description": "what went wrong and what to do"},
        "field": {"type": "string", "nullable": True, "description": "the request field at fault"},
        "twsCode": {"type": "integer", "nullable": True, "description": "TWS's error code, when TWS refused"}}}
REASONS = {400: "Bad input; `field` names it", 401: "No or wrong API token", 403: "Sent by a web page of another "
           "origin (`field`: Origin)", 404: "No such open order", 409: "Not connected, or trading is halted",
           413: "Body too large", 415: "Content-Type is not application/json", 502: "TWS refused or could not be "
           "reached", 503: "The queue's database could not be reached"}
LIVE_REFUSED = "Live trading is not enabled on this server, or sent by a web page of another origin (`field`: Origin)"


def _parameter(f: Field, where: str) -> dict:
    return {"name": f.name, "in": where, "required": f.required, "description": f.description,
            "schema": f.schema}


def document(token: bool) -> dict:
    """The OpenAPI 3.0 document; with ``token``, every operation needs the bearer token."""
    paths: dict = {}
    for op in OPERATIONS:
        statuses = sorted({400, 403, *op.errors, *((401,) if token else ()), *((413,) if op.body is not None else ()),
                           *((415,) if op.method in JSON_METHODS else ())})
        reasons = {**REASONS, **({403: LIVE_REFUSED} if 403 in op.errors else {})}
        spec = {
            "operationId": op.name, "summary": op.summary,
            "parameters": [_parameter(f, "query") for f in op.query] +
                          ([_parameter(ORDER_ID, "path")] if "{id}" in op.path else []),
            "responses": {
                "200": {"description": "Success", "content": {"application/json": {"schema": {
                    "type": "object", "additionalProperties": False, "required": ["success", "data"],
                    "properties": {"success": {"type": "boolean", "enum": [True]}, "data": op.result}}}}},
                **{str(s): {"description": reasons[s], "content": {"application/json": {
                    "schema": {"$ref": "#/components/schemas/Error"}}}} for s in statuses}},
        }
        if op.body is not None:
            body = {"type": "object", "additionalProperties": False, "properties": {
                f.name: {**f.schema, "description": f.description, **({} if f.required else {"nullable": True})}
                for f in op.body}}
            required = [f.name for f in op.body if f.required]
            if required:
                body["required"] = required
            spec["requestBody"] = {"required": bool(required), "content": {"application/json": {"schema": body}}}
        paths.setdefault(op.path, {})[op.method.lower()] = spec
    doc = {
        "openapi": "3.0.3",
        "info": {"title": "qdibkr HTTP API", "version": VERSION, "description": DESCRIPTION},
        "paths": paths,
        "components": {"schemas": {"Error": ERROR_SCHEMA}},
    }
    if token:
        doc["components"]["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
        doc["security"] = [{"bearer": []}]
    return doc
