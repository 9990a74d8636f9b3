"""The simulated model's images: fetching inputs, and deterministic, recognisable renders.

How fast `render` is (ms per render at these sizes) is measured by benchmarks/imaging.py, not
asserted here.
"""

from __future__ import annotations

import base64
import io
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import quote_from_bytes

import aiohttp
import pytest
from aiohttp import web
from PIL import Image, ImageChops, ImageStat

from batch.schema import PRESET_PIXELS, ImageSizePreset
from batch.sim.imaging import InputImageError, fetch_input, render
from batch.sim.storage import FileStore, storage_routes

SAMPLES = Path("/work/shared/data/sample-images")
ASTRONAUT = (SAMPLES / "astronaut.jpg").read_bytes()
CHELSEA = (SAMPLES / "chelsea.jpg").read_bytes()
CHINESE = "把天空变成紫色，加上星星和月亮，让整个画面看起来像梦境一样"


def encode(im: Image.Image, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt)
    return buf.getvalue()


def small(data: bytes, size: tuple[int, int] = (64, 64)) -> bytes:
    return encode(Image.open(io.BytesIO(data)).convert("RGB").resize(size))


def decode(data: bytes) -> Image.Image:
    im = Image.open(io.BytesIO(data))
    im.load()
    return im


def mean_diff(a: Image.Image, b: Image.Image) -> float:
    """Mean absolute per-channel difference of two same-size RGB images (0..255)."""
    return sum(ImageStat.Stat(ImageChops.difference(a, b)).mean) / 3


# --- render ----------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["png", "jpeg"])
@pytest.mark.parametrize("size", [(64, 64), (512, 384)])
def test_render_is_deterministic(fmt: str, size: tuple[int, int]) -> None:
    """Same inputs, prompt, seed, size, format and index give identical bytes."""
    args = ([ASTRONAUT, CHELSEA], "make it a watercolour", 42, size, fmt, 0)
    assert render(*args) == render(*args)


@pytest.mark.parametrize("preset", list(PRESET_PIXELS))
def test_render_respects_preset_sizes(preset: ImageSizePreset) -> None:
    """Each of fal's preset pixel sizes comes out exactly, as reported and as decoded."""
    size = PRESET_PIXELS[preset]
    data, width, height = render([CHELSEA], "a prompt", 1, size, "jpeg", 0)
    assert (width, height) == size == decode(data).size


@pytest.mark.parametrize("size", [(64, 64), (100, 40), (40, 100), (333, 777)])
def test_render_respects_explicit_size(size: tuple[int, int]) -> None:
    """An explicit size, of any aspect ratio, is the output's size."""
    data, width, height = render([small(ASTRONAUT)], "p", 1, size, "png", 0)
    assert (width, height) == size == decode(data).size


def test_render_without_size_keeps_the_first_inputs_size() -> None:
    """size=None means the first input's size, even with a differently sized second input."""
    data, width, height = render([CHELSEA, ASTRONAUT], "p", 1, None, "png", 0)
    assert (width, height) == Image.open(io.BytesIO(CHELSEA)).size == decode(data).size


@pytest.mark.parametrize(("fmt", "pil_format"), [("png", "PNG"), ("jpeg", "JPEG"), ("jpg", "JPEG")])
def test_render_formats_are_real_images_of_the_input(fmt: str, pil_format: str) -> None:
    """PNG and JPEG decode, and look like the input: closer to it than to another photo."""
    out = decode(render([ASTRONAUT], "make it blue", 3, (256, 256), fmt, 0)[0])
    assert out.format == pil_format
    assert out.mode == "RGB"
    reference = Image.open(io.BytesIO(ASTRONAUT)).convert("RGB").resize((256, 256))
    other = Image.open(io.BytesIO(CHELSEA)).convert("RGB").resize((256, 256))
    assert mean_diff(out, reference) < 40
    assert mean_diff(out, reference) < mean_diff(out, other) / 1.5
    assert mean_diff(out, reference) > 3  # but it is visibly edited


def test_render_seed_and_index_change_the_output() -> None:
    """A different seed, or another output index of the same request, is a different image."""
    base = render([small(ASTRONAUT)], "p", 1, None, "png", 0)[0]
    assert render([small(ASTRONAUT)], "p", 2, None, "png", 0)[0] != base
    assert render([small(ASTRONAUT)], "p", 1, None, "png", 1)[0] != base


def test_render_prompt_changes_even_tiny_outputs() -> None:
    """Tiny outputs have no text band, but the prompt still shows (as a colour stripe)."""
    first = render([small(ASTRONAUT)], "make it blue", 1, None, "png", 0)[0]
    assert render([small(ASTRONAUT)], "make it red", 1, None, "png", 0)[0] != first


