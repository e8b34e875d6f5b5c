"""Blocking IBKR calls in a real Jupyter kernel, used as JupyterLab uses it: the widgets shown, cells
sent all at once (Run All, or Shift+Enter pressed again before a cell ends) and a widget clicked while
a blocking call is still waiting for TWS."""

import os
import queue
import time

import pytest
from jupyter_client.manager import start_new_kernel

TIMEOUT = 30.0

SETUP = """{before}
from qdibkr.notebook import session
from qdibkr.widgets import Session, dashboard
ibkr = session(port={port}, client_id=7)
ui = dashboard(Session(ibkr))
ui
"""

BLOCKING = [  # what a researcher writes, without await; the orders' fills update the widgets meanwhile
    "ibkr.quote('AAPL', '0700.HK')",
    "ibkr.place_order('MSFT', 'buy', 2)",
    "ibkr.positions()",
    "ibkr.place_order('0700.HK', 'buy', 100)",
    "ibkr.account_summary()",
    "ibkr.trades()",
]

REPORT = """
await ui.session.settle()  # the clicked Quote button's task
print(ui.positions.table.value)
print(ui.quotes.table.value)
"""


class Kernel:
    """A kernel and the client talking to it, with every message on IOPub kept."""

    def __init__(self, env: dict):
        self.manager, self.client = start_new_kernel(kernel_name="python3", env=env)
        self.iopub = []

    def execute(self, code: str) -> str:
        return self.client.execute(code)

    def click(self, description: str):
        """Click a Button widget, as the frontend does: a comm message on the shell channel."""
        [comm_id] = [m["content"]["comm_id"] for m in self.iopub if m["msg_type"] == "comm_open"
                     and m["content"]["data"]["state"].get("_model_name") == "ButtonModel"
                     and m["content"]["data"]["state"].get("description") == description]
        content = {"comm_id": comm_id, "data": {"method": "custom", "content": {"event": "click"}}}
        self.client.shell_channel.send(self.client.session.msg("comm_msg", content))

    def replies(self, msg_ids: list[str]) -> dict[str, str]:
        """Each request's reply status, collecting IOPub on the way; requests still unanswered after
        TIMEOUT are left out."""
        statuses, deadline = {}, time.monotonic() + TIMEOUT
        while len(statuses) < len(msg_ids) and time.monotonic() < deadline:
            try:
                reply = self.client.get_shell_msg(timeout=0.1)
                statuses[reply["parent_header"]["msg_id"]] = reply["content"]["status"]
            except queue.Empty:
                pass
            self.drain()
        self.drain()
        return statuses

    def drain(self):
        while True:
            try:
                self.iopub.append(self.client.get_iopub_msg(timeout=0.05))
            except queue.Empty:
                return

    def text(self, msg_id: str) -> str:
        return "".join(m["content"]["text"] for m in self.iopub
                       if m["msg_type"] == "stream" and m["parent_header"].get("msg_id") == msg_id)

    def close(self):
        self.client.stop_channels()
        self.manager.shutdown_kernel(now=True)


# ib_insync's docs tell notebook users to start with util.startLoop(), which patches the loop with
# nest_asyncio before qdibkr does.
@pytest.mark.parametrize("before", ["", "from ib_insync import util\nutil.startLoop()"],
                         ids=["qdibkr-alone", "after-util.startLoop"])
def test_blocking_calls_in_jupyter_while_cells_and_clicks_arrive(before, gateway, tmp_path):
    kernel = Kernel({**os.environ, "QDIBKR_DB": str(tmp_path / "queue.sqlite"),
                     "QDIBKR_CACHE": str(tmp_path / "cache")})
    try:
        setup = kernel.execute(SETUP.format(before=before, port=gateway.port))
        assert kernel.replies([setup]) == {setup: "ok"}, kernel.text(setup)
        # The rest at once, as Run All sends them, and a click on Quote: these requests reach the
        # kernel while the first blocking call is still waiting for TWS on the kernel's event loop.
        cells = [kernel.execute(code) for code in BLOCKING]
        kernel.click("Quote")
        cells.append(kernel.execute(REPORT))
        statuses = kernel.replies(cells)
        output = "".join(kernel.text(msg_id) for msg_id in [setup, *cells])
        assert "cannot enter context" not in output and "Traceback" not in output, output
        assert statuses == dict.fromkeys(cells, "ok"), output
        assert [m["content"] for m in kernel.iopub if m["msg_type"] == "error"] == []
    finally:
        kernel.close()
    positions, quotes = kernel.text(cells[-1]).splitlines()
    assert ">MSFT<" in positions and ">0700.HK<" in positions  # the widgets followed the fills meanwhile
    assert ">AAPL<" in quotes and ">0700.HK<" in quotes  # and the click was answered
    assert gateway.broker.position("DU1234567", 272093).quantity == 2
