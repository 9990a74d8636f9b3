"""The simulator's per-endpoint edit models: submit bodies validated with fal's 422 items,
render specs, result shapes; and the property that every adapted canonical payload
(`batch.fal.adapters.adapt`) is a body the simulator's model of that endpoint accepts."""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any

import pytest

from batch.fal.adapters import ADAPTED, AdapterError, adapt
from batch.schema import DEFAULT_ENDPOINT, EditInput, EditOutput, ImageSizePreset
from batch.sim.edit_models import (
    ERRORS_DOC,
    KONTEXT_DEV,
    KONTEXT_PRO,
    MODELED,
    NANO_BANANA,
    QWEN,
    SEEDREAM,
    RenderSpec,
    ratio_pixels,
    render_spec,
    result_shape,
    validate_input,
)

A = "https://x.test/a.png"
MINIMAL: dict[str, dict[str, Any]] = {
    DEFAULT_ENDPOINT: {"prompt": "p", "image_urls": [A]},
    QWEN: {"prompt": "p", "image_url": A},
    KONTEXT_DEV: {"prompt": "p", "image_url": A},
    KONTEXT_PRO: {"prompt": "p", "image_url": A},
    NANO_BANANA: {"prompt": "p", "image_urls": [A]},
    SEEDREAM: {"prompt": "p", "image_urls": [A]},
}


STEPS = ("body", "num_inference_steps")


def test_the_simulator_models_the_adapted_endpoints() -> None:
    """Written apart, the two tables must still name the same endpoints."""
    assert MODELED == ADAPTED == set(MINIMAL)


@pytest.mark.parametrize("endpoint", sorted(MINIMAL))
def test_a_minimal_body_is_accepted(endpoint: str) -> None:
    assert validate_input(endpoint, MINIMAL[endpoint]) == []


@pytest.mark.parametrize("endpoint", sorted(MINIMAL))
def test_missing_required_fields_are_422_items_in_fals_shape(endpoint: str) -> None:
    items = validate_input(endpoint, {})
    image_field = next(k for k in MINIMAL[endpoint] if k.startswith("image_url"))
    assert {tuple(i["loc"]) for i in items} == {("body", "prompt"), ("body", image_field)}
    for item in items:
        assert item["type"] == "missing" and item["msg"]
        assert item["url"] == ERRORS_DOC + "missing"


@pytest.mark.parametrize("endpoint", sorted(MINIMAL))
def test_unknown_fields_are_refused(endpoint: str) -> None:
    items = validate_input(endpoint, {**MINIMAL[endpoint], "strength": 0.5})
    assert [(i["loc"], i["type"]) for i in items] == [(["body", "strength"], "extra_forbidden")]


@pytest.mark.parametrize(
    ("endpoint", "change", "loc", "kind"),
    [
        (QWEN, {"image_url": [A]}, ["body", "image_url"], "string_type"),
        (QWEN, {"image_urls": [A]}, ["body", "image_urls"], "extra_forbidden"),
        (NANO_BANANA, {"image_urls": A}, ["body", "image_urls"], "list_type"),
        (NANO_BANANA, {"image_urls": []}, ["body", "image_urls"], "too_short"),
        (NANO_BANANA, {"seed": 3}, ["body", "seed"], "extra_forbidden"),
        (NANO_BANANA, {"aspect_ratio": "7:3"}, ["body", "aspect_ratio"], "literal_error"),
        (KONTEXT_PRO, {"guidance_scale": 25}, ["body", "guidance_scale"], "less_than_equal"),
        (KONTEXT_PRO, {"safety_tolerance": "7"}, ["body", "safety_tolerance"], "literal_error"),
        (KONTEXT_PRO, {"num_inference_steps": 30}, [*STEPS], "extra_forbidden"),
        (KONTEXT_DEV, {"num_inference_steps": 5}, [*STEPS], "greater_than_equal"),
        (KONTEXT_DEV, {"image_size": "square"}, ["body", "image_size"], "extra_forbidden"),
        (SEEDREAM, {"num_images": 7}, ["body", "num_images"], "less_than_equal"),
        (SEEDREAM, {"output_format": "png"}, ["body", "output_format"], "extra_forbidden"),
        (DEFAULT_ENDPOINT, {"guidance_scale": 11}, ["body", "guidance_scale"], "less_than_equal"),
    ],
)  # fmt: skip
def test_wrong_bodies_are_refused_by_field(
    endpoint: str, change: dict[str, Any], loc: list[Any], kind: str
) -> None:
    items = validate_input(endpoint, {**MINIMAL[endpoint], **change})
    assert [(i["loc"][: len(loc)], i["type"]) for i in items][:1] == [(loc, kind)]


def test_a_body_that_is_not_an_object_is_refused() -> None:
    items = validate_input(QWEN, ["prompt"])
    assert [(i["loc"], i["type"]) for i in items] == [(["body"], "model_type")]


def test_an_unmodeled_endpoint_is_a_key_error() -> None:
    with pytest.raises(KeyError, match="not a modeled edit endpoint"):
        validate_input("fal-ai/flux/dev", {})
    with pytest.raises(KeyError):
        result_shape("fal-ai/flux/dev", [], 1)


def test_seedream_takes_more_than_ten_inputs_and_uses_the_last_ten() -> None:
    urls = [f"https://x.test/{i}.png" for i in range(12)]
    body = {**MINIMAL[SEEDREAM], "image_urls": urls}
    assert validate_input(SEEDREAM, body) == []
    assert render_spec(SEEDREAM, body).image_urls == tuple(urls[2:])


