"""An output folder whose ledger is gone: refused before anything is sent or overwritten.

A folder that holds an earlier run's outputs — image or thumbnail files, results.csv,
results.jsonl, report.html, SQLite's journal files — but no ledger, or a zero-length one, lost
its record of what was paid for: a run there would send every item again and overwrite its
files. `check_ledger_present` raises `LedgerMissingError` for it (exit 2, nothing done);
`run_lock` calls it once it holds the folder's lock, so every run (a dry run too) is refused.
Starting over is deliberate: `firered-batch run JOB --start-over` (`batch.outputs.aside`).
"""

from __future__ import annotations

import os
from pathlib import Path

from batch.errors import BatchError, ExitCode
from batch.outputs.naming import IMAGES_DIR

LEDGER_NAME = "ledger.sqlite"
# SQLite's files beside the ledger while it is open, or after a run was killed.
JOURNALS = ("-wal", "-shm", "-journal")
# What a run leaves besides the ledger (report.html and thumbs/ are written by `batch.report`,
# a layer above this one: their names are repeated here).
DERIVED_FILES = ("results.csv", "results.jsonl", "report.html")
DERIVED_FOLDERS = (IMAGES_DIR, "thumbs")


class LedgerMissingError(BatchError):
    """The output folder has no ledger (or an empty one). `found`: what of an earlier run is
    there (empty when there is nothing: a job not run yet)."""

    exit_code = ExitCode.INVALID

    def __init__(self, message: str, *, found: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.found = found


def has_ledger(folder: Path) -> bool:
    """Whether `folder` holds a ledger file that is not empty."""
    try:
        return (folder / LEDGER_NAME).stat().st_size > 0
    except OSError:
        return False


def earlier_outputs(folder: Path) -> tuple[str, ...]:
    """What of an earlier run `folder` holds besides its ledger: image and thumbnail folders
    with files in them, results.csv / results.jsonl / report.html, SQLite's journal files."""
    found: list[str] = []
    for name in DERIVED_FOLDERS:
        count = _files_in(folder / name)
        if count:
            more = "+" if count >= _LIMIT else ""
            found.append(f"{name}/ ({count}{more} file{'' if count == 1 else 's'})")
    for name in (*DERIVED_FILES, *(LEDGER_NAME + suffix for suffix in JOURNALS)):
        if (folder / name).is_file():
            found.append(name)
    return tuple(found)


_LIMIT = 10_000  # files counted at most: a huge folder is not walked through


def _files_in(folder: Path) -> int:
    count = 0
    for _root, _dirs, files in os.walk(folder):
        count += len(files)
        if count >= _LIMIT:
            return _LIMIT
    return count


def check_ledger_present(output_dir: Path | str, *, create: bool = True) -> None:
    """`LedgerMissingError` when `output_dir` has no ledger (or a zero-length one) but holds an
    earlier run's outputs, or — with `create=False` — when it has no ledger at all. A folder
    without either is a new one: fine with `create=True`."""
    folder = Path(output_dir)
    if has_ledger(folder):
        return
    path = folder / LEDGER_NAME
    found = earlier_outputs(folder)
    if found:
        state = "empty (0 bytes)" if path.is_file() else "missing"
        raise LedgerMissingError(
            f"{folder}: this output folder holds an earlier run's outputs ({', '.join(found)})"
            f" but its ledger {path.name} is {state}; nothing was done: without the ledger"
            " every item would be sent, paid for and written again. Put the ledger back if"
            " it was moved; to start over deliberately run the same `firered-batch run`"
            " command with --start-over (it moves this folder's files aside into a"
            " timestamped folder and deletes nothing)",
            found=found,
        )
    if not create:
        raise LedgerMissingError(f"{folder}: no ledger yet (has this job been run?)")
