"""One configuration for every face: the queue of `[queue] db`, each face's client id, the limits re-read
when the file changes, and the getting-started notebook's own queue beside its own gateway."""

import os
import subprocess
import sys

import pytest

import qdibkr
from qdibkr.config import CLIENT_IDS, current, load_config, load_settings
from qdibkr.store import Store


@pytest.fixture
def config(tmp_path, monkeypatch):
    for name in [k for k in os.environ if k.startswith("QDIBKR_")]:
        monkeypatch.delenv(name)
    path = tmp_path / "config.toml"
    monkeypatch.setenv("QDIBKR_CONFIG", str(path))
    return path


def test_emit_from_python_honours_the_queue_of_the_config_file(config, tmp_path):
    queue = tmp_path / "desk" / "queue.sqlite"
    config.write_text(f'[queue]\ndb = "{queue}"\n')
    signal = qdibkr.emit("open_long", "AAPL", 10, strategy="sma")
    # The runner and the CLI read the same queue: `qdibkr queue` (a fresh process) lists the signal.
    listed = subprocess.run([sys.executable, "-m", "qdibkr", "queue", "--json"], capture_output=True, text=True,
                            env={**os.environ}, timeout=60)
    assert listed.returncode == 0, listed.stderr
    assert signal.id in listed.stdout
    assert [s.id for s in Store(queue).signals()] == [signal.id]


def test_each_face_has_its_own_client_id(config):
    ids = {face: load_settings(face=face).client_id for face in CLIENT_IDS}
    assert ids == {"cli": 1, "api": 2, "widgets": 3, "python": 4, "runner": 90}
    assert len(set(ids.values())) == len(ids)
    config.write_text("[api]\nclient_id = 12\n[connection]\nclient_id = 7\n")
    assert load_settings(face="api").client_id == 12 and load_settings(face="cli").client_id == 7
    assert load_settings(face="runner").client_id == 90  # [connection] is the CLI's and Python's, not the runner's


def test_risk_limits_are_reread_when_the_file_changes(config, caplog):
    config.write_text("[risk]\nmax_position = 100\n")
    risk = load_config().risk
    assert risk().limits.max_position == 100
    config.write_text("[risk]\nmax_position = 50\nmax_order_quantity = 10\n")
    os.utime(config, ns=(1, 1))  # a new modification time, whatever the file system's resolution
    assert risk().limits.max_position == 50 and risk().limits.max_order_quantity == 10
    assert "risk limits reloaded" in caplog.text and "max_position=50" in caplog.text
    config.write_text("[risk]\nmax_position = -1\n")  # a typo must not lift the limits
    os.utime(config, ns=(2, 2))
    assert risk().limits.max_position == 50 and "NOT reloaded" in caplog.text


def test_a_simulated_gateway_in_a_notebook_has_a_queue_of_its_own(config, tmp_path):
    shared = tmp_path / "shared.sqlite"
    script = ("import os; from qdibkr.notebook import gateway_port; from qdibkr.signals import default_store; "
              "gateway_port(0); print(default_store().location)")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "QDIBKR_DB": str(shared)})
    assert done.returncode == 0, done.stderr
    own = done.stdout.strip().splitlines()[-1]
    assert own != str(shared) and own.endswith("queue.sqlite") and "qdibkr-sim-" in own
    assert current().queue_db != own
