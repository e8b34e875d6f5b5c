"""The layers (.importlinter, ../shared/architecture.md) hold: lint-imports passes on the package, and
fails on a copy with one import against the grain."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def lint(package_parent: Path) -> subprocess.CompletedProcess:
    linter = Path(sys.executable).with_name("lint-imports")
    return subprocess.run([str(linter), "--config", str(ROOT / ".importlinter"), "--no-cache"],
                          cwd=package_parent, env={"PYTHONPATH": str(package_parent), "PATH": "/usr/bin:/bin"},
                          capture_output=True, text=True, timeout=120)


def test_the_package_keeps_its_layers():
    done = lint(ROOT)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "4 kept, 0 broken" in done.stdout


@pytest.mark.parametrize("module, line, contract", [
    ("store.py", "from . import runner", "Faces -> runs"),  # the store reaching up into the desk
    ("runner.py", "import ib_insync", "Only the broker adapter imports ib_insync"),
    ("sim/broker.py", "from .. import broker", "The simulated gateway depends on the domain only"),
])
def test_an_import_against_the_layers_fails(tmp_path, module, line, contract):
    shutil.copytree(ROOT / "qdibkr", tmp_path / "qdibkr", ignore=shutil.ignore_patterns("__pycache__"))
    path = tmp_path / "qdibkr" / module
    path.write_text(path.read_text() + f"\n{line}  # against the grain\n")
    done = lint(tmp_path)
    assert done.returncode != 0
    assert f"{contract}" in done.stdout and "BROKEN" in done.stdout
