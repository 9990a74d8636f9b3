"""Fixtures for local inputs: image files on disk, and a `StorageClient` on the simulator."""

from __future__ import annotations

import io
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from PIL import Image
from support import TEST_KEY

from batch.fal import Credentials, StorageClient
from batch.sim import Simulator


def image_bytes(
    size: tuple[int, int] = (24, 16), color: tuple[int, int, int] = (200, 40, 40), fmt: str = "PNG"
) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, fmt)
    return buf.getvalue()


def write_image(path: Path, **kwargs: Any) -> Path:
    """An image file (PNG unless ``fmt`` says otherwise), its folders made."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(image_bytes(**kwargs))
    return path


def folder_of(base: Path, n: int, name: str = "photos") -> Path:
    """``n`` distinct small JPEGs in ``base/name``."""
    for i in range(n):
        write_image(base / name / f"img{i:02d}.jpg", color=(i * 20 % 256, 90, 160), fmt="JPEG")
    return base / name


class Images:
    """The helpers above, for tests (conftest modules cannot be imported by name)."""

    bytes = staticmethod(image_bytes)
    write = staticmethod(write_image)
    folder = staticmethod(folder_of)


@pytest.fixture
def images() -> type[Images]:
    return Images


StartStorage = Callable[..., Awaitable[tuple[Simulator, StorageClient]]]


@pytest.fixture
async def start_storage() -> AsyncIterator[StartStorage]:
    """start_storage(sim config..., client=dict(StorageClient options)) -> (sim, client)."""
    async with AsyncExitStack() as stack:

        async def start(
            client: dict[str, Any] | None = None, **config: Any
        ) -> tuple[Simulator, StorageClient]:
            config.setdefault("latency", "fixed:0")
            sim = await stack.enter_async_context(Simulator(key=TEST_KEY, **config))
            session = await stack.enter_async_context(aiohttp.ClientSession())
            storage = StorageClient(
                session, Credentials(TEST_KEY), rest_url=sim.url, **(client or {})
            )
            return sim, storage

        yield start
