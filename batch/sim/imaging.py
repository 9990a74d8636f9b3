"""The simulated model's pixels: fetch the input images, and render a recognisable "edit".

`fetch_input` turns one `image_urls` entry into verified image bytes. It accepts data URIs
(base64 or percent-encoded), this simulator's own `/files/...` URLs (looked up in the
`FileStore` directly, whatever origin the URL names) and other http(s) URLs (fetched with the
given session, 20 s timeout, 50 MiB cap). Anything else raises `InputImageError`, which carries
the entry's index so the core can answer fal's 422 with the right `loc`.

`render` makes a real image a person recognises as an edit of the first input: that input
cover-cropped to the requested size, blended with a colour derived from (seed, index), a small
inset of the second input when there is one, and the prompt written on a translucent band.
Images under `TEXT_MIN_HEIGHT` pixels get a thin prompt-coloured stripe instead of text, which
keeps the tiny benchmark outputs fast while still depending on the prompt. The output is a pure
function of its arguments: same arguments, same bytes (no timestamps or metadata are written).
"""

from __future__ import annotations

import base64
import binascii
import colorsys
import functools
import hashlib
import io
import re
import threading
from urllib.parse import unquote, unquote_to_bytes, urlsplit

import aiohttp
from PIL import Image, ImageDraw, ImageFont, ImageOps

from batch.sim.storage import FileStore

FETCH_TIMEOUT_S = 20.0
MAX_INPUT_BYTES = 50 * 1024 * 1024
TEXT_MIN_HEIGHT = 96
TINT_ALPHA = 0.3
JPEG_QUALITY = 85
PNG_COMPRESS_LEVEL = 1
MAX_TEXT_LINES = 4
MAX_CAPTION_CHARS = 400  # more could never fit in MAX_TEXT_LINES lines; bounds the work
_FONT_LOCK = threading.Lock()

Font = ImageFont.FreeTypeFont | ImageFont.ImageFont


class InputImageError(Exception):
    """An `image_urls` entry could not be fetched or is not an image; `index` says which."""

    def __init__(self, index: int, reason: str) -> None:
        super().__init__(reason)
        self.index = index
        self.reason = reason


# --- fetching --------------------------------------------------------------------------------


def _decode_data_uri(url: str, index: int) -> bytes:
    header, sep, payload = url[len("data:") :].partition(",")
    if not sep:
        raise InputImageError(index, "Malformed data URI: no ',' separator")
    if header.lower().endswith(";base64"):
        text = "".join(unquote(payload).split()).replace("-", "+").replace("_", "/")
        try:
            return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
        except (binascii.Error, ValueError) as exc:
            raise InputImageError(index, f"Malformed base64 in data URI: {exc}") from exc
    return unquote_to_bytes(payload)


async def _download(session: aiohttp.ClientSession, url: str, index: int) -> bytes:
    timeout = aiohttp.ClientTimeout(total=FETCH_TIMEOUT_S)
    try:
        async with session.get(url, timeout=timeout) as response:
            if response.status != 200:
                raise InputImageError(index, f"Failed to download image: HTTP {response.status}")
            if (response.content_length or 0) > MAX_INPUT_BYTES:
                raise InputImageError(index, "Image is larger than 50 MiB")
            chunks: list[bytes] = []
            size = 0
            async for chunk in response.content.iter_chunked(1 << 16):
                size += len(chunk)
                if size > MAX_INPUT_BYTES:
                    raise InputImageError(index, "Image is larger than 50 MiB")
                chunks.append(chunk)
            return b"".join(chunks)
    except (TimeoutError, aiohttp.ClientError, ValueError) as exc:
        raise InputImageError(index, f"Failed to download image: {exc!r}") from exc


def _why(exc: Exception) -> str:
    """Pillow's reason, without the repr of the buffer it read (`<_io.BytesIO object at 0x…>`)."""
    return _REPR.sub("", str(exc)).strip() or type(exc).__name__


_REPR = re.compile(r"\s*<[^<>]* at 0x[0-9a-fA-F]+>")


def _verify(data: bytes, index: int) -> None:
    if not data:
        raise InputImageError(index, "Image is empty")
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.verify()
    except Exception as exc:  # Pillow raises many types for bad data; all mean "not an image"
        raise InputImageError(index, f"Not a valid image: {_why(exc)}") from exc


