"""A deliberate fresh start: an output folder's files moved aside, never deleted.

`set_aside(output_dir)` moves everything in the folder (but its lock file) into a new folder
beside it, `<name>.set-aside-<UTC time>` — or, where that cannot be made or is on another file
system (the output folder is a mount point), into `<output>/set-aside-<UTC time>/`. Every move
is a rename on one file system: nothing is copied, nothing removed. The ledger's files move
first, so a move cut short leaves a folder that the next run refuses (outputs without a
ledger), never a ledger without the files it records. Call it holding the folder's lock.
"""

from __future__ import annotations

import datetime
import errno
import os
from pathlib import Path

from batch.outputs.durable import fsync_dir
from batch.outputs.faults import host_faults
from batch.outputs.lock import LOCK_FILE

ASIDE_MARK = "set-aside-"
_LEDGER_PREFIX = "ledger."  # the ledger and its journal files: moved first


def set_aside(output_dir: Path, *, now: datetime.datetime | None = None) -> Path | None:
    """Move the folder's files aside; return where they went (None: there was nothing)."""
    if not output_dir.is_dir():
        return None
    with host_faults(output_dir):
        entries = sorted(
            (p for p in output_dir.iterdir() if p.name != LOCK_FILE),
            key=lambda p: (not p.name.startswith(_LEDGER_PREFIX), p.name),
        )
        if not entries:
            return None
        stamp = (now or datetime.datetime.now(datetime.UTC)).strftime("%Y%m%dT%H%M%SZ")
        dest = _new_folder(output_dir.parent, f"{output_dir.name}.{ASIDE_MARK}{stamp}")
        if dest is not None:
            try:
                os.rename(entries[0], dest / entries[0].name)
            except OSError as exc:
                if exc.errno not in (errno.EXDEV, errno.EACCES, errno.EPERM, errno.EROFS):
                    raise
                dest.rmdir()
                dest = None
            else:
                entries = entries[1:]
        if dest is None:  # beside it was not possible: inside it, on its own file system
            dest = _new_folder(output_dir, f"{ASIDE_MARK}{stamp}", must=True)
            assert dest is not None
        for entry in entries:
            os.rename(entry, dest / entry.name)
        fsync_dir(dest)
        fsync_dir(output_dir)
    return dest


def _new_folder(parent: Path, name: str, *, must: bool = False) -> Path | None:
    """A folder made now (`name`, or `name-2`, `name-3` … if taken); None if it cannot be
    made (unless `must`: then the OSError)."""
    for n in range(1, 100):
        path = parent / (name if n == 1 else f"{name}-{n}")
        try:
            path.mkdir()
        except FileExistsError:
            continue
        except OSError:
            if must:
                raise
            return None
        return path
    raise FileExistsError(errno.EEXIST, "too many folders set aside at the same second", name)
