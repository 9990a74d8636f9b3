"""One manifest row → one `EditItem`: fields merged, validated, keyed; and duplicate detection.

The key of an item is the user's ``id`` when given (see `validate_id`), else
``"h" + request_hash(endpoint, payload)[:20]``, so the same request always gets the same key.
An item carries its payload's canonical JSON and its request hash, computed once per row: the
ledger stores both as they are.
"""

from __future__ import annotations

import hashlib
import json
from array import array
from collections.abc import Callable, Iterable, Mapping, Set
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from batch.manifest.errors import FieldProblem, validation_problems
from batch.manifest.fields import faulty_fields, normalize_in_place, validate_id
from batch.manifest.localfiles import LocalFiles
from batch.manifest.payload import PayloadShortcut, payload_shortcut
from batch.schema import EditInput


def _canonical_encoder() -> Callable[[Any], str]:
    """``json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)``, made
    once for every row: json.dumps makes an encoder per call, JSONEncoder.encode a C encoder per
    call. No check for cycles (validated payloads have none); the output is the same."""
    encoder = json.JSONEncoder(
        sort_keys=True, separators=(",", ":"), ensure_ascii=False, check_circular=False
    )
    make_encoder: Callable[..., Callable[[Any, int], Iterable[str]]] | None
    make_encoder = getattr(json.encoder, "c_make_encoder", None)  # not in the type stubs
    if make_encoder is None:  # no C accelerator: the pure-Python encoder
        return encoder.encode
    encode = make_encoder(
        None, encoder.default, json.encoder.encode_basestring, None, ":", ",", True, False, True
    )

    def canonical_json(value: Any) -> str:
        return "".join(encode(value, 0))

    return canonical_json


canonical_json = _canonical_encoder()
_validate = EditInput.__pydantic_validator__.validate_python  # = EditInput.model_validate
_dump = EditInput.__pydantic_serializer__.to_python  # = EditInput.model_dump


def _shortcut() -> PayloadShortcut | None:
    """`payload_shortcut` for `EditInput`, if it gives what the model gives on a sample that
    uses every kind of field (else None: should pydantic ever change how it spells them)."""
    shortcut = payload_shortcut(EditInput, canonical_json)
    sample = {
        "prompt": 'p "é" \\ \u2028 \x00 😀',
        "image_urls": ["https://x.test/a.png", "data:,x"],
        "image_size": {"width": "640", "height": 480},
        "seed": 2**63 - 1,
        "num_images": 2.0,
        "sync_mode": "yes",
        "output_format": "jpeg",
    }
    for data in (sample, {**sample, "image_size": "square_hd", "guidance_scale": 1.00001}):
        expected = _dump(_validate(data), mode="json", exclude_unset=True)
        if shortcut is None or shortcut(data) != (expected, canonical_json(expected)):
            return None
    return shortcut


# What _validate, _dump then canonical_json give, for most valid rows, in a third of the time.
_fast_request = _shortcut()


