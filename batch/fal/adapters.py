"""Our canonical (FireRed-shaped) payload → another fal image-edit endpoint's input; its result
back to ``images: [...]``.

A manifest row is validated as a `fal-ai/firered-image-edit` request (``image_urls``, ``prompt``,
``seed``, ``num_images``, ``image_size``, ``num_inference_steps``, ``guidance_scale``,
``output_format``, ``negative_prompt``, ``enable_safety_checker``, ``sync_mode``,
``acceleration``). To run the same items through other fal edit endpoints, `adapt` rewrites that
payload for each endpoint in `ADAPTERS`, one row per endpoint, taken from that model's fal page
(its ``source``):

- renames: ``image_urls`` → ``image_url`` when the model takes one image (the first; more than
  one is an `AdapterError`, never a silent cut);
- drops the fields the model does not take (`dropped_fields` names them, for one warning);
- converts ``image_size`` to ``aspect_ratio`` / ``resolution_mode`` when that is all the model
  takes: the nearest of its ratios to the size's width:height (`nearest_ratio`);
- clamps nothing: a value outside the model's documented range or choices is an `AdapterError`
  naming the field and the range, before anything is sent (fal checks ranges only when the
  model runs, when a 422 may already be billed).

Any other endpoint gets the payload unchanged. `normalize_result` gives the downloader
``images: [...]`` whatever the endpoint answered (all six adapted ones answer ``images``).

Pure dict → dict; of the package this imports only `batch.errors` (the layer rule of `fal`).
The simulator's side (`batch.sim.edit_models`) is written from the same pages, not from this.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from batch.errors import InvalidInputError

SizeField = Literal["image_size", "aspect_ratio", "resolution_mode"]

# fal's pixel sizes for the named `image_size` presets (the same table on all its image pages).
PRESET_PIXELS: dict[str, tuple[int, int]] = {
    "square_hd": (1024, 1024),
    "square": (512, 512),
    "portrait_4_3": (768, 1024),
    "portrait_16_9": (576, 1024),
    "landscape_4_3": (1024, 768),
    "landscape_16_9": (1024, 576),
}
PRESETS = frozenset(PRESET_PIXELS)
OUTPUT_JPEG_PNG = frozenset({"jpeg", "png"})
ACCELERATIONS = frozenset({"none", "regular", "high"})
# FLUX.1 Kontext's aspect ratios (fal's Kontext [pro], [max] and multi pages).
KONTEXT_RATIOS = ("21:9", "16:9", "4:3", "3:2", "1:1", "2:3", "3:4", "9:16", "9:21")
# The canonical fields besides image_urls and image_size (which every adapter maps itself).
ALL_FIELDS = frozenset(
    [
        "prompt",
        "seed",
        "num_images",
        "num_inference_steps",
        "guidance_scale",
        "sync_mode",
        "enable_safety_checker",
        "output_format",
        "negative_prompt",
        "acceleration",
    ]
)


class AdapterError(InvalidInputError):
    """A payload that cannot go to an endpoint as it is (more images than it takes, a value
    outside its documented range): an invalid input, exit 2, nothing sent. ``field`` is the
    canonical field at fault."""

    def __init__(self, endpoint: str, field: str, message: str) -> None:
        super().__init__(f"{endpoint}: {field}: {message}")
        self.endpoint = endpoint
        self.field = field


@dataclass(frozen=True)
class Adapter:
    """How one endpoint takes our canonical payload. ``source``: the fal page it is read from.

    ``image_field`` receives ``image_urls``: a single URL when ``single`` (then only one image
    may be given), else the list, of at most ``max_images`` (None: no documented limit).
    ``fields``: canonical fields sent unchanged; ``ranges`` / ``choices`` their documented
    bounds. ``size``: where ``image_size`` goes (None: dropped); ``size_presets`` the presets an
    ``image_size`` field takes, ``ratios`` those an aspect-ratio field takes (nearest wins).
    A canonical ``image_size: null`` (the input's own size) is sent as null where the size
    field takes null (``size_null``), else left out; ``size_note`` says what the model does
    then, when that differs.
    """

    endpoint: str
    source: str
    image_field: str = "image_urls"
    single: bool = False
    max_images: int | None = None
    fields: frozenset[str] = frozenset()
    ranges: Mapping[str, tuple[float, float]] = field(default_factory=dict)
    choices: Mapping[str, frozenset[str]] = field(default_factory=dict)
    size: SizeField | None = None
    size_presets: frozenset[str] = frozenset()
    ratios: tuple[str, ...] = ()
    size_null: bool = False
    size_note: str | None = None

    def accepts(self, name: str) -> bool:
        """Whether the canonical field ``name`` reaches this endpoint (renamed or not)."""
        return (
            name == "image_urls"
            or name in self.fields
            or (name == "image_size" and bool(self.size))
        )


@dataclass(frozen=True)
class Adaptation:
    """What `adaptation` made: the payload to send, the canonical fields it dropped, and one
    line per value it converted (``image_size`` → ``aspect_ratio`` ...), for the CLI to show."""

    payload: dict[str, Any]
    dropped: tuple[str, ...] = ()
    converted: tuple[str, ...] = ()


_ADAPTERS = (
    # Identity: the canonical payload is this model's own input (batch/schema.py, EditInput).
    Adapter(
        endpoint="fal-ai/firered-image-edit",
        source="https://fal.ai/models/fal-ai/firered-image-edit/llms.txt",
        fields=ALL_FIELDS,
        ranges={"num_inference_steps": (2, 50), "guidance_scale": (1, 10), "num_images": (1, 4)},
        choices={"output_format": OUTPUT_JPEG_PNG, "acceleration": ACCELERATIONS},
        size="image_size",
        size_presets=PRESETS,
        size_null=True,
    ),
    # Input: prompt*, image_url* (one URL), image_size (ImageSize | preset | null), steps
    # 2..50 (30), seed, guidance_scale 0..20 (4), sync_mode, num_images 1..4, enable_safety_checker,
    # output_format jpeg|png (png), negative_prompt (" "), acceleration none|regular|high.
    # Output: images, timings, seed, has_nsfw_concepts, prompt.
    Adapter(
        endpoint="fal-ai/qwen-image-edit",
        source="https://fal.ai/models/fal-ai/qwen-image-edit/llms.txt",
        image_field="image_url",
        single=True,
        max_images=1,
        fields=ALL_FIELDS,
        ranges={"num_inference_steps": (2, 50), "guidance_scale": (0, 20), "num_images": (1, 4)},
        choices={"output_format": OUTPUT_JPEG_PNG, "acceleration": ACCELERATIONS},
        size="image_size",
        size_presets=PRESETS,
        size_null=True,
    ),
    # Input: prompt*, image_url* (one URL), num_images, acceleration none|regular|high (none),
    # resolution_mode (13 values, default match_input; auto, match_input and ratios), output_format
    # jpeg|png (jpeg), sync_mode, enable_safety_checker, seed, guidance_scale (2.5),
    # num_inference_steps (28), enhance_prompt. No image_size, no negative_prompt. The page gives
    # no ranges here; 10..50 steps is the schema of its sibling fal-ai/flux-kontext-lora
    # (UNCONFIRMED for dev). Output: images, seed, has_nsfw_concepts, prompt, timings.
    Adapter(
        endpoint="fal-ai/flux-kontext/dev",
        source="https://fal.ai/models/fal-ai/flux-kontext/dev/api",
        image_field="image_url",
        single=True,
        max_images=1,
        fields=ALL_FIELDS - {"negative_prompt"},
        ranges={"num_inference_steps": (10, 50), "guidance_scale": (0, 20)},
        choices={"output_format": OUTPUT_JPEG_PNG, "acceleration": ACCELERATIONS},
        size="resolution_mode",
        ratios=KONTEXT_RATIOS,
    ),
    # Input: prompt*, image_url* (one URL), seed, guidance_scale 1..20 (3.5), sync_mode,
    # num_images 1..4, output_format jpeg|png (jpeg), safety_tolerance "1".."6" ("2"),
    # enhance_prompt, aspect_ratio (KONTEXT_RATIOS). No steps, no negative prompt, no
    # enable_safety_checker (safety_tolerance is a level, not its equivalent), no acceleration.
    # Output: images, seed, has_nsfw_concepts, prompt.
    Adapter(
        endpoint="fal-ai/flux-pro/kontext",
        source="https://fal.ai/models/fal-ai/flux-pro/kontext/llms.txt",
        image_field="image_url",
        single=True,
        max_images=1,
        fields=frozenset(
            {"prompt", "seed", "num_images", "guidance_scale", "sync_mode", "output_format"}
        ),
        ranges={"guidance_scale": (1, 20), "num_images": (1, 4)},
        choices={"output_format": OUTPUT_JPEG_PNG},
        size="aspect_ratio",
        ratios=KONTEXT_RATIOS,
    ),
    # Input (Edit tab): prompt*, image_urls* (a list; no documented maximum), num_images
    # (1..4 on the same page's text-to-image tab), aspect_ratio auto|21:9|16:9|3:2|4:3|5:4|1:1|
    # 4:5|3:4|2:3|9:16 (auto), output_format jpeg|png|webp (png), sync_mode, limit_generations.
    # No seed, steps, guidance, negative prompt, safety checker or acceleration.
    # Output: images, description.
    Adapter(
        endpoint="fal-ai/nano-banana/edit",
        source="https://fal.ai/docs/model-api-reference/image-generation-api/nano-banana",
        fields=frozenset({"prompt", "num_images", "sync_mode", "output_format"}),
        ranges={"num_images": (1, 4)},
        choices={"output_format": frozenset({"jpeg", "png", "webp"})},
        size="aspect_ratio",
        ratios=("21:9", "16:9", "3:2", "4:3", "5:4", "1:1", "4:5", "3:4", "2:3", "9:16"),
    ),
    # Input: prompt*, image_urls* (up to 10; fal silently keeps the last 10 of more), image_size
    # (ImageSize | the six presets | auto, auto_2K, auto_4K; default 2048x2048), num_images 1..6,
    # max_images 1..6, seed, sync_mode, enable_safety_checker, enhance_prompt_mode. No steps,
    # guidance, output format, negative prompt or acceleration. Output: images, seed.
    # (SeedEdit v3, fal-ai/bytedance/seededit/v3/edit-image, is not here: its page was not found.)
    Adapter(
        endpoint="fal-ai/bytedance/seedream/v4/edit",
        source="https://fal.ai/docs/model-api-reference/image-generation-api/bytedance-seedream-v4",
        max_images=10,
        fields=frozenset({"prompt", "seed", "num_images", "sync_mode", "enable_safety_checker"}),
        ranges={"num_images": (1, 6)},
        size="image_size",
        size_presets=PRESETS,
        size_note="image_size: null (the input's size) → omitted: the model's default is 2048x2048",
    ),
)

ADAPTERS: dict[str, Adapter] = {adapter.endpoint: adapter for adapter in _ADAPTERS}
ADAPTED: frozenset[str] = frozenset(ADAPTERS)


# The endpoints whose payload `adapt` changes: every adapted one but FireRed's own fields.
RENAMED = ADAPTED - {"fal-ai/firered-image-edit"}


def adapter_for(endpoint_id: str) -> Adapter | None:
    """The row for an endpoint id (slashes around it ignored), or None: pass-through."""
    return ADAPTERS.get(endpoint_id.strip().strip("/"))


def adapt(endpoint_id: str, payload: Mapping[str, Any]) -> dict[str, Any]:
    """The payload to send to ``endpoint_id``: adapted for an endpoint in `ADAPTED`, a copy of
    ``payload`` for any other. Raises `AdapterError` for one the endpoint cannot take."""
    return adaptation(endpoint_id, payload).payload


def dropped_fields(endpoint_id: str, payload: Mapping[str, Any]) -> tuple[str, ...]:
    """The fields of ``payload`` that ``endpoint_id`` does not take (and `adapt` drops), in the
    payload's order; none for an endpoint that is not adapted. Never raises."""
    adapter = adapter_for(endpoint_id)
    if adapter is None:
        return ()
    return tuple(name for name in payload if not adapter.accepts(name))


def adaptation(endpoint_id: str, payload: Mapping[str, Any]) -> Adaptation:
    """`adapt`, with what was dropped and converted."""
    adapter = adapter_for(endpoint_id)
    if adapter is None:
        return Adaptation(dict(payload))
    if "image_urls" not in payload:
        raise AdapterError(adapter.endpoint, "image_urls", "required")
    out: dict[str, Any] = {}
    converted: list[str] = []
    for name, value in payload.items():
        if name == "image_urls":
            out[adapter.image_field] = _images(adapter, value)
        elif name == "image_size" and adapter.size is not None:
            sent = _size(adapter, value)
            if sent is not None or adapter.size_null:
                out[adapter.size] = sent
            if adapter.size != "image_size" and sent is not None:
                converted.append(f"image_size {_spell(value)} → {adapter.size} {sent!r}")
            elif value is None and adapter.size_note:
                converted.append(adapter.size_note)
        elif name in adapter.fields:
            _check(adapter, name, value)
            out[name] = value
    return Adaptation(out, dropped_fields(endpoint_id, payload), tuple(converted))


def normalize_result(endpoint_id: str, result: Mapping[str, Any]) -> dict[str, Any]:
    """The result with its images as ``images: [...]``: a single ``image`` object becomes a
    one-item list; a result that has ``images`` is returned as it is (a copy). All six adapted
    endpoints answer ``images`` (their pages' output schemas), so for them this changes nothing;
    the rule is for endpoints that answer one ``image``. ``endpoint_id`` is for endpoints whose
    shape needs more than this rule; none does yet."""
    out = dict(result)
    if "images" not in out and isinstance(out.get("image"), Mapping):
        out["images"] = [dict(out.pop("image"))]
    return out


def nearest_ratio(width: float, height: float, ratios: tuple[str, ...]) -> str:
    """The ``"w:h"`` in ``ratios`` nearest to width:height (by log ratio; the first on a tie)."""
    target = math.log(width / height)

    def distance(ratio: str) -> float:
        w, _, h = ratio.partition(":")
        return abs(math.log(float(w) / float(h)) - target)

    return min(ratios, key=distance)


def _images(adapter: Adapter, value: Any) -> str | list[str]:
    if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
        raise AdapterError(adapter.endpoint, "image_urls", "must be a non-empty list of URLs")
    if adapter.single:
        if len(value) > 1:
            raise AdapterError(
                adapter.endpoint,
                "image_urls",
                f"{len(value)} images given; this model takes one ({adapter.image_field})",
            )
        return str(value[0])
    if adapter.max_images is not None and len(value) > adapter.max_images:
        raise AdapterError(
            adapter.endpoint,
            "image_urls",
            f"{len(value)} images given; this model takes at most {adapter.max_images}",
        )
    return list(value)


def _size(adapter: Adapter, value: Any) -> Any:
    """What the model's size field gets for a canonical ``image_size`` (None: nothing)."""
    if value is None:
        return None
    if isinstance(value, str):
        if value not in PRESET_PIXELS:
            raise AdapterError(adapter.endpoint, "image_size", f"unknown preset {value!r}")
        if adapter.size == "image_size":
            if value not in adapter.size_presets:
                raise AdapterError(adapter.endpoint, "image_size", f"{value!r} is not taken")
            return value
        width, height = PRESET_PIXELS[value]
    elif isinstance(value, Mapping) and _positive(value.get("width"), value.get("height")):
        if adapter.size == "image_size":
            return {"width": value["width"], "height": value["height"]}
        width, height = value["width"], value["height"]
    else:
        raise AdapterError(adapter.endpoint, "image_size", "must be a preset or {width, height}")
    return nearest_ratio(width, height, adapter.ratios)


def _positive(*values: Any) -> bool:
    return all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in values)


def _check(adapter: Adapter, name: str, value: Any) -> None:
    """A value outside the documented range or choices is an error, never clamped."""
    bounds = adapter.ranges.get(name)
    if bounds is not None and isinstance(value, int | float) and not isinstance(value, bool):
        low, high = bounds
        if not low <= value <= high:
            raise AdapterError(
                adapter.endpoint,
                name,
                f"{value!r} is outside {_num(low)}..{_num(high)} for this model ({adapter.source})",
            )
    allowed = adapter.choices.get(name)
    if allowed is not None and value not in allowed:
        choices = ", ".join(sorted(allowed))
        raise AdapterError(adapter.endpoint, name, f"{value!r} is not one of {choices}")


def _num(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


def _spell(size: Any) -> str:
    if isinstance(size, Mapping):
        return f"{size.get('width')}x{size.get('height')}"
    return repr(size)
