"""Faults of the host the output folder lives on, as errors a user can act on.

    DiskFullError     ENOSPC / EDQUOT (and SQLite's "database or disk is full", mapped by the
                      ledger): exit 4, `ExitCode.STOPPED`: free some space, run the same command
    NotWritableError  EACCES / EPERM / EROFS: "cannot write <path>: permission denied": exit 2,
                      `ExitCode.INVALID` (the output folder cannot be used; nothing is sent)

`host_error(exc, path)` maps an `OSError` to one of them (None for any other error), and
`host_faults(path)` is a block that raises them in place of the `OSError`. Whoever raises one
has left no partial file under a final name (`batch.outputs.durable` removes its temporary
file first).
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from batch.errors import BatchError, ExitCode

NO_SPACE = frozenset({errno.ENOSPC, errno.EDQUOT})
NO_ACCESS = frozenset({errno.EACCES, errno.EPERM, errno.EROFS})


class DiskFullError(BatchError):
    """The disk (or the user's quota) holding `path` is full. What was written before is kept;
    nothing was left half-written under a final name. Run the same command again once there is
    room: it resumes."""

    exit_code = ExitCode.STOPPED

    def __init__(self, path: Path | str, detail: str = "no space left on device") -> None:
        self.path = Path(path)
        self.detail = detail
        super().__init__(
            f"{self.path}: disk full ({detail}): free some space, then run the same command"
            " again (nothing already completed is lost)"
        )


class NotWritableError(BatchError):
    """The output folder (or a file in it: the ledger, its lock) cannot be written by this
    user, or sits on a read-only file system."""

    exit_code = ExitCode.INVALID

    def __init__(
        self, path: Path | str, reason: str = "permission denied", *, action: str = "write"
    ) -> None:
        self.path = Path(path)
        self.reason = reason
        super().__init__(
            f"cannot {action} {self.path}: {reason}: make the output folder and its files"
            " writable by this user (or choose another with --output)"
        )


def host_error(
    exc: OSError, path: Path | str | None = None, *, action: str = "write"
) -> BatchError | None:
    """The `DiskFullError` / `NotWritableError` an `OSError` means, else None. The path named
    is `path` (say, the folder a temporary file was written in), else the one the error names."""
    named = path if path is not None else exc.filename
    where = "the output folder" if named is None else os.fsdecode(named)
    if exc.errno in NO_SPACE:
        return DiskFullError(
            where, "disk quota exceeded" if exc.errno == errno.EDQUOT else "no space left on device"
        )
    if exc.errno in NO_ACCESS:
        return NotWritableError(where, _access_reason(exc.errno), action=action)
    return None


def _access_reason(code: int | None) -> str:
    if code == errno.EROFS:
        return "read-only file system"
    if code == errno.EPERM:
        return "operation not permitted"
    return "permission denied"


@contextmanager
def host_faults(path: Path | str | None = None, *, action: str = "write") -> Iterator[None]:
    """Run the block; an `OSError` of a full disk or a refused write leaves it as the error
    `host_error` names (anything else propagates unchanged)."""
    try:
        yield
    except OSError as exc:
        mapped = host_error(exc, path, action=action)
        if mapped is None:
            raise
        raise mapped from exc


def writable(path: Path) -> str | None:
    """Why this process cannot write `path` (an existing file or folder), or None if it can:
    "read-only file system" or "permission denied". Checks the effective user (a process that
    switched user, or root, is judged as it is)."""
    mode = os.W_OK | os.X_OK if path.is_dir() else os.W_OK
    try:
        if os.access(path, mode, effective_ids=os.access in os.supports_effective_ids):
            return None
    except OSError:
        return None  # cannot tell: let the write itself say
    try:
        if os.statvfs(path).f_flag & os.ST_RDONLY:
            return "read-only file system"
    except OSError:
        pass
    return "permission denied"
