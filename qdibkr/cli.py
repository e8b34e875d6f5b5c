"""The ``qdibkr`` command line: a thin layer over the Python API.

Every command that talks to TWS takes the same connection flags (``--host``,
``--port``, ``--preset``, ``--client-id``, ``--account``, ``--live``). Every
command that prints a table prints JSON instead with ``--json``, and only
those take it: a server or the runner has no table to replace. Heavy imports
(pandas, the simulator) happen inside the commands that need them, so that a
quick ``qdibkr quote AAPL`` starts as fast as a bare ib_insync script.
"""

import argparse
import dataclasses
import datetime as dt
import json
import logging
import os
import sys
import time

from .config import PRESETS
from .display import cell, records, table
from .errors import InputError, QdibkrError


STATUS_INTERVAL = 0.25  # seconds: the runner's status line is redrawn at most 4 times a second

# ------------------------------------------------------------------ output
def print_json(payload):
    """JSON for scripts: times in ISO 8601 (with their zone), anything else unusual as text."""
    def plain(value):
        return value.isoformat() if isinstance(value, (dt.datetime, dt.date)) else str(value)

    print(json.dumps(payload, default=plain, indent=2))


def show(result, as_json: bool, vertical: bool = False):
    rows = records(result)
    if as_json:
        print_json(rows[0] if dataclasses.is_dataclass(result) else rows)
    elif vertical:  # one record: a field per line reads better than a wide table
        width = max(map(len, rows[0]))
        print("\n".join(f"{k.ljust(width)}  {cell(v)}" for k, v in rows[0].items()))
    else:
        print(table(rows))


# ------------------------------------------------------------------ commands
def connected(args, store=None):
    """The CLI's session (client id 1 unless given); ``store``: the queue whose kill switch and journal
    its orders' gate uses."""
    from .ibkr import IBKR

    ibkr = IBKR(host=args.host, port=args.port, preset=args.preset, client_id=args.client_id,
                account=args.account, live=args.live or None, face="cli", store=store)
    return ibkr.connect()


def cmd_status(args):
    with connected(args) as ibkr:
        show(ibkr.status(), args.json, vertical=True)


def cmd_account(args):
    with connected(args) as ibkr:
        show(ibkr.account_summary(), args.json, vertical=True)


def cmd_positions(args):
    with connected(args) as ibkr:
        account = ibkr.positions()
    if args.strategy is None:
        show(account, args.json)
        return
    mine = [p for p in queue_store(args).positions(args.strategy)]
    if args.json:
        print_json({"strategy": records(mine), "account": records(account)})
    else:
        print(f"strategy {args.strategy} (from the queue's fills)\n{table(records(mine))}\n")
        print(f"IB account\n{table(records(account))}")


def cmd_reconcile(args):
    """Strategy positions summed per symbol against IB's account positions."""
    with connected(args) as ibkr:
        account = {row["symbol"]: row["quantity"] for row in records(ibkr.positions())}
    strategies: dict[str, int] = {}
    for p in queue_store(args).positions():
        strategies[p.symbol] = strategies.get(p.symbol, 0) + p.quantity
    rows = [{"symbol": s, "strategies": strategies.get(s, 0), "account": account.get(s, 0),
             "difference": account.get(s, 0) - strategies.get(s, 0)}
            for s in sorted(set(account) | set(strategies))]
    show(rows, args.json)
    if any(r["difference"] for r in rows) and not args.json:
        print("differences: the account holds shares no strategy recorded, or the reverse "
              "(manual trades, or fills the runner has not seen yet)", file=sys.stderr)


def cmd_orders(args):
    with connected(args) as ibkr:
        show(ibkr.orders(), args.json)


def cmd_trades(args):
    if args.strategy is not None:
        show(queue_store(args).fills(args.strategy), args.json)
        return
    with connected(args) as ibkr:
        show(ibkr.trades(), args.json)


# ------------------------------------------------------------------ the queue and the runner
def queue_store(args):
    from .config import config_file, queue_location
    from .store import Store

    return Store(queue_location(config_file(), args.db))


