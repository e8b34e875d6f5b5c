"""Every notebook in notebooks/ runs through papermill against the simulated gateway, as CI runs them;
the strategy notebooks in both modes."""

import re
from pathlib import Path

import pytest

from qdibkr.runs import run_notebook
from qdibkr.store import Store
from tests.notebook_files import outputs
from tests.test_runner import run_once

NOTEBOOKS = Path(__file__).parent.parent / "notebooks"
STRATEGIES = {"us_sma": 8, "hk_sma": 5}  # notebook: its symbols


@pytest.fixture
def store(tmp_path):
    s = Store(tmp_path / "queue.sqlite")
    yield s
    s.close()


def run(name: str, parameters: dict, store: Store, tmp_path: Path):
    """Run a notebook of notebooks/ with its bars cached in the test's folder; check it ran cleanly."""
    result = run_notebook(NOTEBOOKS / f"{name}.ipynb", parameters, store=store, output_dir=tmp_path / "runs",
                          env={"QDIBKR_CACHE": str(tmp_path / "bars")})
    assert result.status == "succeeded", result.error
    assert outputs(result.output_path, "error") == []
    assert not [o for o in outputs(result.output_path, "stream") if o.name == "stderr" and "Traceback" in o.text]
    return result


def test_every_notebook_is_tested():
    assert sorted(p.stem for p in NOTEBOOKS.glob("*.ipynb")) == sorted(["getting_started", *STRATEGIES])


def test_getting_started(gateway, store, tmp_path):
    result = run("getting_started", {"port": gateway.port}, store, tmp_path)
    widgets = [o for o in outputs(result.output_path, "execute_result")
               if "application/vnd.jupyter.widget-view+json" in o.data]
    assert len(widgets) == 1  # the dashboard
    assert gateway.broker.position("DU1234567", 272093).quantity == 2  # MSFT, bought from code


@pytest.mark.parametrize("name", STRATEGIES)
def test_strategy_research_charts_each_symbols_signals(name, gateway, store, tmp_path):
    result = run(name, {"port": gateway.port}, store, tmp_path)
    charts = [o for o in outputs(result.output_path, "display_data") if "image/png" in o.data]
    assert len(charts) == STRATEGIES[name] + 1  # each symbol's signals, and the equity curve
    assert store.signals() == []  # research emits nothing


@pytest.mark.parametrize("name", STRATEGIES)
def test_strategy_live_queues_the_latest_targets_for_the_runner(name, gateway, store, tmp_path):
    result = run(name, {"mode": "live", "port": gateway.port}, store, tmp_path)
    targets = live_targets(result.output_path)
    assert len(targets) == STRATEGIES[name]
    signals = store.signals(run_id=result.id)
    assert result.signals == len(signals) and all(s.status == "pending" for s in signals)
    assert {s.symbol: s.quantity for s in signals} == {symbol: n for symbol, n in targets.items() if n}
    assert all(s.signal_type == "open_long" and s.strategy == name for s in signals)
    run_once(store, gateway)
    assert {p.symbol: p.quantity for p in store.positions(name)} == {s.symbol: s.quantity for s in signals}
    assert all(s.status == "filled" for s in store.signals())


def live_targets(path) -> dict[str, int]:
    """The target table a live run displayed: shares by symbol."""
    [table] = [o.data["text/plain"] for o in outputs(path, "display_data") if "target" in o.data.get("text/plain", "")]
    rows = [re.split(r"\s+", line.strip()) for line in table.splitlines()[1:]]
    return {row[0]: int(float(row[1])) for row in rows}


def test_live_mode_needs_a_real_port(store, tmp_path):
    result = run_notebook(NOTEBOOKS / "us_sma.ipynb", {"mode": "live"}, store=store, output_dir=tmp_path / "runs")
    assert result.status == "failed" and "live mode queues signals for the runner" in result.error
