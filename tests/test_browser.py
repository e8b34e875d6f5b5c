"""A person's path through JupyterLab, in a real browser: open the getting-started notebook, run it,
connect through the form, send an order from the ticket, see the position appear.

JupyterLab and the simulated gateway run on loopback; Debian's Chromium is driven
by Playwright. The test skips only when Chromium is not installed (CI installs
it: see .ci/run). It saves a screenshot of the dashboard at the end.
"""

import json
import os
import re
import secrets
import socket
import subprocess
import sys
import threading
from pathlib import Path

import papermill
import pytest

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
NOTEBOOK = Path(__file__).parent.parent / "notebooks" / "getting_started.ipynb"
TIMEOUT_MS = 60_000

pytestmark = pytest.mark.skipif(not os.access(CHROMIUM, os.X_OK),
                                reason=f"Chromium is not installed at {CHROMIUM} (apt-get install -y chromium)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def jupyterlab(tmp_path, gateway):
    """JupyterLab on loopback serving a folder with the getting-started notebook, set to the gateway's port."""
    root = tmp_path / "lab"
    root.mkdir()
    papermill.execute_notebook(str(NOTEBOOK), str(root / NOTEBOOK.name), parameters={"port": gateway.port},
                               prepare_only=True, progress_bar=False)
    settings = tmp_path / "lab-settings"  # JupyterLab 4.6 asks for a kernel unless told to start the notebook's
    for name, value in (("notebook-extension/tracker", {"autoStartDefaultKernel": True}),
                        ("apputils-extension/notification", {"fetchNews": "false"})):
        path = settings / f"@jupyterlab/{name}.jupyterlab-settings"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(value))
    token, port = secrets.token_hex(16), free_port()
    env = {**os.environ, "QDIBKR_DB": str(tmp_path / "queue.sqlite"), "QDIBKR_CACHE": str(tmp_path / "cache"),
           "JUPYTERLAB_SETTINGS_DIR": str(settings), "JUPYTER_CONFIG_DIR": str(tmp_path / "jupyter-config"),
           "JUPYTER_DATA_DIR": str(tmp_path / "jupyter-data"), "JUPYTER_RUNTIME_DIR": str(tmp_path / "jupyter-runtime")}
    lab = subprocess.Popen(
        [sys.executable, "-m", "jupyterlab", "--no-browser", "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={port}",
         "--ServerApp.port_retries=0", "--ServerApp.allow_root=True", f"--IdentityProvider.token={token}",
         f"--ServerApp.root_dir={root}", "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    log, ready = [], threading.Event()

    def read():  # JupyterLab's log: ready once it says where it runs; drained to the end
        for text in lab.stderr:
            log.append(text)
            if f"127.0.0.1:{port}/lab" in text:
                ready.set()
        ready.set()

    threading.Thread(target=read, daemon=True).start()
    ready.wait(60)
    assert lab.poll() is None and any(f"127.0.0.1:{port}/lab" in line for line in log), "".join(log)
    yield f"http://127.0.0.1:{port}", token
    lab.terminate()
    lab.wait(15)


def test_getting_started_in_jupyterlab(jupyterlab, gateway, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    base, token = jupyterlab
    screenshot = tmp_path / "getting_started.png"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.set_default_timeout(TIMEOUT_MS)
        expect.set_options(timeout=TIMEOUT_MS)
        try:
            page.goto(f"{base}/lab/tree/{NOTEBOOK.name}?token={token}")
            page.locator(".jp-Notebook").wait_for()
            expect(page.get_by_role("button", name="Python 3 (ipykernel) | Idle")).to_be_visible()

            page.get_by_role("menuitem", name="Run", exact=True).click()
            page.get_by_role("menuitem", name="Run All Cells", exact=True).click()
            disconnect = page.get_by_role("button", name="Disconnect")
            form_status = page.locator(".widget-hbox", has=disconnect)  # the buttons and the status line
            expect(form_status).to_contain_text("connected: account DU1234567 (paper)")

            # Through the form: disconnect, then connect again.
            disconnect.click()
            expect(form_status).to_contain_text("not connected")
            page.get_by_role("button", name="Connect", exact=True).click()
            expect(form_status).to_contain_text("connected: account DU1234567 (paper)")

            # The order ticket: 100 Tencent, a whole board lot, sent to TWS now.
            page.get_by_label("symbol", exact=True).fill("0700.HK")
            quantity = page.get_by_label("quantity", exact=True)
            quantity.fill("100")
            quantity.press("Tab")
            page.get_by_role("button", name="Send", exact=True).click()
            expect(page.get_by_text(re.compile(r"order \d+: Filled, 100 of 100 filled"))).to_be_visible()

            # The positions view shows it, from TWS's portfolio updates.
            positions = page.locator(".widget-html", has_text="avg cost").first
            expect(positions).to_contain_text("0700.HK")
            expect(positions.locator("tr", has_text="0700.HK")).to_contain_text("100")
            page.get_by_text("Positions", exact=True).scroll_into_view_if_needed()
            # No output on the way shows a traceback: no cell failed, and no task on the kernel's event loop.
            expect(page.locator(".jp-OutputArea-output >> text=Traceback")).to_have_count(0)
        finally:
            page.screenshot(path=str(screenshot), full_page=True)
            print(f"screenshot: {screenshot}")
            browser.close()
    assert screenshot.stat().st_size > 10_000
    assert gateway.broker.position("DU1234567", 37180700).quantity == 100