def test_render_several_inputs_inset_the_second() -> None:
    """A second input appears as an inset in the top-right corner only."""
    one = decode(render([ASTRONAUT], "p", 1, (512, 512), "png", 0)[0])
    two = decode(render([ASTRONAUT, CHELSEA, CHELSEA], "p", 1, (512, 512), "png", 0)[0])
    assert ImageChops.difference(one, two).getbbox() is not None
    corner = (384, 0, 512, 128)
    assert mean_diff(one.crop(corner), two.crop(corner)) > 10
    rest = (0, 160, 512, 512)
    assert ImageChops.difference(one.crop(rest), two.crop(rest)).getbbox() is None


@pytest.mark.parametrize("prompt", [CHINESE, "émoji 🎨 and ünïcode", "x" * 5000, " "])
def test_render_any_prompt_text_works(prompt: str) -> None:
    """Unicode, CJK, very long and blank prompts render (CJK may show as boxes)."""
    data, width, height = render([ASTRONAUT], prompt, 7, (1024, 1024), "png", 0)
    assert decode(data).size == (width, height) == (1024, 1024)


def test_render_handles_alpha_grey_and_palette_inputs() -> None:
    """Inputs that are not RGB (RGBA, L, P) are converted, not rejected."""
    for mode in ("RGBA", "L", "P"):
        source = encode(Image.new(mode, (80, 60)))
        assert render([source], "p", 1, None, "jpeg", 0)[1:] == (80, 60)


def test_render_rejects_bad_arguments() -> None:
    """Unknown formats, empty sizes and undecodable inputs are errors, not garbage images."""
    with pytest.raises(ValueError, match="format"):
        render([ASTRONAUT], "p", 1, None, "gif", 0)
    with pytest.raises(ValueError, match="size"):
        render([ASTRONAUT], "p", 1, (0, 10), "png", 0)
    with pytest.raises(InputImageError) as info:
        render([ASTRONAUT, b"not an image"], "p", 1, None, "png", 0)
    assert info.value.index == 1


# --- fetch_input -----------------------------------------------------------------------------


async def test_fetch_base64_data_uri() -> None:
    """A base64 data URI decodes to its bytes."""
    png = small(CHELSEA)
    url = "data:image/png;base64," + base64.b64encode(png).decode()
    assert await fetch_input(None, url, FileStore()) == png


async def test_fetch_percent_encoded_data_uri() -> None:
    """A data URI without ;base64 is percent-decoded."""
    png = small(CHELSEA)
    assert await fetch_input(None, "data:image/png," + quote_from_bytes(png), FileStore()) == png


async def test_fetch_own_files_url_from_the_store() -> None:
    """A /files/ URL is looked up in the store, whatever its origin; no session is needed."""
    store = FileStore()
    key = store.put(CHELSEA, "image/jpeg", "cat.jpg")
    for origin in ("http://127.0.0.1:1", "https://sim.example"):
        assert await fetch_input(None, f"{origin}/files/{key}", store) == CHELSEA


@pytest.fixture
async def remote() -> AsyncIterator[tuple[str, FileStore]]:
    """Another server with its own store: its files must be downloaded over HTTP."""
    store = FileStore()
    app = web.Application()
    app.add_routes(storage_routes(store))
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    host, port = runner.addresses[0][:2]
    yield f"http://{host}:{port}", store
    await runner.cleanup()


async def test_fetch_other_urls_through_the_session(remote: tuple[str, FileStore]) -> None:
    """A URL not in our store is downloaded with the session; HTTP errors are input errors."""
    base, their_store = remote
    key = their_store.put(ASTRONAUT, "image/jpeg")
    async with aiohttp.ClientSession() as session:
        assert await fetch_input(session, f"{base}/files/{key}", FileStore()) == ASTRONAUT
        with pytest.raises(InputImageError, match="404") as info:
            await fetch_input(session, f"{base}/files/b/nope/x.png", FileStore(), index=2)
    assert info.value.index == 2


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("data:image/png;base64," + base64.b64encode(b"not an image").decode(), "valid image"),
        ("data:image/png;base64,@@@", "base64"),
        ("data:image/png;base64", "separator"),
        ("data:,", "empty"),
        ("ftp://example.com/a.png", "scheme"),
        ("just-a-name.png", "scheme"),
        ("http://127.0.0.1:1/files/b/00000000/missing.png", "download"),
    ],
)
async def test_fetch_bad_inputs_raise_with_index(url: str, reason: str) -> None:
    """Bad data, bad URIs, unsupported schemes and missing files raise InputImageError(index)."""
    with pytest.raises(InputImageError, match=reason) as info:
        await fetch_input(None, url, FileStore(), index=3)
    assert info.value.index == 3
    assert str(info.value) == info.value.reason
