"""The main job on a fresh install: trade against the simulated gateway, end to end.

It starts the simulated gateway on a free loopback port, connects the way a
user would against TWS paper, looks up quotes for a US and a Hong Kong stock,
buys both (the Hong Kong order in whole board lots), and prints the positions
and the day's trades. Nothing leaves the machine.
"""

import tempfile
from pathlib import Path

from .display import records, table
from .ibkr import IBKR
from .sim import SimGateway

ORDERS = (("AAPL", 10), ("0700.HK", 100))


def section(title: str, result):
    print(f"\n{title}\n{table(records(result))}")


def run_demo(state_dir: str | None = None) -> int:
    state_dir = Path(state_dir or tempfile.mkdtemp(prefix="qdibkr-demo-"))
    gateway = SimGateway(port=0, state_path=str(state_dir / "sim-state.json")).start_in_thread()
    print(f"simulated gateway listening on 127.0.0.1:{gateway.port} (state in {state_dir})")
    try:
        with IBKR(host="127.0.0.1", port=gateway.port, client_id=1) as ibkr:
            status = ibkr.status()
            print(f"connected to account {status.account}, API server version {status.server_version}")
            section("account", ibkr.account_summary())
            section("quotes (0700.HK is delayed: the paper account has no HK data subscription)",
                    ibkr.quote(*(symbol for symbol, _ in ORDERS)))
            section("orders", [ibkr.place_order(symbol, "buy", qty, order_ref="demo") for symbol, qty in ORDERS])
            section("positions", ibkr.positions())
            section("trades", ibkr.trades())
    finally:
        gateway.stop()
    return 0
