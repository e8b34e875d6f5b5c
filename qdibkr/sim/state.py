"""The simulated gateway's state on disk, durable before any client hears of a change.

Two files: a snapshot ``FILE`` (the broker's whole state, JSON) and a journal
``FILE.journal`` (one JSON line per broker call: what it changed). A change is
appended to the journal and fsync'ed *before* its messages go to the clients,
so a fill a client was told of survives SIGKILL of the simulator and a power
cut: TWS reports a fill once it is booked, and a client that records it must
find it again after a restart (reqExecutions, positions).

Appending one line costs a fraction of a millisecond whatever the size of the
state, where rewriting the whole snapshot grows with every execution; so the
snapshot is rewritten only now and then (``compact``): when the journal grows
long, on a clean stop, and when the broker changed something no event named.
The snapshot is written atomically (temporary file, fsync, rename, fsync of the
directory) and records the last journal entry it includes, so a crash between
writing it and emptying the journal replays nothing twice. A line torn by a
crash in mid-append was never acknowledged to a client, and is ignored.
"""

import json
import logging
import os

from .broker import Broker

log = logging.getLogger("qdibkr.sim")

COMPACT_AFTER = 1000  # journal entries before the snapshot is rewritten


class StateFile:
    """The snapshot and journal of one simulated gateway's broker."""

    def __init__(self, path: str):
        self.path = path
        self.journal_path = f"{path}.journal"
        self.sequence = 0  # of the last change written
        self.pending = 0  # journal entries since the snapshot
        self._journal = None

    def load(self, broker: Broker) -> bool:
        """Restore the broker from the files, if there are any; True if there were."""
        found = False
        covered = 0
        if os.path.exists(self.path):
            with open(self.path) as f:
                state = json.load(f)
            broker.restore(state)
            covered = self.sequence = state.get("sequence", 0)
            found = True
        if os.path.exists(self.journal_path):
            with open(self.journal_path) as f:
                for line in f:
                    try:
                        entry = json.loads(line)
                    except json.JSONDecodeError:  # torn by a crash mid-append: never acknowledged
                        log.warning("%s: ignoring an incomplete last entry", self.journal_path)
                        break
                    if entry["sequence"] > covered:
                        broker.apply(entry["changes"])
                        self.sequence = entry["sequence"]
                        self.pending += 1
                        found = True
        return found

    def record(self, broker: Broker, events: list):
        """Append what the events changed to the journal, durably, before anyone is told."""
        if self._journal is None:
            created = not os.path.exists(self.journal_path)
            self._journal = open(self.journal_path, "a")
            if created:
                _sync_directory(self.journal_path)
        self.sequence += 1
        self._journal.write(json.dumps({"sequence": self.sequence, "changes": broker.changes(events)}) + "\n")
        self._journal.flush()
        os.fsync(self._journal.fileno())
        self.pending += 1

    def compact(self, broker: Broker):
        """Rewrite the snapshot with the whole state and empty the journal."""
        state = broker.state()
        state["sequence"] = self.sequence
        tmp = f"{self.path}.tmp"
        with open(tmp, "w") as f:
            json.dump(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)
        _sync_directory(self.path)
        if self._journal is not None:
            self._journal.close()
            self._journal = None
        if os.path.exists(self.journal_path):
            os.remove(self.journal_path)
        self.pending = 0
        broker.dirty = False


def _sync_directory(path: str):
    """Make a file's creation or renaming durable: fsync the directory holding it."""
    fd = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