@dataclass(frozen=True)
class EditItem:
    """One request to the endpoint.

    ``payload`` is exactly what the user set (defaults from files included), validated by
    `EditInput` and dumped in JSON mode; ``source`` is ``file:line``; ``user_id`` is the ``id``
    the user gave, if any (then it is also the key). ``request_json`` (the payload's canonical
    JSON) and ``request_hash`` are derived from the rest, and computed when not given.
    """

    key: str
    endpoint: str
    payload: dict[str, Any]
    source: str
    user_id: str | None
    request_json: str = field(default="", repr=False, compare=False)
    request_hash: str = field(default="", repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.request_json:
            object.__setattr__(self, "request_json", canonical_json(self.payload))
        if not self.request_hash:
            text = _request_prefix(self.endpoint) + self.request_json + "}"
            object.__setattr__(self, "request_hash", hashlib.sha256(text.encode()).hexdigest())


def _new_item(
    key: str,
    endpoint: str,
    payload: dict[str, Any],
    source: str,
    user_id: str | None,
    request_json: str,
    request_hash: str,
) -> EditItem:
    """`EditItem(...)` with every field given, made without the frozen dataclass's __init__
    (which sets each field through object.__setattr__: a third of the cost, once per row)."""
    item = EditItem.__new__(EditItem)
    object.__setattr__(item, "__dict__", {
        "key": key,
        "endpoint": endpoint,
        "payload": payload,
        "source": source,
        "user_id": user_id,
        "request_json": request_json,
        "request_hash": request_hash,
    })  # fmt: skip
    return item


@lru_cache(maxsize=64)
def _request_prefix(endpoint: str) -> str:
    """The canonical request up to its payload: keys sort as "endpoint" < "payload"."""
    return '{"endpoint":' + canonical_json(endpoint) + ',"payload":'


def canonical_request(endpoint: str, payload: Mapping[str, Any]) -> bytes:
    """The bytes that are hashed: sorted keys, no spaces, UTF-8 kept as is."""
    text = json.dumps(
        {"endpoint": endpoint, "payload": payload},
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
    )
    return text.encode("utf-8")


def request_hash(endpoint: str, payload: Mapping[str, Any]) -> str:
    """sha256 (hex) of the canonical request; the ledger stores it."""
    return hashlib.sha256(canonical_request(endpoint, payload)).hexdigest()


_NOTHING: frozenset[str | int] = frozenset()


def build_item(
    data: Mapping[str, Any],
    *,
    defaults: Mapping[str, Any],
    endpoint: str,
    base_dir: Path,
    source: str,
    files: LocalFiles | None = None,
) -> EditItem | list[FieldProblem]:
    """Merge ``defaults`` (already normalized) under one row's fields and validate the result.

    Returns the item, or every problem of the row (not just the first).
    """
    fields = dict(data)
    problems: list[FieldProblem] = []
    user_id: str | None = None
    if "id" in fields:
        try:
            user_id = validate_id(fields.pop("id"))
        except ValueError as exc:
            problems.append((("id",), str(exc)))
    field_problems = normalize_in_place(fields, base_dir, files)
    faulty: Set[str | int] = _NOTHING
    if field_problems:
        problems.extend(field_problems)
        faulty = faulty_fields(field_problems)
        fields = {k: v for k, v in fields.items() if k not in faulty}
    merged = {**defaults, **fields} if defaults else fields
    request: tuple[dict[str, Any], str] | None = None
    if _fast_request is not None and not problems:
        try:
            request = _fast_request(merged)
        except ValidationError:
            request = None  # the model says why (or accepts what the shortcut does not)
    if request is not None:
        payload, request_json = request
    else:
        try:
            model = _validate(merged)
        except ValidationError as exc:
            problems.extend(
                p for p in validation_problems(exc) if not p[0] or p[0][0] not in faulty
            )
            return problems
        if problems:
            return problems
        payload = _dump(model, mode="json", exclude_unset=True)
        request_json = canonical_json(payload)
    text = _request_prefix(endpoint) + request_json + "}"
    digest = hashlib.sha256(text.encode()).hexdigest()
    key = user_id if user_id is not None else "h" + digest[:20]
    return _new_item(key, endpoint, payload, source, user_id, request_json, digest)


_MASK64 = (1 << 64) - 1


class SeenKeys:
    """key → (request hash, line) for the duplicate check, in flat arrays, not Python objects.

    A dict would keep a string and a tuple alive per key, several objects each, for the whole
    scan of a manifest that may hold millions of rows; this is open addressing over three flat
    arrays of machine integers (20 bytes a slot, at most 7 slots in 10 used). Keys and requests
    are compared by 64-bit hashes (Python's string hash of the key, the first 8 bytes of the
    request's sha256): a false match needs a 64-bit collision.
    """

    def __init__(self, capacity: int = 1024) -> None:
        assert capacity & (capacity - 1) == 0, "capacity must be a power of two"
        self._allocate(capacity)
        self._count = 0

    def _allocate(self, capacity: int) -> None:
        self._mask = capacity - 1
        self._limit = capacity * 7 // 10  # grow beyond this many keys
        self._keys = array("Q", bytes(8 * capacity))  # 0 = empty slot
        self._requests = array("Q", bytes(8 * capacity))
        self._lines = array("I", bytes(4 * capacity))

    def __len__(self) -> int:
        return self._count

    def add(self, key: str, request_hash: str, line: int) -> tuple[bool, int] | None:
        """Record ``key`` and its request (sha256 hex); None if it is new, else (same
        request?, line of the first one)."""
        key_hash = hash(key) & _MASK64 | 1  # str hashes: 64-bit SipHash, cached on the string
        keys, mask = self._keys, self._mask
        slot = (key_hash >> 1) & mask  # not the low bit: it is always 1
        while found := keys[slot]:
            if found == key_hash:
                return self._requests[slot] == int(request_hash[:16], 16), self._lines[slot]
            slot = (slot + 1) & mask
        keys[slot] = key_hash
        self._requests[slot] = int(request_hash[:16], 16)
        self._lines[slot] = line
        self._count = count = self._count + 1
        if count > self._limit:
            self._grow()
        return None

    def _grow(self) -> None:
        entries = zip(self._keys, self._requests, self._lines, strict=True)
        self._allocate(len(self._keys) * 2)
        keys, requests, lines, mask = self._keys, self._requests, self._lines, self._mask
        for key_hash, request, line in entries:
            if key_hash:
                slot = (key_hash >> 1) & mask
                while keys[slot]:
                    slot = (slot + 1) & mask
                keys[slot], requests[slot], lines[slot] = key_hash, request, line
