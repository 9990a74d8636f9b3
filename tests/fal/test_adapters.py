"""The adapter table: our FireRed-shaped payload → each adapted fal edit endpoint's input
(renames, one image, dropped fields, size conversion, range errors), pass-through for any other
endpoint, and results normalized to ``images: [...]``."""

from __future__ import annotations

from typing import Any

import pytest

from batch.errors import ExitCode, InvalidInputError
from batch.fal.adapters import (
    ADAPTED,
    PRESET_PIXELS,
    AdapterError,
    adapt,
    adaptation,
    dropped_fields,
    nearest_ratio,
    normalize_result,
)
from batch.schema import DEFAULT_ENDPOINT
from batch.schema import PRESET_PIXELS as SCHEMA_PRESET_PIXELS

QWEN = "fal-ai/qwen-image-edit"
KONTEXT_DEV = "fal-ai/flux-kontext/dev"
KONTEXT_PRO = "fal-ai/flux-pro/kontext"
NANO = "fal-ai/nano-banana/edit"
SEEDREAM = "fal-ai/bytedance/seedream/v4/edit"
A = "https://x.test/a.png"
B = "https://x.test/b.png"

# Every canonical field set (one image), within every adapted endpoint's ranges.
FULL: dict[str, Any] = {
    "prompt": "make it blue",
    "image_urls": [A],
    "image_size": "landscape_16_9",
    "num_inference_steps": 30,
    "seed": 7,
    "guidance_scale": 4.0,
    "sync_mode": False,
    "num_images": 2,
    "enable_safety_checker": True,
    "output_format": "png",
    "negative_prompt": "blurry",
    "acceleration": "regular",
}


def test_the_table_covers_six_endpoints() -> None:
    assert {DEFAULT_ENDPOINT, QWEN, KONTEXT_DEV, KONTEXT_PRO, NANO, SEEDREAM} == ADAPTED


def test_preset_pixels_match_the_schema() -> None:
    """The fal layer cannot import batch.schema; its copy of fal's preset table must agree."""
    assert {str(k): v for k, v in SCHEMA_PRESET_PIXELS.items()} == PRESET_PIXELS


@pytest.mark.parametrize("endpoint", ["fal-ai/flux/dev", "acme/custom-edit", "fal-ai/other/edit"])
def test_other_endpoints_pass_through_unchanged(endpoint: str) -> None:
    payload = {**FULL, "image_urls": [A, B], "strength": 0.3, "num_inference_steps": 3}
    out = adapt(endpoint, payload)
    assert out == payload and out is not payload
    assert dropped_fields(endpoint, payload) == ()
    assert adaptation(endpoint, payload).converted == ()


def test_firered_is_the_identity() -> None:
    assert adapt(DEFAULT_ENDPOINT, FULL) == FULL
    assert adapt(DEFAULT_ENDPOINT, {**FULL, "image_urls": [A, B]})["image_urls"] == [A, B]
    assert dropped_fields(DEFAULT_ENDPOINT, FULL) == ()


@pytest.mark.parametrize("endpoint", [QWEN, KONTEXT_DEV, KONTEXT_PRO])
def test_single_image_models_get_image_url(endpoint: str) -> None:
    out = adapt(endpoint, FULL)
    assert out["image_url"] == A and "image_urls" not in out


@pytest.mark.parametrize("endpoint", [QWEN, KONTEXT_DEV, KONTEXT_PRO])
def test_more_images_than_a_single_image_model_takes_is_an_error(endpoint: str) -> None:
    with pytest.raises(AdapterError, match="2 images given; this model takes one") as caught:
        adapt(endpoint, {**FULL, "image_urls": [A, B]})
    assert caught.value.field == "image_urls" and caught.value.endpoint == endpoint


def test_list_models_keep_the_list() -> None:
    assert adapt(NANO, {**FULL, "image_urls": [A, B]})["image_urls"] == [A, B]
    ten = [f"https://x.test/{i}.png" for i in range(10)]
    assert adapt(SEEDREAM, {**FULL, "image_urls": ten})["image_urls"] == ten


