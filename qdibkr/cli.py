"""The ``qdibkr`` command line: a thin layer over the Python API."""

import argparse
import asyncio
import logging
import sys

from .sim import SimGateway


def cmd_sim(args):
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
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="qdibkr", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="log what happens (to stderr)")
    commands = parser.add_subparsers(dest="command", required=True)

    sim = commands.add_parser("sim", help="run the simulated TWS gateway (paper account, offline)")
    sim.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback only)")
    sim.add_argument("--port", type=int, default=7497, help="port (default 7497, TWS paper)")
    sim.add_argument("--state", metavar="FILE", help="JSON file that keeps accounts, orders and fills across restarts")
    sim.add_argument("--seed", type=int, default=0, help="seed of the price model (same seed, same prices)")
    sim.add_argument("--accounts", default="DU1234567", help="comma-separated paper account ids")
    sim.add_argument("--live-data", default="US", metavar="MARKETS",
                     help="markets with a live data subscription, of US,HK (others get delayed data); default US")
    sim.add_argument("--speed", type=float, default=1.0, help="simulated seconds per real second")
    sim.set_defaults(run=cmd_sim)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
