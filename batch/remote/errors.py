"""The errors object storage raises: one tree, decided by type, each message one line.

    BatchError (batch.errors)
    ├── StoreError                the store failed or could not be reached: exit 1
    │   ├── StoreConfigError      a URL, setting or missing extra that cannot work: exit 2
    │   └── MissingObjectError    `get` of a key that is not there
    └── LockHeldError (exit 5)
        └── LeaseError            the shard's lease is not ours
            ├── LeaseHeld         another live writer holds it: this run did nothing
            └── LeaseLost         it was taken over while we ran: stop writing

`translate()` is the one place where obstore's exceptions (and the OS errors of a local
store) become these. Messages name the operation and the object's display URL (never a
credential or a signed query string) and carry the first line of the cause only: obstore's
own messages run to dozens of lines of Rust debug output.
"""

from __future__ import annotations

import re

from batch.errors import BatchError, ExitCode, InvalidInputError, LockHeldError

INSTALL_HINT = "object storage needs the cloud extra: pip install 'firered-batch[cloud]'"

# Query parameters and settings that carry secrets, in case a cause's first line echoes a
# signed URL or a configuration value back to us.
_SECRET = re.compile(
    r"(?i)(x-amz-(?:signature|credential|security-token)|sig|signature|access_?key[\w-]*"
    r"|secret[\w-]*|token|password)=[^&\s\"']*"
)
_MAX_REASON = 240


class StoreError(BatchError):
    """The store failed, refused us, or could not be reached."""


class StoreConfigError(StoreError, InvalidInputError):
    """A store URL, setting or install that cannot work; nothing was written."""

    exit_code = ExitCode.INVALID


class MissingObjectError(StoreError):
    """`get` of a key that does not exist."""


class LeaseError(LockHeldError):
    """The shard's lease is not ours (exit code 5, as for the output folder's lock)."""


class LeaseHeld(LeaseError):
    """Another live writer holds the shard's lease; this run did nothing."""


class LeaseLost(LeaseError):
    """Someone took the shard's lease over while we held it: stop writing."""


def reason(exc: BaseException) -> str:
    """The first line of an exception's message, secrets masked, at most 240 characters."""
    text = str(exc).strip().splitlines()
    line = text[0] if text else type(exc).__name__
    line = _SECRET.sub(lambda m: m.group(1) + "=***", line)
    return line if len(line) <= _MAX_REASON else line[: _MAX_REASON - 1] + "…"


def is_missing(exc: BaseException) -> bool:
    """Whether `exc` says the object is absent (and not that the whole bucket is)."""
    # obstore reports a missing bucket as a missing object; it is a configuration error
    return isinstance(exc, FileNotFoundError) and not _no_bucket(exc)


def _no_bucket(exc: BaseException) -> bool:
    text = str(exc)
    return "NoSuchBucket" in text or "ContainerNotFound" in text or "bucket does not" in text


def translate(exc: BaseException, op: str, where: str) -> StoreError:
    """The `StoreError` for an obstore or OS exception raised by `op` on `where`."""
    if isinstance(exc, StoreError):
        return exc
    # imported here, not at the top: the default install has no obstore
    from obstore import exceptions as obs

    what = f"{op} {where}"
    if _no_bucket(exc):  # a GET's or a PUT's 404 names it; a list's is a GenericError
        return StoreConfigError(f"{what}: the bucket or container does not exist")
    if isinstance(exc, FileNotFoundError):
        return MissingObjectError(f"{what}: no such object")
    if isinstance(exc, obs.PermissionDeniedError | obs.UnauthenticatedError | PermissionError):
        return StoreError(f"{what}: access denied (check the credentials): {reason(exc)}")
    if isinstance(exc, obs.UnknownConfigurationKeyError | obs.InvalidPathError | ValueError):
        return StoreConfigError(f"{what}: {reason(exc)}")
    if isinstance(exc, obs.NotSupportedError | NotImplementedError):
        return StoreConfigError(f"{what}: not supported by this store: {reason(exc)}")
    # GenericError covers connection failures after obstore's retries, 5xx, DNS, TLS
    return StoreError(f"{what}: the store failed or is unreachable: {reason(exc)}")
