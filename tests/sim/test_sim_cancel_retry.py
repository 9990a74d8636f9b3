"""fal's cancel and its own server-side retries (fal-protocol.md §4, §10; §11 rows 1 and 2)."""

from __future__ import annotations

import json
from typing import Any

from batch.sim import FaultPlan, FaultRule
from batch.sim.webhooks import webhook_body


def retry_rule(**fields: Any) -> FaultPlan:
    return FaultPlan(rules=[FaultRule(kind="server_retry", **fields)])


# --- cancel ------------------------------------------------------------------------------------


async def test_cancel_of_a_running_request_only_signals_it(
    start_sim: Any, payload: dict[str, Any]
) -> None:
    """Default `signal`: 202, the request runs on, completes with its output and is billed."""
    api = await start_sim(capacity=1, latency="fixed:0.3")
    sub = await api.submit(payload)
    await api.wait_for(sub, "IN_PROGRESS")
    reply = await api.call("PUT", sub["cancel_url"])
    assert reply.status == 202 and reply.json() == {"status": "CANCELLATION_REQUESTED"}
    assert (await api.status(sub)).json()["status"] == "IN_PROGRESS"
    done = await api.wait_for(sub)
    assert "error" not in done
    result = await api.result(sub)
    assert result.status == 200 and result.json()["images"]
    counters = api.sim.counters
    assert counters.cancel_signals == 1
    assert counters.billed_requests == 1 and counters.billed_for(api.endpoint, payload) == 1
    assert api.sim.jobs[0].cancel_requested is True
    assert (await api.call("PUT", sub["cancel_url"])).status == 400  # ALREADY_COMPLETED


async def test_cancel_abort_mode_stops_a_running_request_unbilled(
    start_sim: Any, payload: dict[str, Any]
) -> None:
    api = await start_sim(capacity=1, latency="fixed:30", cancel_mode="abort")
    sub = await api.submit(payload)
    await api.wait_for(sub, "IN_PROGRESS")
    assert (await api.call("PUT", sub["cancel_url"])).status == 202
    assert (await api.wait_for(sub))["error_type"] == "client_cancelled"
    result = await api.result(sub)
    assert result.status == 499 and "x-fal-billable-units" not in result.headers
    assert api.sim.counters.billed_requests == 0 and api.sim.counters.cancel_signals == 0


async def test_cancel_of_a_queued_request_removes_it_unbilled(
    start_sim: Any, payload: dict[str, Any]
) -> None:
    """In either mode an IN_QUEUE request is removed: it never runs and costs nothing."""
    api = await start_sim(capacity=1, latency="fixed:30")
    await api.submit(payload)
    queued = await api.submit({**payload, "seed": 1})
    reply = await api.call("PUT", queued["cancel_url"])
    assert reply.status == 202 and reply.json() == {"status": "CANCELLATION_REQUESTED"}
    assert (await api.wait_for(queued))["error_type"] == "client_cancelled"
    assert (await api.result(queued)).status == 499
    record = api.sim.jobs[1]
    assert record.started_at is None and record.attempts == 0
    assert api.sim.counters.billed_requests == 0
    assert (await api.call("PUT", "/fal-ai/firered-image-edit/requests/nope/cancel")).status == 404


# --- fal's own retries ---------------------------------------------------------------------------


async def test_server_retry_sends_a_running_request_back_to_the_queue(
    start_sim: Any, payload: dict[str, Any]
) -> None:
    """IN_PROGRESS -> IN_QUEUE -> IN_PROGRESS -> COMPLETED; same request_id, a new gateway id
    per attempt (the webhook carries the last), billed once."""
    # Only the first submit gets the rule; its first attempt fails.
    api = await start_sim(capacity=1, latency="fixed:0.25", faults=retry_rule(max=1))
    first = await api.submit(payload)
    second = await api.submit({**payload, "seed": 2})
    assert first["gateway_request_id"] == first["request_id"]
    await api.wait_for(first, "IN_PROGRESS")
    requeued = await api.wait_for(first, "IN_QUEUE")  # behind `second`, which runs now
    assert requeued["queue_position"] == 0
    assert (await api.status(second)).json()["status"] == "IN_PROGRESS"
    await api.wait_for(first)
    assert (await api.result(first)).status == 200
    record = api.sim.jobs[0]
    assert record.attempts == 2 and record.request_id == first["request_id"]
    ids = record.gateway_request_ids
    assert len(ids) == 2 and ids[0] == first["request_id"] and ids[1] != ids[0]
    job = api.sim.model.get(first["request_id"])
    assert job is not None
    assert json.loads(webhook_body(job))["gateway_request_id"] == ids[1]
    counters = api.sim.counters
    assert counters.server_retries == 1 and counters.faults_injected("server_retry") == 1
    await api.wait_for(second)
    assert counters.billed_requests == 2 and counters.paid_twice == 0


