"""A comparison of 10,000 items (3,334 inputs × 3 endpoints) stays one light page: the Compare
view shows a page of rows at a time, pages on, and filters, in a real headless Chromium."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

from PIL import Image
from support import png_uri

from batch.ledger import Ledger
from batch.report.page import COMPARE_PER_PAGE
from batch.report.sheet import write_report

ENDPOINTS = ["fal-ai/firered-image-edit", "fal-ai/qwen-image-edit", "fal-ai/flux-kontext/dev"]
ALIASES = ["firered-image-edit", "qwen-image-edit", "flux-kontext-dev"]


class _Item:
    def __init__(self, key: str, endpoint: str, payload: dict[str, Any]) -> None:
        self.key, self.endpoint, self.payload = key, endpoint, payload
        self.source = f"m.jsonl:{key}"


async def test_ten_thousand_compared_items_page_by_rows(tmp_path: Path, chromium):
    """3,334 inputs on 3 endpoints: a page of `COMPARE_PER_PAGE` rows (a card per endpoint
    each), the last page ends with the last input, and the failed filter keeps the inputs
    with a failure; the header counts every item of each endpoint, whatever the page."""
    out = tmp_path / "out"
    inputs = 3334
    (out / "images").mkdir(parents=True)
    for i in range(20):
        Image.new("RGB", (64, 48), (i * 12, 80, 160)).save(out / "images" / f"o{i}.png")
    uri = png_uri(32, 24)
    with Ledger.open(out) as ledger:
        ledger.plan(
            _Item(f"k{i:05d}@{alias}", endpoint, {"prompt": f"edit {i}", "image_urls": [uri]})
            for i in range(inputs)
            for endpoint, alias in zip(ENDPOINTS, ALIASES, strict=True)
        )
    with sqlite3.connect(out / "ledger.sqlite") as conn:  # the end state, in one transaction
        conn.execute(
            "UPDATE items SET state = 'completed', attempts = 1, seed = 7, nsfw = '[false]',"
            " submitted_at = 100, completed_at = 100.5 + (rowid % 50) / 10.0,"
            " billable_units = 0.003072"
        )
        conn.execute(  # every 100th input fails on qwen
            "UPDATE items SET state = 'failed', error_kind = 'permanent',"
            " error_message = 'HTTP 422: no' WHERE key GLOB 'k???00@qwen*'"
        )
        conn.execute(
            "INSERT INTO outputs (item_key, idx, path, url, bytes, sha256, width, height,"
            " content_type) SELECT key, 0, 'images/o' || (rowid % 20) || '.png', 'u', 1, '', 64,"
            " 48, 'image/png' FROM items WHERE state = 'completed'"
        )

    report = write_report(out, title="big", endpoints=ENDPOINTS)
    assert report.items == 3 * inputs and report.compare is not None
    assert report.path.stat().st_size < 5_000_000
    dom = await chromium.dom(report.path, "view=compare")
    assert dom.body["data-view"] == "compare" and dom.body["data-matches"] == str(inputs)
    assert dom.body["data-thumbs"] == "ok"
    assert len(dom.cards) == 3 * COMPARE_PER_PAGE
    assert [c["data-key"] for c in dom.cards[:3]] == [f"k00000@{a}" for a in ALIASES]
    pages = -(-inputs // COMPARE_PER_PAGE)
    assert dom.texts["page"] == f"page 1 of {pages}"
    assert (dom.texts["cmp-done-1"], dom.texts["cmp-failed-1"]) == ("3300", "34")
    assert dom.texts["cmp-done-0"] == str(inputs) and dom.texts["cmp-done-all"] == "9968"

    last = await chromium.dom(report.path, f"view=compare&page={pages}")
    assert last.texts["page"] == f"page {pages} of {pages}"
    assert [c["data-key"] for c in last.cards][-1] == f"k{inputs - 1:05d}@flux-kontext-dev"
    assert last.texts["cmp-failed-1"] == "34"  # the totals are the job's, on every page

    failed = await chromium.dom(report.path, "view=compare&filter=failed")
    assert failed.body["data-matches"] == "34" and len(failed.cards) == 3 * 34
    shown = [c for c in failed.cards if "dim" not in c["class"].split()]
    assert {c["data-state"] for c in shown} == {"failed"} and len(shown) == 34
