"""The inputs and outputs of the fal image-edit endpoints the simulator serves besides FireRed.

Each endpoint's input is a pydantic model with ``extra="forbid"``, written from that model's fal
page (named on each class; the same pages `batch.fal.adapters` is written from, but not from
that module: client and simulator each implement fal's behaviour from the docs).

- `validate_input(endpoint, body)`: the model's 422 items for a submitted body, in fal's shape
  (``{"loc": ["body", ...], "msg", "type", "url"}``, as `jobs.detail_item` makes them); ``[]``
  when the body is valid. Unknown fields are refused, as fal does.
- `render_spec(endpoint, body)`: what the simulator renders for a valid body (prompt, input
  URLs, count, pixel size, format, seed), whatever the endpoint calls them.
- `result_shape(endpoint, images, seed, ...)`: the result body in that endpoint's output shape
  (``has_nsfw_concepts`` only where the page lists it; Nano Banana's ``description``; ...).

Only `batch.schema` and `batch.errors` of the package are imported (the simulator's rule).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from batch.schema import (
    DEFAULT_ENDPOINT,
    PRESET_PIXELS,
    EditInput,
    ImageSize,
    ImageSizePreset,
)

ERRORS_DOC = "https://docs.fal.ai/errors/#"
QWEN = "fal-ai/qwen-image-edit"
KONTEXT_DEV = "fal-ai/flux-kontext/dev"
KONTEXT_PRO = "fal-ai/flux-pro/kontext"
NANO_BANANA = "fal-ai/nano-banana/edit"
SEEDREAM = "fal-ai/bytedance/seedream/v4/edit"
SEEDREAM_MAX_INPUTS = 10  # "If over 10 images are sent, only the last 10 will be used."
RATIO_LONG_SIDE = 1024  # pixels of the long side of an image rendered for an aspect ratio

Acceleration = Literal["none", "regular", "high"]
KontextRatio = Literal["21:9", "16:9", "4:3", "3:2", "1:1", "2:3", "3:4", "9:16", "9:21"]


class _Input(BaseModel):
    model_config = ConfigDict(extra="forbid")


class QwenImageEditInput(_Input):
    """https://fal.ai/models/fal-ai/qwen-image-edit/llms.txt (and its /api page)."""

    prompt: str
    image_url: str
    image_size: ImageSizePreset | ImageSize | None = None
    num_inference_steps: Annotated[int, Field(ge=2, le=50)] = 30
    seed: int | None = None
    guidance_scale: Annotated[float, Field(ge=0, le=20)] = 4.0
    sync_mode: bool = False
    num_images: Annotated[int, Field(ge=1, le=4)] = 1
    enable_safety_checker: bool = True
    output_format: Literal["jpeg", "png"] = "png"
    negative_prompt: str = " "
    acceleration: Acceleration = "regular"


class KontextDevInput(_Input):
    """https://fal.ai/models/fal-ai/flux-kontext/dev/api. The page lists 13 `resolution_mode`
    values (default match_input); those seen are auto, match_input and the Kontext ratios.
    Ranges: 10..50 steps and 0..20 guidance are its sibling fal-ai/flux-kontext-lora's."""

    prompt: str
    image_url: str
    num_inference_steps: Annotated[int, Field(ge=10, le=50)] = 28
    seed: int | None = None
    guidance_scale: Annotated[float, Field(ge=0, le=20)] = 2.5
    sync_mode: bool = False
    num_images: Annotated[int, Field(ge=1)] = 1
    enable_safety_checker: bool = True
    output_format: Literal["jpeg", "png"] = "jpeg"
    acceleration: Acceleration = "none"
    resolution_mode: Literal["auto", "match_input"] | KontextRatio = "match_input"
    enhance_prompt: bool = False


class KontextProInput(_Input):
    """https://fal.ai/models/fal-ai/flux-pro/kontext/llms.txt; aspect ratios from fal's Kontext
    [max] and multi pages (fal.ai/docs/model-api-reference/image-generation-api/...)."""

    prompt: str
    image_url: str
    seed: int | None = None
    guidance_scale: Annotated[float, Field(ge=1, le=20)] = 3.5
    sync_mode: bool = False
    num_images: Annotated[int, Field(ge=1, le=4)] = 1
    output_format: Literal["jpeg", "png"] = "jpeg"
    safety_tolerance: Literal["1", "2", "3", "4", "5", "6"] = "2"
    enhance_prompt: bool = False
    aspect_ratio: KontextRatio | None = None


class NanoBananaEditInput(_Input):
    """https://fal.ai/docs/model-api-reference/image-generation-api/nano-banana (Edit tab):
    no seed; num_images 1..4 as on the same page's text-to-image tab."""

    prompt: str
    image_urls: Annotated[list[str], Field(min_length=1)]
    num_images: Annotated[int, Field(ge=1, le=4)] = 1
    aspect_ratio: Literal[
        "auto", "21:9", "16:9", "3:2", "4:3", "5:4", "1:1", "4:5", "3:4", "2:3", "9:16"
    ] = "auto"
    output_format: Literal["jpeg", "png", "webp"] = "png"
    sync_mode: bool = False
    limit_generations: bool = False


