"""The ``qdibkr`` command line: a thin layer over the Python API.

Every command that talks to TWS takes the same connection flags (``--host``,
``--port``, ``--preset``, ``--client-id``, ``--account``, ``--live``) and
prints a readable table, or JSON with ``--json``. Heavy imports (pandas, the
simulator) happen inside the commands that need them, so that a quick
``qdibkr quote AAPL`` starts as fast as a bare ib_insync script.
"""

import argparse
import dataclasses
import json
import logging
import sys

from .config import PRESETS
from .display import cell, records, table
from .errors import InputError, QdibkrError


# ------------------------------------------------------------------ output
def show(result, as_json: bool, vertical: bool = False):
    rows = records(result)
    if as_json:
        payload = rows[0] if dataclasses.is_dataclass(result) else rows
        print(json.dumps(payload, default=str, indent=2))
    elif vertical:  # one record: a field per line reads better than a wide table
        width = max(map(len, rows[0]))
        print("\n".join(f"{k.ljust(width)}  {cell(v)}" for k, v in rows[0].items()))
    else:
        print(table(rows))


# ------------------------------------------------------------------ commands
def connected(args):
    from .ibkr import IBKR

    ibkr = IBKR(host=args.host, port=args.port, preset=args.preset, client_id=args.client_id,
                account=args.account, live=args.live or None)
    return ibkr.connect()


def cmd_status(args):
    with connected(args) as ibkr:
        show(ibkr.status(), args.json, vertical=True)


def cmd_account(args):
    with connected(args) as ibkr:
        show(ibkr.account_summary(), args.json, vertical=True)


def cmd_positions(args):
    with connected(args) as ibkr:
        show(ibkr.positions(), args.json)


def cmd_orders(args):
    with connected(args) as ibkr:
        show(ibkr.orders(), args.json)


def cmd_trades(args):
    with connected(args) as ibkr:
        show(ibkr.trades(), args.json)


def cmd_order(args):
    with connected(args) as ibkr:
        result = ibkr.place_order(args.symbol, args.side, args.quantity, limit=args.limit, tif=args.tif,
                                  market_type=args.market)
        show(result, args.json, vertical=True)


def cmd_cancel(args):
    with connected(args) as ibkr:
        show(ibkr.cancel_order(args.order_id), args.json, vertical=True)


def cmd_quote(args):
    with connected(args) as ibkr:
        quotes = ibkr.quote(*args.symbols, market_type=args.market)
        show(quotes, args.json)
        delayed = [q.symbol for q in quotes if q.delayed]
        if delayed and not args.json:
            print(f"delayed data (no live subscription): {', '.join(delayed)}", file=sys.stderr)


def cmd_sim(args):
    import asyncio

    from .sim import SimGateway

    gateway = SimGateway(
        args.host, args.port, accounts=args.accounts.split(","), seed=args.seed,
        state_path=args.state, live_data=[m for m in args.live_data.split(",") if m],
        speed=args.speed)

    async def serve():
        await gateway.start()
        print(f"simulated gateway listening on {gateway.host}:{gateway.port}, accounts {args.accounts}; "
              f"Ctrl-C stops it", flush=True)
        await gateway.serve_forever()

    try:
        asyncio.run(serve())
    except KeyboardInterrupt:
        pass


def cmd_demo(args):
    from .demo import run_demo

    run_demo()


# ------------------------------------------------------------------ parser
def quantity(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of shares") from None
    if value <= 0 or not value.is_integer():
        raise argparse.ArgumentTypeError(f"{text!r} must be a positive whole number of shares")
    return int(value)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="qdibkr", description="Interactive Brokers from the command line: "
                                     "US and Hong Kong stocks, paper by default.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log what happens (to stderr)")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    conn = argparse.ArgumentParser(add_help=False)
    group = conn.add_argument_group("connection (else QDIBKR_* variables, the config file, then defaults)")
    group.add_argument("--host", help="TWS/Gateway host (default 127.0.0.1)")
    group.add_argument("--port", type=int, help="API port (default 7497, TWS paper)")
    group.add_argument("--preset", choices=list(PRESETS), help="a named port: " +
                       ", ".join(f"{n} {p}" for n, p in PRESETS.items()))
    group.add_argument("--client-id", type=int, help="API client id (default 1)")
    group.add_argument("--account", help="account id (default: the only managed account)")
    group.add_argument("--live", action="store_true", help="allow a live port or a non-paper account")
    group.add_argument("--json", action="store_true", help="print JSON instead of a table")

    def command(name, func, help_text, connection=True):
        sub = commands.add_parser(name, help=help_text, description=help_text, parents=[conn] if connection else [])
        sub.set_defaults(run=func)
        return sub

    command("status", cmd_status, "connection status, server version and time")
    command("account", cmd_account, "account summary: net liquidation, cash by currency, buying power, P&L")
    command("positions", cmd_positions, "positions with market value and unrealised P&L")
    command("orders", cmd_orders, "open orders of every client")
    command("trades", cmd_trades, "today's executions with commissions")
    order = command("order", cmd_order, "place a market order, or a limit order with --limit")
    order.add_argument("side", choices=["buy", "sell"])
    order.add_argument("symbol", help="AAPL, BRK.B, 0700.HK, 00700 or 700")
    order.add_argument("quantity", type=quantity)
    order.add_argument("--limit", type=float, metavar="PRICE", help="limit price (default: market order)")
    order.add_argument("--tif", default="DAY", choices=["DAY", "GTC"], type=str.upper)
    order.add_argument("--market", choices=["USStock", "HShare"], help="market type (default: from the symbol)")
    cancel = command("cancel", cmd_cancel, "cancel an open order placed by this client id")
    cancel.add_argument("order_id", type=int)
    quote = command("quote", cmd_quote, "bid, ask, last, close and volume; delayed when not subscribed")
    quote.add_argument("symbols", nargs="+", metavar="SYMBOL")
    quote.add_argument("--market", choices=["USStock", "HShare"], help="market type (default: from the symbol)")

    sim = command("sim", cmd_sim, "run the simulated TWS gateway (paper account, offline)", connection=False)
    sim.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback only)")
    sim.add_argument("--port", type=int, default=PRESETS["tws-paper"], help="port (default 7497, TWS paper)")
    sim.add_argument("--state", metavar="FILE", help="JSON file that keeps accounts, orders and fills across restarts")
    sim.add_argument("--seed", type=int, default=0, help="seed of the price model (same seed, same prices)")
    sim.add_argument("--accounts", default="DU1234567", help="comma-separated paper account ids")
    sim.add_argument("--live-data", default="US", metavar="MARKETS",
                     help="markets with a live data subscription, of US,HK (others get delayed data); default US")
    sim.add_argument("--speed", type=float, default=1.0, help="simulated seconds per real second")
    command("demo", cmd_demo, "trade against the simulated gateway, end to end", connection=False)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.CRITICAL,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        args.run(args)
    except InputError as e:
        print(f"qdibkr: {e}", file=sys.stderr)
        return 2
    except QdibkrError as e:
        print(f"qdibkr: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
