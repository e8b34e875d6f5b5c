"""The main job on a fresh install: trade against the simulated gateway, end to end.

It starts the simulated gateway on a free loopback port, connects the way a
user would against TWS paper, looks up quotes for a US and a Hong Kong stock,
buys both (the Hong Kong order in whole board lots), and prints the account,
positions and the day's trades. Nothing leaves the machine.
"""

import tempfile
from pathlib import Path

import pandas as pd

from .ibkr import IBKR
from .sim import SimGateway


def show(title: str, frame: pd.DataFrame):
    print(f"\n{title}")
    print(frame.to_string(index=False) if len(frame) else "(none)")


def run_demo(state_dir: str | None = None) -> int:
    state_dir = Path(state_dir or tempfile.mkdtemp(prefix="qdibkr-demo-"))
    gateway = SimGateway(port=0, state_path=str(state_dir / "sim-state.json")).start_in_thread()
    print(f"simulated gateway listening on 127.0.0.1:{gateway.port}")
    try:
        with IBKR(host="127.0.0.1", port=gateway.port, client_id=1) as ibkr:
            status = ibkr.status()
            print(f"connected: account {status.account}, server version {status.server_version}")
            quotes = ibkr.quote("AAPL", "0700.HK")
            show("quotes", pd.DataFrame([q.__dict__ for q in quotes]))
            for symbol, quantity in (("AAPL", 10), ("0700.HK", 100)):
                result = ibkr.place_order(symbol, "buy", quantity, order_ref="demo")
                print(f"order {result.order_id}: buy {quantity} {result.symbol} -> {result.status}")
            show("positions", ibkr.positions())
            show("trades", ibkr.trades())
            account = ibkr.account_summary()
            print(f"\nnet liquidation {account.net_liquidation:,.2f} {account.base_currency}; cash "
                  + ", ".join(f"{v:,.2f} {c}" for c, v in sorted(account.cash.items())))
    finally:
        gateway.stop()
    return 0
