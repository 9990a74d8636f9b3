"""The FireRed Image Edit endpoint's input and output, as fal documents them.

`fal-ai/firered-image-edit` (fal.ai/models/fal-ai/firered-image-edit/api and its llms.txt, which
gives the ranges: num_inference_steps 2 to 50, guidance_scale 1 to 10; `seed` and the prompts'
lengths are bounded here, see `SEED_MAX` and `PROMPT_MAX_CHARS`). The model checks them
only when it runs, when a 422 may already be billed, so they are checked here before anything
is sent. Nothing else lives
here: the simulator validates submits with `EditInput`, the client and the pipeline read results
with `EditOutput`. Unknown input fields are rejected (fal answers 422 for them too).
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Literal

from annotated_types import Ge, Le
from pydantic import BaseModel, ConfigDict, Field

DEFAULT_ENDPOINT = "fal-ai/firered-image-edit"

# fal documents `seed` as an integer with no range. The ledger stores the seed fal returns in a
# SQLite INTEGER (signed 64-bit), so a seed past 2**63 - 1 could be sent but never recorded;
# seeds are non-negative in all of fal's examples (generators seeded from them reject negatives).
SEED_MAX = 2**63 - 1
# fal documents no maximum length for `prompt` or `negative_prompt` (a string). 10,000
# characters is far more than an edit instruction needs, and keeps a runaway cell (a 50 MB
# prompt) from being stored in the ledger and sent with every request.
PROMPT_MAX_CHARS = 10_000


class ImageSizePreset(StrEnum):
    square_hd = "square_hd"
    square = "square"
    portrait_4_3 = "portrait_4_3"
    portrait_16_9 = "portrait_16_9"
    landscape_4_3 = "landscape_4_3"
    landscape_16_9 = "landscape_16_9"


# fal's pixel sizes for the named presets (the same table across its image endpoints).
PRESET_PIXELS: dict[ImageSizePreset, tuple[int, int]] = {
    ImageSizePreset.square_hd: (1024, 1024),
    ImageSizePreset.square: (512, 512),
    ImageSizePreset.portrait_4_3: (768, 1024),
    ImageSizePreset.portrait_16_9: (576, 1024),
    ImageSizePreset.landscape_4_3: (1024, 768),
    ImageSizePreset.landscape_16_9: (1024, 576),
}


class ImageSize(BaseModel):
    model_config = ConfigDict(extra="forbid")

    width: Annotated[int, Field(gt=0, le=14142)]
    height: Annotated[int, Field(gt=0, le=14142)]


class EditInput(BaseModel):
    """The request body of one edit. `image_size=None` means "the first input's size"."""

    model_config = ConfigDict(extra="forbid")

    prompt: Annotated[str, Field(min_length=1, max_length=PROMPT_MAX_CHARS)]
    image_urls: Annotated[list[str], Field(min_length=1)]
    image_size: ImageSizePreset | ImageSize | None = None
    num_inference_steps: Annotated[int, Field(ge=2, le=50)] = 30
    seed: Annotated[int, Ge(0), Le(SEED_MAX)] | None = None
    guidance_scale: Annotated[float, Field(ge=1, le=10)] = 4.0
    sync_mode: bool = False
    num_images: Annotated[int, Field(ge=1, le=4)] = 1
    enable_safety_checker: bool = True
    output_format: Literal["jpeg", "png"] = "png"
    negative_prompt: Annotated[str, Field(max_length=PROMPT_MAX_CHARS)] = ""
    acceleration: Literal["none", "regular", "high"] = "regular"


def image_size_pixels(size: ImageSizePreset | ImageSize | None) -> tuple[int, int] | None:
    """(width, height) for a size setting, or None when the input's own size applies."""
    if size is None:
        return None
    if isinstance(size, ImageSize):
        return size.width, size.height
    return PRESET_PIXELS[size]


class OutputImage(BaseModel):
    model_config = ConfigDict(extra="allow")

    url: str
    width: int | None = None
    height: int | None = None
    content_type: str | None = None
    file_name: str | None = None
    file_size: int | None = None


class EditOutput(BaseModel):
    """The bare model output served by the result endpoint (no envelope)."""

    model_config = ConfigDict(extra="allow")

    images: list[OutputImage]
    timings: dict[str, float] = Field(default_factory=dict)
    seed: Annotated[int, Ge(0), Le(SEED_MAX)] | None = None
    has_nsfw_concepts: list[bool] = Field(default_factory=list)
    prompt: str | None = None
