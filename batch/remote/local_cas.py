"""Compare-and-swap for a local folder store, which obstore 0.12 cannot do itself.

obstore's `LocalStore` supports create-only writes (`mode="create"`, a hard link that fails if
the file exists) but raises `NotImplementedError` for `mode={"e_tag": ...}`. Here a swap (or a
conditional delete) takes an exclusive `flock` on the object's folder, reads the current ETag
with obstore's own `head` (so ETags stay in obstore's format: inode-mtime-size), and only if it
matches writes a temporary file and renames it over the object. Every CAS writer goes through
this lock, so check-then-replace cannot interleave; create-only writers need no lock (they only
succeed where nothing exists, and a swap only where something does).

`flock` is advisory, POSIX-only, and held by the open file description: it is released when the
process dies, so a crash never leaves a stale lock (unlike an O_EXCL lock file). It is reliable
on local filesystems; for NFS and other network filesystems use a real object store.
Every swap moves the mtime forward, so a swap's ETag never repeats an earlier version's. A
create after a delete (obstore's, in the same few-ms tick, reusing the inode, at the same size)
could still repeat one; the lease never swaps with an ETag that old. These functions block:
the Store calls them in a worker thread.
"""

from __future__ import annotations

import fcntl
import os
import secrets
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from obstore.store import LocalStore

# The current ETag of the object, or None if it is absent (obstore's sync `head`).
CurrentEtag = Callable[[], str | None]


@contextmanager
def _folder_lock(folder: Path) -> Iterator[None]:
    # A folder's fd can be flocked (Linux, macOS); locking the folder, not a sidecar file, keeps
    # stray lock files out of `list()`.
    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def write_atomic(file: Path, data: bytes, *, newer_than_ns: int | None = None) -> None:
    """Write `data` to a temporary file beside `file`, flush it to disk, rename it over `file`.

    With `newer_than_ns`, the new file's mtime is set past it (by at least 1 µs).
    """
    # obstore's LocalStore leaves names containing '#' out of listings (its own staging files
    # use them), so a reader never sees our half-written file.
    tmp = file.with_name(f"{file.name}#{secrets.randbits(48)}")
    try:
        with tmp.open("wb") as f:
            f.write(data)
            f.flush()
            if newer_than_ns is not None:
                mtime = max(os.fstat(f.fileno()).st_mtime_ns, newer_than_ns + 1000)
                os.utime(f.fileno(), ns=(mtime, mtime))
            os.fsync(f.fileno())
        os.replace(tmp, file)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def swap(file: Path, data: bytes, etag: str, current: CurrentEtag) -> str | None:
    """Replace `file` with `data` if its ETag is still `etag`: the new ETag, or None if not."""
    if not file.parent.is_dir():
        return None
    with _folder_lock(file.parent):
        if current() != etag:
            return None
        # The ETag is inode-mtime(µs)-size, and file times tick coarsely (a few ms): a new file
        # may reuse the inode just freed, in the same tick, at the same size, and so repeat an
        # old ETag, letting a stale swap through. A strictly later mtime rules that out.
        write_atomic(file, data, newer_than_ns=file.stat().st_mtime_ns)
        # read under the lock: no other swap can have replaced it yet
        return current()


def delete_if(file: Path, etag: str, current: CurrentEtag) -> bool:
    """Delete `file` if its ETag is still `etag`; whether it was deleted."""
    if not file.parent.is_dir():
        return False
    with _folder_lock(file.parent):
        if current() != etag:
            return False
        file.unlink(missing_ok=True)
        return True


class LocalCas:
    """`swap` and `delete_if` for keys of the obstore `LocalStore` rooted at `root`."""

    def __init__(self, store: LocalStore, root: Path) -> None:
        self._store = store
        self._root = root

    def _current(self, key: str) -> CurrentEtag:
        def current() -> str | None:
            try:
                return self._store.head(key)["e_tag"]
            except FileNotFoundError:
                return None

        return current

    def swap(self, key: str, data: bytes, etag: str) -> str | None:
        return swap(self._root / key, data, etag, self._current(key))

    def delete_if(self, key: str, etag: str) -> bool:
        return delete_if(self._root / key, etag, self._current(key))
