"""The errors the fal client raises: one tree, decided by type, never by string.

    FalError                      a `batch.errors.BatchError`: status, request_id, detail,
    │                             error_type; never the key
    ├── TransientError            retry with back-off (connection lost, timeout, 408, 409, 5xx)
    │   ├── ConnectError          the request never reached fal: safe to resend anything
    │   ├── AmbiguousSubmitError  a submit was sent but its answer was lost: fal may have queued it
    │   └── JwksUnavailableError  no usable JWKS to verify webhooks with (`jwks.py`)
    ├── RateLimitedError          429: honour `retry_after` and slow the whole admission
    ├── PermanentError            400, 405, 422, other 4xx, an invalid URL, an error_type of
    │   │                         bad_request, client_cancelled, client_disconnected, or any
    │   │                         otherwise retryable answer marked X-Fal-Retryable: false
    │   ├── NotFoundError         404: fal does not know (or no longer keeps) the request
    │   └── StartTimeoutError     504 with X-Fal-Request-Timeout-Type: user
    ├── AuthError                 401, 403: stop the run (exit code 3)
    ├── AccountLockedError        403 "User is locked. Reason: ...": stop admitting, collect what
    │                             is running (exit code 6); not an AuthError
    └── TlsError                  fal's certificate did not verify (wrong CA or host): a
                                  configuration error, never retried (exit code 7)

`error_for_reply()` and `error_for_exception()` in `transport.py` are the one place where HTTP
answers and aiohttp exceptions become these; the clients raise a `TransientError` themselves
for an answer they cannot use (no request_id, no token, a status stream that ends early).
Whether to try again is the caller's decision, made from the type; `kind` is the name the
ledger records. `retryable` is fal's own `X-Fal-Retryable` header (None when it sent none),
`billable_units` its `X-Fal-Billable-Units` (None when it sent none).
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
        retryable: bool | None = None,
        billable_units: float | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.request_id = request_id
        self.detail = detail
        self.error_type = error_type
        self.retryable = retryable
        # X-Fal-Billable-Units on an error answer: a failure fal billed (a 422 may be)
        self.billable_units = billable_units

    @property
    def kind(self) -> str:
        """The short name the ledger records: transient, rate_limited, permanent, auth,
        account_locked, tls."""
        return _KINDS[_base_kind(type(self))]

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({self.message!r}, status={self.status}, "
            f"request_id={self.request_id!r}, error_type={self.error_type!r}, "
            f"retryable={self.retryable!r})"
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


class AccountLockedError(FalError):
    """403 "User is locked. Reason: ...": fal takes no new work from this account (e.g. its
    balance is exhausted), while status and result still answer. Not an `AuthError`: the key
    is fine, and requests already running are still collected. `reason` is fal's text."""

    exit_code = ExitCode.ACCOUNT_LOCKED

    def __init__(self, message: str, *, reason: str, **kw: Any) -> None:
        super().__init__(message, **kw)
        self.reason = reason


class TlsError(FalError):
    """A certificate or host name that did not verify: a wrong CA or a wrong host, which no
    retry fixes. `host` is the server's name, `reason` the verification failure."""

    exit_code = ExitCode.TLS

    def __init__(
        self, message: str, *, host: str | None = None, reason: str = "", **kw: Any
    ) -> None:
        super().__init__(message, **kw)
        self.host = host
        self.reason = reason


_KINDS = {
    TransientError: "transient",
    RateLimitedError: "rate_limited",
    PermanentError: "permanent",
    AuthError: "auth",
    AccountLockedError: "account_locked",
    TlsError: "tls",
    FalError: "error",
}


def _base_kind(cls: type[FalError]) -> type[FalError]:
    for base in cls.__mro__:
        if base in _KINDS and base is not FalError:
            return base
    return FalError
