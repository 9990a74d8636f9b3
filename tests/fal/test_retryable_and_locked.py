"""X-Fal-Retryable (fal docs: model-apis/errors) and the locked account's 403 (fal-ai/fal#1147).

Pure classification first, then the same answers from a scripted server through the client.
"""

import pytest

from batch.errors import ExitCode
from batch.fal import (
    AccountLockedError,
    AuthError,
    Credentials,
    PermanentError,
    QueueClient,
    RateLimitedError,
    TransientError,
)
from batch.fal.transport import Reply, error_for_reply, parse_retryable

KEY = "retry-test-key-0123456789"
LOCKED = (
    "User is locked. Reason: Exhausted balance. Top up your balance at fal.ai/dashboard/billing."
)


@pytest.mark.parametrize(
    ("status", "headers", "body", "error_type"),
    [
        (
            503,
            {"x-fal-error-type": "runner_disconnected"},
            {"detail": "gone"},
            "runner_disconnected",
        ),
        (
            500,
            {},
            {"detail": [{"loc": ["body"], "msg": "boom", "type": "internal_server_error"}]},
            "internal_server_error",
        ),
        (
            504,
            {},
            {"detail": "Request timed out", "error_type": "request_timeout"},
            "request_timeout",
        ),
        (502, {}, "<html>bad gateway</html>", None),
        (408, {}, "timeout", None),
        (429, {"retry-after": "2"}, {"detail": "slow down"}, None),
    ],
)
def test_retryable_false_makes_a_retried_answer_permanent(status, headers, body, error_type):
    """Every answer that would be retried becomes exactly a PermanentError, keeping status,
    detail and the error type (header, body error_type, or the model error's detail type)."""
    exc = error_for_reply("result", Reply(status, {**headers, "x-fal-retryable": "false"}, body))
    assert type(exc) is PermanentError
    assert exc.status == status
    assert exc.retryable is False
    assert exc.error_type == error_type
    assert exc.detail == (body["detail"] if isinstance(body, dict) else body)
    assert "X-Fal-Retryable: false" in str(exc)
    assert exc.kind == "permanent"


@pytest.mark.parametrize(
    ("status", "body", "expected"),
    [
        (503, {"detail": "gone"}, TransientError),
        (429, {"detail": "slow"}, RateLimitedError),
        (
            422,
            {"detail": [{"loc": ["body", "x"], "msg": "bad", "type": "value_error"}]},
            PermanentError,
        ),
    ],
)
def test_retryable_true_or_absent_keeps_the_classification(status, body, expected):
    for value, parsed in (("true", True), (None, None), ("perhaps", None)):
        headers = {} if value is None else {"x-fal-retryable": value}
        exc = error_for_reply("result", Reply(status, headers, body))
        assert type(exc) is expected
        assert exc.retryable is parsed


def test_retryable_header_values():
    assert parse_retryable("false") is False
    assert parse_retryable(" FALSE ") is False
    assert parse_retryable("True") is True
    assert parse_retryable("0") is None
    assert parse_retryable("") is None
    assert parse_retryable(None) is None


def test_model_error_type_is_recorded_from_the_detail():
    """A model error's machine-readable type (detail[].type) becomes error_type."""
    body = {
        "detail": [{"loc": ["body", "prompt"], "msg": "unsafe", "type": "content_policy_violation"}]
    }
    exc = error_for_reply("result", Reply(422, {"x-fal-retryable": "false"}, body))
    assert type(exc) is PermanentError
    assert exc.error_type == "content_policy_violation"


def test_retryable_false_leaves_auth_errors_alone():
    """A refused key still stops the run (AuthError), whatever X-Fal-Retryable says."""
    exc = error_for_reply("submit", Reply(401, {"x-fal-retryable": "false"}, {"detail": "no"}))
    assert type(exc) is AuthError


@pytest.mark.parametrize(
    "detail",
    [
        LOCKED,
        "USER IS LOCKED. Reason: Exhausted balance",
        "Account locked: exhausted balance",
    ],
)
def test_locked_account_403_is_its_own_error(detail):
    exc = error_for_reply(
        "submit fal-ai/x", Reply(403, {"x-fal-request-id": "r1"}, {"detail": detail})
    )
    assert type(exc) is AccountLockedError
    assert not isinstance(exc, AuthError)
    assert exc.reason == detail
    assert exc.status == 403 and exc.request_id == "r1"
    assert exc.exit_code == ExitCode.ACCOUNT_LOCKED == 6
    assert exc.kind == "account_locked"
    assert detail in str(exc)


@pytest.mark.parametrize(
    ("status", "detail"),
    [
        (403, "Forbidden"),
        (403, "This key is blocked for this endpoint"),  # "blocked" is not "locked"
        (401, LOCKED),  # only a 403 says the account is locked
    ],
)
def test_other_401_403_stay_auth_errors(status, detail):
    exc = error_for_reply("submit", Reply(status, {}, {"detail": detail}))
    assert type(exc) is AuthError
    assert exc.exit_code == ExitCode.AUTH


def test_exit_codes():
    assert ExitCode.ACCOUNT_LOCKED == 6 and ExitCode.TLS == 7
    assert len({int(code) for code in ExitCode}) == len(ExitCode)


async def test_locked_submit_and_retryable_result_through_the_client(serve, kit):
    """A locked account's submit raises AccountLockedError while status and result answer; a
    result answered 503 with X-Fal-Retryable: false raises a PermanentError."""
    A = kit.Answer
    server = await serve(
        {
            ("POST", "/fal-ai/firered-image-edit"): A(403, {"detail": LOCKED}),
            ("GET", "/fal-ai/firered-image-edit/requests/r1/status"): A(
                200, {"status": "COMPLETED", "logs": None, "metrics": {}}
            ),
            ("GET", "/fal-ai/firered-image-edit/requests/r1"): A(
                503,
                {"detail": "Runner disconnected", "error_type": "runner_disconnected"},
                {"X-Fal-Retryable": "false", "X-Fal-Error-Type": "runner_disconnected"},
            ),
        }
    )
    async with QueueClient(base_url=server.url, credentials=Credentials(KEY)) as client:
        with pytest.raises(AccountLockedError) as locked:
            await client.submit("fal-ai/firered-image-edit", {"prompt": "p"})
        assert locked.value.reason == LOCKED
        assert KEY not in f"{locked.value} {locked.value!r}"
        handle = client.handle_for("fal-ai/firered-image-edit", "r1")
        assert (await client.status(handle)).failed is False
        with pytest.raises(PermanentError) as caught:
            await client.result(handle)
    assert type(caught.value) is PermanentError
    assert caught.value.status == 503 and caught.value.retryable is False
    assert caught.value.error_type == "runner_disconnected"
    assert caught.value.request_id == "r1"