class SeedreamV4EditInput(_Input):
    """https://fal.ai/docs/model-api-reference/image-generation-api/bytedance-seedream-v4 and
    https://fal.ai/models/fal-ai/bytedance/seedream/v4/edit/llms.txt. More than 10 inputs is
    not an error: the model uses the last 10."""

    prompt: str
    image_urls: Annotated[list[str], Field(min_length=1)]
    image_size: ImageSizePreset | Literal["auto", "auto_2K", "auto_4K"] | ImageSize | None = (
        None  # the model's default: 2048x2048
    )
    num_images: Annotated[int, Field(ge=1, le=6)] = 1
    max_images: Annotated[int, Field(ge=1, le=6)] = 1
    seed: int | None = None
    sync_mode: bool = False
    enable_safety_checker: bool = True
    enhance_prompt_mode: Literal["standard", "fast"] = "standard"


INPUTS: dict[str, type[BaseModel]] = {
    DEFAULT_ENDPOINT: EditInput,
    QWEN: QwenImageEditInput,
    KONTEXT_DEV: KontextDevInput,
    KONTEXT_PRO: KontextProInput,
    NANO_BANANA: NanoBananaEditInput,
    SEEDREAM: SeedreamV4EditInput,
}
MODELED: frozenset[str] = frozenset(INPUTS)
# Output fields beyond `images` (each page's output schema).
_NSFW_AND_PROMPT = frozenset({DEFAULT_ENDPOINT, QWEN, KONTEXT_DEV, KONTEXT_PRO})
_TIMINGS = frozenset({DEFAULT_ENDPOINT, QWEN, KONTEXT_DEV})


@dataclass(frozen=True)
class RenderSpec:
    """What to render for a valid body. ``size`` None: the first input's size."""

    prompt: str
    image_urls: tuple[str, ...]
    num_images: int
    size: tuple[int, int] | None
    output_format: str
    seed: int | None


def _model(endpoint: str) -> type[BaseModel]:
    try:
        return INPUTS[endpoint]
    except KeyError:
        raise KeyError(f"{endpoint!r} is not a modeled edit endpoint") from None


def validate_input(endpoint: str, body: Any) -> list[dict[str, Any]]:
    """fal's 422 ``detail`` items for ``body`` sent to ``endpoint``; ``[]`` when it is valid.
    KeyError for an endpoint not in `MODELED`."""
    try:
        _model(endpoint).model_validate(body)
    except ValidationError as exc:
        errors = exc.errors(include_url=False, include_context=False, include_input=False)
        return [_item(list(e["loc"]), e["msg"], e["type"]) for e in errors]
    return []


def _item(loc: list[Any], msg: str, kind: str) -> dict[str, Any]:
    return {"loc": ["body", *loc], "msg": msg, "type": kind, "url": ERRORS_DOC + kind}


def render_spec(endpoint: str, body: Mapping[str, Any]) -> RenderSpec:
    """What the simulator renders for a body `validate_input` accepted (it raises
    `pydantic.ValidationError` for any other)."""
    model = _model(endpoint).model_validate(body)
    data = model.model_dump(mode="json")
    urls = data.get("image_urls") or [data["image_url"]]
    if endpoint == SEEDREAM:
        urls = urls[-SEEDREAM_MAX_INPUTS:]
    return RenderSpec(
        prompt=data["prompt"],
        image_urls=tuple(urls),
        num_images=data["num_images"],
        size=_pixels(endpoint, data),
        output_format=data.get("output_format") or "png",
        seed=data.get("seed"),
    )


def _pixels(endpoint: str, data: Mapping[str, Any]) -> tuple[int, int] | None:
    if endpoint == SEEDREAM and data.get("image_size") is None:
        return (2048, 2048)
    size = data.get("image_size")
    if isinstance(size, dict):
        return size["width"], size["height"]
    if isinstance(size, str):
        preset = PRESET_PIXELS.get(ImageSizePreset(size)) if size in _PRESET_NAMES else None
        return preset  # auto, auto_2K, auto_4K: the model decides; here the input's size
    ratio = data.get("aspect_ratio") or data.get("resolution_mode")
    if isinstance(ratio, str) and ":" in ratio:
        return ratio_pixels(ratio)
    return None


_PRESET_NAMES = frozenset(p.value for p in ImageSizePreset)


def ratio_pixels(ratio: str, long_side: int = RATIO_LONG_SIDE) -> tuple[int, int]:
    """A (width, height) of ``"w:h"`` whose long side is ``long_side``."""
    w, _, h = ratio.partition(":")
    width, height = float(w), float(h)
    scale = long_side / max(width, height)
    return max(1, round(width * scale)), max(1, round(height * scale))


def result_shape(
    endpoint: str,
    images: Sequence[Mapping[str, Any]],
    seed: int | None,
    *,
    prompt: str = "",
    nsfw: bool = False,
    inference_s: float = 0.0,
) -> dict[str, Any]:
    """The result body ``endpoint`` answers with these output images (each ``{url, width,
    height, content_type, ...}``): FireRed, Qwen and Kontext [dev] give images, timings, seed,
    has_nsfw_concepts and prompt; Kontext [pro] the same without timings; Nano Banana images
    and a description; Seedream images and seed."""
    _model(endpoint)
    body: dict[str, Any] = {"images": [dict(image) for image in images]}
    if endpoint in _TIMINGS:
        body["timings"] = {"inference": round(inference_s, 6)}
    if endpoint == NANO_BANANA:
        body["description"] = ""
    else:
        body["seed"] = seed
    if endpoint in _NSFW_AND_PROMPT:
        body["has_nsfw_concepts"] = [nsfw] * len(images)
        body["prompt"] = prompt
    return body
