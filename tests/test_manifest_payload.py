"""The shortcut from a row to its payload and canonical JSON (`payload_shortcut`): whatever it
accepts, the model accepts too, with the same payload spelled the same way, so an item's request
and hash do not depend on which way it took."""

from __future__ import annotations

import json
import random
from enum import IntEnum, StrEnum
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from batch.manifest import items, iter_items, request_hash
from batch.manifest.items import canonical_json
from batch.manifest.payload import payload_shortcut
from batch.schema import EditInput, ImageSizePreset

# Values each field may take in a row: (valid ones, or ones pydantic converts; invalid ones).
VALUES: dict[str, tuple[list[Any], list[Any]]] = {
    "prompt": (
        ["p", 'café ✓ "q" \\ \n\t\u2028', " ", "p" * 10_000],
        ["", 5, None, b"bytes", ["p"], "p" * 10_001],
    ),
    "image_urls": (
        [
            ["https://x.test/a.png"],
            ["https://x.test/a.png", "data:image/png;base64,AAAA"],
            ("https://x.test/t.png",),
        ],
        [[], "https://x.test/a.png", [1], [None]],
    ),
    "image_size": (
        [
            "square_hd",
            "landscape_16_9",
            ImageSizePreset.portrait_4_3,
            {"width": 1024, "height": 768},
            {"width": "640", "height": 480.0},
            None,
        ],
        [
            {"width": 0, "height": 1},
            {"width": 20000, "height": 1},
            {"width": 1, "height": 2, "depth": 3},
            {"width": 1},
            "huge",
            5,
        ],
    ),
    "num_inference_steps": ([2, 50, "30", 30.0, True], [30.5, 1, 51, "x", None]),
    "seed": ([0, 2**63 - 1, "7", 7.0, None], [1.5, "seed", -1, 2**63, 2**70]),
    "guidance_scale": (
        [1, 4, "4.5", 10.0, 1.0000001, 9.99999],
        [0, 0.5, -0.1, 10.5, 20.5, float("inf"), float("nan"), "inf"],
    ),
    "sync_mode": ([True, False, "yes", "0", 1], ["maybe", None]),
    "num_images": ([1, 4, "2", 2.0], [0, 5, False]),
    "enable_safety_checker": ([True, "false", 0], ["nope"]),
    "output_format": (["png", "jpeg"], ["PNG", "gif", None]),
    "negative_prompt": (["", "blurry", "n" * 10_000], [1, "n" * 10_001]),
    "acceleration": (["none", "regular", "high"], ["max"]),
    "unknown_field": ([], [1]),
}


def _rows(n: int) -> list[dict[str, Any]]:
    rng = random.Random(7)
    rows = []
    for _ in range(n):
        row = {}
        for name, (good, bad) in VALUES.items():
            required = name in ("prompt", "image_urls")
            if rng.random() < (0.97 if required else 0.3):
                row[name] = rng.choice(good if good and rng.random() < 0.9 else bad)
        rows.append(row)
    return rows


def _model_payload(row: dict[str, Any]) -> dict[str, Any] | None:
    try:
        return EditInput.model_validate(row).model_dump(mode="json", exclude_unset=True)
    except ValidationError:
        return None


def test_what_the_shortcut_accepts_the_model_accepts_with_the_same_payload() -> None:
    fast = payload_shortcut(EditInput, canonical_json)
    assert fast is not None
    assert items._fast_request is not None  # build_item takes it (its self-check passed)
    accepted = refused_valid = 0
    for row in _rows(3000):
        expected = _model_payload(row)
        try:
            payload, request_json = fast(row)
        except ValidationError:
            refused_valid += expected is not None
            continue
        accepted += 1
        assert payload == expected, row
        assert request_json == canonical_json(expected), row
        assert sorted(payload) == list(payload)  # as stored: keys sorted
    assert accepted > 300
    assert refused_valid < accepted / 10  # only rare inputs (e.g. an enum member) fall back


def _text(rng: random.Random) -> str:
    """Characters of every kind: controls, quotes, backslashes, line separators, non-BMP."""
    pools = [
        [chr(c) for c in range(0x00, 0x80)],
        ["\x7f", "\x85", "\xa0", "é", "\u2028", "\u2029", "\ufeff", "\u200b", "✓"],
        [chr(c) for c in range(0x80, 0x800, 7)],
        [chr(c) for c in range(0x800, 0xD800, 997)] + [chr(c) for c in range(0xE000, 0x10000, 331)],
        ["😀", "\U0001f3f3\ufe0f\u200d\U0001f308", "\U0010ffff"],
    ]
    return "".join(rng.choice(rng.choice(pools)) for _ in range(rng.randint(1, 40)))


