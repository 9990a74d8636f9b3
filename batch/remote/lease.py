"""One writer per shard: a lease object claimed create-only and renewed by compare-and-swap.

    lease.json  {"owner": "host:pid:random", "host": …, "pid": …,
                 "expires_at": <unix seconds>, "renewed_at": <unix seconds>}

`claim()` creates it create-only; if it exists but has expired (by our clock), it takes it
over by CAS on the ETag it read, so of two claimants only one wins. A live lease held by
someone else is `LeaseHeld` (exit 5, as for the output folder's lock). `renew()` is a CAS on
the ETag we last wrote: if that fails someone took the lease over (ours had expired), and
the caller must stop writing (`LeaseLost`). `release()` deletes it only if still ours.

Expiry is wall-clock time written by the holder and read by the others, so the TTL must be
far longer than clock skew between machines plus the renew interval (renew every TTL/3).
The clock is a parameter: tests move it instead of sleeping.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from types import TracebackType

from batch.remote.errors import LeaseHeld, LeaseLost
from batch.remote.store import Store

# Enough attempts to get past a lease deleted or taken over between our reads; more means
# several claimants are racing, and one of them has won.
_CLAIM_ATTEMPTS = 3


def default_owner() -> str:
    """`host:pid:random`: unique per process, and tells a person where the holder runs."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"


@dataclass(frozen=True)
class LeaseInfo:
    """What a lease object says."""

    owner: str
    host: str
    pid: int
    expires_at: float
    renewed_at: float

    @classmethod
    def parse(cls, data: bytes) -> LeaseInfo | None:
        """The lease in `data`, or None if it is not one (then it is treated as expired)."""
        try:
            raw = json.loads(data)
            return cls(
                owner=str(raw["owner"]),
                host=str(raw.get("host", "")),
                pid=int(raw.get("pid", 0)),
                expires_at=float(raw["expires_at"]),
                renewed_at=float(raw.get("renewed_at", 0.0)),
            )
        except (ValueError, TypeError, KeyError):
            return None

    def describe(self, now: float) -> str:
        try:
            when = datetime.fromtimestamp(self.expires_at, UTC).isoformat(timespec="seconds")
        except (OverflowError, OSError, ValueError):  # a far-off (or odd) expiry someone wrote
            when = f"{self.expires_at:.0f} (seconds since 1970)"
        return f"{self.owner} until {when} ({max(0.0, self.expires_at - now):.0f} s left)"


class Lease:
    """The lease at `key` in `store`, for `owner`; see the module docstring."""

    def __init__(
        self,
        store: Store,
        key: str = "lease.json",
        *,
        owner: str | None = None,
        ttl_s: float = 120.0,
        now: Callable[[], float] = time.time,
    ) -> None:
        if ttl_s <= 0:
            raise ValueError("ttl_s must be positive")
        self.store = store
        self.key = key
        self.owner = owner or default_owner()
        self.ttl_s = ttl_s
        self._now = now
        self._etag: str | None = None  # of the lease we last wrote; None when not held
        self.expires_at: float | None = None

    def __repr__(self) -> str:
        state = f"held until {self.expires_at}" if self.held else "not held"
        return f"Lease({self.store.url(self.key)!r}, owner={self.owner!r}, {state})"

    @property
    def held(self) -> bool:
        """Whether we hold it as far as we know (a renew may still find it taken)."""
        return self._etag is not None

    def _body(self) -> tuple[bytes, float]:
        now = self._now()
        expires_at = now + self.ttl_s
        body = {
            "owner": self.owner,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "expires_at": expires_at,
            "renewed_at": now,
        }
        return json.dumps(body).encode(), expires_at

    async def claim(self) -> None:
        """Take the lease: create it, or take over an expired one (or our own); else LeaseHeld."""
        url = self.store.url(self.key)
        for _ in range(_CLAIM_ATTEMPTS):
            body, expires_at = self._body()
            etag = await self.store.create(self.key, body)
            if etag is None:
                current = await self.store.get_versioned(self.key)
                if current is None:
                    continue  # released since our create: try creating again
                data, seen = current
                info = LeaseInfo.parse(data)
                now = self._now()
                if info is not None and info.owner != self.owner and info.expires_at > now:
                    raise LeaseHeld(f"{url} is held by {info.describe(now)}")
                # expired, unreadable, or ours from before: CAS so only one claimant wins
                etag = await self.store.swap(self.key, body, seen)
                if etag is None:
                    continue  # another claimant swapped first: read who, next time round
            self._etag, self.expires_at = etag, expires_at
            return
        raise LeaseHeld(f"{url} is contended: other writers claimed it while we tried")

    async def renew(self) -> None:
        """Extend the lease by `ttl_s` from now; LeaseLost if it is no longer ours."""
        if self._etag is None:
            raise LeaseLost(f"{self.store.url(self.key)} is not held by {self.owner}")
        body, expires_at = self._body()
        etag = await self.store.swap(self.key, body, self._etag)
        if etag is None:
            self._etag = self.expires_at = None
            raise LeaseLost(await self._lost_message())
        self._etag, self.expires_at = etag, expires_at

    async def release(self) -> None:
        """Delete the lease if it is still ours; a no-op if it is not held."""
        etag, expires_at = self._etag, self.expires_at
        self._etag = self.expires_at = None
        if etag is None or expires_at is None:
            return
        # Past our expiry someone may take the lease over between delete_if_match's compare
        # and its delete (not atomic on S3/GCS/Azure): leave an expired lease alone; the next
        # claim takes it over anyway.
        if self._now() < expires_at:
            await self.store.delete_if_match(self.key, etag)

    async def _lost_message(self) -> str:
        url = self.store.url(self.key)
        current = await self.store.get_versioned(self.key)
        info = LeaseInfo.parse(current[0]) if current else None
        holder = info.describe(self._now()) if info else "nobody (it was deleted)"
        return f"{url} was taken over: now held by {holder}; stop writing this shard"

    async def __aenter__(self) -> Lease:
        await self.claim()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.release()
