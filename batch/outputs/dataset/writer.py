"""What every dataset writer shares: the folder that appears whole, and the writer's base.

`staged(dest)` gives a temporary folder beside `dest`, made durable and renamed into place only
when the export ends well. A `Writer` takes samples one at a time (`add`) and finishes its files
(`close`); `Sharded` counts what a file holds, for the formats split into several.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from batch.outputs.dataset.records import DatasetError, ExportSummary, Sample
from batch.outputs.durable import fsync_dir, sync_files, temp_path

# --- the folder that appears whole -----------------------------------------------------------

MARKER = ".firered-export"  # in every export: what `--overwrite` may replace


@contextmanager
def staged(dest: Path, overwrite: bool) -> Iterator[Path]:
    """A temporary folder beside `dest`, renamed to `dest` when the block ends well (any old
    `dest` set aside and removed after), removed when it does not."""
    if dest.exists() and not (dest.is_dir() and not any(dest.iterdir())):
        if not overwrite:
            why = "already exists: choose another destination, or overwrite it"
            raise DatasetError(f"{dest} {why}")
        if not (dest / MARKER).is_file():  # --overwrite never deletes anything else
            why = "is not an earlier export (no .firered-export): not replaced"
            raise DatasetError(f"{dest} {why}; choose another destination")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(dest)
    tmp.mkdir()
    try:
        yield tmp
        (tmp / MARKER).write_text("written by firered-batch export; --overwrite replaces it\n")
        _sync_tree(tmp)
        old = temp_path(dest) if dest.exists() else None
        if old is not None:
            os.replace(dest, old)
        try:
            os.replace(tmp, dest)
        except OSError:
            if old is not None:
                os.replace(old, dest)
            raise
        fsync_dir(dest.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if old is not None and old.is_dir():
        shutil.rmtree(old, ignore_errors=True)
    elif old is not None:
        old.unlink(missing_ok=True)


def _sync_tree(root: Path) -> None:
    """Make every file and folder under `root` durable (one `syncfs` per folder on Linux)."""
    walked = list(os.walk(root))
    failed = sync_files([Path(folder, name) for folder, _, names in walked for name in names])
    if failed:
        raise next(iter(failed.values()))
    for folder, _, _ in walked:
        fsync_dir(Path(folder))


def open_text(files: ExitStack, path: Path, mode: str) -> IO[str]:
    """A text file kept open until `files` closes."""
    return files.enter_context(open(path, mode, encoding="utf-8", newline="\n"))


def place(src: Path, dst: Path) -> None:
    """`dst` as a hard link to `src` (outputs are replaced by renames, never edited in place),
    or a copy where a link cannot be made (another file system)."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


# --- the writers' base -----------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    tmp: Path  # the folder being written, renamed to `dest` at the end
    dest: Path
    summary: ExportSummary
    files: ExitStack  # open files, closed when the export ends, however it ends


class Writer:
    def __init__(self, target: Target) -> None:
        self.tmp = target.tmp
        self.dest = target.dest
        self.summary = target.summary
        self.files = target.files

    def add(self, sample: Sample) -> None:
        raise NotImplementedError

    def close(self) -> None:
        """Finish the files, after the last sample."""


class Sharded(Writer):
    """Files of at most `shard_size` samples and about `shard_bytes` bytes each."""

    def __init__(self, target: Target, shard_size: int, shard_bytes: int) -> None:
        super().__init__(target)
        self.shard_size = shard_size
        self.shard_bytes = shard_bytes
        self.in_shard = 0
        self.shard_used = 0

    def room(self, total: int) -> bool:
        """Whether one more sample fits in the current shard, which would then weigh `total`
        bytes (an empty shard takes any sample)."""
        if self.in_shard == 0:
            return True
        return self.in_shard < self.shard_size and total <= self.shard_bytes