def test_every_character_is_spelled_as_canonical_json_spells_it() -> None:
    fast = payload_shortcut(EditInput, canonical_json)
    assert fast is not None
    rng = random.Random(11)
    for _ in range(3000):
        row = {
            "prompt": _text(rng),
            "negative_prompt": _text(rng),
            "image_urls": ["https://x.test/" + _text(rng).replace("\x00", "")],
            "seed": rng.choice([0, 2**31, 2**63 - 1, 7]),
        }
        payload, request_json = fast(row)
        assert request_json == canonical_json(payload) == canonical_json(_model_payload(row))


def test_payloads_with_floats_are_spelled_by_canonical_json() -> None:
    fast = payload_shortcut(EditInput, canonical_json)
    assert fast is not None
    for value in (1.00001, 1.0001, 4, "9.999999999999996", 1.0000000000000002):
        row = {"prompt": "p", "image_urls": ["https://x.test/a.png"], "guidance_scale": value}
        payload, request_json = fast(row)
        assert payload == _model_payload(row)
        assert request_json == canonical_json(payload)
    row = {"prompt": "lone \ud800 surrogate", "image_urls": ["https://x.test/a.png"]}
    assert _model_payload(row) is None  # not text: both ways refuse it
    with pytest.raises(ValidationError):
        fast(row)


# Rows and the requests and hashes they had before the shortcut: ledgers made then must match.
PINNED = [
    (
        {"id": "a", "prompt": "p", "image_url": "https://x.test/a.png", "seed": "3"},
        '{"image_urls":["https://x.test/a.png"],"prompt":"p","seed":3}',
        "b90510af9edcd51ed54fea1f87481f5338ad6d67d41b3752d4bf3eaa6a75ee3b",
    ),
    (
        {"id": "b", "prompt": "q", "image_url": "https://x.test/b.png", "image_size": "800x600"},
        '{"image_size":{"height":600,"width":800},"image_urls":["https://x.test/b.png"],'
        '"prompt":"q"}',
        "c99dde6c2e2f44e57ac776881a33ca11e14960f5adddd5f24893e7102c767390",
    ),
    (
        {"id": "c", "prompt": "r", "image_url": "https://x.test/c.png", "guidance_scale": "2"},
        '{"guidance_scale":2.0,"image_urls":["https://x.test/c.png"],"prompt":"r"}',
        "0ba800a65de268c29a29aeacbbcd70da5d42047584997c289a99ce901d1a231b",
    ),
    (
        {
            "prompt": 'café ✓ "q"',
            "image_urls": ["https://x.test/d.png"],
            "image_size": "square",
            "num_images": 2.0,
            "sync_mode": "yes",
        },
        '{"image_size":"square","image_urls":["https://x.test/d.png"],"num_images":2,'
        '"prompt":"café ✓ \\"q\\"","sync_mode":true}',
        "601d5b182013532c4c4a3518189eafd792ba0cb6fbe1ddfec934c716ed99a458",
    ),
]


def test_requests_and_hashes_are_those_of_the_model(tmp_path: Path) -> None:
    path = tmp_path / "m.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row, _, _ in PINNED), encoding="utf-8")
    items = list(iter_items(path))
    assert [(item.request_json, item.request_hash) for item in items] == [
        (request, digest) for _, request, digest in PINNED
    ]
    for item in items:
        assert item.request_hash == request_hash(item.endpoint, item.payload)
        assert item.payload == _model_payload(json.loads(item.request_json))


class _Color(IntEnum):
    red = 1


class _Shape(StrEnum):
    round = "round"


class _Plain(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1)
    shape: _Shape | None = None
    sizes: list[int] = []


class _Validated(BaseModel):
    name: str

    @field_validator("name")
    @classmethod
    def _upper(cls, value: str) -> str:
        return value.upper()


class _Aliased(BaseModel):
    name: str = Field(alias="n")


class _Stripped(BaseModel):
    model_config = ConfigDict(str_strip_whitespace=True)
    name: str


class _IntEnumField(BaseModel):
    color: _Color


class _Dated(BaseModel):
    when: Any


def test_models_it_cannot_copy_faithfully_get_no_shortcut() -> None:
    plain = payload_shortcut(_Plain, canonical_json)
    assert plain is not None
    assert plain({"shape": "round", "name": "x"}) == (
        {"name": "x", "shape": "round"},
        '{"name":"x","shape":"round"}',
    )
    with pytest.raises(ValidationError):
        plain({"name": "x", "other": 1})
    for model in (_Validated, _Aliased, _Stripped, _IntEnumField, _Dated):
        assert payload_shortcut(model, canonical_json) is None, model
