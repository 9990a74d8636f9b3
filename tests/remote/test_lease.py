"""Lease: claim, renew, takeover, loss and release, on memory and a local folder, clock moved."""

from __future__ import annotations

import asyncio
import json
import os
import socket
from typing import TYPE_CHECKING

import pytest

from batch.errors import ExitCode, LockHeldError
from batch.remote import Lease, LeaseHeld, LeaseInfo, LeaseLost, Store, default_owner

if TYPE_CHECKING:
    from remote.conftest import Clock  # the `clock` fixture's type (tests/remote/conftest.py)

pytest.importorskip("obstore")

TTL = 60.0


def lease(store: Store, clock: Clock, owner: str) -> Lease:
    return Lease(store, owner=owner, ttl_s=TTL, now=clock)


async def stored(store: Store) -> LeaseInfo:
    info = LeaseInfo.parse(await store.get("lease.json"))
    assert info is not None
    return info


async def test_claim_creates_the_lease_with_owner_and_expiry(store: Store, clock: Clock) -> None:
    a = lease(store, clock, "host-a:11:aa")
    await a.claim()
    info = await stored(store)
    assert (info.owner, info.expires_at, info.renewed_at) == (
        "host-a:11:aa",
        clock() + TTL,
        clock(),
    )
    assert (info.host, info.pid) == (socket.gethostname(), os.getpid())
    assert a.held and a.expires_at == clock() + TTL


async def test_a_live_lease_refuses_a_second_claim_naming_holder_and_expiry(
    store: Store, clock: Clock
) -> None:
    await lease(store, clock, "host-a:11:aa").claim()
    clock.advance(15)
    b = lease(store, clock, "host-b:22:bb")
    with pytest.raises(LeaseHeld) as info:
        await b.claim()
    message = str(info.value)
    assert "held by host-a:11:aa until 2023-11-14T22:14:20+00:00 (45 s left)" in message
    assert info.value.exit_code == ExitCode.LOCKED
    assert isinstance(info.value, LockHeldError)
    assert not b.held


async def test_an_expired_lease_is_taken_over(store: Store, clock: Clock) -> None:
    a = lease(store, clock, "a:1:x")
    await a.claim()
    clock.advance(TTL + 1)
    b = lease(store, clock, "b:2:y")
    await b.claim()
    assert (await stored(store)).owner == "b:2:y"
    with pytest.raises(LeaseLost, match=r"taken over: now held by b:2:y until .*stop writing"):
        await a.renew()
    assert not a.held


async def test_renew_extends_expiry_and_keeps_others_out(store: Store, clock: Clock) -> None:
    a = lease(store, clock, "a:1:x")
    await a.claim()
    for _ in range(3):  # renewing every 40 s keeps a 60 s lease alive for 120 s
        clock.advance(40)
        await a.renew()
    assert (await stored(store)).expires_at == clock() + TTL
    with pytest.raises(LeaseHeld):
        await lease(store, clock, "b:2:y").claim()


async def test_renew_after_own_expiry_succeeds_if_nobody_took_it(
    store: Store, clock: Clock
) -> None:
    a = lease(store, clock, "a:1:x")
    await a.claim()
    clock.advance(TTL * 3)
    await a.renew()
    assert a.expires_at == clock() + TTL


async def test_renew_of_a_deleted_lease_is_lost(store: Store, clock: Clock) -> None:
    a = lease(store, clock, "a:1:x")
    await a.claim()
    await store.delete("lease.json")
    with pytest.raises(LeaseLost, match="nobody"):
        await a.renew()


async def test_renew_without_claim_is_lost(store: Store, clock: Clock) -> None:
    with pytest.raises(LeaseLost, match="not held"):
        await lease(store, clock, "a:1:x").renew()


async def test_release_deletes_only_our_own_lease(store: Store, clock: Clock) -> None:
    a = lease(store, clock, "a:1:x")
    await a.claim()
    await a.release()
    assert not a.held
    assert not await store.exists("lease.json")
    await a.release()  # not held: nothing happens


async def test_release_after_a_takeover_leaves_the_new_holders_lease(
    store: Store, clock: Clock
) -> None:
    a = lease(store, clock, "a:1:x")
    await a.claim()
    clock.advance(TTL + 1)
    await lease(store, clock, "b:2:y").claim()
    clock.advance(-TTL)  # even if a's clock says its lease is still alive
    await a.release()
    assert (await stored(store)).owner == "b:2:y"


async def test_release_past_expiry_leaves_the_object_for_the_next_claim(
    store: Store, clock: Clock
) -> None:
    a = lease(store, clock, "a:1:x")
    await a.claim()
    clock.advance(TTL + 1)
    await a.release()
    assert await store.exists("lease.json")
    await lease(store, clock, "b:2:y").claim()  # taken over as expired


async def test_same_owner_can_claim_again(store: Store, clock: Clock) -> None:
    await lease(store, clock, "a:1:x").claim()
    again = lease(store, clock, "a:1:x")
    await again.claim()
    assert again.held


async def test_an_unreadable_lease_counts_as_expired(store: Store, clock: Clock) -> None:
    await store.put("lease.json", b"not json")
    await lease(store, clock, "a:1:x").claim()
    assert (await stored(store)).owner == "a:1:x"


async def test_racing_claims_on_an_expired_lease_have_one_winner(
    store: Store, clock: Clock
) -> None:
    await lease(store, clock, "old:0:z").claim()
    clock.advance(TTL + 1)
    claimants = [lease(store, clock, f"c{i}:{i}:q") for i in range(6)]
    results = await asyncio.gather(*(c.claim() for c in claimants), return_exceptions=True)
    winners = [c for c, r in zip(claimants, results, strict=True) if r is None]
    assert len(winners) == 1
    assert all(isinstance(r, LeaseHeld) for r in results if r is not None)
    assert (await stored(store)).owner == winners[0].owner


async def test_context_manager_claims_and_releases(store: Store, clock: Clock) -> None:
    async with lease(store, clock, "a:1:x") as held:
        assert held.held
        assert json.loads(await store.get("lease.json"))["owner"] == "a:1:x"
    assert not await store.exists("lease.json")


def test_default_owner_is_host_pid_random() -> None:
    host, pid, tag = default_owner().split(":")
    assert host and int(pid) > 0 and len(tag) == 8
    assert default_owner() != default_owner()


def test_a_far_off_expiry_is_described_not_a_crash() -> None:
    from batch.remote import LeaseInfo

    info = LeaseInfo.parse(b'{"owner": "h:1:x", "expires_at": 1e16, "host": "h", "pid": 1}')
    assert info is not None and "seconds since 1970" in info.describe(0.0)
