"""The classification of fal's answers is a pure function of status, headers and body."""

import aiohttp
import pytest

from batch.errors import BatchError
from batch.fal.errors import (
    AmbiguousSubmitError,
    AuthError,
    ConnectError,
    FalError,
    NotFoundError,
    PermanentError,
    RateLimitedError,
    StartTimeoutError,
    TransientError,
)
from batch.fal.jwks import JwksUnavailableError
from batch.fal.transport import (
    Reply,
    error_for_exception,
    error_for_reply,
    parse_retry_after,
)


@pytest.mark.parametrize(
    ("status", "headers", "body", "expected"),
    [
        (400, {}, {"detail": "bad"}, PermanentError),
        (401, {}, {"detail": "no key"}, AuthError),
        (403, {}, {"detail": "forbidden"}, AuthError),
        (404, {}, {"status": "NOT_FOUND"}, NotFoundError),
        (405, {}, "Method Not Allowed", PermanentError),
        (408, {}, "timeout", TransientError),
        (409, {}, "conflict", TransientError),
        (
            422,
            {},
            {"detail": [{"loc": ["body", "prompt"], "msg": "field required"}]},
            PermanentError,
        ),
        (429, {"retry-after": "3"}, {"detail": "slow down"}, RateLimitedError),
        (499, {"x-fal-error-type": "client_cancelled"}, {"detail": "cancelled"}, PermanentError),
        (500, {}, {"detail": "boom", "error_type": "internal_error"}, TransientError),
        (502, {}, "<html>nginx</html>", TransientError),
        (503, {"x-fal-error-type": "runner_disconnected"}, {"detail": "gone"}, TransientError),
        (504, {}, {"detail": "Request timed out", "error_type": "request_timeout"}, TransientError),
        (
            504,
            {"x-fal-request-timeout-type": "user"},
            {"detail": "start timeout"},
            StartTimeoutError,
        ),
        (400, {}, {"detail": "x", "error_type": "bad_request"}, PermanentError),
    ],
)
def test_reply_classification(status, headers, body, expected):
    """Each status maps to exactly the documented error class."""
    exc = error_for_reply("result", Reply(status, headers, body), "rid-1")
    assert type(exc) is expected
    assert exc.status == status
    assert exc.request_id == "rid-1"


def test_server_request_id_header_wins():
    exc = error_for_reply("status", Reply(500, {"x-fal-request-id": "srv"}, None), "mine")
    assert exc.request_id == "srv"


def test_detail_list_and_string_kept():
    """The server's `detail` is kept as sent, list or string, and summarised in the message."""
    listed = error_for_reply(
        "result",
        Reply(422, {}, {"detail": [{"loc": ["body", "prompt"], "msg": "field required"}]}),
    )
    assert listed.detail == [{"loc": ["body", "prompt"], "msg": "field required"}]
    assert "prompt: field required" in str(listed)
    flat = error_for_reply("result", Reply(504, {}, {"detail": "Request timed out"}))
    assert flat.detail == "Request timed out"
    assert flat.error_type is None


def test_error_type_from_header_when_body_has_none():
    exc = error_for_reply("result", Reply(503, {"x-fal-error-type": "runner_disconnected"}, "x"))
    assert exc.error_type == "runner_disconnected"


def test_retry_after_parsed():
    exc = error_for_reply("submit", Reply(429, {"retry-after": "2.5"}, {"detail": "x"}))
    assert isinstance(exc, RateLimitedError)
    assert exc.retry_after == 2.5
    assert parse_retry_after(None) is None
    assert parse_retry_after("soon") is None
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:10 GMT", now=1445412480.0) == 10.0


def test_connect_failure_is_not_ambiguous():
    """A submit that never connected is safe to resend; one that lost its answer is not."""
    conn_key = aiohttp.client_reqrep.ConnectionKey("h", 1, False, None, None, None, None)
    refused = aiohttp.ClientConnectorError(conn_key, OSError(111, "refused"))
    assert type(error_for_exception("submit", refused, submit=True)) is ConnectError
    lost = aiohttp.ServerDisconnectedError()
    assert type(error_for_exception("submit", lost, submit=True)) is AmbiguousSubmitError
    assert type(error_for_exception("status", lost, submit=False)) is TransientError
    timeout = TimeoutError()
    assert type(error_for_exception("submit", timeout, submit=True)) is AmbiguousSubmitError


@pytest.mark.parametrize(
    ("exc", "kind"),
    [
        (TransientError("x"), "transient"),
        (AmbiguousSubmitError("x"), "transient"),
        (ConnectError("x"), "transient"),
        (JwksUnavailableError("x"), "transient"),
        (RateLimitedError("x"), "rate_limited"),
        (PermanentError("x"), "permanent"),
        (NotFoundError("x"), "permanent"),
        (StartTimeoutError("x"), "permanent"),
        (AuthError("x"), "auth"),
        (FalError("x"), "error"),
    ],
)
def test_kind_table(exc, kind):
    """The name the ledger records is the base class's, however deep the subclass."""
    assert exc.kind == kind
    assert isinstance(exc, BatchError)
