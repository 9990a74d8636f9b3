"""The receiver of `webhook serve`, over real sockets, against forged and replayed deliveries.

Setup: a detached run submits 3 items with webhooks (the simulator loses every delivery, so
only what a test sends arrives); the receiver is bound to that job's ledger. Every rejected
delivery is answered 401 (413 for a body over the cap) and leaves the ledger — item rows,
output rows and image files — exactly as it was. A valid delivery completes its item once; a
duplicate is acknowledged (200) and ignored."""

from __future__ import annotations

import json
import sqlite3
import time
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from batch.fal.webhooks import signed_message
from batch.sim import FaultRule, Simulator
from batch.sim.webhooks import SIGNATURE, TIMESTAMP, USER_ID, webhook_body

MAX_BODY = 64 * 1024
N = 3


class Setup:
    def __init__(self, hooks: Any, sim: Simulator, service: Any, offset: list[float]) -> None:
        self.hooks, self.sim, self.service, self.offset = hooks, sim, service, offset
        conn = sqlite3.connect(hooks.tmp / "out" / "ledger.sqlite")
        self.ids = [r for (r,) in conn.execute("SELECT request_id FROM items ORDER BY key")]
        conn.close()

    def signed(
        self, rid: str, body: bytes | None = None, *, now: float | None = None
    ) -> tuple[bytes, dict[str, str]]:
        """fal's delivery of `rid`'s outcome, signed with the simulator's key."""
        if body is None:
            job = self.sim.model.get(rid)
            assert job is not None
            body = webhook_body(job)
        return body, self.sim.signer.headers(rid, self.sim.config.user_id, body, now=now)

    async def post(self, body: bytes, headers: dict[str, str]) -> int:
        status: int = await self.hooks.post(self.service.url + "hooks/fal", body, headers)
        return status


async def start(hooks: Any) -> Setup:
    sim = await hooks.start(faults=hooks.plan(FaultRule(kind="webhook_lost")))
    spec = hooks.spec(hooks.manifest(N))
    summary = await hooks.run(spec, detach=True)
    assert summary.exit_code == 0, summary.text()
    assert summary.counts["submitted"] == N
    offset = [0.0]
    service = await hooks.service(
        spec, max_body_bytes=MAX_BODY, clock=lambda: time.time() + offset[0]
    )
    return Setup(hooks, sim, service, offset)


def _missing(name: str) -> Callable[[Setup], tuple[bytes, dict[str, str]]]:
    def make(s: Setup) -> tuple[bytes, dict[str, str]]:
        body, headers = s.signed(s.ids[0])
        del headers[name]
        return body, headers

    return make


def _forged(s: Setup) -> tuple[bytes, dict[str, str]]:
    body, headers = s.signed(s.ids[0])
    headers[SIGNATURE] = Ed25519PrivateKey.generate().sign(b"anything").hex()
    return body, headers


def _other_body(s: Setup) -> tuple[bytes, dict[str, str]]:
    body, headers = s.signed(s.ids[0])
    tampered = json.loads(body)
    tampered["payload"]["images"][0]["url"] = "https://evil.example/cat.png"
    return json.dumps(tampered).encode(), headers


def _stale(seconds: float) -> Callable[[Setup], tuple[bytes, dict[str, str]]]:
    def make(s: Setup) -> tuple[bytes, dict[str, str]]:
        return s.signed(s.ids[0], now=time.time() + seconds)

    return make


def _unknown_key(s: Setup) -> tuple[bytes, dict[str, str]]:
    """Well signed, by a key the JWKS does not list (an unknown key id)."""
    body, headers = s.signed(s.ids[0])
    rogue = Ed25519PrivateKey.generate()
    rid, uid, ts = s.ids[0], headers[USER_ID], headers[TIMESTAMP]
    headers[SIGNATURE] = rogue.sign(signed_message(rid, uid, ts, body)).hex()
    return body, headers


def _oversized(s: Setup) -> tuple[bytes, dict[str, str]]:
    job = s.sim.model.get(s.ids[0])
    assert job is not None
    body = webhook_body(job) + b" " * MAX_BODY
    return s.signed(s.ids[0], body)


def _not_in_job(s: Setup) -> tuple[bytes, dict[str, str]]:
    rid = str(uuid.uuid4())
    body = json.dumps({"request_id": rid, "status": "OK", "payload": {"images": []}}).encode()
    return s.signed(rid, body)


def _other_user(s: Setup) -> tuple[bytes, dict[str, str]]:
    body, headers = s.signed(s.ids[0])
    headers[USER_ID] = "someone-else"
    return body, headers


