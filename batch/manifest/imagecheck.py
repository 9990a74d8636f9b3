"""One image file's bytes checked the way fal's image endpoints need them, safely.

`inspect_image` reads the header first (format and size), refuses a format fal does not take
and a size over the limit, and only then decodes the pixels; Pillow's decompression-bomb guard
is set from the same limit while the header is read (`_open_header`).
"""

from __future__ import annotations

import io
import os
import re
import threading
import warnings

from PIL import Image

# The types fal's image endpoints list as accepted (jpg, jpeg, png, webp, gif, avif).
ACCEPTED_FORMATS: dict[str, str] = {
    "JPEG": "image/jpeg",
    "PNG": "image/png",
    "WEBP": "image/webp",
    "GIF": "image/gif",
    "AVIF": "image/avif",
}
_FORMAT_NAMES = "JPEG, PNG, WebP, GIF or AVIF"
# The most `max_megapixels` may be: fal's largest output is 14142×14142 (200 MP). It is also the
# header limit of files checked without limits (a job's `defaults`, checked before its limits).
MAX_MEGAPIXELS_LIMIT = 200.0


class LocalFileError(ValueError):
    """A local image that cannot be used; ``str()`` is ``<path>: <reason>``."""


def shown(path: str | os.PathLike[str]) -> str:
    """A path as messages show it: relative to the current directory when below it."""
    text = os.fspath(path)
    cwd = os.getcwd()
    if text.startswith(cwd + os.sep):
        return text[len(cwd) + 1 :]
    return text


def too_many_pixels(path: str, width: int, height: int, limit: float) -> str:
    return (
        f"{shown(path)}: {width}×{height} is {width * height / 1e6:.1f} megapixels,"
        f" over the limit of {limit:g} (max_megapixels)"
    )


_GUARD_LOCK = threading.Lock()
_BOMB_PIXELS_RE = re.compile(r"\((\d+) pixels\)")


def _open_header(data: bytes, max_pixels: int) -> Image.Image:
    """``Image.open`` (which reads the header only) with Pillow's decompression-bomb guard set
    from the limit: an image of more than twice ``max_pixels`` is refused by Pillow itself, one
    of more than ``max_pixels`` is left to the caller, which refuses it without a warning.
    The guard is a process-wide setting: it is set and put back under a lock."""
    with _GUARD_LOCK, warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        saved = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = max_pixels
        try:
            return Image.open(io.BytesIO(data))
        finally:
            Image.MAX_IMAGE_PIXELS = saved


def inspect_image(
    data: bytes, path: str = "image", max_megapixels: float = MAX_MEGAPIXELS_LIMIT
) -> tuple[str, int, int]:
    """(content type, width, height) of an accepted image that Pillow decodes.

    The header is read first: a format fal does not take, or more than ``max_megapixels``, is
    refused before any pixel is decoded (a 0.5 MB PNG may declare 13000×13000 pixels: half a
    gigabyte once decoded).
    """
    max_pixels = max(1, int(max_megapixels * 1e6))
    try:
        image = _open_header(data, max_pixels)
    except Image.DecompressionBombError as exc:
        found = _BOMB_PIXELS_RE.search(str(exc))
        size = f"{int(found[1]) / 1e6:.1f} megapixels" if found else "too many pixels"
        raise LocalFileError(
            f"{shown(path)}: {size}, over the limit of {max_megapixels:g} (max_megapixels)"
        ) from None
    except Exception:  # Pillow raises many types for bad data; all mean "not an image"
        raise LocalFileError(f"{shown(path)}: not an image (Pillow cannot identify it)") from None
    with image:
        fmt = image.format or "?"
        if fmt not in ACCEPTED_FORMATS:
            raise LocalFileError(
                f"{shown(path)}: {fmt} images are not accepted (fal takes {_FORMAT_NAMES})"
            )
        width, height = image.size
        if width * height > max_pixels:
            raise LocalFileError(too_many_pixels(path, width, height, max_megapixels))
        if fmt == "JPEG":
            # Decoding at 1/8 scale still reads every byte, so truncation is still caught.
            image.draft("RGB", (max(1, width // 8), max(1, height // 8)))
        try:
            image.load()
        except Exception as exc:
            raise LocalFileError(f"{shown(path)}: cannot decode ({exc})") from None
    return ACCEPTED_FORMATS[fmt], width, height
