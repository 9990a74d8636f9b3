"""Error answers with `X-Fal-Retryable` and `X-Fal-Error-Type` (fal's errors and request-errors
pages; §11 row 3), on submit and as a job's final outcome; per-endpoint input schemas (row 5)."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from batch.sim import FaultPlan, FaultRule


def one(**fields: Any) -> FaultPlan:
    return FaultPlan(rules=[FaultRule(**fields)])


@pytest.mark.parametrize(
    ("status", "error_type", "retryable"),
    [
        (503, "runner_scheduling_failure", "true"),
        (504, "request_timeout", "true"),
        (500, "internal_error", "true"),
        (400, "bad_request", "false"),
    ],
)
async def test_fal_error_on_submit_carries_both_headers(
    start_sim: Any, payload: dict[str, Any], status: int, error_type: str, retryable: str
) -> None:
    api = await start_sim(faults=one(kind="fal_error", route="submit", status=status, max=1))
    reply = await api.call("POST", f"/{api.endpoint}", json=payload)
    assert reply.status == status
    assert reply.headers["x-fal-error-type"] == error_type
    assert reply.headers["x-fal-retryable"] == retryable
    assert "x-fal-request-id" in reply.headers
    body = reply.json()
    assert body["error_type"] == error_type and isinstance(body["detail"], str)
    assert api.sim.jobs == [] and api.sim.counters.accepted_submits == 0
    await api.submit(payload)  # max: 1
    assert api.sim.counters.faults_injected("fal_error", "submit") == 1


async def test_fal_error_retryable_false_and_type_are_the_rules(
    start_sim: Any, payload: dict[str, Any]
) -> None:
    rule = {"kind": "fal_error", "status": 503, "error_type": "runner_server_error"}
    api = await start_sim(faults=one(**rule, retryable=False))
    reply = await api.call("POST", f"/{api.endpoint}", json=payload)
    assert reply.status == 503
    assert reply.headers["x-fal-retryable"] == "false"
    assert reply.headers["x-fal-error-type"] == reply.json()["error_type"] == "runner_server_error"


async def test_fal_error_422_has_the_model_error_list(
    start_sim: Any, payload: dict[str, Any]
) -> None:
    api = await start_sim(
        faults=one(kind="fal_error", status=422, error_type="content_policy_violation")
    )
    reply = await api.call("POST", f"/{api.endpoint}", json=payload)
    assert reply.status == 422 and reply.headers["x-fal-retryable"] == "false"
    item = reply.json()["detail"][0]
    assert item["type"] == "content_policy_violation" and item["loc"] == ["body"]
    assert item["url"].endswith("#content_policy_violation") and item["msg"]


async def test_job_error_result_and_status_carry_the_error(
    start_sim: Any, payload: dict[str, Any]
) -> None:
    """A job ending in error: status COMPLETED + error/error_type; the result replays the status
    with X-Fal-Error-Type, X-Fal-Retryable (the rule's) and error_type in the body."""
    api = await start_sim(
        faults=one(kind="job_error", error_type="runner_server_error", retryable=False)
    )
    sub = await api.submit(payload)
    status = await api.wait_for(sub)
    assert status["error_type"] == "runner_server_error" and status["error"]
    reply = await api.result(sub)
    assert reply.status == 500
    assert reply.headers["x-fal-error-type"] == reply.json()["error_type"] == "runner_server_error"
    assert reply.headers["x-fal-retryable"] == "false"


async def test_permanent_job_error_can_say_retryable(
    start_sim: Any, payload: dict[str, Any]
) -> None:
    api = await start_sim(
        faults=one(kind="job_error", transient=False, error_type="image_too_large", retryable=True)
    )
    sub = await api.submit(payload)
    assert (await api.wait_for(sub))["error_type"] == "validation_error"
    reply = await api.result(sub)
    assert reply.status == 422 and reply.headers["x-fal-retryable"] == "true"
    assert reply.json()["detail"][0]["type"] == "image_too_large"


@pytest.mark.parametrize(
    "rule",
    [
        {"kind": "fal_error", "status": 302},
        {"kind": "cdn_down", "status": 418},
        {"kind": "server_retry", "route": "status"},
        {"kind": "server_retry", "failures": 0},
        {"kind": "cdn_down", "route": "submit"},
    ],
)
def test_invalid_new_rules_are_rejected(rule: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        FaultRule.model_validate(rule)


# --- per-endpoint input schemas --------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value"),
    [("guidance_scale", 10.5), ("guidance_scale", 0.5), ("num_inference_steps", 51)],
)
async def test_firered_ranges_are_checked_when_the_model_runs(
    api: Any, payload: dict[str, Any], field: str, value: float
) -> None:
    """fal-ai/firered-image-edit is validated with EditInput (llms.txt ranges) at run time."""
    sub = await api.submit({**payload, field: value})
    assert (await api.wait_for(sub))["error_type"] == "validation_error"
    reply = await api.result(sub)
    assert reply.status == 422
    assert reply.json()["detail"][0]["loc"] == ["body", field]
    assert api.sim.counters.billed_requests == 0  # a 422 is not billed by default


async def test_other_endpoints_pass_their_input_through(api: Any, payload: dict[str, Any]) -> None:
    """Not validated: an edit-shaped input is rendered, anything else is echoed, never 422."""
    odd = {"text": "hello", "guidance_scale": 99}
    sub = await api.submit(odd, endpoint="fal-ai/some-model")
    await api.wait_for(sub)
    reply = await api.result(sub)
    assert reply.status == 200 and reply.json() == {"images": [], "input": odd}
    edit = await api.submit(payload, endpoint="fal-ai/some-model/v2")
    await api.wait_for(edit)
    assert (await api.result(edit)).json()["images"]


async def test_validated_endpoints_is_a_setting(start_sim: Any) -> None:
    api = await start_sim(validated_endpoints=["fal-ai/strict"])
    sub = await api.submit({"text": "hello"}, endpoint="fal-ai/strict")
    await api.wait_for(sub)
    assert (await api.result(sub)).status == 422
    loose = await api.submit({"text": "hello"})  # FireRed is no longer in the list
    await api.wait_for(loose)
    assert (await api.result(loose)).status == 200
