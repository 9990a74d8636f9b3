"""Helpers shared by tests (importable as `support`; fixtures live in conftest.py)."""

from __future__ import annotations

import base64
import io
from dataclasses import dataclass
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


def write_csv(path, rows: list[dict[str, Any]]) -> None:
    """A CSV manifest from row dicts (image_urls lists joined with |)."""
    import csv

    fields: list[str] = []
    for row in rows:
        fields += [k for k in row if k not in fields]
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: "|".join(v) if isinstance(v, list) else v for k, v in row.items()})


def item_rows(n: int, **fields: Any) -> list[dict[str, Any]]:
    return [
        {"id": f"item{i:03d}", "prompt": f"edit number {i}", "image_urls": [png_uri()], **fields}
        for i in range(n)
    ]


@dataclass(frozen=True)
class PlanItem:
    """What `Ledger.plan` takes (`ItemLike`): a key, the payload and where it came from."""

    key: str
    payload: dict[str, Any]
    source: str = "m.csv:2"
    endpoint: str = ENDPOINT
    user_id: str | None = None
