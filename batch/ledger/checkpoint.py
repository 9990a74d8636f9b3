"""WAL checkpoints in a thread of their own, so the event loop never waits for one.

SQLite in WAL mode copies the log back into the database file (a checkpoint) whenever the log
passes 1,000 pages, inside whichever commit crossed the line, and with `synchronous=NORMAL` that
commit also fsyncs the database. On the event loop's thread that commit would stall every
item for as long as the copy and the fsync take. While
`background_checkpoints` is active, a thread with its own connection runs a PASSIVE checkpoint
every `interval` seconds, which never blocks the writer (SQLite's C code runs without the GIL),
and the ledger's connection checkpoints only past `FALLBACK_PAGES` of log (should the thread
fall behind or die). When the block ends the connection's own setting comes back.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

INTERVAL = 0.5  # seconds; the log grows a few MB at most in between
FALLBACK_PAGES = 50_000  # the connection checkpoints itself past this (~200 MB of log)

log = logging.getLogger("batch.ledger")


class Checkpointer:
    """A daemon thread that checkpoints the WAL of the database at `path` every `interval`."""

    def __init__(self, path: Path, interval: float = INTERVAL) -> None:
        self.path = path
        self.interval = interval
        self.checkpoints = 0  # PASSIVE checkpoints completed (for tests and curiosity)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="ledger-checkpoint", daemon=True)

    def __repr__(self) -> str:
        return f"Checkpointer({self.path.name}, every {self.interval:g} s, {self.checkpoints})"

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def _run(self) -> None:
        try:
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        except sqlite3.Error as exc:  # the connection's own limit (FALLBACK_PAGES) still holds
            log.warning("WAL checkpoints: cannot open %s: %s", self.path.name, exc)
            return
        try:
            while not self._stop.wait(self.interval):
                try:
                    busy, _, _ = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
                except sqlite3.Error as exc:
                    log.warning("WAL checkpoint of %s failed: %s", self.path.name, exc)
                    continue
                if not busy:  # busy: another connection was checkpointing; the next turn
                    self.checkpoints += 1
        finally:
            conn.close()


@contextmanager
def background_checkpoints(
    conn: sqlite3.Connection, lock: threading.RLock, path: Path, interval: float = INTERVAL
) -> Iterator[Checkpointer]:
    """While the block runs, `conn` (the ledger's connection, used under `lock`) leaves
    checkpoints to a `Checkpointer` thread, up to `FALLBACK_PAGES` of log (should the thread
    fall behind or die); then its own setting comes back."""
    with lock:
        (before,) = conn.execute("PRAGMA wal_autocheckpoint").fetchone()
        conn.execute(f"PRAGMA wal_autocheckpoint = {max(int(before), FALLBACK_PAGES)}")
    checkpointer = Checkpointer(path, interval)
    try:
        checkpointer.start()
        yield checkpointer
    finally:
        try:
            checkpointer.stop()
        finally:
            with lock:
                conn.execute(f"PRAGMA wal_autocheckpoint = {int(before)}")
