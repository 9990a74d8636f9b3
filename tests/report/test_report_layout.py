"""The report's cards in a real headless Chromium: every thumbnail fits its card, no side scroll.

An item with several outputs (``num_images``) used to put its second output behind a horizontal
scroll inside its card at a 1400 px wide window. These tests run jobs of such items against the
simulator, open the report at 800, 1400 and 1920 px wide, and measure the laid-out page: a copy
of the report gets a small probe script (an inline script, as the page's CSP allows) that waits
for the thumbnails to settle (``data-thumbs``), then writes what it measured into the DOM, which
the `chromium` fixture dumps.
"""

from __future__ import annotations

import asyncio
import html
import itertools
import json
import re
from pathlib import Path
from typing import Any

import pytest
from PIL import Image
from support import png_uri

WIDTHS = (800, 1400, 1920)
HEIGHT = 900
SLACK = 0.5  # px: sub-pixel rounding of boxes
MIN_THUMB = 64  # px: a thumbnail smaller than this is not usefully visible

# Runs after the report's own script: once every thumbnail has settled, it writes the window's
# and the document's widths and every card's boxes into <pre id="layout-probe">.
PROBE = """<script>
(function () {
  var ROWS = 'header, .pair, .side, .media, .prompt, .facts, .error';
  function box(node) {
    var r = node.getBoundingClientRect();
    return {left: r.left, right: r.right, top: r.top, bottom: r.bottom, width: r.width,
      height: r.height};
  }
  function each(nodes, fn) { return Array.prototype.map.call(nodes, fn); }
  function content(node) {  // the content box: inside border and padding
    var r = node.getBoundingClientRect(), st = getComputedStyle(node);
    return {
      left: r.left + parseFloat(st.borderLeftWidth) + parseFloat(st.paddingLeft),
      right: r.right - parseFloat(st.borderRightWidth) - parseFloat(st.paddingRight)
    };
  }
  function card(c) {
    return {
      key: c.dataset.key,
      state: c.dataset.state,
      content: content(c),
      scroll: each([c].concat(Array.prototype.slice.call(c.querySelectorAll(ROWS))),
        function (n) {
          return {what: n.className || n.tagName, scrollWidth: n.scrollWidth,
            clientWidth: n.clientWidth};
        }),
      media: each(c.querySelectorAll('.media'), function (m) {
        var b = box(m), img = m.querySelector('img');
        b.what = m.classList.contains('input') ? 'input' : 'output';
        b.img = img ? box(img) : null;
        return b;
      })
    };
  }
  function measure() {
    if (document.body.dataset.thumbs === 'loading') { setTimeout(measure, 20); return; }
    var out = document.createElement('pre');
    out.id = 'layout-probe';
    out.textContent = JSON.stringify({
      innerWidth: window.innerWidth,
      docClient: document.documentElement.clientWidth,
      docScroll: document.documentElement.scrollWidth,
      thumbs: document.body.dataset.thumbs,
      cards: each(document.querySelectorAll('#grid .card'), card)
    });
    document.body.appendChild(out);
  }
  measure();
})();
</script>
"""
_PROBED = re.compile(r'<pre id="layout-probe">(.*?)</pre>', re.S)


def _manifest(outputs: int, broken: dict[str, Any]) -> list[dict[str, Any]]:
    """Items of `outputs` outputs each: landscape, portrait and tiny inputs, one item with two
    inputs, and a failed one (placeholders for its input and its output)."""
    made = [
        {"id": "wide", "prompt": "paint it", "image_urls": [png_uri(300, 200, (200, 90, 40))]},
        {"id": "tall", "prompt": "paint it", "image_urls": [png_uri(120, 300, (40, 160, 90))]},
        {"id": "tiny", "prompt": "paint it", "image_urls": [png_uri(48, 32, (30, 60, 200))]},
        {
            "id": "two-inputs",
            "prompt": "merge them",
            "image_urls": [png_uri(200, 200, (150, 40, 160)), png_uri(160, 90, (90, 90, 90))],
        },
    ]
    return [{**row, "num_images": outputs} for row in [*made, broken]]