def test_seedream_refuses_more_than_ten_images_instead_of_fal_dropping_them() -> None:
    eleven = [f"https://x.test/{i}.png" for i in range(11)]
    with pytest.raises(AdapterError, match="11 images given; this model takes at most 10"):
        adapt(SEEDREAM, {**FULL, "image_urls": eleven})


@pytest.mark.parametrize(
    ("endpoint", "dropped"),
    [
        (DEFAULT_ENDPOINT, ()),
        (QWEN, ()),
        (KONTEXT_DEV, ("negative_prompt",)),
        (KONTEXT_PRO, ("num_inference_steps", "enable_safety_checker", "negative_prompt",
                       "acceleration")),
        (NANO, ("num_inference_steps", "seed", "guidance_scale", "enable_safety_checker",
                "negative_prompt", "acceleration")),
        (SEEDREAM, ("num_inference_steps", "guidance_scale", "output_format", "negative_prompt",
                    "acceleration")),
    ],
)  # fmt: skip
def test_fields_a_model_lacks_are_dropped_and_named(
    endpoint: str, dropped: tuple[str, ...]
) -> None:
    result = adaptation(endpoint, FULL)
    assert result.dropped == dropped == dropped_fields(endpoint, FULL)
    assert not set(dropped) & set(result.payload)
    kept = set(FULL) - set(dropped) - {"image_urls", "image_size"}
    assert {k: result.payload[k] for k in kept} == {k: FULL[k] for k in kept}


def test_dropped_fields_never_raises_on_a_payload_adapt_refuses() -> None:
    bad = {**FULL, "image_urls": [A, B], "num_inference_steps": 3}
    assert dropped_fields(KONTEXT_PRO, bad) == dropped_fields(KONTEXT_PRO, FULL)
    with pytest.raises(AdapterError):
        adapt(KONTEXT_PRO, bad)


def test_an_unknown_field_is_dropped_for_an_adapted_endpoint() -> None:
    assert dropped_fields(QWEN, {**FULL, "strength": 0.5}) == ("strength",)
    assert "strength" not in adapt(QWEN, {**FULL, "strength": 0.5})


@pytest.mark.parametrize(
    ("size", "ratio"),
    [
        ("square_hd", "1:1"),
        ("square", "1:1"),
        ("landscape_16_9", "16:9"),
        ("portrait_16_9", "9:16"),
        ("landscape_4_3", "4:3"),
        ("portrait_4_3", "3:4"),
        ({"width": 1000, "height": 700}, "3:2"),  # 1.43: nearer 3:2 (1.5) than 4:3 (1.33)
        ({"width": 2520, "height": 1080}, "21:9"),
        ({"width": 500, "height": 2000}, "9:21"),  # 1:4 is past the narrowest: the nearest
    ],
)
def test_image_size_becomes_the_nearest_kontext_ratio(size: Any, ratio: str) -> None:
    pro = adaptation(KONTEXT_PRO, {**FULL, "image_size": size})
    assert pro.payload["aspect_ratio"] == ratio and "image_size" not in pro.payload
    assert pro.converted and f"aspect_ratio {ratio!r}" in pro.converted[0]
    dev = adapt(KONTEXT_DEV, {**FULL, "image_size": size})
    assert dev["resolution_mode"] == ratio and "image_size" not in dev


def test_nano_banana_ratios_include_5_4_and_4_5() -> None:
    assert adapt(NANO, {**FULL, "image_size": {"width": 1250, "height": 1000}})["aspect_ratio"] == (
        "5:4"
    )
    assert adapt(NANO, {**FULL, "image_size": "portrait_4_3"})["aspect_ratio"] == "3:4"


@pytest.mark.parametrize("endpoint", [QWEN, SEEDREAM])
def test_image_size_models_take_presets_and_objects_as_given(endpoint: str) -> None:
    assert adapt(endpoint, FULL)["image_size"] == "landscape_16_9"
    size = {"width": 1536, "height": 768}
    assert adapt(endpoint, {**FULL, "image_size": size})["image_size"] == size
    assert adaptation(endpoint, FULL).converted == ()