CASES: dict[str, tuple[Callable[[Setup], tuple[bytes, dict[str, str]]], int, str]] = {
    "missing request id": (_missing("X-Fal-Webhook-Request-Id"), 401, "missing_headers"),
    "missing user id": (_missing("X-Fal-Webhook-User-Id"), 401, "missing_headers"),
    "missing timestamp": (_missing(TIMESTAMP), 401, "missing_headers"),
    "missing signature": (_missing(SIGNATURE), 401, "missing_headers"),
    "forged signature": (_forged, 401, "bad_signature"),
    "valid signature over another body": (_other_body, 401, "bad_signature"),
    "signed 301 s ago": (_stale(-301), 401, "stale_timestamp"),
    "signed 301 s ahead": (_stale(301), 401, "stale_timestamp"),
    "unknown signing key": (_unknown_key, 401, "bad_signature"),
    "another user id": (_other_user, 401, "bad_signature"),
    "oversized body": (_oversized, 413, "body_too_large"),
    "request id not in the job": (_not_in_job, 401, "unknown_request"),
}


@pytest.mark.parametrize("case", list(CASES))
async def test_rejected_delivery_leaves_the_ledger_untouched(hooks, case: str) -> None:
    make, status, reason = CASES[case]
    s = await start(hooks)
    before = hooks.ledger_state()
    body, headers = make(s)
    assert await s.post(body, headers) == status
    await s.service.collector.drain()
    assert hooks.ledger_state() == before
    assert s.service.collector.stats == {}  # never reached the ledger side
    assert s.service.receiver.stats == {f"rejected:{reason}": 1}
    if case == "unknown signing key":
        assert s.service.receiver.jwks.fetches == 2  # fetched again once: keys may rotate


async def test_replayed_delivery_is_rejected_once_outside_the_window(hooks) -> None:
    s = await start(hooks)
    body, headers = s.signed(s.ids[0])
    before = hooks.ledger_state()
    s.offset[0] = 301.0  # the same bytes, 301 s later
    assert await s.post(body, headers) == 401
    assert hooks.ledger_state() == before
    assert s.service.receiver.stats == {"rejected:stale_timestamp": 1}


async def test_valid_delivery_is_accepted_once_and_a_duplicate_is_ignored(hooks) -> None:
    s = await start(hooks)
    before_items, _, _ = hooks.ledger_state()
    body, headers = s.signed(s.ids[0])
    assert await s.post(body, headers) == 200
    await s.service.collector.drain()
    items, outputs, files = after = hooks.ledger_state()
    states = {row[0]: row for row in items}
    first = sorted(states)[0]
    assert s.service.ledger.get(first).state == "completed"
    assert [s.service.ledger.get(k).state for k in sorted(states)[1:]] == ["submitted"] * 2
    assert len(outputs) == 1 and len(files) == 1
    assert items[1:] == before_items[1:]  # the other items: untouched

    again_body, again_headers = s.signed(s.ids[0])  # fal's retry: signed afresh
    assert again_body == body
    assert await s.post(again_body, again_headers) == 200
    await s.service.collector.drain()
    assert hooks.ledger_state() == after
    assert s.service.collector.stats == {"received": 1, "ignored": 1}
    assert s.service.receiver.stats == {"accepted": 2}
    assert s.sim.counters.requests_for("files") == 1  # downloaded once


async def test_rotated_key_is_picked_up_by_one_jwks_refetch(hooks) -> None:
    s = await start(hooks)
    assert await s.post(*s.signed(s.ids[0])) == 200
    assert s.service.receiver.jwks.fetches == 1
    s.sim.signer.rotate()
    assert await s.post(*s.signed(s.ids[1])) == 200
    assert s.service.receiver.jwks.fetches == 2
    before = hooks.ledger_state()
    assert await s.post(*_unknown_key(s)) == 401  # right after a refetch: not fetched again
    assert s.service.receiver.jwks.fetches == 2
    await s.service.collector.drain()
    assert s.service.collector.stats["received"] == 2
    third_item = hooks.ledger_state()[0][2]
    assert third_item == before[0][2] and s.service.ledger.get(third_item[0]).state == "submitted"


async def test_unreachable_jwks_answers_503_so_fal_retries(hooks) -> None:
    sim = await hooks.start(faults=hooks.plan(FaultRule(kind="webhook_lost")))
    spec = hooks.spec(hooks.manifest(1))
    assert (await hooks.run(spec, detach=True)).exit_code == 0
    broken = spec.with_overrides(webhook={"jwks_url": "http://127.0.0.1:9/jwks.json"})
    service = await hooks.service(broken)
    s = Setup(hooks, sim, service, [0.0])
    before = hooks.ledger_state()
    assert await s.post(*s.signed(s.ids[0])) == 503
    assert hooks.ledger_state() == before
    assert service.receiver.stats == {"rejected:jwks_unavailable": 1}
