"""WAL checkpoints in their own thread while a run writes (`Ledger.background_checkpoints`)."""

from __future__ import annotations

import contextlib
import shutil
import sqlite3
import threading
from pathlib import Path

from test_ledger import items

from batch.ledger import Ledger
from batch.ledger.checkpoint import FALLBACK_PAGES, Checkpointer


def _autocheckpoint(ledger: Ledger) -> int:
    return int(ledger._conn.execute("PRAGMA wal_autocheckpoint").fetchone()[0])


def _wait_for_checkpoints(checkpointer: Checkpointer, more_than: int) -> None:
    """Until the thread has run more than `more_than` checkpoints (bounded, not a timing test)."""
    pause = threading.Event()
    for _ in range(500):
        if checkpointer.checkpoints > more_than:
            return
        pause.wait(0.01)
    raise AssertionError("the checkpoint thread did not run")


def test_while_active_the_thread_checkpoints_and_the_connection_does_not(tmp_path: Path) -> None:
    with Ledger.open(tmp_path / "out") as ledger:
        assert _autocheckpoint(ledger) == 1000  # SQLite's default: inside commits
        with ledger.background_checkpoints(interval=0.01) as checkpointer:
            assert _autocheckpoint(ledger) == FALLBACK_PAGES
            ledger.plan(items(3000))  # committed to the WAL only
            seen = checkpointer.checkpoints
            _wait_for_checkpoints(checkpointer, seen + 1)  # one began after the commit

            # The database file alone, without its WAL, already holds every item.
            alone = tmp_path / "alone"
            alone.mkdir()
            shutil.copy(ledger.path, alone / "ledger.sqlite")
            with contextlib.closing(sqlite3.connect(alone / "ledger.sqlite")) as conn:
                assert conn.execute("SELECT count(*) FROM items").fetchone()[0] == 3000
        assert _autocheckpoint(ledger) == 1000
        assert not any(t.name == "ledger-checkpoint" for t in threading.enumerate())
