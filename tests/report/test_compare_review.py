"""The Compare view of the demo's photographs on three endpoints, reviewed in a real headless
Chromium (over the DevTools protocol: tests/review/conftest.py's `browser`), and its picture.

The demo manifest's matrix (4 photographs × 3 prompts; its two-image item is left out: qwen and
FLUX Kontext take one image) is run on three endpoints against the simulator. Set
FIRERED_UPDATE_DOCS=1 to write the Compare view's screenshot to docs/compare.png (the README's
picture); otherwise it goes to the test's temporary folder.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from PIL import Image
from support import Runner

from batch.job import JobSpec
from batch.ledger import Ledger
from batch.ledger.prices import keep_price
from batch.manifest.pricing import PriceSpec
from batch.report.review import ReviewJob, review_server
from batch.report.sheet import report_for

REPO = Path(__file__).resolve().parents[2]
FIRERED, QWEN, KONTEXT = (
    "fal-ai/firered-image-edit",
    "fal-ai/qwen-image-edit",
    "fal-ai/flux-kontext/dev",
)
ENDPOINTS = (FIRERED, QWEN, KONTEXT)
TOKEN = "compare-test-token-0123456789"
IDLE = "document.body.dataset.reviewBusy === '0'"


def _review_browser() -> ModuleType:
    """tests/review/conftest.py, loaded once under a name of its own: its DevTools `browser`."""
    name = "review_browser_conftest"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, REPO / "tests/review/conftest.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


browser = _review_browser().browser  # the fixture, for this module's tests


@pytest.fixture
async def compared(runner: Runner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> JobSpec:
    """The demo's matrix on three endpoints, with each endpoint's price kept in the ledger (the
    run learns the first one's from the simulator's pricing API; the others as a run that
    asked fal for them would keep them)."""
    shutil.copytree(REPO / "manifests", tmp_path / "manifests")
    demo = (tmp_path / "manifests" / "demo.yaml").read_text(encoding="utf-8")
    manifest = tmp_path / "manifests" / "compare.yaml"
    manifest.write_text(demo.split("\nitems:", 1)[0] + "\n", encoding="utf-8")
    monkeypatch.chdir(tmp_path)  # the rows name manifests/compare.yaml:line
    await runner.start(latency="uniform:0.2,0.8", seed=1, capacity=12)
    spec = runner.spec(manifest, name="demo", endpoints=list(ENDPOINTS), concurrency=12)
    summary = await runner.run(spec)
    assert summary.exit_code == 0 and summary.counts["completed"] == 36, summary.text()
    with Ledger.open(spec.output) as ledger:
        keep_price(ledger, QWEN, PriceSpec(per_megapixel=0.03))
        keep_price(ledger, KONTEXT, PriceSpec(per_megapixel=0.025))
    report_for(spec)
    return spec


async def _cell(tab: Any, key: str) -> dict[str, Any]:
    selector = f"article.card.cell[data-key={json.dumps(key)}]"
    value = await tab.js(
        f"""(function () {{
          var c = document.querySelector({json.dumps(selector)});
          return {{review: c.dataset.review, endpoint: c.parentNode.dataset.endpoint,
            marks: Array.prototype.map.call(c.querySelectorAll('.rv-mark'),
              function (n) {{ return n.textContent; }}),
            current: c.classList.contains('rv-current')}};
        }})()"""
    )
    assert isinstance(value, dict)
    return value


async def test_reviewing_in_the_compare_view_by_keys_and_buttons(
    compared: JobSpec, browser, tmp_path: Path
):
    """In ``#view=compare`` j walks the cells of a row, endpoint by endpoint: a approves the
    first input's FireRed output, r rejects its qwen output, a click on the FLUX cell's
    Approve button approves that one; the ledger holds the three, and the static report's
    Compare view shows them (the picture for the README)."""
    job = ReviewJob("demo", None, FIRERED, ENDPOINTS)
    async with review_server(compared.output, token=TOKEN, reviewer="alice", job=job) as server:
        tab = await browser.new_tab()
        await tab.goto(server.url, "document.body.dataset.reviewReady === 'yes'")
        await tab.js("location.hash = 'view=compare'")
        await tab.until("document.body.dataset.view === 'compare'")
        await tab.until("document.body.dataset.thumbs === 'ok'")
        headers = await tab.js(
            "Array.prototype.map.call(document.querySelectorAll('th.cmp-head[data-endpoint]'),"
            " function (th) { return th.dataset.endpoint; })"
        )
        assert headers == list(ENDPOINTS)  # the job's order, from ReviewJob.endpoints
        first = await tab.js("document.querySelector('tr.cmp-row').dataset.input")
        keys = [f"{first}@{alias}" for alias in ("firered-image-edit", "qwen-image-edit")]

        await tab.press("j")
        await tab.until(f"document.body.dataset.reviewFocus === {json.dumps(keys[0] + '#0')}")
        await tab.press("a")
        await tab.until(f"{IDLE} && document.getElementById('count-approved').textContent === '1'")
        await tab.press("j")
        await tab.until(f"document.body.dataset.reviewFocus === {json.dumps(keys[1] + '#0')}")
        await tab.press("r")
        await tab.until(f"{IDLE} && document.getElementById('rv-rejected').textContent === '1'")
        button = f"tr.cmp-row td[data-endpoint='{KONTEXT}'] .rv-btn.approve"
        await tab.click(button)  # a real mouse click on the FLUX cell's button
        await tab.until(f"{IDLE} && document.getElementById('count-approved').textContent === '2'")

        assert await _cell(tab, keys[0]) == {
            "review": "approved",
            "endpoint": FIRERED,
            "marks": ["\u2713"],
            "current": False,
        }
        qwen = await _cell(tab, keys[1])
        assert qwen["review"] == "rejected" and qwen["marks"] == ["\u2717"]
        flux = await _cell(tab, f"{first}@flux-kontext-dev")
        assert flux["review"] == "approved" and flux["current"] is True
        assert await tab.js("document.body.dataset.view") == "compare"  # still compared

    with Ledger.open(compared.output) as ledger:
        assert ledger.reviews.decision(keys[0], 0).decision == "approved"
        assert ledger.reviews.decision(keys[1], 0).decision == "rejected"
        assert ledger.reviews.decision(f"{first}@flux-kontext-dev", 0).reviewer == "alice"

    # The static report, offline, shows the Compare view with the decisions: the picture.
    report = compared.output / "report.html"
    await tab.send("Emulation.setDeviceMetricsOverride", width=1400, height=1000,
                   deviceScaleFactor=1, mobile=False)  # fmt: skip
    await tab.goto(report.as_uri() + "#view=compare", "document.body.dataset.view === 'compare'")
    await tab.until("document.body.dataset.thumbs === 'ok'")
    assert await tab.js("document.querySelectorAll('.cmp .rv-mark').length") == 3
    assert await tab.js("document.getElementById('review-bar')") is None
    scroll = await tab.js("document.querySelector('.cmp-wrap').scrollWidth")
    assert scroll <= await tab.js("document.querySelector('.cmp-wrap').clientWidth")
    shot_dir = REPO / "docs" if os.environ.get("FIRERED_UPDATE_DOCS") == "1" else tmp_path
    shot = await tab.screenshot(shot_dir / "compare.png", width=1400, height=1000)
    with Image.open(shot) as img:
        assert img.size == (1400, 1000)
        assert len(img.getcolors(1_000_000) or []) > 500  # photographs, not a blank page
