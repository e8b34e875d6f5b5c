"""What the notebooks share: a connection (to TWS / IB Gateway, or to a simulated gateway started
in the kernel) and the board lots their sizing needs.

::

    from qdibkr.notebook import board_lots, session
    ibkr = session(port=0)          # 0: a simulated gateway in this kernel: offline, nothing leaves the machine
    ibkr = session(port=7497)       # TWS paper; None: QDIBKR_PORT, the config file, else 7497
    board_lots(ibkr, ["0700.HK", "AAPL"])   # {"0700.HK": 100, "AAPL": 1}
"""

import os
import tempfile
import time
from pathlib import Path

from .ibkr import IBKR
from .signals import board_lot, default_store
from .symbols import parse_symbol

_gateways = []  # simulated gateways started in this kernel: they serve until it ends


def gateway_port(port: int | None) -> int | None:
    """``port``, except that 0 starts a simulated gateway in this process, with a queue of its own
    (``QDIBKR_DB`` for this process), and gives its port. (Its bars are cached apart from TWS's by
    ``qdibkr.bars`` itself, as any simulated gateway's are.) Its clock starts inside a US trading
    session, so that orders trade on any day and at any hour; it prints where."""
    if port != 0:
        return port
    from .sim import SimGateway, describe_start, us_session_start

    now = time.time()
    start = us_session_start(now)
    gateway = SimGateway(port=0, start=start).start_in_thread()
    _gateways.append(gateway)
    # Its account is not the one of the configured queue's strategies and fills: a queue of its own beside it,
    # for everything in this kernel (the widgets, qdibkr.emit), so the two never mix.
    queue = Path(tempfile.mkdtemp(prefix="qdibkr-sim-")) / "queue.sqlite"
    os.environ["QDIBKR_DB"] = str(queue)
    print(f"simulated gateway listening on 127.0.0.1:{gateway.port} (paper account DU1234567, offline); "
          f"its queue: {queue}\n{describe_start(start, now)}")
    return gateway.port


def session(host: str | None = None, port: int | None = None, client_id: int | None = None,
            **settings) -> IBKR:
    """A connected IBKR session (``port`` as ``gateway_port`` takes it)."""
    return IBKR(host=host, port=gateway_port(port), client_id=client_id, **settings).connect()


def board_lots(ibkr: IBKR, symbols) -> dict[str, int]:
    """Each symbol's board lot (1 for US stocks), asked of TWS once and remembered in the queue."""
    store = default_store()
    return {parse_symbol(s).display: board_lot(store, parse_symbol(s), ibkr) for s in symbols}
