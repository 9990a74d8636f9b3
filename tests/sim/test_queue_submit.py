"""Submit (fal-protocol.md §1, §5) and auth (§0), over a real socket."""

from __future__ import annotations

from typing import Any

import pytest

from batch.sim import Simulator


async def test_submit_answers_200_with_owner_alias_urls(api: Any, payload: dict[str, Any]) -> None:
    """A submit answers the documented fields, URLs on the app root, and x-fal-request-id."""
    reply = await api.call("POST", "/fal-ai/flux/dev", json=payload)
    assert reply.status == 200
    body = reply.json()
    rid = body["request_id"]
    base = f"{api.url}/fal-ai/flux/requests/{rid}"
    assert body["response_url"] == base
    assert body["status_url"] == base + "/status"
    assert body["cancel_url"] == base + "/cancel"
    assert body["status"] == "IN_QUEUE"
    assert body["queue_position"] == 0
    assert body["gateway_request_id"] == rid
    assert reply.headers["x-fal-request-id"] == rid


async def test_namespaced_endpoint_keeps_three_part_root(api: Any, payload: dict[str, Any]) -> None:
    """`workflows/acme/wf/run` is served under `workflows/acme/wf/requests/...`."""
    body = await api.submit(payload, endpoint="workflows/acme/wf/run")
    assert body["status_url"] == f"{api.url}/workflows/acme/wf/requests/{body['request_id']}/status"
    assert (await api.status(body)).status in (200, 202)


async def test_public_url_overrides_origin(start_sim: Any, payload: dict[str, Any]) -> None:
    api = await start_sim(public_url="https://queue.example.test/")
    body = await api.submit(payload)
    assert body["status_url"].startswith("https://queue.example.test/fal-ai/firered-image-edit/")


@pytest.mark.parametrize(
    ("data", "loc0"),
    [(b"{not json", "body"), (b"[1, 2]", "body"), (b'"text"', "body"), (b"", "body")],
)
async def test_non_object_body_is_422_detail_list(api: Any, data: bytes, loc0: str) -> None:
    reply = await api.call(
        "POST", f"/{api.endpoint}", data=data, headers={"Content-Type": "application/json"}
    )
    assert reply.status == 422
    detail = reply.json()["detail"]
    assert isinstance(detail, list) and detail[0]["loc"][0] == loc0
    assert api.sim.counters.accepted_submits == 0


async def test_single_part_endpoint_is_404(api: Any, payload: dict[str, Any]) -> None:
    reply = await api.call("POST", "/not-an-app", json=payload)
    assert reply.status == 404
    assert api.sim.jobs == []


async def test_missing_or_wrong_key_is_401_and_never_echoed(
    api: Any, payload: dict[str, Any]
) -> None:
    """No key and a wrong key both get 401 JSON; neither key appears in any answer."""
    url = f"{api.url}/{api.endpoint}"
    async with api.session.post(url, json=payload, headers={"Authorization": ""}) as resp:
        assert resp.status == 401
        assert "detail" in await resp.json()
    wrong = "Key wrong-secret-123"
    async with api.session.post(url, json=payload, headers={"Authorization": wrong}) as resp:
        text = await resp.text()
        assert resp.status == 401
    assert "wrong-secret-123" not in text
    assert api.sim.key not in text
    assert api.sim.jobs == []
    assert api.sim.counters.responses_for("submit", 401) == 2


async def test_bearer_key_is_accepted(api: Any, payload: dict[str, Any]) -> None:
    url = f"{api.url}/{api.endpoint}"
    headers = {"Authorization": f"Bearer {api.sim.key}"}
    async with api.session.post(url, json=payload, headers=headers) as resp:
        assert resp.status == 200


async def test_key_not_in_repr_or_any_body(api: Any, payload: dict[str, Any]) -> None:
    """The key stays out of reprs, status, result, counters and jobs answers."""
    sub = await api.submit(payload)
    await api.wait_for(sub)
    texts = [
        (await api.status(sub, "1")).text,
        (await api.result(sub)).text,
        (await api.call("GET", "/_sim/counters")).text,
        (await api.call("GET", "/_sim/jobs")).text,
        repr(api.sim),
        repr(api.sim.config),
        repr(api.sim.counters),
    ]
    assert all(api.sim.key not in text for text in texts)


async def test_fal_webhook_and_priority_are_stored(api: Any, payload: dict[str, Any]) -> None:
    sub = await api.submit(
        payload,
        params={"fal_webhook": "https://hooks.example.test/x?a=1"},
        headers={"X-Fal-Queue-Priority": "low"},
    )
    job = api.sim.model.get(sub["request_id"])
    assert job is not None
    assert job.webhook == "https://hooks.example.test/x?a=1"
    assert api.sim.jobs[0].priority == "low"


async def test_unknown_priority_is_ignored(api: Any, payload: dict[str, Any]) -> None:
    await api.submit(payload, headers={"X-Fal-Queue-Priority": "urgent"})
    assert api.sim.jobs[0].priority == "normal"


async def test_simulator_not_running_has_no_url() -> None:
    sim = Simulator()
    with pytest.raises(RuntimeError):
        _ = sim.url
    async with sim:
        assert sim.url.startswith("http://127.0.0.1:")
    with pytest.raises(RuntimeError):
        _ = sim.url