async def test_server_retries_stop_after_max_attempts(
    start_sim: Any, payload: dict[str, Any]
) -> None:
    """A runner failing every time: the request ends in that error after the last attempt."""
    api = await start_sim(max_server_attempts=3, faults=retry_rule(failures=50))
    sub = await api.submit(payload)
    status = await api.wait_for(sub)
    assert status["error_type"] == "runner_disconnected"
    reply = await api.result(sub)
    assert reply.status == 503 and reply.headers["x-fal-retryable"] == "true"
    record = api.sim.jobs[0]
    assert record.attempts == 3 and len(set(record.gateway_request_ids)) == 3
    assert api.sim.counters.server_retries == 2 and api.sim.counters.billed_requests == 0


async def test_default_budget_is_ten_attempts(start_sim: Any, payload: dict[str, Any]) -> None:
    """Nine failures: the tenth attempt succeeds. Ten: the request fails, after ten."""
    api = await start_sim(faults=retry_rule(failures=9, error_type="runner_connection_error"))
    sub = await api.submit(payload)
    await api.wait_for(sub)
    assert (await api.result(sub)).status == 200
    assert api.sim.jobs[0].attempts == 10
    failing = await start_sim(faults=retry_rule(failures=10))
    sub = await failing.submit(payload)
    assert (await failing.wait_for(sub))["error_type"] == "runner_disconnected"
    assert failing.sim.jobs[0].attempts == 10


async def test_no_retry_header_makes_the_first_failure_final(
    start_sim: Any, payload: dict[str, Any]
) -> None:
    api = await start_sim(faults=retry_rule())
    sub = await api.submit(payload, headers={"X-Fal-No-Retry": "1"})
    assert (await api.wait_for(sub))["error_type"] == "runner_disconnected"
    assert (await api.result(sub)).status == 503
    assert api.sim.jobs[0].attempts == 1 and api.sim.counters.server_retries == 0
    assert api.sim.counters.sent("x-fal-no-retry", "1") == 1


async def test_start_deadline_keeps_running_across_failed_attempts(
    start_sim: Any, payload: dict[str, Any]
) -> None:
    """X-Fal-Request-Timeout covers failed retry attempts: 504 startup_timeout, user type."""
    api = await start_sim(latency="fixed:0.1", faults=retry_rule(failures=50))
    sub = await api.submit(payload, headers={"X-Fal-Request-Timeout": "0.25"})
    assert (await api.wait_for(sub))["error_type"] == "startup_timeout"
    reply = await api.result(sub)
    assert reply.status == 504 and reply.headers["x-fal-request-timeout-type"] == "user"
    assert 2 <= api.sim.jobs[0].attempts < 10


async def test_app_request_timeout_fails_an_attempt_with_504(
    start_sim: Any, payload: dict[str, Any]
) -> None:
    """An attempt longer than the app's request_timeout fails (504 request_timeout), is retried
    by fal, and ends in that error, unbilled."""
    api = await start_sim(latency="fixed:0.1", app_request_timeout_s=0.02, max_server_attempts=2)
    sub = await api.submit(payload)
    assert (await api.wait_for(sub))["error_type"] == "request_timeout"
    reply = await api.result(sub)
    assert reply.status == 504 and reply.json()["error_type"] == "request_timeout"
    assert "x-fal-request-timeout-type" not in reply.headers  # not the caller's start timeout
    assert api.sim.jobs[0].attempts == 2 and api.sim.counters.billed_requests == 0


async def test_status_stream_reports_the_return_to_the_queue(
    start_sim: Any, payload: dict[str, Any]
) -> None:
    api = await start_sim(capacity=1, latency="fixed:0.2", faults=retry_rule(max=1))
    first = await api.submit(payload)
    await api.submit({**payload, "seed": 2})
    stream = await api.call("GET", first["status_url"] + "/stream")
    states = [
        json.loads(line[6:])["status"]
        for line in stream.text.splitlines()
        if line.startswith("data: ")
    ]
    assert states == ["IN_PROGRESS", "IN_QUEUE", "IN_PROGRESS", "COMPLETED"]
