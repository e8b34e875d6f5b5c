"""The queue commands (issue 13) run in fresh processes without ib_insync, eventkit, numpy or pandas,
and still do their job; the one that needs TWS (an HK signal whose board lot is not known yet) still
imports what it needs.

Each command runs as ``qdibkr.cli.main(ARGS)`` in its own interpreter against a real queue file named by
QDIBKR_DB; the driver then writes the names in ``sys.modules`` to a file for the test to read.
"""

import json
import os
import subprocess
import sys

import pytest

import qdibkr
from qdibkr import emit

HEAVY = {"ib_insync", "eventkit", "numpy", "pandas"}
DRIVER = """
import json, sys
from qdibkr.cli import main
code = main(sys.argv[2:])
with open(sys.argv[1], "w") as f:
    json.dump(sorted(sys.modules), f)
sys.exit(code)
"""


def qdibkr_process(tmp_path, db, *argv) -> tuple[subprocess.CompletedProcess, set[str]]:
    """Run ``qdibkr ARGV`` as a fresh process on the queue ``db``; returns what it did and the top-level
    packages it had imported when it ended."""
    modules = tmp_path / "modules.json"
    done = subprocess.run([sys.executable, "-c", DRIVER, str(modules), *argv], capture_output=True, text=True,
                          timeout=60, env={**os.environ, "QDIBKR_DB": str(db)})
    assert done.returncode == 0, done.stderr
    return done, {name.split(".")[0] for name in json.loads(modules.read_text())}


def test_signal_is_queued_without_the_broker(tmp_path, store):
    done, imported = qdibkr_process(tmp_path, store.location, "signal", "open_long", "AAPL", "3", "--strategy", "light")
    assert not imported & HEAVY
    [signal] = store.signals()
    assert (signal.symbol, signal.quantity, signal.strategy, signal.status) == ("AAPL", 3, "light", "pending")
    assert f"signal {signal.id[:8]}: open_long 3 AAPL for light: pending" in done.stdout


def test_hk_signal_with_a_known_board_lot_needs_no_tws(tmp_path, store):
    store.remember_board_lot("0700.HK", 100)  # as a first signal for 0700.HK leaves it
    done, imported = qdibkr_process(tmp_path, store.location, "signal", "open_long", "700", "200", "--strategy", "hk")
    assert not imported & HEAVY
    assert [(s.symbol, s.quantity) for s in store.signals()] == [("0700.HK", 200)]


def test_queue_lists_without_the_broker(tmp_path, store):
    emitted = emit("open_long", "MSFT", 5, strategy="light", store=store)
    done, imported = qdibkr_process(tmp_path, store.location, "queue")
    assert not imported & HEAVY
    header, row = done.stdout.splitlines()
    assert header.split()[:2] == ["seq", "id"] and emitted.id[:8] in row and "MSFT" in row


def test_halt_and_resume_without_the_broker(tmp_path, store):
    done, imported = qdibkr_process(tmp_path, store.location, "halt", "--reason", "checking the books")
    assert not imported & HEAVY
    assert store.halted() == "checking the books" and "no order is sent" in done.stdout
    done, imported = qdibkr_process(tmp_path, store.location, "resume")
    assert not imported & HEAVY
    assert store.halted() is None and done.stdout == "resumed\n"


def test_cancel_signal_without_the_broker(tmp_path, store):
    emitted = emit("open_long", "AAPL", 1, strategy="light", store=store)
    done, imported = qdibkr_process(tmp_path, store.location, "cancel-signal", emitted.id[:8])
    assert not imported & HEAVY
    assert store.signal(emitted.id).status == "cancelled"


def test_hk_signal_with_an_unknown_board_lot_asks_tws(tmp_path, store, gateway):
    """The one queue command that needs TWS: the lazy imports bring the broker in when it is used."""
    done, imported = qdibkr_process(tmp_path, store.location, "signal", "open_long", "0700.HK", "200",
                                    "--strategy", "hk", "--port", str(gateway.port))
    assert "ib_insync" in imported
    assert store.board_lot("0700.HK") == 100  # learnt from the gateway, remembered in the queue
    assert [(s.symbol, s.quantity, s.status) for s in store.signals()] == [("0700.HK", 200, "pending")]


@pytest.mark.parametrize("statement", ["import qdibkr", "import qdibkr.cli", "import qdibkr.signals",
                                       "from qdibkr import emit, Settings, InputError, parse_symbol"])
def test_light_imports(statement):
    done = subprocess.run([sys.executable, "-c", f"{statement}; import sys; print(' '.join(sys.modules))"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert not {name.split(".")[0] for name in done.stdout.split()} & HEAVY


def test_the_public_api_is_whole():
    """Every name of ``__all__`` is there, the heavy ones loaded on first use; other names are errors."""
    from qdibkr import IBKR, SimGateway, Status
    from qdibkr.broker import Status as broker_status
    from qdibkr.ibkr import IBKR as ibkr_class
    from qdibkr.sim import SimGateway as sim_gateway

    assert (IBKR, SimGateway, Status) == (ibkr_class, sim_gateway, broker_status)
    assert all(getattr(qdibkr, name) is not None for name in qdibkr.__all__)
    assert set(qdibkr.__all__) <= set(dir(qdibkr))
    with pytest.raises(AttributeError, match="no attribute 'Nothing'"):
        qdibkr.Nothing