def cmd_signal(args):
    from .signals import board_lot, emit
    from .symbols import parse_symbol

    store = queue_store(args)
    symbol = parse_symbol(args.symbol, args.market)
    if store.board_lot(symbol.display) is None and symbol.market == "HShare":
        with connected(args) as ibkr:  # learn the board lot once; the queue remembers it
            board_lot(store, symbol, ibkr)
    signal = emit(args.signal_type, args.symbol, args.quantity, strategy=args.strategy, limit=args.limit,
                  tif=args.tif, market_type=args.market, key=args.key, source="cli", store=store)
    if args.json:
        show(signal, True)
    else:
        size = signal.quantity if signal.quantity is not None else "all"
        price = f" limit {signal.limit_price:g}" if signal.limit_price is not None else ""
        print(f"signal {signal.id[:8]}: {signal.signal_type} {size} {signal.symbol}{price} "
              f"for {signal.strategy}: {signal.status}")


QUEUE_COLUMNS = ("seq", "id", "created_at", "strategy", "signal_type", "symbol", "quantity", "order_type",
                 "limit_price", "status", "filled", "avg_price", "order_id", "reason")


def cmd_queue(args):
    if args.action == "archive":
        moved = queue_store(args).archive(args.older_than)
        print(f"archived {moved} finished signals last changed over {args.older_than / 86400:g} days ago "
              f"(to signals_archive, their fills to fills_archive)")
        return
    signals = queue_store(args).signals(strategy=args.strategy, limit=args.limit)
    rows = [{k: v for k, v in r.items() if k in QUEUE_COLUMNS} for r in records(signals)]
    if not args.json:
        for row in rows:
            row["id"] = row["id"][:8]
            row["created_at"] = dt.datetime.fromtimestamp(row["created_at"]).strftime("%m-%d %H:%M:%S")
    show(rows, args.json)


def cmd_cancel_signal(args):
    from .signals import wake_runner

    store = queue_store(args)
    signal = store.find_signal(args.signal_id)
    if signal is None:
        raise InputError("signal_id", f"no single signal has the id {args.signal_id!r}; `qdibkr queue` lists them")
    signal = store.cancel_signal(signal.id)
    wake_runner(store)
    print(f"signal {signal.id[:8]}: " + (f"{signal.status}" if not signal.cancel_requested
                                          else f"{signal.status}, cancel requested (the runner cancels it at IB)"))


def cmd_halt(args):
    from .signals import wake_runner

    store = queue_store(args)
    store.halt(args.reason, cancel_open=args.cancel_open)
    wake_runner(store)
    print("halted: no order is sent, from any face, until `qdibkr resume`" +
          ("; open orders will be cancelled" if args.cancel_open else ""))


def cmd_resume(args):
    from .signals import wake_runner

    store = queue_store(args)
    store.resume()
    wake_runner(store)
    print("resumed")


def status_line(text, interval: float = STATUS_INTERVAL):
    """A handler that redraws ``text()`` on the terminal's last line after events, at most once per
    ``interval`` seconds however many events come (a burst of TWS messages draws once, at its end too)."""
    import asyncio

    drawn, pending = [0.0], [False]

    def draw():
        pending[0], drawn[0] = False, time.monotonic()
        print(f"\r{text()}\033[K", end="", file=sys.stderr, flush=True)

    def on_event(*_):
        if not pending[0]:
            pending[0] = True
            asyncio.get_event_loop().call_later(max(0.0, drawn[0] + interval - time.monotonic()), draw)
    return on_event


def cmd_runner(args):
    from .runner import Runner, runner_settings, summary

    store = queue_store(args)
    logging.getLogger("qdibkr").setLevel(logging.INFO)
    settings = runner_settings(**{k: v for k, v in dict(
        host=args.host, port=args.port, preset=args.preset, client_id=args.client_id, account=args.account,
        live=args.live or None).items() if v is not None})
    runner = Runner(store, settings)
    if sys.stderr.isatty():
        runner.ibkr.updated += status_line(lambda: summary(store))
    try:
        runner.ibkr.run(runner.run(once=args.once, wait=args.wait))
    except KeyboardInterrupt:
        pass
    print(summary(store), file=sys.stderr)


