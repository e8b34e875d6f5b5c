"""The README's first command ends with `qdibkr demo`: the US strategy notebook runs in live mode through
papermill, the runner executes its signals against the simulated gateway, and it exits 0 within a minute."""

import re
import time
from collections import Counter
from pathlib import Path

import nbformat

from qdibkr.cli import main


def rows(out: str, title: str) -> list[list[str]]:
    """The rows of a table the demo printed under ``title``, split into cells."""
    lines = out.split(f"\n{title}\n")[1].split("\n\n")[0].splitlines()
    return [] if lines == ["(none)"] else [line.split() for line in lines[1:]]


def test_demo_runs_the_strategy_notebook_and_the_runner_trades_its_signals(capsys):
    started = time.monotonic()
    assert main(["demo"]) == 0
    assert time.monotonic() - started < 60
    out = capsys.readouterr().out

    released = int(re.search(r"run \w{8} succeeded in [\d.]+ s: (\d+) signal\(s\) released to the runner", out)[1])
    signals = rows(out, "signals")  # strategy signal_type symbol quantity status filled avg_price
    assert len(signals) == released
    assert all(s[0] == "us_sma" and s[1] == "open_long" and s[4] == "filled" and s[3] == s[5] for s in signals)
    bought = {s[2]: int(s[3]) for s in signals}
    if not bought:
        assert "the strategy wants no position" in out

    account = {r[0]: int(r[1].replace(",", "")) for r in rows(out, "positions (the IB account)")}
    mine = {r[1]: int(r[3].replace(",", "")) for r in rows(out, "positions of strategy us_sma (the queue's record "
                                                              "of its fills)")}
    assert account == mine == bought
    traded = Counter()
    for trade in rows(out, "trades"):  # date time zone symbol side shares ...
        assert trade[4] == "BUY" and trade[-1].startswith("qd-")
        traded[trade[3]] += int(trade[5].replace(",", ""))
    assert dict(traded) == bought

    executed = Path(re.search(r"executed notebook: (\S+)", out)[1])
    notebook = nbformat.read(executed, as_version=4)
    assert notebook.metadata.papermill.parameters["mode"] == "live"
    errors = [o for cell in notebook.cells for o in cell.get("outputs", []) if o.output_type == "error"]
    assert errors == []
