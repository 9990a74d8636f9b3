"""The errors the fal client raises: one tree, decided by type, never by string.

    FalError                      a `batch.errors.BatchError`: status, request_id, detail,
    │                             error_type; never the key
    ├── TransientError            retry with back-off (connection lost, timeout, 408, 409, 5xx)
    │   ├── ConnectError          the request never reached fal: safe to resend anything
    │   ├── AmbiguousSubmitError  a submit was sent but its answer was lost: fal may have queued it
    │   └── JwksUnavailableError  no usable JWKS to verify webhooks with (`jwks.py`)
    ├── RateLimitedError          429: honour `retry_after` and slow the whole admission
    ├── PermanentError            400, 405, 422, other 4xx, an invalid URL, or an error_type of
    │   │                         bad_request, client_cancelled, client_disconnected: fail the item
    │   ├── NotFoundError         404: fal does not know (or no longer keeps) the request
    │   └── StartTimeoutError     504 with X-Fal-Request-Timeout-Type: user
    └── AuthError                 401, 403: stop the run (exit code 3)

`error_for_reply()` and `error_for_exception()` in `transport.py` are the one place where HTTP
answers and aiohttp exceptions become these; the clients raise a `TransientError` themselves
for an answer they cannot use (no request_id, no token, a status stream that ends early).
Whether to try again is the caller's decision, made from the type; `kind` is the name the
ledger records.
"""

from __future__ import annotations

from typing import Any

from batch.errors import BatchError, ExitCode


class FalError(BatchError):
    """Base of every error the client raises."""

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        request_id: str | None = None,
        detail: Any = None,
        error_type: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.request_id = request_id
        self.detail = detail
        self.error_type = error_type

    @property
    def kind(self) -> str:
        """The short name the ledger records: transient, rate_limited, permanent, auth."""
        return _KINDS[_base_kind(type(self))]

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({self.message!r}, status={self.status}, "
            f"request_id={self.request_id!r}, error_type={self.error_type!r})"
        )


class TransientError(FalError):
    """Worth trying again after a back-off."""


class ConnectError(TransientError):
    """The connection failed before the request was sent."""


class AmbiguousSubmitError(TransientError):
    """A submit was sent, but no answer came back: fal may or may not have queued it."""


class RateLimitedError(FalError):
    """429. `retry_after` is the server's Retry-After in seconds, when it gave one."""

    def __init__(self, message: str, *, retry_after: float | None = None, **kw: Any) -> None:
        super().__init__(message, **kw)
        self.retry_after = retry_after


class PermanentError(FalError):
    """Sending the same request again would fail the same way."""


class NotFoundError(PermanentError):
    """404: an unknown request id, or a result that has expired."""


class StartTimeoutError(PermanentError):
    """The request's own start timeout expired before a runner took it (504, type user)."""


class AuthError(FalError):
    """401 or 403: the key is missing, wrong or not allowed."""

    exit_code = ExitCode.AUTH


_KINDS = {
    TransientError: "transient",
    RateLimitedError: "rate_limited",
    PermanentError: "permanent",
    AuthError: "auth",
    FalError: "error",
}


def _base_kind(cls: type[FalError]) -> type[FalError]:
    for base in cls.__mro__:
        if base in _KINDS and base is not FalError:
            return base
    return FalError
