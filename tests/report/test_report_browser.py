"""The report in a real headless Chromium: counts, thumbnails that load, filters, search, 10k."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

from PIL import Image
from support import png_uri

from batch.ledger import Ledger
from batch.report.page import PER_PAGE
from batch.report.sheet import write_report


async def test_report_of_a_run_shows_counts_thumbnails_and_filters(make_runner, chromium, rows):
    """A run with completed, NSFW-flagged and failed items: the page's tiles say so, every
    thumbnail decodes, and the failed filter shows exactly the failed items."""
    runner = await make_runner()
    runner.write(rows(ok=5, flagged=1, broken=2))
    summary = await runner.run()
    assert summary.exit_code == 1 and summary.counts["failed"] == 2
    page = runner.out / "report.html"

    shot = await chromium.screenshot(page, runner.tmp / "report.png")
    with Image.open(shot) as img:
        assert img.size == (1400, 1000)
        assert len(img.getcolors(1_000_000) or []) > 50  # a rendered page, not a blank one

    dom = await chromium.dom(page)
    assert {k: dom.texts[f"count-{k}"] for k in ("total", "completed", "failed", "flagged")} == {
        "total": "8",
        "completed": "6",
        "failed": "2",
        "flagged": "1",
    }
    assert dom.body["data-thumbs"] == "ok"  # every <img> on the page decoded (naturalWidth > 0)
    # 6 completed items × (1 input + 1 output); the failed items' inputs are not images:
    # a placeholder each, no broken <img>
    assert dom.body["data-thumbs-loaded"] == "12" and dom.body["data-thumbs-broken"] == "0"
    assert len(dom.cards) == 8 and dom.texts["shown"] == "1–8 of 8"
    # inputs (data: URIs) as thumbnail files; the small outputs as they are, never bigger
    assert sorted({src.split("/")[0] for src in dom.images}) == ["images", "thumbs"]
    for src in dom.images:
        with Image.open(runner.out / src) as img:
            assert max(img.size) <= 256

    failed = await chromium.dom(page, "filter=failed")
    assert failed.body["data-filter"] == "failed" and failed.body["data-matches"] == "2"
    assert sorted(card["data-key"] for card in failed.cards) == ["bad0", "bad1"]
    assert {card["data-state"] for card in failed.cards} == {"failed"}
    assert "Could not load" in failed.texts["grid"] or "image" in failed.texts["grid"]

    flagged = await chromium.dom(page, "filter=flagged")
    assert [card["data-key"] for card in flagged.cards] == ["flag0"]

    found = await chromium.dom(page, "q=PAINT%20IT%203")
    assert [card["data-key"] for card in found.cards] == ["ok3"]


async def test_ten_thousand_items_stay_one_light_page(tmp_path: Path, chromium):
    """10,000 items: the page is a few MB, shows one page of cards at a time, and pages on."""
    out = tmp_path / "out"
    n, distinct = 10_000, 20
    (out / "images").mkdir(parents=True)
    for i in range(distinct):
        Image.new("RGB", (64, 48), (i * 12, 80, 160)).save(out / "images" / f"o{i}.png")
    uri = png_uri(32, 24)
    with Ledger.open(out) as ledger:
        ledger.plan(
            _Item(f"k{i:05d}", {"prompt": f"edit {i}", "image_urls": [uri]}) for i in range(n)
        )
    # The run's end state, written in one transaction (10,000 API calls would be slow here).
    with sqlite3.connect(out / "ledger.sqlite") as conn:
        conn.execute(
            "UPDATE items SET state = 'completed', attempts = 1, seed = 7, nsfw = '[false]',"
            " submitted_at = 100, completed_at = 100.5 + (rowid % 50) / 10.0"
        )
        conn.execute(
            "UPDATE items SET state = 'failed', error_kind = 'permanent',"
            " error_message = 'HTTP 422: no' WHERE rowid % 100 = 7"
        )
        conn.execute(
            "INSERT INTO outputs (item_key, idx, path, url, bytes, sha256, width, height,"
            " content_type) SELECT key, 0, 'images/o' || (rowid % ?) || '.png', 'u', 1, '', 64,"
            " 48, 'image/png' FROM items WHERE state = 'completed'",
            (distinct,),
        )

    report = write_report(out, title="big")

    assert report.items == n and report.counts["failed"] == 100
    # the outputs are no bigger than a thumbnail: shown as they are; one for the shared input
    assert report.thumbs_made == 1 and report.thumbs_failed == 0
    assert report.path.stat().st_size < 4_000_000
    dom = await chromium.dom(report.path)
    assert len(dom.cards) == PER_PAGE and dom.body["data-matches"] == str(n)
    assert dom.body["data-thumbs"] == "ok"
    last = await chromium.dom(report.path, f"page={n // PER_PAGE}")
    assert [c["data-key"] for c in last.cards][-1] == f"k{n - 1:05d}"
    assert last.texts["page"] == f"page {n // PER_PAGE} of {n // PER_PAGE}"
    failed = await chromium.dom(report.path, "filter=failed")
    assert failed.body["data-matches"] == "100" and len(failed.cards) == 100


class _Item:
    def __init__(self, key: str, payload: dict[str, object]) -> None:
        self.key = key
        self.endpoint = "fal-ai/firered-image-edit"
        self.payload = payload
        self.source = f"m.jsonl:{key}"


def test_item_data_is_embedded_as_json_that_cannot_close_the_script(tmp_path: Path):
    """A prompt with </script> and markup stays data: escaped in the JSON, shown as text."""
    out = tmp_path / "out"
    prompt = '</script><img src=x onerror=alert(1)> & "quotes"'
    with Ledger.open(out) as ledger:
        ledger.plan([_Item("x", {"prompt": prompt, "image_urls": ["https://example.com/a.png"]})])
    page = write_report(out, title="<b>t</b>").path.read_text(encoding="utf-8")
    assert page.count("</script>") == 2  # the data block's end and the script's end
    data = page.split('id="report-data">', 1)[1].split("</script>", 1)[0]
    [record] = json.loads(data)
    assert record["p"] == prompt
    assert "<b>t</b>" not in page and "&lt;b&gt;t&lt;/b&gt;" in page
