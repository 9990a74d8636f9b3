"""The fault plan: each kind over real sockets, YAML loading, and seeded reproducibility."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from pydantic import ValidationError

from batch.sim import FaultPlan, FaultRule
from batch.sim.faults import INGRESS_FAULTS, FaultInjector

DISCONNECTED = (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError)


def plan(*rules: FaultRule, seed: int = 0) -> FaultPlan:
    return FaultPlan(seed=seed, rules=list(rules))


async def test_rate_limit_is_429_with_retry_after(start_sim: Any, payload: dict[str, Any]) -> None:
    api = await start_sim(
        faults=plan(FaultRule(kind="rate_limit", route="submit", max=1, retry_after=2))
    )
    reply = await api.call("POST", f"/{api.endpoint}", json=payload)
    assert reply.status == 429
    assert reply.headers["retry-after"] == "2"
    assert reply.json()["error_type"] == "concurrent_requests_limit"
    assert "x-fal-request-id" in reply.headers
    assert api.sim.jobs == []
    await api.submit(payload)  # `max: 1` let the second one through
    counters = api.sim.counters
    assert counters.faults_injected("rate_limit") == 1 and counters.accepted_submits == 1
    assert counters.responses_for("submit", 429) == 1


@pytest.mark.parametrize("status", [502, 503, 504])
async def test_ingress_errors_look_like_nginx(api_status: Any, status: int) -> None:
    reply = await api_status(status)
    assert reply.status == status
    assert "nginx" in reply.text
    assert "x-fal-request-id" not in reply.headers


async def test_http_500_is_a_flat_fal_error(api_status: Any) -> None:
    reply = await api_status(500)
    assert reply.status == 500
    assert reply.json()["error_type"] == reply.headers["x-fal-error-type"] == "internal_error"
    assert "x-fal-request-id" in reply.headers


@pytest.fixture
def api_status(start_sim: Any, payload: dict[str, Any]) -> Any:
    """Submit once, then GET its status through an `http_error` rule of the given status."""

    async def run(status: int) -> Any:
        api = await start_sim(
            faults=plan(FaultRule(kind="http_error", route="status", status=status))
        )
        sub = await api.submit(payload)
        reply = await api.status(sub)
        assert api.sim.counters.faults_injected("http_error", "status") == 1
        return reply

    return run


async def test_drop_before_submit_accepts_nothing(
    start_sim: Any, payload: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    """The client sees a disconnect, no job exists, and nothing scary is logged."""
    api = await start_sim(faults=plan(FaultRule(kind="drop_before", route="submit", max=1)))
    with caplog.at_level(logging.WARNING), pytest.raises(DISCONNECTED):
        await api.call("POST", f"/{api.endpoint}", json=payload)
    assert api.sim.jobs == [] and api.sim.counters.accepted_submits == 0
    assert api.sim.counters.responses_for("submit", 0) == 1
    await api.submit(payload)  # the connection pool recovers
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


async def test_drop_after_submit_is_the_ambiguous_case(
    start_sim: Any, payload: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    """The job is accepted and runs, but the client never learns its request_id."""
    api = await start_sim(faults=plan(FaultRule(kind="drop_after", route="submit", max=1)))
    with caplog.at_level(logging.WARNING), pytest.raises(DISCONNECTED):
        await api.call("POST", f"/{api.endpoint}", json=payload)
    counters = api.sim.counters
    assert counters.accepted_submits == 1 and counters.submits_for(api.endpoint, payload) == 1
    assert counters.faults_injected("drop_after", "submit") == 1
    assert counters.responses_for("submit", 0) == 1 and counters.responses_for("submit", 200) == 0
    assert len(api.sim.jobs) == 1
    await api.submit(payload)
    assert counters.duplicate_submits() == {api.sim.jobs[0].payload_hash: 2}
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


async def test_drop_on_get_is_seen_after_aiohttps_one_retry(
    start_sim: Any, payload: dict[str, Any]
) -> None:
    """aiohttp silently retries an idempotent request once, so two drops reach the caller."""
    api = await start_sim(faults=plan(FaultRule(kind="drop_before", route="status", max=2)))
    sub = await api.submit(payload)
    with pytest.raises(DISCONNECTED):
        await api.status(sub)
    assert api.sim.counters.responses_for("status", 0) == 2
    assert (await api.status(sub)).status in (200, 202)


async def test_slow_answers_normally(start_sim: Any, payload: dict[str, Any]) -> None:
    api = await start_sim(faults=plan(FaultRule(kind="slow", route="status", delay=0.05)))
    sub = await api.submit(payload)
    assert (await api.status(sub)).status in (200, 202)
    assert api.sim.counters.faults_injected("slow", "status") == 1


async def test_transient_job_error_is_503_runner_disconnected(
    start_sim: Any, payload: dict[str, Any]
) -> None:
    api = await start_sim(faults=plan(FaultRule(kind="job_error", transient=True, max=1)))
    sub = await api.submit(payload)
    status = await api.wait_for(sub)
    assert status["error_type"] == "runner_disconnected" and status["error"]
    reply = await api.result(sub)
    assert reply.status == 503
    assert reply.json()["error_type"] == reply.headers["x-fal-error-type"] == "runner_disconnected"
    assert api.sim.jobs[0].error_type == "runner_disconnected"
    ok = await api.submit(payload)
    await api.wait_for(ok)
    assert (await api.result(ok)).status == 200


async def test_transient_job_error_type_sets_the_status(
    start_sim: Any, payload: dict[str, Any]
) -> None:
    api = await start_sim(
        faults=plan(FaultRule(kind="job_error", error_type="runner_incomplete_response"))
    )
    sub = await api.submit(payload)
    await api.wait_for(sub)
    assert (await api.result(sub)).status == 502


async def test_permanent_job_error_is_422(start_sim: Any, payload: dict[str, Any]) -> None:
    api = await start_sim(faults=plan(FaultRule(kind="job_error", transient=False)))
    sub = await api.submit(payload)
    await api.wait_for(sub)
    reply = await api.result(sub)
    assert reply.status == 422
    assert reply.json()["detail"][0]["loc"] == ["body"]


async def test_expire_forgets_a_completed_job(start_sim: Any, payload: dict[str, Any]) -> None:
    api = await start_sim(faults=plan(FaultRule(kind="expire", route="result")))
    sub = await api.submit(payload)
    await api.wait_for(sub)
    reply = await api.result(sub)
    assert reply.status == 404 and reply.json() == {"status": "NOT_FOUND"}
    assert (await api.status(sub)).status == 404
    assert api.sim.counters.faults_injected("expire") == 1


def test_plan_from_yaml(tmp_path: Path) -> None:
    path = tmp_path / "faults.yaml"
    path.write_text(
        "seed: 7\n"
        "rules:\n"
        "  - {kind: rate_limit, route: submit, rate: 0.2, retry_after: 1}\n"
        "  - kind: http_error\n"
        "    route: status\n"
        "    status: 503\n"
        "    max: 3\n"
        "  - {kind: job_error, transient: false}\n"
    )
    loaded = FaultPlan.from_yaml(path)
    assert loaded.seed == 7
    assert [r.kind for r in loaded.rules] == ["rate_limit", "http_error", "job_error"]
    assert loaded.rules[1].max == 3 and loaded.rules[2].transient is False
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    assert FaultPlan.from_yaml(empty).rules == []


@pytest.mark.parametrize(
    "rule",
    [
        {"kind": "http_error", "status": 418},
        {"kind": "job_error", "route": "status"},
        {"kind": "expire", "route": "submit"},
        {"kind": "rate_limit", "rate": 1.5},
        {"kind": "explode"},
        {"kind": "slow", "when": "later"},
    ],
)
def test_invalid_rules_are_rejected(rule: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        FaultRule.model_validate(rule)


def _pattern(seed: int, n: int = 64) -> list[bool]:
    injector = FaultInjector(plan(FaultRule(kind="http_error", rate=0.5), seed=seed))
    return [injector.pick("status", INGRESS_FAULTS) is not None for _ in range(n)]


def test_faults_are_reproducible_from_the_seed() -> None:
    assert _pattern(1) == _pattern(1)
    assert _pattern(1) != _pattern(2)
    assert 0 < sum(_pattern(1)) < 64


def test_skip_and_max_bound_a_rule() -> None:
    injector = FaultInjector(plan(FaultRule(kind="drop_before", route="submit", skip=2, max=3)))
    fired = [injector.pick("submit", INGRESS_FAULTS) is not None for _ in range(8)]
    assert fired == [False, False, True, True, True, False, False, False]
    assert injector.pick("status", INGRESS_FAULTS) is None


def test_first_matching_rule_wins_and_routes_filter() -> None:
    injector = FaultInjector(
        plan(
            FaultRule(kind="slow", route="result"),
            FaultRule(kind="rate_limit", route="any", max=1),
            FaultRule(kind="http_error", route="any"),
        )
    )
    picks = [injector.pick(route, INGRESS_FAULTS) for route in ("result", "status", "status")]
    assert [r.kind if r else None for r in picks] == ["slow", "rate_limit", "http_error"]
    assert injector.pick("submit", frozenset({"job_error"})) is None