async def fetch_input(
    session: aiohttp.ClientSession | None, url: str, store: FileStore, *, index: int = 0
) -> bytes:
    """The bytes of image `url` (entry `index` of `image_urls`), verified to decode as an image."""
    scheme = url.split(":", 1)[0].lower() if ":" in url else ""
    if scheme == "data":
        data = _decode_data_uri(url, index)
    elif scheme in ("http", "https"):
        path = urlsplit(url).path
        found = store.get(unquote(path[len("/files/") :])) if path.startswith("/files/") else None
        if found is not None:
            data = found[0]
        elif session is None:
            raise InputImageError(index, f"Failed to download image: {url[:200]}")
        else:
            data = await _download(session, url, index)
    else:
        raise InputImageError(index, f"Unsupported URL scheme {scheme!r}")
    _verify(data, index)
    return data


# --- rendering -------------------------------------------------------------------------------


def _colour(*parts: object, saturation: float = 0.75) -> tuple[int, int, int]:
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    hue = int.from_bytes(digest[:4], "big") / 2**32
    r, g, b = colorsys.hsv_to_rgb(hue, saturation, 0.55 + digest[4] / 255 * 0.45)
    return round(r * 255), round(g * 255), round(b * 255)


def _open_rgb(data: bytes, index: int, draft_size: tuple[int, int] | None) -> Image.Image:
    """Decode one input to RGB (EXIF orientation applied, alpha flattened onto white)."""
    try:
        opened = Image.open(io.BytesIO(data))
        if draft_size is not None and opened.format == "JPEG":
            opened.draft("RGB", draft_size)  # let libjpeg decode at a reduced scale: much faster
        ImageOps.exif_transpose(opened, in_place=True)
        im: Image.Image = opened
        if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
            rgba = im.convert("RGBA")
            im = Image.new("RGB", rgba.size, (255, 255, 255))
            im.paste(rgba, mask=rgba.getchannel("A"))
        return im.convert("RGB") if im.mode != "RGB" else im
    except Exception as exc:  # Pillow raises many types for bad data
        raise InputImageError(index, f"Not a valid image: {_why(exc)}") from exc


def _cover(im: Image.Image, size: tuple[int, int]) -> Image.Image:
    """Scale `im` to cover `size` and crop the overflow evenly (centre crop)."""
    if im.size == size:
        return im
    (w, h), (tw, th) = im.size, size
    scale = max(tw / w, th / h)
    cw, ch = tw / scale, th / scale  # the source region that ends up in the output
    box = ((w - cw) / 2, (h - ch) / 2, (w + cw) / 2, (h + ch) / 2)
    return im.resize(size, Image.Resampling.BILINEAR, box=box, reducing_gap=2.0)


