"""One run per output folder at a time: an flock on `<output>/.lock`.

The kernel drops an flock when its process dies, however it dies, so a lock left by a killed
run never blocks the next one. The file keeps the holder's pid for the message.

A folder that cannot be made or written raises `NotWritableError` (exit 2: nothing was sent),
a full disk `DiskFullError` (exit 4), instead of an `OSError`. Once the lock is held, a folder
whose ledger is gone while an earlier run's outputs are still there is refused
(`batch.outputs.presence.check_ledger_present`: `LedgerMissingError`, exit 2), so no run — a
dry run neither — starts over without being told to (`check_ledger=False`: `--start-over`).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

from batch.errors import LockHeldError
from batch.outputs.faults import host_faults
from batch.outputs.presence import check_ledger_present

LOCK_FILE = ".lock"


@contextlib.contextmanager
def run_lock(output_dir: Path, *, check_ledger: bool = True) -> Iterator[None]:
    with host_faults(output_dir, action="create"):
        output_dir.mkdir(parents=True, exist_ok=True)
    path = output_dir / LOCK_FILE
    with host_faults(path):
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "?"
            raise LockHeldError(
                f"{output_dir}: another run (pid {holder}) is working on this output folder; "
                "this one exits without doing anything"
            ) from None
        with host_faults(output_dir):
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        if check_ledger:
            check_ledger_present(output_dir)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock
