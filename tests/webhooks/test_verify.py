"""The receiver's pure checks, as tables: headers, timestamp window, signature, body, JWKS."""

from __future__ import annotations

import base64
import hashlib
import json
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from batch.fal.errors import TransientError
from batch.fal.jwks import (
    JsonWebKey,
    JwksCache,
    JwksUnavailableError,
    decode_base64url,
    parse_jwks,
)
from batch.fal.webhooks import (
    WebhookDelivery,
    WebhookRejected,
    parse_delivery,
    read_headers,
    signed_message,
    signing_key,
)

NOW = 1_700_000_000
KEY = Ed25519PrivateKey.generate()
RAW = KEY.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
BODY = b'{"request_id":"r-1","status":"OK","payload":{"images":[]}}'


def sign(key: Ed25519PrivateKey, rid: str, uid: str, ts: str, body: bytes) -> str:
    digest = hashlib.sha256(body).hexdigest()  # written out here, not taken from the module
    return key.sign(f"{rid}\n{uid}\n{ts}\n{digest}".encode()).hex()


def headers(**changes: str | None) -> dict[str, str]:
    base = {
        "X-Fal-Webhook-Request-Id": "r-1",
        "X-Fal-Webhook-User-Id": "u-1",
        "X-Fal-Webhook-Timestamp": str(NOW),
        "X-Fal-Webhook-Signature": sign(KEY, "r-1", "u-1", str(NOW), BODY),
    }
    for name, value in changes.items():
        header = "X-Fal-Webhook-" + name.replace("_", "-").title()
        if value is None:
            del base[header]
        else:
            base[header] = value
    return base


def test_signed_message_is_the_four_lines_of_fal_protocol_section_6() -> None:
    digest = hashlib.sha256(BODY).hexdigest()
    assert signed_message("r", "u", "12", BODY) == f"r\nu\n12\n{digest}".encode()


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"request_id": None}, "missing_headers"),
        ({"user_id": None}, "missing_headers"),
        ({"timestamp": None}, "missing_headers"),
        ({"signature": None}, "missing_headers"),
        ({"user_id": "  "}, "missing_headers"),
        ({"timestamp": "soon"}, "bad_timestamp"),
        ({"timestamp": "1.7e9"}, "bad_timestamp"),
        ({"timestamp": str(NOW - 301)}, "stale_timestamp"),
        ({"timestamp": str(NOW + 301)}, "stale_timestamp"),
        ({"signature": "zz" * 64}, "bad_signature"),
        ({"signature": "ab" * 63}, "bad_signature"),
    ],
)
def test_bad_headers_are_rejected_with_401(changes: dict[str, Any], reason: str) -> None:
    with pytest.raises(WebhookRejected) as info:
        read_headers(headers(**changes), now=NOW, tolerance=300)
    assert (info.value.status, info.value.reason) == (401, reason)


@pytest.mark.parametrize("skew", [-300, 0, 300])
def test_timestamps_inside_the_window_pass_and_header_names_ignore_case(skew: int) -> None:
    lower = {k.lower(): v for k, v in headers().items()}
    signed = read_headers(lower, now=NOW + skew, tolerance=300)
    assert (signed.request_id, signed.user_id, signed.timestamp) == ("r-1", "u-1", str(NOW))


def test_signature_checks() -> None:
    good = JsonWebKey("k1", KEY.public_key())
    other = JsonWebKey("k2", Ed25519PrivateKey.generate().public_key())
    signed = read_headers(headers(), now=NOW, tolerance=300)
    assert signing_key(signed, BODY, [other, good]) == good  # any key of the set
    assert signing_key(signed, BODY, [other]) is None  # unknown key
    assert signing_key(signed, BODY + b" ", [good]) is None  # another body
    assert signing_key(signed, BODY, []) is None
    uppercase = read_headers(
        headers(signature=sign(KEY, "r-1", "u-1", str(NOW), BODY).upper()), now=NOW, tolerance=300
    )
    assert signing_key(uppercase, BODY, [good]) == good
    forged_user = read_headers(headers(user_id="u-2"), now=NOW, tolerance=300)
    assert signing_key(forged_user, BODY, [good]) is None


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"not json", "bad_body"),
        (b"[1, 2]", "bad_body"),
        (b'{"request_id": "r-1", "status": "DONE"}', "bad_body"),
        (b'{"request_id": "r-2", "status": "OK", "payload": {}}', "request_id_mismatch"),
    ],
)
def test_malformed_bodies_are_rejected(body: bytes, reason: str) -> None:
    signed = read_headers(headers(), now=NOW, tolerance=300)
    with pytest.raises(WebhookRejected) as info:
        parse_delivery(signed, body)
    assert (info.value.status, info.value.reason) == (400, reason)


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (
            {"status": "OK", "payload": {"images": [1]}},
            {"output": {"images": [1]}, "failed": False},
        ),
        (
            {"status": "OK", "payload": None, "payload_error": "x"},
            {"output": None, "failed": False},
        ),
        (
            {
                "status": "ERROR",
                "error": "Invalid status code: 503",
                "payload": {"error_type": "e"},
            },
            {"output": None, "failed": True, "error_type": "e"},
        ),
        (
            {"status": "ERROR", "error": "Invalid status code: 422", "payload": {"detail": []}},
            {"output": None, "failed": True, "error_type": None},
        ),
    ],
)
def test_delivery_bodies_become_completed_statuses(
    body: dict[str, Any], expected: dict[str, Any]
) -> None:
    signed = read_headers(headers(), now=NOW, tolerance=300)
    delivery = parse_delivery(signed, json.dumps({"request_id": "r-1", **body}).encode())
    assert isinstance(delivery, WebhookDelivery)
    completed = delivery.completed()
    assert completed.output == expected["output"]
    assert completed.failed is expected["failed"]
    if "error_type" in expected:
        assert completed.error_type == expected["error_type"]


