"""The package's one error base and the exit codes a run ends with.

    BatchError                 anything the package raises on purpose; `exit_code` says how a
    │                          command that stops on it ends
    ├── InvalidInputError      a manifest, job file or argument that cannot be used: exit 2,
    │                          nothing sent (ManifestError, JobError, ChangedRowsError)
    ├── LockHeldError          another run holds the output folder: exit 5
    ├── FalError               fal's answers (`batch.fal.errors`); AuthError: exit 3
    ├── LedgerError            the ledger refused a transition or cannot be used
    └── DownloadError, InputFileError   one item's output or input

Anything else that reaches the command line is a bug: `ExitCode.CRASH`, with one line that
names it and the file the full traceback was written to. This module imports nothing of the
package, so every part (fal's client included) can derive its errors from it.
"""

from __future__ import annotations

from enum import IntEnum
from typing import ClassVar


class ExitCode(IntEnum):
    """What `firered-batch` exits with; the README's table lists them."""

    OK = 0  # every item completed
    FAILED = 1  # the run ended and some items failed (see results.csv)
    INVALID = 2  # invalid manifest, job file or arguments; nothing was sent
    AUTH = 3  # fal refused the key (missing, wrong, not allowed)
    STOPPED = 4  # stopped early (Ctrl-C, --max-runtime, budget): run again to resume
    LOCKED = 5  # another run holds the output folder's lock; this one did nothing
    # fal refused new work: the account is locked (e.g. out of credit); running requests were
    # collected
    ACCOUNT_LOCKED = 6
    TLS = 7  # fal's certificate did not verify (wrong CA or host): a configuration error
    CRASH = 70  # an unexpected error (a bug): see the log file it names


class BatchError(Exception):
    """Base of every error the package raises on purpose."""

    exit_code: ClassVar[ExitCode] = ExitCode.FAILED


class InvalidInputError(BatchError, ValueError):
    """Input that cannot be used; the message says where (``file:line: field: reason``)."""

    exit_code = ExitCode.INVALID


class LockHeldError(BatchError):
    """Another run holds the output folder's lock."""

    exit_code = ExitCode.LOCKED
