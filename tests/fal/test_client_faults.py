"""Each fault the simulator injects reaches the caller as the documented error class."""

import asyncio
import socket

import pytest
from support import ENDPOINT, TEST_KEY, edit

from batch.fal import (
    AmbiguousSubmitError,
    Completed,
    ConnectError,
    Credentials,
    NotFoundError,
    PermanentError,
    QueueClient,
    RateLimitedError,
    StartTimeoutError,
    Timeouts,
    TransientError,
)
from batch.sim import FaultPlan, FaultRule, payload_hash


def plan(*rules: FaultRule) -> FaultPlan:
    return FaultPlan(seed=1, rules=list(rules))


async def _completed(client, handle) -> Completed:
    async with asyncio.timeout(10):
        while not isinstance(status := await client.status(handle), Completed):
            await asyncio.sleep(0.01)
    return status


async def test_429_is_rate_limited_with_retry_after(start_sim):
    sim, client = await start_sim(
        faults=plan(FaultRule(kind="rate_limit", route="submit", retry_after=2.5, max=1))
    )
    with pytest.raises(RateLimitedError) as caught:
        await client.submit(ENDPOINT, edit())
    assert caught.value.status == 429 and caught.value.retry_after == 2.5
    assert sim.counters.accepted_submits == 0  # a 429 means not queued
    assert (await client.submit(ENDPOINT, edit())).request_id


@pytest.mark.parametrize("status", [500, 502, 503, 504])
async def test_5xx_on_status_is_transient(start_sim, status):
    _sim, client = await start_sim(
        faults=plan(FaultRule(kind="http_error", route="status", status=status, max=1))
    )
    handle = await client.submit(ENDPOINT, edit())
    with pytest.raises(TransientError) as caught:
        await client.status(handle)
    assert caught.value.status == status
    assert isinstance(await _completed(client, handle), Completed)


async def test_refused_connection_is_a_connect_error_not_ambiguous():
    """Nothing listening: the submit never left, so it is safe to send again."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    async with QueueClient(
        base_url=f"http://127.0.0.1:{port}", credentials=Credentials(TEST_KEY)
    ) as client:
        with pytest.raises(ConnectError):
            await client.submit(ENDPOINT, edit())


async def test_answer_lost_after_accept_is_ambiguous(start_sim):
    """drop_after: fal queued it, the answer never came: AmbiguousSubmitError, job exists."""
    sim, client = await start_sim(faults=plan(FaultRule(kind="drop_after", route="submit", max=1)))
    payload = edit("ambiguous")
    with pytest.raises(AmbiguousSubmitError):
        await client.submit(ENDPOINT, payload)
    assert sim.counters.submits_for(ENDPOINT, payload) == 1
    assert payload_hash(ENDPOINT, payload) in sim.counters.snapshot()["submits_by_payload"]


async def test_dropped_before_processing_is_still_ambiguous_for_a_submit(start_sim):
    """The client cannot tell a drop before from one after processing: both are ambiguous."""
    sim, client = await start_sim(faults=plan(FaultRule(kind="drop_before", route="submit", max=1)))
    with pytest.raises(AmbiguousSubmitError):
        await client.submit(ENDPOINT, edit())
    assert sim.counters.accepted_submits == 0


async def test_dropped_status_is_transient(start_sim):
    _sim, client = await start_sim(faults=plan(FaultRule(kind="drop_before", route="status")))
    handle = await client.submit(ENDPOINT, edit())
    with pytest.raises(TransientError) as caught:
        await client.status(handle)
    assert not isinstance(caught.value, AmbiguousSubmitError)


async def test_slow_answer_past_the_timeout(start_sim):
    """A submit that times out after sending is ambiguous; a slow status is transient."""
    sim, client = await start_sim(
        timeouts=Timeouts(submit=0.2, status=0.2),
        faults=plan(
            FaultRule(kind="slow", route="submit", delay=1.0, max=1),
            FaultRule(kind="slow", route="status", delay=1.0, max=1),
        ),
    )
    with pytest.raises(AmbiguousSubmitError, match="timed out"):
        await client.submit(ENDPOINT, edit())
    handle = await client.submit(ENDPOINT, edit("second"))
    with pytest.raises(TransientError, match="timed out"):
        await client.status(handle)
    assert sim.counters.faults_injected("slow") == 2


async def test_transient_job_error_replayed_at_result(start_sim):
    """A runner failure: COMPLETED + error_type, and a transient error from result()."""
    _sim, client = await start_sim(
        faults=plan(FaultRule(kind="job_error", route="submit", transient=True, max=1))
    )
    handle = await client.submit(ENDPOINT, edit())
    done = await _completed(client, handle)
    assert done.failed and done.error_type
    with pytest.raises(TransientError) as caught:
        await client.result(handle)
    assert caught.value.error_type == done.error_type
    assert caught.value.request_id == handle.request_id


async def test_permanent_job_error_replayed_at_result(start_sim):
    _sim, client = await start_sim(
        faults=plan(FaultRule(kind="job_error", route="submit", transient=False, max=1))
    )
    handle = await client.submit(ENDPOINT, edit())
    assert (await _completed(client, handle)).failed
    with pytest.raises(PermanentError) as caught:
        await client.result(handle)
    assert caught.value.status == 422


async def test_expired_result_is_not_found(start_sim):
    _sim, client = await start_sim(faults=plan(FaultRule(kind="expire", route="result")))
    handle = await client.submit(ENDPOINT, edit())
    await _completed(client, handle)
    with pytest.raises(NotFoundError):
        await client.result(handle)


async def test_start_timeout_is_its_own_permanent_error(start_sim):
    """A request that no runner took within its start timeout: 504 type user, not retried."""
    _sim, client = await start_sim(capacity=1, latency="fixed:0.6")
    blocker = await client.submit(ENDPOINT, edit("blocker"))
    handle = await client.submit(ENDPOINT, edit("late"), start_timeout=0.2)
    done = await _completed(client, handle)
    assert done.failed
    with pytest.raises(StartTimeoutError) as caught:
        await client.result(handle)
    assert caught.value.status == 504
    await _completed(client, blocker)


async def test_priority_and_queue_length_reach_the_server(start_sim):
    """fal_max_queue_length: a 429 once the queue holds more than N waiting requests."""
    _sim, client = await start_sim(capacity=1, latency="fixed:0.5")
    await client.submit(ENDPOINT, edit("a"))
    await client.submit(ENDPOINT, edit("b"), priority="low", max_queue_length=5)
    await client.submit(ENDPOINT, edit("c"), max_queue_length=5)
    with pytest.raises(RateLimitedError):
        await client.submit(ENDPOINT, edit("d"), max_queue_length=1)
