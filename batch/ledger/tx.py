"""The ledger's one way to write: a transaction on its connection, under its lock.

A SQLite error that is a fault of the host or of the file (a full disk, a ledger that cannot be
written, a damaged one) leaves a transaction as the error it means (`batch.ledger.faults`):
`DiskFullError`, `NotWritableError`, `LedgerDamagedError`.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

from batch.ledger.faults import sqlite_fault


@contextmanager
def transaction(
    conn: sqlite3.Connection, lock: threading.RLock, path: Path | None = None
) -> Iterator[sqlite3.Connection]:
    """BEGIN IMMEDIATE … COMMIT, rolled back on any exception.

    Opened inside another one on the same connection (the lock is re-entrant, so only by the
    thread that holds it: `Ledger.group`), it is part of that one, which commits or rolls back.
    `path`: the ledger's file, for messages (by default asked of the connection).
    """
    with lock:
        if conn.in_transaction:
            try:
                yield conn
            except sqlite3.Error as exc:
                _raise_fault(conn, exc, path)
                raise
            return
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            if conn.in_transaction:  # a COMMIT that failed (a full disk) is rolled back
                with suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
            _raise_fault(conn, exc, path)
            raise


def _raise_fault(conn: sqlite3.Connection, exc: sqlite3.Error, path: Path | None) -> None:
    """Raise the error `exc` means (`sqlite_fault`), if it is a fault of the host or file."""
    mapped = sqlite_fault(exc, path or database_path(conn))
    if mapped is not None:
        raise mapped from exc


def database_path(conn: sqlite3.Connection) -> Path:
    """The file of the connection's main database ("" for an in-memory one)."""
    try:
        for _seq, name, file in conn.execute("PRAGMA database_list"):
            if name == "main":
                return Path(file or "")
    except sqlite3.Error:
        pass
    return Path()
