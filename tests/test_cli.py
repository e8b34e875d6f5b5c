"""The qdibkr command line, in-process against the gateway fixture and as fresh processes."""

import datetime as dt
import json
import os
import shutil
import subprocess

import pytest

from qdibkr import emit
from qdibkr.cli import build_parser, main


def run(capsys, *argv) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def cli(gateway, capsys):
    """Run ``qdibkr ARGS --port <gateway>``; returns (exit code, stdout, stderr)."""
    return lambda *argv: run(capsys, *argv, "--port", str(gateway.port))


def test_quote_table_and_json(cli):
    code, out, err = cli("quote", "AAPL", "0700.HK")
    assert code == 0
    header, aapl, tencent = out.splitlines()
    assert header.split()[:5] == ["symbol", "currency", "bid", "ask", "last"]
    assert aapl.startswith("AAPL") and tencent.startswith("0700.HK")
    assert "delayed data (no live subscription): 0700.HK" in err
    code, out, _ = cli("quote", "00700", "--json")
    [quote] = json.loads(out)
    assert quote["symbol"] == "0700.HK" and quote["delayed"] is True and quote["bid"] > 0


def test_order_positions_trades_account(cli):
    code, out, _ = cli("order", "buy", "700", "100", "--json")
    assert code == 0
    order = json.loads(out)
    assert order["status"] == "Filled" and order["filled"] == 100 and order["symbol"] == "0700.HK"
    code, out, _ = cli("positions", "--json")
    [position] = json.loads(out)
    assert position["symbol"] == "0700.HK" and position["quantity"] == 100
    code, out, _ = cli("trades")
    assert code == 0 and "0700.HK" in out and "HKD" in out
    code, out, _ = cli("account")
    assert code == 0 and "net_liquidation" in out and "HKD" in out


def test_limit_order_listed_and_cancelled(cli):
    code, out, _ = cli("quote", "MSFT", "--json")
    bid = json.loads(out)[0]["bid"]
    code, out, _ = cli("order", "buy", "MSFT", "2", "--limit", f"{bid * 0.95:.2f}", "--tif", "gtc", "--json")
    order = json.loads(out)
    assert order["status"] == "Submitted" and order["tif"] == "GTC"
    code, out, _ = cli("orders", "--client-id", "5", "--json")
    assert [o["order_id"] for o in json.loads(out)] == [order["order_id"]]
    code, out, _ = cli("cancel", str(order["order_id"]), "--json")
    assert json.loads(out)["status"] == "Cancelled"


def test_status(cli):
    code, out, _ = cli("status")
    assert code == 0 and "server_version  176" in out and "DU1234567" in out
    assert "data_source     simulated-seed0" in out


def test_json_times_are_iso_8601(cli):
    code, out, _ = cli("status", "--json")
    status = json.loads(out)
    assert code == 0 and status["server_time"][10] == "T"  # 2026-11-25T14:30:00+00:00
    assert dt.datetime.fromisoformat(status["server_time"]).tzinfo is not None


