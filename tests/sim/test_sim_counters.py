"""Counters, payload hashes, job records, the admin routes, latency and retention."""

from __future__ import annotations

import hashlib
import json
import random
from typing import Any

import pytest
from pydantic import ValidationError

from batch.sim import Latency, ManualClock, SimConfig, payload_hash


def test_payload_hash_is_sha256_of_canonical_json() -> None:
    payload = {"prompt": "café", "image_urls": ["a"], "seed": 1}
    canonical = '{"endpoint":"fal-ai/x","payload":{"image_urls":["a"],"prompt":"café","seed":1}}'
    assert payload_hash("fal-ai/x", payload) == hashlib.sha256(canonical.encode()).hexdigest()
    reordered = dict(reversed(list(payload.items())))
    assert payload_hash("fal-ai/x", reordered) == payload_hash("fal-ai/x", payload)
    assert payload_hash("fal-ai/y", payload) != payload_hash("fal-ai/x", payload)


async def test_counters_by_route_status_and_payload(api: Any, payload: dict[str, Any]) -> None:
    sub = await api.submit(payload)
    await api.wait_for(sub)
    await api.result(sub)
    await api.call("PUT", sub["cancel_url"])
    await api.call("GET", "/fal-ai/x/requests/missing/status")
    c = api.sim.counters
    assert c.requests_for("submit") == 1 and c.responses_for("submit", 200) == 1
    assert c.responses_for("result", 200) == 1
    assert c.responses_for("cancel", 400) == 1
    assert c.responses_for("status", 404) == 1
    assert c.submits_for(api.endpoint, payload) == 1 and c.duplicate_submits() == {}
    assert c.status_calls_for(sub["request_id"]) == c.requests_for("status") - 1


async def test_admin_counters_and_jobs_over_http(api: Any, payload: dict[str, Any]) -> None:
    """/_sim/counters and /_sim/jobs need no key and are not counted themselves."""
    sub = await api.submit(payload)
    await api.wait_for(sub)
    async with api.session.get(f"{api.url}/_sim/counters", headers={"Authorization": ""}) as r:
        assert r.status == 200
        counters = await r.json()
    assert counters == json.loads(json.dumps(api.sim.counters.snapshot()))
    assert counters["submits_by_payload"] == {payload_hash(api.endpoint, payload): 1}
    jobs = (await api.call("GET", "/_sim/jobs")).json()["jobs"]
    assert len(jobs) == 1
    record = jobs[0]
    assert record["request_id"] == sub["request_id"]
    assert record["payload_hash"] == payload_hash(api.endpoint, payload)
    assert record["service_time"] == api.sim.jobs[0].service_time
    assert record["submitted_at"] <= record["started_at"] <= record["completed_at"]
    assert record["result_status"] == 200 and record["error_type"] is None
    assert "other" not in api.sim.counters.snapshot()["requests"]


async def test_service_times_are_seeded(start_sim: Any, payload: dict[str, Any]) -> None:
    times = []
    for seed in (5, 5, 6):
        api = await start_sim(seed=seed, latency="uniform:0,0.01")
        for _ in range(3):
            await api.submit(payload)
        times.append([job.service_time for job in api.sim.jobs])
    assert times[0] == times[1] != times[2]


@pytest.mark.parametrize(
    ("text", "kind", "a", "b"),
    [
        ("fixed:0.5", "fixed", 0.5, 0.5),
        ("0.25", "fixed", 0.25, 0.25),
        ("uniform:0.1,0.9", "uniform", 0.1, 0.9),
        ("lognormal:0.5,0.6", "lognormal", 0.5, 0.6),
    ],
)
def test_latency_parse(text: str, kind: str, a: float, b: float) -> None:
    latency = Latency.parse(text)
    assert (latency.kind, latency.a, latency.b) == (kind, a, b)
    assert Latency.parse(str(latency)) == latency


@pytest.mark.parametrize(
    "text", ["fixed:", "uniform:0.9,0.1", "lognormal:0,1", "gamma:1,2", "fixed:-1", "uniform:1"]
)
def test_latency_parse_rejects_bad_specs(text: str) -> None:
    with pytest.raises(ValueError):
        Latency.parse(text)


def test_latency_draws_stay_in_range_and_lognormal_has_the_mean() -> None:
    rng = random.Random(0)
    uniform = Latency.parse("uniform:0.1,0.9")
    assert all(0.1 <= uniform.draw(rng) <= 0.9 for _ in range(1000))
    lognormal = Latency.parse("lognormal:0.5,0.6")
    draws = [lognormal.draw(rng) for _ in range(20000)]
    assert min(draws) > 0
    assert sum(draws) / len(draws) == pytest.approx(0.5, rel=0.05)


def test_config_accepts_latency_strings_and_hides_the_key() -> None:
    config = SimConfig.model_validate({"latency": "uniform:0.1,0.2", "key": "sekrit-key"})
    assert config.latency == Latency(kind="uniform", a=0.1, b=0.2)
    assert "sekrit-key" not in repr(config)
    with pytest.raises(ValidationError) as info:
        SimConfig(key=" sekrit-key ")
    assert "sekrit-key" not in str(info.value)
    with pytest.raises(ValidationError):
        SimConfig(capacity=0)


async def test_results_expire_after_retention(start_sim: Any, payload: dict[str, Any]) -> None:
    """Without payload storage (X-Fal-Store-IO: 0), after retention_s status and result are
    404; the job record stays for oracles."""
    clock = ManualClock()
    api = await start_sim(retention_s=60, clock=clock)
    sub = await api.submit(payload, headers={"X-Fal-Store-IO": "0"})
    await api.wait_for(sub)
    assert (await api.result(sub)).status == 200
    clock.advance(59.5)  # not yet
    assert (await api.status(sub)).status == 200
    assert (await api.result(sub)).status == 200
    clock.advance(0.5)  # retention_s after completion: gone
    assert (await api.status(sub)).status == 404
    result = await api.result(sub)
    assert result.status == 404 and result.json() == {"status": "NOT_FOUND"}
    assert (await api.call("PUT", sub["cancel_url"])).status == 404
    assert api.sim.model.get(sub["request_id"]) is None
    assert [job.request_id for job in api.sim.jobs] == [sub["request_id"]]
