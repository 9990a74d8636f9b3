"""WAL checkpoints in a thread of their own, so the event loop never waits for one.

SQLite in WAL mode copies the log back into the database file (a checkpoint) whenever the log
passes 1,000 pages, inside whichever commit crossed the line, and with `synchronous=NORMAL` that
commit also fsyncs the database. On the event loop's thread that commit then takes tens to
hundreds of milliseconds instead of one or two (measured here: 98 and 238 ms). While
`background_checkpoints` is active, the ledger's connection does not checkpoint; a thread with
its own connection runs a PASSIVE checkpoint every `interval` seconds, which never blocks the
writer (SQLite's C code runs without the GIL). When the block ends the connection checkpoints
as before.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

INTERVAL = 0.5  # seconds; the log grows a few MB at most in between
SQLITE_DEFAULT_AUTOCHECKPOINT = 1000


class Checkpointer:
    """A daemon thread that checkpoints the WAL of the database at `path` every `interval`."""

    def __init__(self, path: Path, interval: float = INTERVAL) -> None:
        self.path = path
        self.interval = interval
        self.checkpoints = 0  # PASSIVE checkpoints run (for tests and curiosity)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="ledger-checkpoint", daemon=True)

    def __repr__(self) -> str:
        return f"Checkpointer({self.path.name}, every {self.interval:g} s, {self.checkpoints})"

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        try:
            conn.execute("PRAGMA busy_timeout = 1000")
            while not self._stop.wait(self.interval):
                with suppress(sqlite3.Error):  # busy (another checkpoint): the next turn
                    conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
                    self.checkpoints += 1
        finally:
            conn.close()


@contextmanager
def background_checkpoints(
    conn: sqlite3.Connection, lock: threading.RLock, path: Path, interval: float = INTERVAL
) -> Iterator[Checkpointer]:
    """While the block runs, `conn` (the ledger's connection, used under `lock`) leaves
    checkpoints to a `Checkpointer` thread."""
    checkpointer = Checkpointer(path, interval)
    with lock:
        conn.execute("PRAGMA wal_autocheckpoint = 0")
    checkpointer.start()
    try:
        yield checkpointer
    finally:
        checkpointer.stop()
        with lock:
            conn.execute(f"PRAGMA wal_autocheckpoint = {SQLITE_DEFAULT_AUTOCHECKPOINT}")
