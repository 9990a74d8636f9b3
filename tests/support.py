"""Helpers shared by tests (importable as `support`; fixtures live in conftest.py)."""

from __future__ import annotations

import base64
import io
from typing import Any

from PIL import Image

ENDPOINT = "fal-ai/firered-image-edit"
TEST_KEY = "test-key-5f3c0d1e9a"  # what tests grep for in files and logs


def png_uri(width: int = 16, height: int = 12, color: tuple[int, int, int] = (10, 120, 200)) -> str:
    buf = io.BytesIO()
    Image.new("RGB", (width, height), color).save(buf, "PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def edit(prompt: str = "make it blue", **fields: Any) -> dict[str, Any]:
    return {"prompt": prompt, "image_urls": [png_uri()], **fields}