@pytest.mark.parametrize(
    "text",
    [
        base64.urlsafe_b64encode(RAW).decode().rstrip("="),  # the usual JWKS form: 43 chars
        base64.urlsafe_b64encode(RAW).decode(),  # padded, as fal's Python sample expects
        base64.b64encode(RAW).decode(),  # the standard alphabet
        " " + base64.urlsafe_b64encode(RAW).decode().rstrip("=") + "\n",
    ],
)
def test_base64url_is_decoded_tolerantly(text: str) -> None:
    assert decode_base64url(text) == RAW


@pytest.mark.parametrize("text", ["a", "abc$def", "ab=cd"])
def test_base64url_junk_is_refused(text: str) -> None:
    with pytest.raises(ValueError):
        decode_base64url(text)


def test_jwks_keeps_ed25519_keys_and_skips_the_rest() -> None:
    x = base64.urlsafe_b64encode(RAW).decode().rstrip("=")
    document = {
        "keys": [
            {"kty": "OKP", "crv": "Ed25519", "kid": "a", "x": x},
            {"x": x + "=="},  # only x is documented: enough
            {"kty": "RSA", "n": "...", "e": "AQAB", "kid": "rsa"},
            {"kty": "OKP", "crv": "X25519", "x": x},
            {"kty": "OKP", "crv": "Ed25519", "x": "AAAA"},  # not 32 bytes
            "junk",
        ]
    }
    keys = parse_jwks(document)
    assert [k.kid for k in keys] == ["a", None]
    assert parse_jwks({"keys": "nope"}) == [] == parse_jwks(None)


class FakeJwks:
    def __init__(self) -> None:
        self.now = 0.0
        self.documents: list[Any] = []
        self.calls = 0

    async def fetch(self) -> Any:
        self.calls += 1
        document = self.documents.pop(0)
        if isinstance(document, Exception):
            raise document
        return document

    def cache(self) -> JwksCache:
        return JwksCache(self.fetch, max_age=100, refetch_interval=10, clock=lambda: self.now)


def _jwks(*keys: Ed25519PrivateKey) -> dict[str, Any]:
    xs = [k.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw) for k in keys]
    return {"keys": [{"x": base64.urlsafe_b64encode(x).decode().rstrip("=")} for x in xs]}


async def test_jwks_is_cached_refreshed_once_on_demand_and_at_most_every_interval() -> None:
    fake = FakeJwks()
    fake.documents = [_jwks(KEY), _jwks(KEY), _jwks(KEY), _jwks(KEY)]
    cache = fake.cache()
    generation, keys = await cache.keys()
    await cache.keys()
    assert (fake.calls, len(keys)) == (1, 1)  # cached
    assert await cache.refresh(generation) is not None and fake.calls == 2
    assert await cache.refresh(generation) is not None and fake.calls == 2  # someone just did
    newer, _ = await cache.keys()
    assert await cache.refresh(newer) is None and fake.calls == 2  # too soon: refused
    fake.now = 11
    assert await cache.refresh(newer) is not None and fake.calls == 3
    fake.now = 200  # older than max_age: fetched again on use
    await cache.keys()
    assert fake.calls == 4


async def test_jwks_that_cannot_be_fetched_or_has_no_key_is_unavailable() -> None:
    fake = FakeJwks()
    fake.documents = [TransientError("jwks: HTTP 503"), {"keys": []}, _jwks(KEY)]
    cache = fake.cache()
    for _ in range(2):
        with pytest.raises(JwksUnavailableError):
            await cache.keys()
    _, keys = await cache.keys()
    assert len(keys) == 1
