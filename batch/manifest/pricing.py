"""What a job costs: the unit price and budget of a job file, and estimates of output size.

fal bills image endpoints per output megapixel or per output image, and its prices change, so
there is no built-in price: a job file states its own (``price: {per_megapixel: 0.03}`` or
``price: {per_image: 0.04}``), and an optional cap (``budget: {max_usd: 25}``).

An item's output size is known before the run when it sets ``image_size``, or when its output
takes the size of its first input (no ``image_size``) and that input is a local file or a
``data:`` URI; an input behind a remote URL has not been fetched, so its size is unknown.
`Estimate` adds items up: requests, output images, known megapixels, and the items whose size
is unknown (their cost is left out, so the estimate is then a lower bound).
"""

from __future__ import annotations

import base64
import binascii
import io
import struct
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, get_args

from PIL import Image
from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic_core import PydanticCustomError

from batch.manifest.errors import NESTED_ERROR
from batch.manifest.fields import CONTROL_RE, bad_character
from batch.manifest.localfiles import local_sha
from batch.schema import PRESET_PIXELS, ImageSizePreset

# A local file's (width, height) by its sha256, when known.
SizeLookup = Callable[[str], tuple[int, int] | None]
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_MAX_HEADER = 256  # characters of a data: URI before its comma
# Base64 characters decoded to find an inline image's size: the first 64 Ki, then the first
# 1 Mi (a JPEG's size may follow large metadata); never the whole of a large URI, never pixels.
_HEAD_CHARS = (1 << 16, 1 << 20)


def _mentions_number(annotation: Any) -> bool:
    if annotation is int or annotation is float:
        return True
    return any(_mentions_number(arg) for arg in get_args(annotation))


class SettingsModel(BaseModel):
    """Settings written by people (job files): numbers must be numbers — pydantic would take
    ``true`` for 1 — and finite (`allow_inf_nan` off in each subclass's config); text has no
    control characters or lone surrogates (it becomes paths, URLs and HTTP headers)."""

    _numbers: ClassVar[frozenset[str] | None] = None

    @model_validator(mode="before")
    @classmethod
    def _plain_values(cls, data: Any) -> Any:
        if not isinstance(data, Mapping):
            return data
        problems: list[tuple[tuple[str, ...], str]] = []
        for key, value in data.items():
            if type(value) is str and (found := CONTROL_RE.search(value)) is not None:
                problems.append(((str(key),), bad_character(found[0], found.start())))
            elif type(value) is bool and key in cls._number_fields():
                problems.append(((str(key),), _NOT_BOOL))
        if problems:
            detail = "; ".join(f"{k[0]}: {why}" for k, why in problems)
            raise PydanticCustomError(
                NESTED_ERROR, "{detail}", {"detail": detail, "problems": problems}
            )
        return data

    @classmethod
    def _number_fields(cls) -> frozenset[str]:
        if cls.__dict__.get("_numbers") is None:
            fields = cls.model_fields.items()
            cls._numbers = frozenset(n for n, f in fields if _mentions_number(f.annotation))
        return cls._numbers or frozenset()


_NOT_BOOL = "Input should be a number, not true or false"


class PriceSpec(SettingsModel):
    """The endpoint's unit price in USD: per output megapixel, or per output image."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    per_megapixel: float | None = Field(default=None, ge=0)
    per_image: float | None = Field(default=None, ge=0)

    @model_validator(mode="after")
    def _one_unit(self) -> PriceSpec:
        if (self.per_megapixel is None) == (self.per_image is None):
            raise ValueError("give exactly one of per_megapixel or per_image")
        return self

    def cost(self, images: int, pixels: int) -> float:
        """USD for `images` output images of `pixels` pixels in all."""
        if self.per_image is not None:
            return images * self.per_image
        assert self.per_megapixel is not None
        return pixels / 1_000_000 * self.per_megapixel

    def describe(self) -> str:
        if self.per_image is not None:
            return f"{usd(self.per_image)}/image"
        assert self.per_megapixel is not None
        return f"{usd(self.per_megapixel)}/MP"


class BudgetSpec(SettingsModel):
    """A cap on the job's spend: no item is submitted if completed + in-flight + it would
    cost more than ``max_usd``."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    max_usd: float = Field(gt=0)


def usd(value: float) -> str:
    """$1,234.50, $0.50, $0.0125: two decimals, more for amounts under a cent."""
    if value == 0 or abs(value) >= 0.01:
        return f"${value:,.2f}"
    return f"${value:.6f}".rstrip("0")