def test_output_cut_short_by_a_pipe_is_no_error(store, tmp_path):
    for i in range(200):
        emit("open_long", "AAPL", 1 + i, strategy="pipe", store=store)
    qdibkr = shutil.which("qdibkr") or pytest.fail("the qdibkr console script is not installed")
    # JSON: 200 signals come to more than a pipe's 64 KiB buffer, so the writer meets the closed end.
    listing = subprocess.Popen([qdibkr, "queue", "--db", str(store.location), "--limit", "200", "--json"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    listing.stdout.readline()
    listing.stdout.close()  # as `| head -1` does
    err = listing.stderr.read().decode()
    assert listing.wait(30) == 1 and "Traceback" not in err and "BrokenPipe" not in err


def test_errors_are_plain_and_set_the_exit_code(cli, capsys):
    code, _, err = cli("order", "buy", "700", "150")
    assert code == 2 and "board_lot: 0700.HK trades in board lots of 100 shares" in err
    code, _, err = cli("order", "sell", "AAPL", "1")
    assert code == 2 and "quantity: order refused: short_sale: selling 1 AAPL would sell short" in err
    code, _, err = cli("quote", "NOPE")
    assert code == 1 and "no security definition" in err and "0700.HK, 00700 or 700" in err
    code, _, err = run(capsys, "status", "--preset", "gateway-live")
    assert code == 1 and "gateway-live port" in err and "--live" in err


def test_the_kill_switch_stops_direct_orders_too(cli, capsys, tmp_path, gateway):
    db = str(tmp_path / "queue.sqlite")
    run(capsys, "halt", "--db", db, "--reason", "checking the books")
    code, _, err = cli("order", "buy", "AAPL", "1", "--db", db)
    assert code == 2 and "halted: trading is halted (checking the books)" in err and "qdibkr resume" in err
    assert gateway.broker.orders == {}
    run(capsys, "resume", "--db", db)
    code, out, _ = cli("order", "buy", "AAPL", "1", "--db", db, "--json")
    assert code == 0 and json.loads(out)["status"] == "Filled"


def test_bad_quantity_is_refused_by_the_parser(cli):
    with pytest.raises(SystemExit) as e:
        cli("order", "buy", "AAPL", "1.5")
    assert e.value.code == 2


@pytest.mark.parametrize("limit", ["0", "-1"])
def test_queue_limit_must_be_positive(capsys, tmp_path, limit):
    """The queue reads --limit 0 or -1 as no limit: the parser must not pass them on."""
    with pytest.raises(SystemExit) as e:
        main(["queue", "--db", str(tmp_path / "queue.sqlite"), "--limit", limit])
    assert e.value.code == 2 and f"argument --limit: '{limit}' must be at least 1" in capsys.readouterr().err


# The commands that print a table, with the arguments each needs besides --json.
TABLE_COMMANDS = {"status": [], "account": [], "positions": [], "reconcile": [], "orders": [], "trades": [],
                  "order": ["buy", "AAPL", "1"], "cancel": ["1"], "quote": ["AAPL"], "bars": ["AAPL"],
                  "signal": ["open_long", "AAPL", "1", "--strategy", "s"], "queue": [], "schedule": ["list"]}


def help_of(capsys, command: str) -> str:
    with pytest.raises(SystemExit) as e:
        main([command, "--help"])
    assert e.value.code == 0
    return capsys.readouterr().out


@pytest.mark.parametrize("command", ["serve", "runner", "sim"])
def test_commands_without_a_table_do_not_offer_json(capsys, command):
    assert "--json" not in help_of(capsys, command)
    with pytest.raises(SystemExit) as e:
        main([command, "--json"])
    assert e.value.code == 2 and "unrecognized arguments: --json" in capsys.readouterr().err


@pytest.mark.parametrize("command", TABLE_COMMANDS)
def test_commands_that_print_a_table_offer_json(capsys, command):
    assert "print JSON instead of a table" in help_of(capsys, command)
    assert build_parser().parse_args([command, *TABLE_COMMANDS[command], "--json"]).json


def test_fresh_processes_as_the_readme_shows(tmp_path):
    """`qdibkr sim` in one process, `qdibkr quote AAPL 0700.HK` in another."""
    qdibkr = shutil.which("qdibkr") or pytest.fail("the qdibkr console script is not installed")
    env = {**os.environ, "QDIBKR_CONFIG": str(tmp_path / "none.toml")}
    sim = subprocess.Popen([qdibkr, "sim", "--port", "0"], stdout=subprocess.PIPE, text=True, env=env)
    try:
        line = sim.stdout.readline()
        assert "simulated gateway listening on 127.0.0.1:" in line
        port = line.split("127.0.0.1:")[1].split(",")[0]
        done = subprocess.run([qdibkr, "quote", "AAPL", "0700.HK", "--port", port],
                              capture_output=True, text=True, timeout=60, env=env)
        assert done.returncode == 0, done.stderr
        assert [line.split()[0] for line in done.stdout.splitlines()] == ["symbol", "AAPL", "0700.HK"]
    finally:
        sim.terminate()
        sim.wait(timeout=10)


def test_queue_commands(cli, capsys, tmp_path, gateway, monkeypatch):
    db = str(tmp_path / "queue.sqlite")
    code, out, err = cli("signal", "open_long", "0700.HK", "200", "--strategy", "hk", "--db", db)
    assert code == 0 and "open_long 200 0700.HK for hk: pending" in out  # the board lot was looked up
    code, _, err = cli("signal", "open_long", "0700.HK", "150", "--strategy", "hk", "--db", db)
    assert code == 2 and "board lots of 100 shares" in err
    code, _, err = cli("signal", "reduce_long", "AAPL", "5", "--strategy", "hk", "--db", db)
    assert code == 2 and "holds 0" in err
    code, out, _ = cli("signal", "open_long", "AAPL", "3", "--strategy", "us", "--key", "k1", "--db", db, "--json")
    signal_id = json.loads(out)["id"]
    code, out, _ = cli("signal", "open_long", "AAPL", "3", "--strategy", "us", "--key", "k1", "--db", db, "--json")
    assert json.loads(out)["id"] == signal_id  # the same key queues one signal
    code, out, _ = run(capsys, "cancel-signal", signal_id[:8], "--db", db)
    assert code == 0 and "cancelled" in out
    code, out, _ = run(capsys, "queue", "--db", db, "--json")
    assert [(s["symbol"], s["status"]) for s in json.loads(out)] == [("0700.HK", "pending"), ("AAPL", "cancelled")]

    code, out, _ = run(capsys, "halt", "--db", db)
    assert code == 0 and "no order is sent" in out
    config = tmp_path / "config.toml"
    config.write_text('[risk]\noutside_hours = "send"\n')
    monkeypatch.setenv("QDIBKR_CONFIG", str(config))
    code, _, _ = cli("runner", "--once", "--db", db)
    assert code == 0 and gateway.broker.orders == {}  # halted: nothing sent
    run(capsys, "resume", "--db", db)
    code, _, _ = cli("runner", "--once", "--db", db)
    assert code == 0
    code, out, _ = run(capsys, "queue", "--db", db, "--json")
    assert json.loads(out)[0]["status"] == "filled"
    code, out, _ = cli("positions", "--strategy", "hk", "--db", db, "--json")
    both = json.loads(out)
    assert both["strategy"][0]["quantity"] == 200 and both["account"][0]["quantity"] == 200
    code, out, _ = run(capsys, "trades", "--strategy", "hk", "--db", db, "--json")
    assert [f["shares"] for f in json.loads(out)] and sum(f["shares"] for f in json.loads(out)) == 200
    code, out, _ = cli("reconcile", "--db", db, "--json")
    assert json.loads(out) == [{"symbol": "0700.HK", "strategies": 200, "account": 200, "difference": 0}]


def test_the_runners_status_line_is_drawn_at_most_four_times_a_second(store, gateway, tmp_path):
    """On a terminal the runner shows the queue's counts on one line, redrawn after TWS's messages but at
    most 4 times a second however many arrive, and its last drawing is up to date."""
    import pty
    import time

    for i in range(120):  # about 3 s of orders at IB's pacing: long enough for several drawings
        emit("open_long", ["AAPL", "MSFT", "TSLA"][i % 3], 1, strategy=f"s{i % 40}", store=store)
    config = tmp_path / "config.toml"
    config.write_text('[risk]\noutside_hours = "send"\n')
    terminal, stderr = pty.openpty()
    started = time.monotonic()
    runner = subprocess.Popen([shutil.which("qdibkr"), "runner", "--once", "--port", str(gateway.port)],
                              env={**os.environ, "QDIBKR_CONFIG": str(config), "QDIBKR_DB": store.location},
                              stdout=subprocess.DEVNULL, stderr=stderr)
    os.close(stderr)
    output = b""
    while True:
        try:
            chunk = os.read(terminal, 65536)
        except OSError:  # the runner closed the terminal: it has exited
            break
        if not chunk:
            break
        output += chunk
    assert runner.wait(timeout=60) == 0
    elapsed = time.monotonic() - started
    drawings = output.count(b"\x1b[K")  # each drawing ends by clearing the rest of the line
    assert 1 <= drawings <= 4 * elapsed + 1, (drawings, elapsed)
    assert "filled 120" in output.decode().splitlines()[-1]  # the summary it prints on leaving
