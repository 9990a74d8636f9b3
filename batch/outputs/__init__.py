"""Output files: names and paths, downloads verified and published, durable atomic writes, and
the output folder's lock.

    naming.py     safe file names from the job's template, paths inside the output folder
    downloads.py  fetch, check and publish output images in batches
    durable.py    temporary names, fsync, atomic renames
    lock.py       one run per output folder at a time

It imports only `batch.crashpoints` and `batch.errors` of the package: the ledger records what
it writes, never the other way round.
"""

from batch.outputs.downloads import DownloadError, Publisher, download_image
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

__all__ = [
    "IMAGES_DIR",
    "DownloadError",
    "OutputRecord",
    "Publisher",
    "check_output_path",
    "cleanup_temp_files",
    "download_image",
    "run_lock",
    "safe_name",
    "validate_template",
    "verify_outputs",
]
