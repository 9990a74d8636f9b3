"""The simulator delivers webhooks as fal-protocol.md §6 says: bodies, headers, Ed25519 signature
verifiable with the JWKS it serves, retries on a (compressed) schedule, and its faults.

The receiver here is a bare aiohttp app that records what arrives and verifies signatures with
`cryptography` directly, so these tests check the simulator against the spec, not against our
own receiver."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from support import TEST_KEY, edit

from batch.sim import FaultPlan, FaultRule, Simulator

ENDPOINT = "fal-ai/firered-image-edit"
SCALE = 0.001


class Recorder:
    """Records deliveries; answers `statuses` in turn (then 200), or 401 to a bad signature
    when `verify_with` is set."""

    def __init__(self, statuses: list[int] | None = None) -> None:
        self.statuses = list(statuses or [])
        self.deliveries: list[tuple[dict[str, str], bytes, bool]] = []
        self.key: Ed25519PublicKey | None = None
        self.url = ""
        self._runner: web.AppRunner | None = None

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        headers = {k.lower(): v for k, v in request.headers.items()}
        valid = self.valid(headers, body)
        self.deliveries.append((headers, body, valid))
        if self.key is not None and not valid:
            return web.Response(status=401)
        return web.Response(status=self.statuses.pop(0) if self.statuses else 200)

    def valid(self, headers: dict[str, str], body: bytes) -> bool:
        if self.key is None:
            return True
        message = "\n".join(
            [
                headers["x-fal-webhook-request-id"],
                headers["x-fal-webhook-user-id"],
                headers["x-fal-webhook-timestamp"],
                hashlib.sha256(body).hexdigest(),
            ]
        ).encode()
        try:
            self.key.verify(bytes.fromhex(headers["x-fal-webhook-signature"]), message)
        except InvalidSignature:
            return False
        return True

    async def start(self) -> str:
        app = web.Application()
        app.router.add_post("/{tail:.*}", self.handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}/hook"
        return self.url

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    def bodies(self) -> list[dict[str, Any]]:
        return [json.loads(body) for _, body, _ in self.deliveries]


class Rig:
    def __init__(self, sim: Simulator, recorder: Recorder, session: aiohttp.ClientSession):
        self.sim, self.recorder, self.session = sim, recorder, session

    async def submit(self, payload: dict[str, Any], webhook: str | None = None) -> str:
        params = {"fal_webhook": webhook or self.recorder.url}
        async with self.session.post(
            f"{self.sim.url}/{ENDPOINT}", json=payload, params=params
        ) as resp:
            assert resp.status == 200
            return str((await resp.json())["request_id"])

    async def jwks_key(self) -> Ed25519PublicKey:
        async with self.session.get(self.sim.jwks_url, headers={"Authorization": ""}) as resp:
            assert resp.status == 200
            document = await resp.json()
        (key,) = document["keys"]
        assert (key["kty"], key["crv"]) == ("OKP", "Ed25519")
        assert len(key["x"]) == 43 and "=" not in key["x"]  # base64url without padding
        raw = base64.urlsafe_b64decode(key["x"] + "=")
        return Ed25519PublicKey.from_public_bytes(raw)

    async def settle(self) -> None:
        async with asyncio.timeout(10):
            while self.sim.model.records and any(
                r.completed_at is None for r in self.sim.model.records
            ):
                await asyncio.sleep(0.005)
            await self.sim.webhooks.idle()


@pytest.fixture
async def rig_factory() -> AsyncIterator[Any]:
    made: list[tuple[Simulator, Recorder, aiohttp.ClientSession]] = []

    async def make(statuses: list[int] | None = None, verify: bool = False, **config: Any) -> Rig:
        config.setdefault("latency", "fixed:0")
        config.setdefault("webhook_retry_scale", SCALE)
        sim = Simulator(key=TEST_KEY, **config)
        await sim.start()
        recorder = Recorder(statuses)
        await recorder.start()
        session = aiohttp.ClientSession(headers={"Authorization": f"Key {TEST_KEY}"})
        made.append((sim, recorder, session))
        rig = Rig(sim, recorder, session)
        if verify:
            recorder.key = await rig.jwks_key()
        return rig

    yield make
    for sim, recorder, session in reversed(made):
        await session.close()
        await recorder.stop()
        await sim.stop()


async def test_ok_delivery_has_body_headers_and_a_signature_valid_under_the_jwks(rig_factory):
    rig = await rig_factory(user_id="user-42")
    rid = await rig.submit(edit())
    await rig.settle()
    ((headers, body, _),) = rig.recorder.deliveries
    data = json.loads(body)
    assert data["request_id"] == data["gateway_request_id"] == rid
    assert data["status"] == "OK" and data["payload"]["images"][0]["url"].startswith("http")
    assert "payload_error" not in data and "error" not in data
    assert headers["x-fal-webhook-request-id"] == rid
    assert headers["x-fal-webhook-user-id"] == "user-42"
    assert headers["x-fal-webhook-timestamp"].isdigit()
    assert len(headers["x-fal-webhook-signature"]) == 128
    assert headers["content-type"].startswith("application/json")
    rig.recorder.key = await rig.jwks_key()
    assert rig.recorder.valid(headers, body)
    assert not rig.recorder.valid(headers, body + b" ")
    assert rig.sim.counters.webhooks["delivered"] == 1
    assert rig.sim.counters.webhooks_delivered[rid] == 1


async def test_error_delivery_carries_the_status_code_and_the_error_body(rig_factory):
    rig = await rig_factory()
    await rig.submit(edit(num_images=99))  # rejected by the model: 422
    await rig.settle()
    (body,) = rig.recorder.bodies()
    assert body["status"] == "ERROR"
    assert body["error"] == "Invalid status code: 422"
    assert body["payload"]["detail"][0]["loc"] == ["body", "num_images"]


async def test_payload_error_fault_sends_a_null_payload(rig_factory):
    rig = await rig_factory(faults=FaultPlan(rules=[FaultRule(kind="webhook_payload_error")]))
    await rig.submit(edit())
    await rig.settle()
    (body,) = rig.recorder.bodies()
    assert body["status"] == "OK" and body["payload"] is None
    assert "not JSON serializable" in body["payload_error"]


async def test_failed_attempts_are_retried_on_the_schedule_then_given_up(rig_factory):
    rig = await rig_factory(statuses=[500, 503, 302], webhook_retry_delays=[0.01] * 5)
    await rig.submit(edit())
    await rig.settle()
    assert len(rig.recorder.deliveries) == 4  # 500, 503 and a redirect are failures
    counts = rig.sim.counters
    assert (counts.webhooks["failed_attempts"], counts.webhooks["delivered"]) == (3, 1)
    assert rig.sim.webhooks.schedule() == [0.0] + [0.01 * SCALE] * 5

    gone = await rig_factory(statuses=[500] * 9, webhook_retry_delays=[0.01, 0.01])
    await gone.submit(edit())
    await gone.settle()
    assert len(gone.recorder.deliveries) == 3
    assert gone.sim.counters.webhooks["given_up"] == 1


def test_default_schedule_is_ten_retries_over_about_two_hours() -> None:
    sim = Simulator()
    delays = sim.webhooks.schedule()
    assert len(delays) == 11 and delays[0] == 0
    assert 1.8 * 3600 <= sum(delays) <= 2.2 * 3600


async def test_unreachable_receiver_is_counted_and_retried(rig_factory):
    rig = await rig_factory(webhook_retry_delays=[0.01, 0.01])
    await rig.submit(edit(), webhook="http://127.0.0.1:9/unreachable")
    await rig.settle()
    counts = rig.sim.counters
    assert counts.webhook_responses[0] == 3 and counts.webhooks["given_up"] == 1


async def test_lost_and_duplicated_deliveries(rig_factory):
    rules = [
        FaultRule(kind="webhook_lost", max=1),
        FaultRule(kind="webhook_duplicate", skip=1, max=1),
    ]
    rig = await rig_factory(verify=True, capacity=1, faults=FaultPlan(rules=rules))
    lost = await rig.submit(edit("first"))
    await rig.settle()
    doubled = await rig.submit(edit("second"))
    await rig.settle()
    ids = [h["x-fal-webhook-request-id"] for h, _, _ in rig.recorder.deliveries]
    assert ids == [doubled, doubled]
    assert all(valid for _, _, valid in rig.recorder.deliveries)
    assert rig.recorder.deliveries[0][1] == rig.recorder.deliveries[1][1]  # the same body
    counts = rig.sim.counters
    assert counts.webhooks_lost == [lost]
    assert counts.webhooks["duplicates_sent"] == 1 and counts.webhooks_delivered[doubled] == 2


async def test_bad_signature_is_refused_by_a_verifying_receiver_then_retried(rig_factory):
    rules = [FaultRule(kind="webhook_bad_signature", max=1)]
    rig = await rig_factory(verify=True, faults=FaultPlan(rules=rules))
    await rig.submit(edit())
    await rig.settle()
    assert [valid for _, _, valid in rig.recorder.deliveries] == [False, True]
    assert rig.sim.counters.webhook_responses == {401: 1, 200: 1}


async def test_reordered_delivery_arrives_after_a_later_one(rig_factory):
    rules = [FaultRule(kind="webhook_reorder", max=1, delay=5.0)]
    rig = await rig_factory(capacity=1, latency="fixed:0.01", faults=FaultPlan(rules=rules))
    first = await rig.submit(edit("first"))
    second = await rig.submit(edit("second"))
    await rig.settle()
    order = [b["request_id"] for b in rig.recorder.bodies()]
    completed = [r.request_id for r in sorted(rig.sim.jobs, key=lambda r: r.completed_at or 0)]
    assert completed == [first, second]
    assert order == [second, first]


async def test_delayed_delivery_still_arrives(rig_factory):
    rig = await rig_factory(faults=FaultPlan(rules=[FaultRule(kind="webhook_delay", delay=0.05)]))
    rid = await rig.submit(edit())
    await rig.settle()
    assert [b["request_id"] for b in rig.recorder.bodies()] == [rid]
    assert rig.sim.counters.faults_injected("webhook_delay", "webhook") == 1


async def test_jobs_without_a_webhook_get_none(rig_factory):
    rig = await rig_factory()
    async with rig.session.post(f"{rig.sim.url}/{ENDPOINT}", json=edit()) as resp:
        assert resp.status == 200
    await rig.settle()
    assert rig.recorder.deliveries == [] and rig.sim.counters.webhooks["deliveries"] == 0