@pytest.mark.parametrize(
    ("endpoint", "change", "size", "fmt"),
    [
        (DEFAULT_ENDPOINT, {}, None, "png"),
        (DEFAULT_ENDPOINT, {"image_size": "portrait_4_3"}, (768, 1024), "png"),
        (QWEN, {"image_size": {"width": 640, "height": 480}}, (640, 480), "png"),
        (KONTEXT_DEV, {}, None, "jpeg"),  # match_input
        (KONTEXT_DEV, {"resolution_mode": "9:16"}, (576, 1024), "jpeg"),
        (KONTEXT_PRO, {"aspect_ratio": "16:9", "output_format": "png"}, (1024, 576), "png"),
        (NANO_BANANA, {}, None, "png"),  # auto
        (NANO_BANANA, {"aspect_ratio": "1:1"}, (1024, 1024), "png"),
        (SEEDREAM, {}, (2048, 2048), "png"),  # the model's default size
        (SEEDREAM, {"image_size": "auto_2K"}, None, "png"),
        (SEEDREAM, {"image_size": "square"}, (512, 512), "png"),
    ],
)
def test_render_spec_reads_each_endpoints_fields(
    endpoint: str, change: dict[str, Any], size: tuple[int, int] | None, fmt: str
) -> None:
    spec = render_spec(endpoint, {**MINIMAL[endpoint], **change, "prompt": "q"})
    assert spec == RenderSpec("q", (A,), 1, size, fmt, None)


def test_render_spec_carries_seed_and_count() -> None:
    spec = render_spec(QWEN, {**MINIMAL[QWEN], "seed": 9, "num_images": 3})
    assert (spec.seed, spec.num_images) == (9, 3)


def test_ratio_pixels_keep_the_long_side() -> None:
    assert ratio_pixels("21:9") == (1024, 439)
    assert ratio_pixels("9:21") == (439, 1024)
    assert ratio_pixels("1:1", 512) == (512, 512)


IMAGE = {"url": A, "width": 8, "height": 6, "content_type": "image/png"}


@pytest.mark.parametrize(
    ("endpoint", "keys"),
    [
        (DEFAULT_ENDPOINT, {"images", "timings", "seed", "has_nsfw_concepts", "prompt"}),
        (QWEN, {"images", "timings", "seed", "has_nsfw_concepts", "prompt"}),
        (KONTEXT_DEV, {"images", "timings", "seed", "has_nsfw_concepts", "prompt"}),
        (KONTEXT_PRO, {"images", "seed", "has_nsfw_concepts", "prompt"}),
        (NANO_BANANA, {"images", "description"}),
        (SEEDREAM, {"images", "seed"}),
    ],
)
def test_each_endpoint_answers_its_own_output_shape(endpoint: str, keys: set[str]) -> None:
    body = result_shape(endpoint, [IMAGE, IMAGE], 5, prompt="q", nsfw=True, inference_s=0.25)
    assert set(body) == keys
    assert body["images"] == [IMAGE, IMAGE] and body["images"][0] is not IMAGE
    if "has_nsfw_concepts" in keys:
        assert body["has_nsfw_concepts"] == [True, True] and body["prompt"] == "q"
    if "seed" in keys:
        assert body["seed"] == 5
    # what our downloader reads: every shape is an EditOutput
    assert [i.url for i in EditOutput.model_validate(body).images] == [A, A]


# --- the property: adapted canonical payloads are bodies the simulator accepts -------------


PRESETS = [p.value for p in ImageSizePreset]


def canonical_payloads(count: int, seed: int = 20) -> Iterator[dict[str, Any]]:
    """Valid FireRed payloads, as a manifest row becomes one (only the fields set)."""
    rng = random.Random(seed)
    makers = {
        "image_size": lambda: rng.choice(
            [None, *PRESETS, {"width": rng.randint(64, 4096), "height": rng.randint(64, 4096)}]
        ),
        "num_inference_steps": lambda: rng.randint(2, 50),
        "seed": lambda: rng.randint(0, 2**40),
        "guidance_scale": lambda: round(rng.uniform(1, 10), 2),
        "sync_mode": lambda: rng.random() < 0.5,
        "num_images": lambda: rng.randint(1, 4),
        "enable_safety_checker": lambda: rng.random() < 0.5,
        "output_format": lambda: rng.choice(["jpeg", "png"]),
        "negative_prompt": lambda: rng.choice(["", "blurry"]),
        "acceleration": lambda: rng.choice(["none", "regular", "high"]),
    }
    for _ in range(count):
        urls = [f"https://x.test/{i}.png" for i in range(rng.choice([1, 1, 1, 2, 12]))]
        data: dict[str, Any] = {"prompt": "edit it", "image_urls": urls}
        for name, make in makers.items():
            if rng.random() < 0.5:
                data[name] = make()
        yield EditInput.model_validate(data).model_dump(mode="json", exclude_unset=True)


@pytest.mark.parametrize("endpoint", sorted(ADAPTED))
def test_every_adapted_canonical_payload_is_accepted_by_the_simulator(endpoint: str) -> None:
    accepted = refused = 0
    for payload in canonical_payloads(400):
        try:
            body = adapt(endpoint, payload)
        except AdapterError:
            refused += 1
            continue
        assert validate_input(endpoint, body) == [], (payload, body)
        render_spec(endpoint, body)  # and the simulator can render it
        accepted += 1
    assert accepted > 150  # not vacuous
    if endpoint == DEFAULT_ENDPOINT:
        assert refused == 0


@pytest.mark.parametrize("endpoint", sorted(ADAPTED))
def test_one_image_within_every_range_is_never_refused(endpoint: str) -> None:
    for payload in canonical_payloads(200, seed=7):
        payload["image_urls"] = payload["image_urls"][:1]
        if payload.get("num_inference_steps", 30) >= 10:
            assert validate_input(endpoint, adapt(endpoint, payload)) == []