@pytest.mark.parametrize("endpoint", sorted(ADAPTED))
def test_image_size_null_is_sent_only_where_taken(endpoint: str) -> None:
    """null means "the input's own size": sent as null where the field takes null, else left
    out (every other model's default when the size is left out)."""
    out = adapt(endpoint, {**FULL, "image_size": None})
    if endpoint in (DEFAULT_ENDPOINT, QWEN):
        assert out["image_size"] is None
    else:
        assert not {"image_size", "aspect_ratio", "resolution_mode"} & set(out)


def test_seedream_says_its_default_size_differs() -> None:
    converted = adaptation(SEEDREAM, {**FULL, "image_size": None}).converted
    assert converted == (
        "image_size: null (the input's size) → omitted: the model's default is 2048x2048",
    )


@pytest.mark.parametrize(
    ("endpoint", "change", "field", "shown"),
    [
        (KONTEXT_DEV, {"num_inference_steps": 5}, "num_inference_steps", "5 is outside 10..50"),
        (DEFAULT_ENDPOINT, {"guidance_scale": 11.5}, "guidance_scale", "11.5 is outside 1..10"),
        (QWEN, {"num_inference_steps": 51}, "num_inference_steps", "51 is outside 2..50"),
        (KONTEXT_PRO, {"guidance_scale": 0.5}, "guidance_scale", "0.5 is outside 1..20"),
        (SEEDREAM, {"num_images": 7}, "num_images", "7 is outside 1..6"),
        (NANO, {"num_images": 0}, "num_images", "0 is outside 1..4"),
        (KONTEXT_PRO, {"output_format": "webp"}, "output_format", "'webp' is not one of jpeg, png"),
        (QWEN, {"acceleration": "max"}, "acceleration", "is not one of high, none, regular"),
        (QWEN, {"image_size": "huge"}, "image_size", "unknown preset 'huge'"),
        (KONTEXT_PRO, {"image_size": {"width": 0, "height": 5}}, "image_size", "preset or"),
        (NANO, {"image_urls": []}, "image_urls", "non-empty list"),
        (NANO, {"image_urls": A}, "image_urls", "non-empty list"),
    ],
)
def test_out_of_range_is_an_error_naming_field_and_range_never_clamped(
    endpoint: str, change: dict[str, Any], field: str, shown: str
) -> None:
    with pytest.raises(AdapterError, match=shown) as caught:
        adapt(endpoint, {**FULL, **change})
    assert caught.value.field == field
    assert str(caught.value).startswith(f"{endpoint}: {field}: ")


def test_a_missing_image_list_is_an_error() -> None:
    payload = {k: v for k, v in FULL.items() if k != "image_urls"}
    with pytest.raises(AdapterError, match="image_urls: required"):
        adapt(NANO, payload)


def test_adapter_error_is_invalid_input() -> None:
    error = AdapterError(NANO, "seed", "x")
    assert isinstance(error, InvalidInputError) and isinstance(error, ValueError)
    assert error.exit_code is ExitCode.INVALID


def test_endpoint_ids_are_matched_without_surrounding_slashes() -> None:
    assert "image_url" in adapt(f"/{KONTEXT_PRO}/", FULL)


def test_adapt_does_not_change_its_input() -> None:
    payload = {**FULL, "image_urls": [A]}
    adapt(KONTEXT_PRO, payload)
    assert payload == {**FULL, "image_urls": [A]}


def test_nearest_ratio_takes_the_first_on_a_tie() -> None:
    assert nearest_ratio(2, 1, ("3:1", "1:1")) == "3:1"  # |ln2-ln3| < |ln2-ln1|
    assert nearest_ratio(1, 1, ("2:1", "1:2")) == "2:1"  # equally far: the first


def test_results_always_carry_an_images_list() -> None:
    listed = {"images": [{"url": A}], "seed": 1}
    assert normalize_result(NANO, listed) == listed
    single = {"image": {"url": A, "width": 8}, "seed": 3}
    assert normalize_result("acme/one-image", single) == {
        "images": [{"url": A, "width": 8}],
        "seed": 3,
    }
    assert normalize_result("acme/nothing", {"text": "x"}) == {"text": "x"}