def cmd_order(args):
    if args.stop_limit and args.limit is not None:
        raise InputError("limit", "--stop-limit gives the limit already (its second price); leave out --limit")
    stop, limit = args.stop_limit or (args.stop, args.limit)
    trail = args.trail or {}
    with connected(args, store=queue_store(args)) as ibkr:  # its gate: the kill switch, risk limits, short sales
        result = ibkr.place_order(args.symbol, args.side, args.quantity, limit=limit, stop=stop, **trail,
                                  limit_offset=args.limit_offset, at_close=args.at_close, adaptive=args.adaptive,
                                  outside_rth=args.outside_rth, tif=args.tif, good_till=args.good_till,
                                  market_type=args.market)
        show(result, args.json, vertical=True)


def cmd_modify(args):
    with connected(args, store=queue_store(args)) as ibkr:  # its gate: the kill switch, risk limits, short sales
        result = ibkr.modify_order(args.order_id, quantity=args.quantity, limit=args.limit, stop=args.stop,
                                   **(args.trail or {}))
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


def cmd_bars(args):
    import pandas as pd

    from .bars import fetch

    if args.out and not args.out.endswith((".parquet", ".csv")):
        raise InputError("out", f"{args.out!r}: name a .parquet or a .csv file")
    with connected(args) as ibkr:
        bars = fetch(ibkr, args.symbols, duration=args.duration, bar_size=args.bar_size, use_rth=args.rth,
                     what_to_show=args.what)
    if len({str(frame.index.tz) for frame in bars.values()}) > 1:  # one time column needs one zone
        bars = {symbol: frame.tz_convert("UTC") for symbol, frame in bars.items()}
    rows = pd.concat(bars, names=["symbol"]).reset_index()
    if args.out is None:
        show(rows, args.json)
        return
    if args.out.endswith(".parquet"):
        rows.to_parquet(args.out, index=False)
    else:
        rows.to_csv(args.out, index=False)
    print(f"{len(rows)} bars of {len(bars)} symbols written to {args.out}", file=sys.stderr)


def cmd_sim(args):
    import asyncio
    import contextlib
    import signal

    from .sim import SimGateway

    try:
        gateway = SimGateway(
            args.host, args.port, accounts=args.accounts.split(","), seed=args.seed,
            state_path=args.state, live_data=[m for m in args.live_data.split(",") if m],
            speed=args.speed, start=args.start, always_open=args.always_open)
    except ValueError as e:
        raise InputError("--start" if args.start else "--speed", str(e)) from None

    async def serve():
        await gateway.start()
        # SIGTERM (a service manager's stop, `kill`) ends it as cleanly as Ctrl-C: the clients are
        # disconnected and the state is saved. (Every change is journaled before clients hear of
        # it, so even SIGKILL loses nothing they were told.) Windows has no such handlers.
        with contextlib.suppress(NotImplementedError):
            asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, asyncio.current_task().cancel)
        print(f"simulated gateway listening on {gateway.host}:{gateway.port}, accounts {args.accounts}; "
              f"Ctrl-C stops it", flush=True)
        print(gateway.market_state()
              + (f"; time runs {args.speed:g}x real time" if args.speed != 1 else ""), flush=True)
        await gateway.serve_forever()

    try:
        asyncio.run(serve())
    except (KeyboardInterrupt, asyncio.CancelledError):
        pass