async def _report(make_runner, rows, outputs: int) -> Path:
    runner = await make_runner()
    [broken] = rows(ok=0, flagged=0, broken=1)
    manifest = _manifest(outputs, broken)
    runner.write(manifest)
    summary = await runner.run()
    assert summary.counts["completed"] == len(manifest) - 1 and summary.counts["failed"] == 1
    return runner.out / "report.html"


async def _layout(chromium, page: Path, width: int) -> dict[str, Any]:
    """What the probe measured in `page` opened in a `width` × `HEIGHT` window."""
    text = page.read_text(encoding="utf-8")
    assert text.count("</body>") == 1
    probed = page.with_name("report-probe.html")  # beside it: thumbs/ and images/ resolve
    probed.write_text(text.replace("</body>", PROBE + "</body>"), encoding="utf-8")
    dumped = await asyncio.to_thread(
        chromium._run, f"--window-size={width},{HEIGHT}", "--dump-dom", probed.as_uri()
    )
    found = _PROBED.search(dumped)
    assert found, "the probe did not run"
    return json.loads(html.unescape(found.group(1)))


def _overlap(a: dict[str, float], b: dict[str, float]) -> bool:
    return (
        min(a["right"], b["right"]) - max(a["left"], b["left"]) > SLACK
        and min(a["bottom"], b["bottom"]) - max(a["top"], b["top"]) > SLACK
    )


def _check_card(card: dict[str, Any], width: int, outputs: int) -> None:
    where = f"{card['key']} at {width} px"
    for row in card["scroll"]:  # nothing in the card scrolls or spills sideways
        assert row["scrollWidth"] <= row["clientWidth"], f"{where}: {row}"
    inside = card["content"]
    media = card["media"]
    for m in media:  # every thumbnail whole, inside its card and the window, of a useful size
        assert m["left"] >= inside["left"] - SLACK, f"{where}: {m} {inside}"
        assert m["right"] <= inside["right"] + SLACK, f"{where}: {m} {inside}"
        assert m["left"] >= -SLACK and m["right"] <= width + SLACK, f"{where}: {m}"
        assert MIN_THUMB <= m["width"] <= 128 + SLACK, f"{where}: {m}"
        assert abs(m["width"] - m["height"]) <= 1, f"{where}: not square: {m}"
        if m["img"] is not None:
            img = m["img"]
            assert img["left"] >= m["left"] - SLACK and img["right"] <= m["right"] + SLACK
            assert img["width"] >= MIN_THUMB - SLACK, f"{where}: {img}"
    for a, b in itertools.combinations(media, 2):
        assert not _overlap(a, b), f"{where}: thumbnails overlap: {a} {b}"
    shown = [m["what"] for m in media]
    inputs = 2 if card["key"] == "two-inputs" else 1
    expected = outputs if card["state"] == "completed" else 1  # a failed item: a placeholder
    assert shown == ["input"] * inputs + ["output"] * expected, where
    images = [m for m in media if m["img"] is not None]
    assert len(images) == (inputs + outputs if card["state"] == "completed" else 0), where


@pytest.mark.parametrize("outputs", [2, 4])
async def test_every_thumbnail_of_a_card_fits_without_side_scroll(
    make_runner, rows, chromium, outputs: int
):
    """Items with 2 or 4 outputs (one with 2 inputs): at 800, 1400 and 1920 px wide, no card,
    thumbnail row or page scrolls sideways, and every input and output thumbnail lies whole
    inside its card and the window, side by side (no overlaps), square, 64 to 128 px. A
    screenshot at 1400 px is left beside the report (``report-1400.png``) for a look."""
    page = await _report(make_runner, rows, outputs)
    for width in WIDTHS:
        layout = await _layout(chromium, page, width)
        assert layout["innerWidth"] == width and layout["thumbs"] == "ok"
        assert layout["docScroll"] <= layout["docClient"], f"the page scrolls at {width} px"
        assert len(layout["cards"]) == 5
        for card in layout["cards"]:
            _check_card(card, width, outputs)

    shot = await chromium.screenshot(page, page.with_name("report-1400.png"), f"1400,{HEIGHT}")
    with Image.open(shot) as img:
        assert img.size == (1400, HEIGHT)
        assert len(img.getcolors(1_000_000) or []) > 50  # a rendered page, not a blank one
