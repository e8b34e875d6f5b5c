"""Trading signals: the four types a strategy emits, checked at emission and queued for the runner.

``emit("open_long", "AAPL", 10, strategy="sma")`` validates the signal, stores
it in the queue (one transaction) and wakes the runner. Nothing invalid is
ever stored: an unknown type, a quantity that is not a positive whole number,
an HK quantity off the board lot, a reduce or close beyond what the strategy
holds (counting its signals still on the way), a limit order without a price,
each raise an ``InputError`` naming the field. The same idempotency key emitted
twice stores one signal and returns it both times.
"""

import os
from pathlib import Path

from . import validate
from .config import current, is_database_url
from .errors import InputError
from .model import SignalStatus, SignalType
from .store import Store
from .symbols import HK_SHARE, parse_symbol

SIGNAL_TYPES = {t.value: t.side.value for t in SignalType}  # the four types, and the side each trades
RUN_ID_ENV = "QDIBKR_RUN_ID"  # set by `qdibkr run`: signals wait for the notebook run to succeed

_stores: dict = {}


def default_store() -> Store:
    """The configured queue (``config.current().queue_db``: QDIBKR_DB, ``[queue] db``, the default), one
    handle per file per process: the same queue the CLI and the runner use."""
    where = current().queue_db
    key = where if is_database_url(where) else Path(where).resolve()
    if key not in _stores:
        _stores[key] = Store(where)
    return _stores[key]


def board_lot(store: Store, symbol, ibkr=None) -> int:
    """A symbol's board lot: remembered in the queue, or asked of TWS through ``ibkr``."""
    if symbol.market != HK_SHARE:
        return 1
    lot = store.board_lot(symbol.display)
    if lot is None and ibkr is not None:
        _, _, lot = ibkr.run(ibkr.contract_async(symbol.display))
        store.remember_board_lot(symbol.display, int(lot))
    if lot is None:
        raise InputError("symbol", f"the board lot of {symbol} is not known yet; pass a connected session "
                                   f"(ibkr=qdibkr.connect()) or emit from the command line, which looks it up")
    return int(lot)


def emit(signal_type: str, symbol: str, quantity: int | None = None, *, strategy: str,
         limit: float | None = None, tif: str = "DAY", market_type: str | None = None,
         key: str | None = None, source: str = "", run_id: str | None = None,
         store: Store | None = None, ibkr=None):
    """Validate a signal, store it for the runner and wake the runner; returns the stored Signal."""
    store = store or default_store()
    if signal_type not in SIGNAL_TYPES:
        raise InputError("signal_type", f"{signal_type!r} is not a signal type; use one of {', '.join(SIGNAL_TYPES)} "
                                        f"(short selling is not supported)")
    if not strategy or not str(strategy).strip():
        raise InputError("strategy", "name the strategy that emits the signal, e.g. strategy='sma'")
    if quantity is None:
        if signal_type != "close_long":
            raise InputError("quantity", f"{signal_type} needs a quantity (only close_long may omit it to close all)")
    else:
        validate.quantity(quantity)
    limit, tif = validate.limit_price(limit), validate.tif(tif)
    sym = parse_symbol(symbol, market_type)
    lot = board_lot(store, sym, ibkr)
    if quantity is not None and quantity % lot:
        raise InputError("quantity", f"{sym} trades in board lots of {lot} shares; {quantity:g} is not a multiple")
    run_id = run_id or os.environ.get(RUN_ID_ENV)

    def no_short_sale(db):
        if signal_type in ("close_long", "reduce_long"):
            held, projected = store.projected(db, strategy, sym.display)
            wanted = projected if quantity is None else quantity
            if projected <= 0 or wanted > projected:
                raise InputError("quantity", f"{signal_type} {quantity if quantity is not None else 'all'} {sym} "
                                             f"but strategy {strategy!r} holds {max(projected, 0)} "
                                             f"(its position {held}, with its signals still on the way)")

    # A repeat of an emitted key returns the signal emitted before: one signal, whatever the repeat says.
    signal = store.add_signal(
        no_short_sale, strategy=strategy, symbol=sym.display, market=sym.market, signal_type=signal_type,
        quantity=None if quantity is None else int(quantity), order_type="LMT" if limit is not None else "MKT",
        limit_price=None if limit is None else float(limit), tif=tif, idempotency_key=key,
        source=source, run_id=run_id, status=SignalStatus.STAGED if run_id else SignalStatus.PENDING)
    wake_runner(store)
    return signal


def wake_runner(store: Store):
    """Tell the queue's runner that the queue changed; harmless when none listens."""
    store.wake_runner()