def size_pixels(size: Any) -> tuple[int, int] | None:
    """(width, height) of an ``image_size`` as a payload has it — a preset's name or
    ``{width, height}`` —, or None (not set: the output takes the first input's size)."""
    if isinstance(size, str):
        try:
            return PRESET_PIXELS[ImageSizePreset(size)]
        except ValueError:
            return None
    if isinstance(size, Mapping):
        width, height = size.get("width"), size.get("height")
        if isinstance(width, int) and isinstance(height, int) and width > 0 and height > 0:
            return width, height
    return None


def data_uri_size(uri: str) -> tuple[int, int] | None:
    """(width, height) of the image in a base64 ``data:`` URI, or None. A PNG's size is read
    from its first bytes; other formats are opened (their header read, no pixel decoded) from
    the start of the payload, the first 64 Ki characters then the first 1 Mi; past that the
    size is unknown."""
    comma = uri.find(",", 5, 5 + _MAX_HEADER)
    if comma < 0 or "base64" not in uri[5:comma].lower():
        return None
    start = comma + 1
    try:  # a PNG says its size in its first 24 bytes (IHDR): no decoder needed
        head = base64.b64decode(uri[start : start + 32], validate=True)
    except (binascii.Error, ValueError):
        head = b""
    if head[:8] == _PNG_SIGNATURE and head[12:16] == b"IHDR":
        width, height = struct.unpack(">II", head[16:24])
        return (width, height) if width and height else None
    for chars in _HEAD_CHARS:
        chunk = "".join(uri[start : start + chars].split())
        chunk = chunk[: len(chunk) - len(chunk) % 4]
        try:
            with warnings.catch_warnings():  # a huge size is only read here, never decoded
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                with Image.open(io.BytesIO(base64.b64decode(chunk, validate=True))) as img:
                    return img.size
        except (binascii.Error, OSError, ValueError, Image.DecompressionBombError):
            if start + chars >= len(uri):
                return None
    return None


def input_size(url: str, local_size: SizeLookup | None) -> tuple[int, int] | None:
    """The size of one input image when it is known without network."""
    if url.startswith("data:"):
        return data_uri_size(url)
    sha = local_sha(url)
    if sha is not None and local_size is not None:
        return local_size(sha)
    return None


def output_basis(
    payload: Mapping[str, Any], local_size: SizeLookup | None = None
) -> tuple[int, int | None]:
    """(output images, output pixels or None when unknown) that one request will produce."""
    count = payload.get("num_images", 1)
    images = count if isinstance(count, int) and count > 0 else 1
    size = size_pixels(payload.get("image_size"))
    if size is None and payload.get("image_size") is None:
        urls = payload.get("image_urls")
        if isinstance(urls, list) and urls and isinstance(urls[0], str):
            size = input_size(urls[0], local_size)
    if size is None:
        return images, None
    return images, images * size[0] * size[1]


@dataclass
class Estimate:
    """Requests, output images and megapixels of some items, and what they would cost."""

    requests: int = 0
    output_images: int = 0
    pixels: int = 0  # of the items whose output size is known
    unknown_items: int = 0  # items whose output size is unknown (not in `pixels`)

    def add(self, images: int, pixels: int | None, times: int = 1) -> None:
        """Count `times` requests of `images` output images and `pixels` pixels each."""
        self.requests += times
        self.output_images += images * times
        if pixels is None:
            self.unknown_items += times
        else:
            self.pixels += pixels * times

    @property
    def megapixels(self) -> float:
        return self.pixels / 1_000_000

    def cost(self, price: PriceSpec | None) -> float | None:
        """USD (a lower bound if per megapixel with unknown sizes), or None without a price."""
        if price is None:
            return None
        return price.cost(self.output_images, self.pixels)

    def exact(self, price: PriceSpec | None) -> bool:
        return price is not None and (price.per_image is not None or not self.unknown_items)

    def text(self, price: PriceSpec | None) -> str:
        """``13 requests, 14 output images, 2.8 MP → $0.08 at $0.03/MP (estimate)``."""
        text = (
            f"{_n(self.requests, 'request')}, {_n(self.output_images, 'output image')}, "
            f"{self.megapixels:.1f} MP"
        )
        if self.unknown_items:
            text += f" + {_n(self.unknown_items, 'item')} of unknown size"
        cost = self.cost(price)
        if price is None or cost is None:
            return f"{text} (cost: set price: {{per_megapixel: …}} or {{per_image: …}})"
        bound = "" if self.exact(price) else "at least "
        return f"{text} → {bound}{usd(cost)} at {price.describe()} (estimate)"

    def as_dict(self, price: PriceSpec | None) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "output_images": self.output_images,
            "megapixels": round(self.megapixels, 6),
            "unknown_size_items": self.unknown_items,
            "cost_usd": self.cost(price),
            "exact": self.exact(price),
        }


def _n(count: int, word: str) -> str:
    return f"{count} {word}" if count == 1 else f"{count} {word}s"
