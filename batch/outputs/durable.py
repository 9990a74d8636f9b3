"""Files that reach their final name only whole and durable.

A file is written to a temporary name beside its destination (`temp_path`: `.tmp-<tag>-<name>`),
made durable (fsync, or for a batch of files `sync_files`), renamed over the destination, and the
folder fsynced, so a crash leaves either the old file or the new one, never a part (DESIGN
invariant 1). Temporary files a killed process left behind start with `TEMP_PREFIX`.

A full disk (ENOSPC, EDQUOT) or a refused write (EACCES, EROFS) is raised as
`batch.outputs.faults.DiskFullError` / `NotWritableError`, the temporary file removed first.
"""

from __future__ import annotations

import ctypes
import itertools
import os
import secrets
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import IO

from batch.crashpoints import crashpoint
from batch.outputs.faults import host_error

TEMP_PREFIX = ".tmp-"


def fsync_dir(path: Path) -> None:
    """fsync a directory so a rename inside it survives a crash (no-op where unsupported)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        with suppress(OSError):
            os.fsync(fd)
    finally:
        os.close(fd)


def temp_path(dest: Path) -> Path:
    """A fresh temporary name beside `dest`: this process's random tag and a counter (one
    random draw per process, not a system call per file)."""
    return dest.parent / f"{TEMP_PREFIX}{_TEMP_TAG}{next(_temp_counter):06x}-{dest.name}"


_TEMP_TAG = secrets.token_hex(5)
_temp_counter = itertools.count()


@contextmanager
def atomic_writer(dest: Path, *, newline: str | None = "") -> Iterator[IO[str]]:
    """Write a text file atomically: temp file, fsync, rename, fsync the folder.

    On any error the temporary file is removed and `dest` is left as it was; a full disk is
    raised as `DiskFullError`, a refused write as `NotWritableError`.
    """
    tmp = temp_path(dest)
    with _discarded_on_error(tmp):
        with open(tmp, "w", encoding="utf-8", newline=newline) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, dest)
    fsync_dir(dest.parent)


@contextmanager
def _discarded_on_error(tmp: Path) -> Iterator[None]:
    """Run the block; on any error remove `tmp`, and raise a full disk or a refused write as
    the `batch.outputs.faults` error it is."""
    try:
        yield
    except OSError as exc:
        _discard(tmp)
        mapped = host_error(exc, tmp.parent)
        if mapped is None:
            raise
        raise mapped from exc
    except BaseException:
        _discard(tmp)
        raise


def _discard(tmp: Path) -> None:
    """Remove a temporary file (a full disk still lets a file be removed; a folder that
    refuses it leaves it to `cleanup_temp_files`)."""
    with suppress(OSError):
        tmp.unlink(missing_ok=True)


def write_unsynced(tmp: Path, data: bytes) -> None:
    """Write `data` to a new file `tmp`, not yet made durable (`sync_files` does that). On a
    full disk (`DiskFullError`), or any error, `tmp` is removed."""
    with _discarded_on_error(tmp), open(tmp, "wb") as fh:
        fh.write(data[: len(data) // 2])
        crashpoint("download")  # a half-written temp file, for crash tests
        fh.write(data[len(data) // 2 :])


def sync_files(paths: list[Path]) -> dict[Path, OSError]:
    """Make written files durable; those that could not be, with why.

    On Linux one `syncfs` per folder flushes them all at once: an fsync per file forces a
    journal commit per file, and for a small image that commit costs more than everything else
    about writing it. Elsewhere, or where `syncfs` fails, each file is fsynced.
    """
    synced = {folder for folder in {p.parent for p in paths} if _syncfs(folder)}
    failed: dict[Path, OSError] = {}
    for path in paths:
        if path.parent in synced:
            continue
        try:
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as exc:
            failed[path] = exc
    return failed


def _syncfs(folder: Path) -> bool:
    """syncfs(2) on the file system holding `folder`; False where unavailable or failing."""
    if _SYNCFS is None:
        return False
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return False
    try:
        return bool(_SYNCFS(fd) == 0)
    finally:
        os.close(fd)


def _load_syncfs() -> Callable[[int], int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        return getattr(ctypes.CDLL(None, use_errno=True), "syncfs", None)
    except OSError:
        return None


_SYNCFS = _load_syncfs()