def _inset(canvas: Image.Image, data: bytes) -> None:
    """Paste a bordered thumbnail of `data` into the canvas's top-right corner."""
    w, h = canvas.size
    side = max(8, min(w, h) // 4)
    border = max(1, side // 32)
    thumb = _open_rgb(data, 1, (side, side))
    thumb.thumbnail((side, side), Image.Resampling.BILINEAR)
    margin = max(2, side // 8)
    x = w - thumb.width - margin
    frame = Image.new("RGB", (thumb.width + 2 * border, thumb.height + 2 * border), "white")
    frame.paste(thumb, (border, border))
    canvas.paste(frame, (x - border, margin - border))


@functools.lru_cache(maxsize=32)
def _font(size: int) -> Font:
    return ImageFont.load_default(size=size)


def _fit_prefix(line: str, font: Font, width: int) -> int:
    """The length of the longest prefix of `line` (at least 1) that fits in `width` pixels."""
    lo, hi = 1, len(line)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if font.getlength(line[:mid]) <= width:
            lo = mid
        else:
            hi = mid - 1
    return lo


def _wrap(text: str, font: Font, width: int) -> list[str]:
    """Greedy word wrap to `width` pixels; words too long for a line (or CJK runs) are split."""
    lines: list[str] = []
    line = ""
    for word in text[:MAX_CAPTION_CHARS].split():
        candidate = f"{line} {word}" if line else word
        if font.getlength(candidate) <= width:
            line = candidate
            continue
        if line:
            lines.append(line)
        while len(word) > 1 and font.getlength(word) > width:
            cut = _fit_prefix(word, font, width)
            lines.append(word[:cut])
            word = word[cut:]
        line = word
        if len(lines) > MAX_TEXT_LINES:
            break
    lines.append(line)
    if len(lines) > MAX_TEXT_LINES:
        lines = [*lines[: MAX_TEXT_LINES - 1], lines[MAX_TEXT_LINES - 1][:-1] + "…"]
    return lines


def _caption(canvas: Image.Image, prompt: str, seed: int, index: int) -> None:
    """Write the prompt (and seed) on a translucent band along the bottom edge."""
    w, h = canvas.size
    font_px = max(10, min(48, h // 24, w // 16))
    pad = max(3, font_px // 3)
    with _FONT_LOCK:  # a cached FreeType face is shared; render may run in several threads
        font = _font(font_px)
        if not isinstance(font, ImageFont.FreeTypeFont):  # bitmap fallback: latin-1 only
            prompt = prompt.encode("latin-1", "replace").decode("latin-1")
        lines = [*_wrap(prompt, font, w - 2 * pad), f"seed {seed} · image {index}"]
        _draw_band(canvas, font, lines, font_px, pad)


def _draw_band(canvas: Image.Image, font: Font, lines: list[str], font_px: int, pad: int) -> None:
    w, h = canvas.size
    line_h = round(font_px * 1.25)
    band_h = min(h // 2, len(lines) * line_h + 2 * pad)
    box = (0, h - band_h, w, h)
    band = canvas.crop(box)
    canvas.paste(Image.blend(band, Image.new("RGB", band.size, (0, 0, 0)), 0.6), box)
    draw = ImageDraw.Draw(canvas)
    y = h - band_h + pad
    for line in lines:
        if y + line_h > h:
            break
        draw.text((pad, y), line, fill=(255, 255, 255), font=font)
        y += line_h


def _stripe(canvas: Image.Image, prompt: str) -> None:
    """A thin strip of prompt-derived colours along the bottom (small images have no text)."""
    w, h = canvas.size
    strip_h = max(1, h // 24)
    segments = 4
    draw = ImageDraw.Draw(canvas)
    for i in range(segments):
        x0, x1 = w * i // segments, w * (i + 1) // segments
        draw.rectangle((x0, h - strip_h, x1 - 1, h - 1), fill=_colour("prompt", prompt, i))


def _encode(im: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    im.info = {}
    if fmt == "png":
        im.save(buf, "PNG", compress_level=PNG_COMPRESS_LEVEL)
    else:
        im.save(buf, "JPEG", quality=JPEG_QUALITY, optimize=False, progressive=False)
    return buf.getvalue()


def render(
    inputs: list[bytes],
    prompt: str,
    seed: int,
    size: tuple[int, int] | None,
    fmt: str,
    index: int,
) -> tuple[bytes, int, int]:
    """Output image `index` of an edit: (encoded bytes, width, height); `fmt` "png" or "jpeg".

    `size=None` means the first input's size. With no inputs at all (a text-to-image endpoint)
    the canvas is the tint colour alone, 512×512 unless `size` says otherwise.
    """
    fmt = "jpeg" if fmt.lower() in ("jpg", "jpeg") else fmt.lower()
    if fmt not in ("png", "jpeg"):
        raise ValueError(f"Unsupported output format {fmt!r}")
    if size is not None and (size[0] <= 0 or size[1] <= 0):
        raise ValueError(f"Invalid output size {size!r}")
    tint = _colour("tint", seed, index)
    if inputs:
        base = _open_rgb(inputs[0], 0, size)
        size = size or base.size
        canvas = Image.blend(_cover(base, size), Image.new("RGB", size, tint), TINT_ALPHA)
    else:
        size = size or (512, 512)
        canvas = Image.new("RGB", size, tint)
    if len(inputs) > 1:
        _inset(canvas, inputs[1])
    if size[1] >= TEXT_MIN_HEIGHT and size[0] >= TEXT_MIN_HEIGHT:
        _caption(canvas, prompt, seed, index)
    else:
        _stripe(canvas, prompt)
    return _encode(canvas, fmt), size[0], size[1]
