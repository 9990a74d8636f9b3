"""`LedgerRuns`: the `runs` table and the `meta` settings (`Ledger` inherits them).

A run's settings are stored redacted (`models.redact`): names that look like credentials are
kept as "<redacted>" (DESIGN invariant 6).
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from typing import Any

from batch.ledger.models import redact

# Meta: fal's reason while it refuses the account new work (`403 User is locked. Reason: …`);
# set by a run when fal locks the account, cleared after a submit is accepted again.
ACCOUNT_LOCKED_META = "account_locked"


class LedgerRuns:
    """Runs and meta; a base of `batch.ledger.store.Ledger`, which owns the connection, its
    lock, the clock and `_tx` (a transaction that joins a `Ledger.group` when inside one)."""

    _conn: sqlite3.Connection
    _lock: threading.RLock
    _clock: Callable[[], float]
    _tx: Callable[[], AbstractContextManager[sqlite3.Connection]]
    run_id: int | None

    def start_run(self, settings: Mapping[str, Any]) -> int:
        """Record a run's start (settings without secrets); later changes carry its id."""
        text = json.dumps(redact(settings), sort_keys=True, default=str)
        with self._tx() as conn:
            cur = conn.execute(
                "INSERT INTO runs (started_at, settings) VALUES (?, ?)", (self._clock(), text)
            )
        run_id = cur.lastrowid
        assert run_id is not None
        self.run_id = run_id
        return run_id

    def finish_run(self, run_id: int, counts: Mapping[str, Any], exit_code: int) -> None:
        with self._tx() as conn:
            conn.execute(
                "UPDATE runs SET ended_at = ?, counts = ?, exit_code = ? WHERE id = ?",
                (self._clock(), json.dumps(dict(counts), sort_keys=True), exit_code, run_id),
            )

    def run(self, run_id: int) -> dict[str, Any] | None:
        """A run's row, with settings and counts decoded."""
        with self._lock:
            row = self._conn.execute("SELECT * FROM runs WHERE id = ?", (run_id,)).fetchone()
        if row is None:
            return None
        data = dict(row)
        for name in ("settings", "counts"):
            data[name] = None if data[name] is None else json.loads(data[name])
        return data

    def last_run(self) -> dict[str, Any] | None:
        """The latest run's row (as `run`), or None before the first run; its settings say
        which job the ledger belongs to (name, endpoint, price) when only the folder is known."""
        with self._lock:
            (run_id,) = self._conn.execute("SELECT max(id) FROM runs").fetchone()
        return None if run_id is None else self.run(int(run_id))

    def get_meta(self, name: str) -> str | None:
        with self._lock:
            row = self._conn.execute("SELECT value FROM meta WHERE name = ?", (name,)).fetchone()
        return None if row is None else str(row[0])

    def set_meta(self, name: str, value: str | None) -> None:
        with self._tx() as conn:
            if value is None:
                conn.execute("DELETE FROM meta WHERE name = ?", (name,))
            else:
                conn.execute(
                    "INSERT INTO meta (name, value) VALUES (?, ?)"
                    " ON CONFLICT (name) DO UPDATE SET value = excluded.value",
                    (name, value),
                )

    def last_item_change(self) -> float:
        """When any item last changed (epoch seconds; 0 for an empty ledger)."""
        with self._lock:
            row = self._conn.execute("SELECT max(updated_at) FROM items").fetchone()
        return float(row[0] or 0.0)
