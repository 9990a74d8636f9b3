"""A ledger that is missing, damaged or cannot be written: errors that say what to do.

    LedgerMissingError  no ledger (or a zero-length one) in a folder that holds an earlier run's
                        outputs: running on would send, pay for and overwrite everything again
                        (`batch.outputs.presence`, checked by `run_lock`; re-exported here)
    LedgerDamagedError  not a database, or a damaged one (SQLITE_CORRUPT / SQLITE_NOTADB)

Both exit 2 (`ExitCode.INVALID`: the output folder cannot be used as it is; nothing was sent).
SQLite's own errors are mapped by `sqlite_fault`: a full disk (SQLITE_FULL) becomes
`batch.outputs.faults.DiskFullError` (exit 4), a ledger or folder that cannot be written
(SQLITE_READONLY, SQLITE_PERM, SQLITE_CANTOPEN) `NotWritableError` (exit 2).
"""

from __future__ import annotations

import shutil
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from batch.errors import BatchError, ExitCode
from batch.ledger.models import LedgerError
from batch.outputs.faults import DiskFullError, NotWritableError, writable
from batch.outputs.presence import (
    JOURNALS,
    LEDGER_NAME,
    LedgerMissingError,
    check_ledger_present,
    earlier_outputs,
    has_ledger,
)

__all__ = [
    "LEDGER_NAME",
    "LedgerDamagedError",
    "LedgerMissingError",
    "check_ledger_present",
    "check_writable",
    "earlier_outputs",
    "has_ledger",
    "ledger_faults",
    "sqlite_fault",
]

# SQLite's primary result codes (the low byte of `sqlite_errorcode`).
_PERM, _READONLY, _IOERR, _CORRUPT, _CANTOPEN, _FULL, _NOTADB = 3, 8, 10, 11, 14, 13, 26
# An I/O error while the disk has less than this free is taken for a full disk: SQLite reports
# a -shm file that cannot grow on a full disk as SQLITE_IOERR_SHMSIZE, not SQLITE_FULL.
NEARLY_FULL = 256 * 1024


class LedgerDamagedError(LedgerError):
    """The ledger is not a database, or a damaged one."""

    exit_code = ExitCode.INVALID

    def __init__(self, path: Path, detail: str) -> None:
        self.path = path
        self.detail = detail
        super().__init__(
            f"{path}: the ledger is damaged ({detail}); nothing was sent."
            f" `firered-batch doctor {path.parent} --recover` copies what is still readable"
            " into a new ledger and keeps the damaged files (or, with the sqlite3 command:"
            f" `sqlite3 {path} .recover`); or start over with the same `firered-batch run`"
            " command and --start-over"
        )


def check_writable(path: Path) -> None:
    """`NotWritableError` unless this process can write the ledger at `path`: the file, the
    journal files SQLite keeps beside it, and its folder (where SQLite makes and removes
    them)."""
    for target in (path, *(path.with_name(path.name + s) for s in JOURNALS), path.parent):
        if target.exists():
            reason = writable(target)
            if reason is not None:
                raise NotWritableError(target, reason)


def sqlite_fault(exc: sqlite3.Error, path: Path) -> BatchError | None:
    """The error a SQLite failure on the ledger at `path` means for the user, or None (a bug,
    or a fault not of the host: it propagates as it is)."""
    code = getattr(exc, "sqlite_errorcode", None)
    primary = None if code is None else code & 0xFF
    text = str(exc).lower()
    if primary == _FULL or "database or disk is full" in text:
        return DiskFullError(path.parent, "database or disk is full")
    if (primary == _IOERR or "disk i/o error" in text) and _nearly_full(path.parent):
        return DiskFullError(path.parent, "no space left on device")
    if primary in (_CORRUPT, _NOTADB) or "malformed" in text or "not a database" in text:
        return LedgerDamagedError(path, str(exc))
    if primary in (_READONLY, _PERM, _CANTOPEN) or "readonly database" in text:
        for target in (path, path.parent):
            reason = writable(target) if target.exists() else None
            if reason is not None:
                return NotWritableError(target, reason)
        if primary == _READONLY or "readonly database" in text:
            return NotWritableError(path, "read-only")
    return None


def _nearly_full(folder: Path) -> bool:
    try:
        return shutil.disk_usage(folder).free < NEARLY_FULL
    except OSError:
        return False


@contextmanager
def ledger_faults(path: Path) -> Iterator[None]:
    """Run the block; a SQLite error that `sqlite_fault` maps is raised as its error."""
    try:
        yield
    except sqlite3.Error as exc:
        mapped = sqlite_fault(exc, path)
        if mapped is None:
            raise
        raise mapped from exc
