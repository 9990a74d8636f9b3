"""Output files: names and paths, downloads verified and published, durable atomic writes, and
the output folder's lock.

    naming.py     safe file names from the job's template, paths inside the output folder
    downloads.py  fetch, check and publish output images in batches
    durable.py    temporary names, fsync, atomic renames
    lock.py       one run per output folder at a time
    faults.py     a full disk (DiskFullError, exit 4) or a folder that cannot be written
                  (NotWritableError, exit 2), from the OSError that says so
    presence.py   a folder with an earlier run's outputs but no ledger: refused (run_lock)
    aside.py      an output folder's files moved aside for a deliberate fresh start
    dataset/      accepted outputs as a dataset: folder (imagefolder), jsonl, parquet, webdataset

It imports only `batch.crashpoints` and `batch.errors` of the package: the ledger records what
it writes, never the other way round.
"""

from batch.outputs.aside import set_aside
from batch.outputs.downloads import DownloadError, Publisher, download_image
from batch.outputs.faults import DiskFullError, NotWritableError, host_error, host_faults
from batch.outputs.lock import run_lock
from batch.outputs.naming import (
    IMAGES_DIR,
    OutputRecord,
    check_output_path,
    cleanup_temp_files,
    safe_name,
    validate_template,
    verify_outputs,
)
from batch.outputs.presence import LedgerMissingError, check_ledger_present

__all__ = [
    "IMAGES_DIR",
    "DiskFullError",
    "DownloadError",
    "LedgerMissingError",
    "NotWritableError",
    "OutputRecord",
    "Publisher",
    "check_ledger_present",
    "check_output_path",
    "cleanup_temp_files",
    "download_image",
    "host_error",
    "host_faults",
    "run_lock",
    "safe_name",
    "set_aside",
    "validate_template",
    "verify_outputs",
]