# ------------------------------------------------------------------ notebook runs and schedules
def parameter_value(text: str):
    """A ``-p NAME VALUE`` value: JSON where it parses (10, 2.5, true, null, ["AAPL", "MSFT"]), else the text."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def report_run(run):
    """Print how a notebook run ended; a failed run is an error (exit status 1)."""
    print(f"run {run.id[:8]} of {run.notebook} ({run.strategy}): {run.status} in {run.duration:.1f} s; "
          f"executed notebook {run.output_path}")
    if run.status != "succeeded":
        raise QdibkrError(f"the notebook failed, so none of its signals will trade: {run.error}")
    print(f"{run.signals} signal(s) released to the runner")


def cmd_run(args):
    from pathlib import Path

    from .runs import Stopped, check_parameters, run_notebook, run_until_stopped, stop_on_signals

    parameters = {name: parameter_value(value) for name, value in args.parameters or []}
    if Path(args.notebook).is_file():
        check_parameters(args.notebook, parameters)  # the check a schedule file's parameters get too
    try:
        with stop_on_signals():  # SIGINT, SIGTERM: the run is recorded failed, its signals cancelled
            run = run_until_stopped(run_notebook, args.notebook, parameters, store=queue_store(args),
                                    output_dir=args.runs, timeout=args.timeout)
    except Stopped as stopped:
        print(f"qdibkr: the run was {stopped}: recorded failed, none of its signals will trade", file=sys.stderr)
        raise SystemExit(128 + stopped.signum) from None
    report_run(run)


def cmd_schedule(args):
    from .runs import Stopped, run_until_stopped, stop_on_signals
    from .schedule import Scheduler, load_jobs

    store = queue_store(args)
    store.fail_orphaned_runs()  # runs a killed scheduler left `running`: failed, their signals cancelled
    scheduler = Scheduler(load_jobs(args.dir), store, output_dir=args.runs)
    now = scheduler.clock()
    if args.action == "list":
        rows = []
        for job in scheduler.jobs.values():
            upcoming = job.next_slot(now)
            last = store.runs(job.name, limit=1)
            rows.append({"job": job.name, "notebook": job.notebook.name, "when": job.when,
                         "next run": upcoming.strftime("%Y-%m-%d %H:%M %Z") if upcoming else "-",
                         "last run": f"{last[0].status} {dt.datetime.fromtimestamp(last[0].started_at):%m-%d %H:%M}"
                         if last else "-"})
        show(rows, args.json)
    elif args.action == "run":
        if not args.job:
            raise InputError("job", f"name the job to run: qdibkr schedule run JOB ({', '.join(scheduler.jobs)})")
        job = scheduler.job(args.job)
        try:
            with stop_on_signals():
                run = run_until_stopped(scheduler.run, job, now)
        except Stopped as stopped:
            print(f"qdibkr: the run was {stopped}: recorded failed, none of its signals will trade", file=sys.stderr)
            raise SystemExit(128 + stopped.signum) from None
        if run is None:
            raise QdibkrError(f"job {args.job} has run for {now:%H:%M:%S} UTC already")
        report_run(run)
    else:
        logging.getLogger("qdibkr").setLevel(logging.INFO)
        print(f"scheduler: {len(scheduler.jobs)} job(s) from {args.dir or 'schedules'}; Ctrl-C or SIGTERM stops "
              f"it, and any run under way (recorded failed, its signals cancelled)", file=sys.stderr)
        with stop_on_signals():
            try:
                scheduler.serve()
            except Stopped as stopped:
                for run in scheduler.abort(str(stopped)):
                    print(f"scheduler {stopped}: run {run.id[:8]} of job {run.job} recorded {run.status}, "
                          f"none of its signals will trade", file=sys.stderr)


def cmd_demo(args):
    from .demo import run_demo

    run_demo()


def cmd_serve(args):
    from .api import serve
    from .config import load_settings

    if not args.verbose:  # a server shows its warnings and errors even without -v
        for name in ("qdibkr", "uvicorn.error"):
            logging.getLogger(name).setLevel(logging.WARNING)
    settings = load_settings(host=args.host, port=args.port, preset=args.preset, client_id=args.client_id,
                             account=args.account, live=args.live or None, face="api")
    try:
        serve(args.listen_host, args.listen_port, settings, queue_store(args))
    except KeyboardInterrupt:
        pass


# ------------------------------------------------------------------ parser
def trail(text: str) -> dict:
    """--trail 2% (a percentage of the price) or --trail 1.5 (an amount of money), as place_order's keyword."""
    percent = text.strip().endswith("%")
    try:
        value = float(text.strip().rstrip("%"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a trail; write 2% or 1.5") from None
    return {"trail_percent" if percent else "trail_amount": value}


def quantity(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of shares") from None
    if value <= 0 or not value.is_integer():
        raise argparse.ArgumentTypeError(f"{text!r} must be a positive whole number of shares")
    return int(value)


def age(text: str) -> float:
    """An age such as 30d, 12h, 90m or 45s, in seconds."""
    units = {"d": 86400, "h": 3600, "m": 60, "s": 1}
    try:
        value = float(text[:-1]) * units[text[-1]] if text[-1:] in units else float(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not an age: write it as 30d, 12h, 90m or 45s")
    return value


def count(text: str) -> int:
    """A --limit N: the store takes 0 or less for no limit at all, which is not what N says."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be at least 1")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="qdibkr", description="Interactive Brokers from the command line: "
                                     "US and Hong Kong stocks, paper by default.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log what happens (to stderr)")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def connection_flags(prefix: str = "") -> argparse.ArgumentParser:
        """The connection flags. ``serve`` spells host and port --tws-host and --tws-port: its own
        --host and --port say where it listens."""
        flags = argparse.ArgumentParser(add_help=False)
        group = flags.add_argument_group("connection (else QDIBKR_* variables, the config file, then defaults)")
        group.add_argument(f"--{prefix}host", dest="host", help="TWS/Gateway host (default 127.0.0.1)")
        group.add_argument(f"--{prefix}port", dest="port", type=int, help="API port (default 7497, TWS paper)")
        group.add_argument("--preset", choices=list(PRESETS), help="a named port: " +
                           ", ".join(f"{n} {p}" for n, p in PRESETS.items()))
        group.add_argument("--client-id", type=int, help="API client id (default 1)")
        group.add_argument("--account", help="account id (default: the only managed account)")
        group.add_argument("--live", action="store_true", help="allow a live port or a non-paper account")
        return flags

    conn = connection_flags()

    queue_db = argparse.ArgumentParser(add_help=False)
    queue_db.add_argument("--db", help="queue database (default: QDIBKR_DB, the config file, "
                                       "~/.local/share/qdibkr/queue.sqlite)")
    output = argparse.ArgumentParser(add_help=False)  # for the commands that print a table, and only those
    output.add_argument_group("output").add_argument("--json", action="store_true",
                                                     help="print JSON instead of a table")

    def command(name, func, help_text, *flags):
        """A command taking ``flags``, the shared flags it has a use for (``conn``, ``output``), and --db."""
        sub = commands.add_parser(name, help=help_text, description=help_text, parents=[*flags, queue_db])
        sub.set_defaults(run=func)
        return sub

    command("status", cmd_status, "connection status, server version and time", conn, output)
    command("account", cmd_account, "account summary: net liquidation, cash by currency, buying power, P&L",
            conn, output)
    positions = command("positions", cmd_positions, "positions with market value and unrealised P&L", conn, output)
    positions.add_argument("--strategy", help="also show this strategy's positions from the queue's fills")
    command("reconcile", cmd_reconcile, "strategy positions (queue) against IB's account positions", conn, output)
    command("orders", cmd_orders, "open orders of every client", conn, output)
    trades = command("trades", cmd_trades, "today's executions with commissions", conn, output)
    trades.add_argument("--strategy", help="this strategy's fills from the queue instead")
    order = command("order", cmd_order, "place a market order, or a limit, stop, stop-limit, trailing or "
                                         "on-close order with the flags below", conn, output)
    order.add_argument("side", choices=["buy", "sell"])
    order.add_argument("symbol", help="AAPL, BRK.B, 0700.HK, 00700 or 700")
    order.add_argument("quantity", type=quantity)
    order.add_argument("--limit", type=float, metavar="PRICE", help="limit price (default: market order)")
    kind = order.add_mutually_exclusive_group()
    kind.add_argument("--stop", type=float, metavar="PRICE", help="a stop order triggered at PRICE "
                                                                   "(a stop-limit with --limit)")
    kind.add_argument("--stop-limit", type=float, nargs=2, metavar=("STOP", "LIMIT"),
                      help="a stop-limit order: its stop, then its limit")
    kind.add_argument("--trail", type=trail, metavar="AMOUNT|PERCENT%",
                      help="a trailing stop this far from the best price: 1.5 (money) or 2%% (percent)")
    kind.add_argument("--at-close", action="store_true", help="at the closing auction: MOC (LOC with --limit)")
    order.add_argument("--limit-offset", type=float, metavar="AMOUNT",
                       help="with --trail: a trailing limit order, its limit this far beyond the stop")
    order.add_argument("--adaptive", choices=["patient", "normal", "urgent"], type=str.lower,
                       help="work a market or limit order with IB's Adaptive algo at this priority")
    order.add_argument("--outside-rth", action="store_true",
                       help="a US limit or stop-limit order may also trade outside regular hours")
    order.add_argument("--tif", default="DAY", choices=["DAY", "GTC", "GTD"], type=str.upper)
    order.add_argument("--good-till", metavar="'YYYYMMDD HH:MM:SS ZONE'", help="with --tif GTD: when it expires")
    order.add_argument("--market", choices=["USStock", "HShare"], help="market type (default: from the symbol)")
    modify = command("modify", cmd_modify, "change the size, limit, stop or trail of an open order placed by this "
                                           "client id (its type stays)", conn, output)
    modify.add_argument("order_id", type=int)
    modify.add_argument("--quantity", type=quantity, help="its new size in shares")
    modify.add_argument("--limit", type=float, metavar="PRICE", help="its new limit price")
    modify.add_argument("--stop", type=float, metavar="PRICE", help="its new stop price")
    modify.add_argument("--trail", type=trail, metavar="AMOUNT|PERCENT%",
                        help="its new trail: 1.5 (money) or 2%% (percent)")
    cancel = command("cancel", cmd_cancel, "cancel an open order placed by this client id", conn, output)
    cancel.add_argument("order_id", type=int)
    quote = command("quote", cmd_quote, "bid, ask, last, close and volume; delayed when not subscribed", conn, output)
    quote.add_argument("symbols", nargs="+", metavar="SYMBOL")
    quote.add_argument("--market", choices=["USStock", "HShare"], help="market type (default: from the symbol)")
    bars = command("bars", cmd_bars, "historical bars, fetched in pieces IB accepts, paced and cached locally "
                                     "(QDIBKR_CACHE, default ~/.cache/qdibkr/bars); times are exchange-local, "
                                     "UTC when the symbols' time zones differ", conn, output)
    bars.add_argument("symbols", nargs="+", metavar="SYMBOL")
    bars.add_argument("--duration", default="1 Y", help="calendar span up to now: N S|D|W|M|Y (default '1 Y')")
    bars.add_argument("--bar-size", default="1 day", help="an IB bar size: '1 secs' ... '1 min', '1 hour', '1 day', "
                                                          "'1 week', '1 month' (default '1 day')")
    bars.add_argument("--rth", action=argparse.BooleanOptionalAction, default=True,
                      help="regular trading hours only (default), or --no-rth for extended hours too")
    bars.add_argument("--what", default="TRADES", type=str.upper,
                      help="TRADES (default), MIDPOINT, BID, ASK or ADJUSTED_LAST")
    bars.add_argument("--out", metavar="FILE", help="write the bars to FILE.parquet or FILE.csv instead of printing")

    signal = command("signal", cmd_signal, "queue a trading signal for the runner", conn, output)
    signal.add_argument("signal_type", choices=["open_long", "add_long", "close_long", "reduce_long"])
    signal.add_argument("symbol")
    signal.add_argument("quantity", type=quantity, nargs="?", help="shares (close_long without it closes all)")
    signal.add_argument("--strategy", required=True)
    signal.add_argument("--limit", type=float, metavar="PRICE", help="limit price (default: market order)")
    signal.add_argument("--tif", default="DAY", choices=["DAY", "GTC"], type=str.upper)
    signal.add_argument("--market", choices=["USStock", "HShare"], help="market type (default: from the symbol)")
    signal.add_argument("--key", help="idempotency key: the same key queues one signal however often it is sent")
    queue = command("queue", cmd_queue, "signals and their orders' status; `queue archive` moves old finished "
                                        "signals out of the way", output)
    queue.add_argument("action", nargs="?", choices=["list", "archive"], default="list",
                       help="list the latest signals (default), or archive finished ones")
    queue.add_argument("--older-than", type=age, default=age("30d"), metavar="AGE",
                       help="archive: finished signals last changed longer ago than AGE (default 30d)")
    queue.add_argument("--strategy")
    queue.add_argument("--limit", type=count, default=50, help="the latest N signals (default 50)")
    cancel_signal = command("cancel-signal", cmd_cancel_signal, "cancel a signal not yet filled")
    cancel_signal.add_argument("signal_id", help="its id, or the start of it as `qdibkr queue` shows")
    halt = command("halt", cmd_halt, "kill switch: the runner sends nothing until resumed")
    halt.add_argument("--cancel-open", action="store_true", help="also cancel the runner's working orders")
    halt.add_argument("--reason", default="halted by the user")
    command("resume", cmd_resume, "lift the kill switch")
    runner = command("runner", cmd_runner, "turn queued signals into orders (its own client id, default 90)", conn)
    runner.add_argument("--once", action="store_true", help="exit when nothing can be sent now (held signals and "
                                                            "those behind them wait) and nothing is in flight")
    runner.add_argument("--wait", action="store_true", help="if another runner holds the queue, wait for it")
    sim = command("sim", cmd_sim, "run the simulated TWS gateway (paper account, offline)")
    sim.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback only)")
    sim.add_argument("--port", type=int, default=PRESETS["tws-paper"], help="port (default 7497, TWS paper)")
    sim.add_argument("--state", metavar="FILE", help="JSON file that keeps accounts, orders and fills across restarts")
    sim.add_argument("--seed", type=int, default=0, help="seed of the price model (same seed, same prices)")
    sim.add_argument("--accounts", default="DU1234567", help="comma-separated paper account ids")
    sim.add_argument("--live-data", default="US", metavar="MARKETS",
                     help="markets with a live data subscription, of US,HK (others get delayed data); default US")
    sim.add_argument("--speed", type=float, default=1.0, help="simulated seconds per real second (0: time stands still)")
    sim.add_argument("--start", metavar="INSTANT",
                     help="start the simulated clock at this ISO-8601 instant, e.g. 2026-11-24T15:00:00Z (default: now)")
    sim.add_argument("--always-open", action="store_true",
                     help="trade around the clock instead of in the exchanges' sessions (offline play at any hour)")
    command("demo", cmd_demo, "trade against the simulated gateway, end to end")
    run = command("run", cmd_run, "run a notebook with papermill; its signals trade only if it succeeds")
    run.add_argument("notebook")
    run.add_argument("-p", "--parameter", nargs=2, action="append", dest="parameters", metavar=("NAME", "VALUE"),
                     help="a notebook parameter; VALUE is JSON where it parses (10, true, [\"AAPL\"]), else text")
    from .config import RUN_TIMEOUT

    run.add_argument("--timeout", type=float, metavar="SECONDS",
                     help=f"seconds the run may take before it is stopped and recorded failed (default "
                          f"{RUN_TIMEOUT:g}; 0: no limit)")
    schedule = command("schedule", cmd_schedule, "run the notebooks of schedules/ on trading days; `schedule "
                                                 "list` shows each job's next run, `schedule run JOB` runs one now",
                       output)
    schedule.add_argument("action", nargs="?", choices=["list", "run"], help="default: run due jobs until stopped")
    schedule.add_argument("job", nargs="?", help="the job for `schedule run`")
    schedule.add_argument("--dir", help="the schedule files' folder (default: QDIBKR_SCHEDULES, else ./schedules)")
    for sub in (run, schedule):
        sub.add_argument("--runs", metavar="DIR", help="where executed notebooks are kept (default: QDIBKR_RUNS, "
                                                       "the config file's [runs] dir, else ./runs)")
    serve = command("serve", cmd_serve, "the HTTP API (/api/ibkr/...; OpenAPI at /openapi.json), connecting "
                                        "to TWS when POST /api/ibkr/connect asks", connection_flags("tws-"))
    serve.add_argument("--host", dest="listen_host", default="127.0.0.1",
                       help="address to listen on (default: loopback only; any other needs an API token)")
    serve.add_argument("--port", dest="listen_port", type=int, default=5000, help="port (default 5000)")
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
    except BrokenPipeError:  # `qdibkr queue | head` closed the pipe: not an error worth a traceback
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # Python's own exit flush would fail
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
