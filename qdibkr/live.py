"""A strategy's live step: the shares it should hold now, turned into signals for the runner.

A strategy notebook in live mode recomputes its targets on fresh bars (the same
function its research mode backtests, see ``qdibkr.strategies``) and hands the
last bar's shares to ``rebalance``. That compares them with what the strategy
holds (its own fills, from the queue) plus its signals still on the way, and
emits the difference::

    holds 0, wants n: open_long n       holds m, wants n > m: add_long n - m
    holds m, wants 0: close_long (all)  holds m, wants 0 < n < m: reduce_long m - n

So a run that repeats, or follows a missed one, converges on the targets rather
than adding to them. Inside a scheduled run each signal's idempotency key is the
job, the slot and the symbol (``runs.signal_key``): a slot run twice emits once.
"""

from collections.abc import Mapping

from .runs import signal_key
from .signals import default_store, emit
from .store import Signal, Store
from .symbols import parse_symbol


def projected(store: Store, strategy: str, symbol: str) -> int:
    """The shares ``strategy`` will hold in ``symbol`` once its signals on the way are done."""
    return store.read(lambda db: store.projected(db, strategy, symbol)[1])


def rebalance(targets: Mapping[str, float], *, strategy: str, store: Store | None = None,
              ibkr=None) -> list[Signal]:
    """Emit the signals that bring ``strategy`` to ``targets`` (shares by symbol); returns them."""
    store = store or default_store()
    emitted = []
    for symbol, target in targets.items():
        display = parse_symbol(symbol).display
        target, holding = int(target), projected(store, strategy, display)
        if target == holding:
            continue
        if target > holding:
            signal_type, quantity = ("open_long" if holding == 0 else "add_long"), target - holding
        elif target == 0:
            signal_type, quantity = "close_long", None
        else:
            signal_type, quantity = "reduce_long", holding - target
        emitted.append(emit(signal_type, display, quantity, strategy=strategy, key=signal_key(display),
                            source="notebook", store=store, ibkr=ibkr))
    return emitted
