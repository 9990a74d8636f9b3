"""fal's webhook signing keys: the JWKS document parsed, and cached with bounded refetches.

fal signs webhooks with Ed25519 keys published as a JWKS (`DEFAULT_JWKS_URL`, fal-protocol.md
§6). `JwksCache` fetches it on first use, keeps it `max_age` seconds, and after a failed
verification (a rotated key) fetches it again at most once per `refetch_interval`, so forged
deliveries cannot make the receiver hammer the URL. Verification itself is in
`batch.fal.webhooks`.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from batch.fal.errors import FalError, TransientError
from batch.fal.transport import Transport

DEFAULT_JWKS_URL = "https://rest.fal.ai/.well-known/jwks.json"
JWKS_MAX_AGE_S = 24 * 3600.0
JWKS_REFETCH_INTERVAL_S = 30.0
JWKS_TIMEOUT_S = 10.0
_USER_AGENT = "firered-batch/0.1 (python; webhooks)"


@dataclass(frozen=True)
class JsonWebKey:
    kid: str | None
    key: Ed25519PublicKey


def decode_base64url(text: str) -> bytes:
    """base64url, padded or not (fal's sample assumes padding; JWKS values usually lack it).
    Standard-alphabet input is accepted too; anything else raises ValueError."""
    cleaned = "".join(text.split()).rstrip("=").replace("+", "-").replace("/", "_")
    if len(cleaned) % 4 == 1:
        raise ValueError("not base64url: impossible length")
    padded = cleaned + "=" * (-len(cleaned) % 4)
    try:
        return base64.b64decode(padded, altchars=b"-_", validate=True)
    except binascii.Error as exc:
        raise ValueError(f"not base64url: {exc}") from None


def parse_jwks(document: Any) -> list[JsonWebKey]:
    """The Ed25519 keys of a JWKS document; keys of other types and malformed keys are skipped."""
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        return []
    keys = []
    for entry in document["keys"]:
        if not isinstance(entry, dict) or not isinstance(entry.get("x"), str):
            continue
        if entry.get("kty", "OKP") != "OKP" or entry.get("crv", "Ed25519") != "Ed25519":
            continue
        try:
            raw = decode_base64url(entry["x"])
            key = Ed25519PublicKey.from_public_bytes(raw)
        except ValueError:
            continue
        kid = entry.get("kid")
        keys.append(JsonWebKey(str(kid) if kid is not None else None, key))
    return keys


class JwksUnavailableError(TransientError):
    """No usable JWKS: it could not be fetched, or listed no Ed25519 key."""


class JwksCache:
    """The JWKS keys, fetched on first use and kept at most `max_age` seconds.

    `refresh(seen)` fetches again after a failed verification (a rotated key), unless another
    caller already did since generation `seen`, and at most once per `refetch_interval`, so
    forged deliveries cannot make the receiver hammer the JWKS URL.
    """

    def __init__(
        self,
        fetch: Callable[[], Awaitable[Any]],
        *,
        max_age: float = JWKS_MAX_AGE_S,
        refetch_interval: float = JWKS_REFETCH_INTERVAL_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._fetch = fetch
        self.max_age = max_age
        self.refetch_interval = refetch_interval
        self._clock = clock
        self._keys: list[JsonWebKey] = []
        self._fetched_at: float | None = None
        self._forced_at: float | None = None
        self._lock = asyncio.Lock()
        self.generation = 0
        self.fetches = 0

    def __repr__(self) -> str:
        return f"JwksCache(keys={len(self._keys)}, fetches={self.fetches})"

    @classmethod
    def from_url(
        cls, session: aiohttp.ClientSession, url: str = DEFAULT_JWKS_URL, **kw: Any
    ) -> JwksCache:
        """A cache over a GET of `url` (no credentials are sent)."""
        transport = Transport(session, None, _USER_AGENT)
        timeout = aiohttp.ClientTimeout(total=JWKS_TIMEOUT_S)

        async def fetch() -> Any:
            return (await transport.send("jwks", "GET", url, timeout=timeout)).body

        return cls(fetch, **kw)

    async def keys(self) -> tuple[int, list[JsonWebKey]]:
        """(generation, keys), fetching when there are none or they are too old."""
        async with self._lock:
            fresh = self._fetched_at is not None and (
                self._clock() - self._fetched_at < self.max_age
            )
            if not fresh:
                await self._load()
            return self.generation, list(self._keys)

    async def refresh(self, seen: int) -> list[JsonWebKey] | None:
        """The keys fetched again (or as another caller just fetched them); None when a
        refetch is not allowed yet."""
        async with self._lock:
            if self.generation != seen:
                return list(self._keys)
            now = self._clock()
            if self._forced_at is not None and now - self._forced_at < self.refetch_interval:
                return None
            self._forced_at = now
            await self._load()
            return list(self._keys)

    async def _load(self) -> None:
        self.fetches += 1
        try:
            document = await self._fetch()
        except FalError as exc:
            self._keys, self._fetched_at = [], None
            raise JwksUnavailableError(f"JWKS: {exc}") from None
        keys = parse_jwks(document)
        if not keys:
            self._keys, self._fetched_at = [], None
            raise JwksUnavailableError("JWKS: no Ed25519 key in the document")
        self._keys, self._fetched_at = keys, self._clock()
        self.generation += 1
