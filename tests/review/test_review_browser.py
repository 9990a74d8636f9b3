"""Reviewing in a real headless Chromium: keys and clicks on the served page, the ledger
behind it, other reviewers' decisions and conflicts, and the static report afterwards.

Set FIRERED_UPDATE_DOCS=1 to write the mid-review screenshot to docs/review.png (the README's
picture); otherwise it goes to the test's temporary folder.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from PIL import Image

from batch.ledger import Ledger
from batch.report.review import ReviewJob, review_server

REPO = Path(__file__).resolve().parents[2]
TOKEN = "browser-test-token-0123456789"
Tab = Any  # conftest.Tab
FIRST, SECOND = ("cat-on-rocket", 0), ("cat-on-rocket", 1)  # the demo's first card: 2 outputs
IDLE = "document.body.dataset.reviewBusy === '0'"


async def open_review(tab: Tab, url: str) -> None:
    await tab.goto(url, "document.body.dataset.reviewReady === 'yes'")
    await tab.until("document.body.dataset.thumbs === 'ok'")


async def focus_is(tab: Tab, key: str, index: int) -> None:
    await tab.until(f"document.body.dataset.reviewFocus === {json.dumps(f'{key}#{index}')}")


async def card(tab: Tab, key: str) -> dict[str, object]:
    """What a card shows of its reviews: its review state, pressed buttons, marks, notes."""
    value = await tab.js(
        f"""(function () {{
          var c = Array.prototype.find.call(document.querySelectorAll('article.card'),
            function (x) {{ return x.dataset.key === {json.dumps(key)}; }});
          function texts(sel) {{
            return Array.prototype.map.call(c.querySelectorAll(sel),
              function (n) {{ return n.textContent; }});
          }}
          return {{review: c.dataset.review, pressed: texts('[aria-pressed="true"]'),
            marks: texts('.rv-mark'), notes: texts('.rv-note'), by: texts('.rv-by'),
            current: c.classList.contains('rv-current')}};
        }})()"""
    )
    assert isinstance(value, dict)
    return value


async def test_keyboard_review_is_saved_in_the_ledger_and_shown_after_a_reload(
    demo_output: Path, browser, tmp_path: Path
):
    """j a j r u r n(note): the first output approved, the second rejected with a note (the
    undone rejection in its history); a reload shows them; the ledger holds them; after the
    server stops, the offline report.html shows them read-only."""
    async with review_server(
        demo_output, token=TOKEN, reviewer="alice", job=ReviewJob("demo")
    ) as server:
        url = server.url
        tab = await browser.new_tab()
        await open_review(tab, url)
        assert await tab.js("location.search") == ""  # the token became a cookie
        assert await tab.js("document.getElementById('count-unreviewed').textContent") == "14"

        await tab.press("j")
        await focus_is(tab, *FIRST)
        await tab.press("a")
        await tab.until(f"{IDLE} && document.getElementById('count-approved').textContent === '1'")
        await tab.press("j")
        await focus_is(tab, *SECOND)
        await tab.press("r")
        await tab.until(f"{IDLE} && document.getElementById('rv-rejected').textContent === '1'")
        await tab.press("u")
        await tab.until(f"{IDLE} && document.getElementById('rv-rejected').textContent === '0'")
        assert "undone" in await tab.js("document.getElementById('rv-toast').textContent")
        await tab.press("r")
        await tab.until(f"{IDLE} && document.getElementById('rv-rejected').textContent === '1'")
        await tab.press("n")
        await tab.until("document.activeElement.id === 'rv-note-text'")
        await tab.type("The cat is floating above the pad")
        await tab.press("Enter")
        await tab.until(f"{IDLE} && document.querySelector('.rv-note') !== null")

        shown = await card(tab, "cat-on-rocket")
        assert shown["review"] == "rejected" and shown["current"] is True
        assert shown["pressed"] == ["\u2713 Approve", "\u2717 Reject"]  # output 1, output 2
        assert shown["marks"] == ["\u2713", "\u2717"]
        assert shown["notes"] == ["Note on output 2 (alice): The cat is floating above the pad"]
        counts = await tab.js(
            "['approved','rejected','unreviewed'].map(function (n) {"
            " return document.getElementById('count-' + n).textContent; })"
        )
        assert counts == ["1", "1", "12"]

        await tab.press("j", "?")  # mid-review: the next card in focus, the help closed again
        await tab.until("!document.getElementById('rv-help').hidden")
        await tab.press("Escape")
        await tab.until("document.getElementById('rv-help').hidden")
        await focus_is(tab, "ink__astronaut", 0)
        await tab.js("window.scrollTo(0, 0)")
        shot_dir = REPO / "docs" if os.environ.get("FIRERED_UPDATE_DOCS") == "1" else tmp_path
        shot = await tab.screenshot(shot_dir / "review.png", width=1400, height=1000)
        with Image.open(shot) as img:
            assert img.size == (1400, 1000)
            assert len(img.getcolors(1_000_000) or []) > 500  # photographs, not a blank page

        await open_review(tab, url.split("?")[0])  # reload: the cookie alone lets it in
        again = await card(tab, "cat-on-rocket")
        assert again["review"] == "rejected" and again["marks"] == ["\u2713", "\u2717"]
        assert again["notes"] == shown["notes"]
        assert again["by"] == ["by alice", "by alice"]

    with Ledger.open(demo_output) as ledger:
        reviews = ledger.reviews
        first, second = reviews.decision(*FIRST), reviews.decision(*SECOND)
        assert (first.decision, first.reviewer, first.version) == ("approved", "alice", 1)
        assert (second.decision, second.note) == ("rejected", "The cat is floating above the pad")
        assert [e.action for e in reviews.history(*SECOND)] == ["decide", "undo", "decide", "note"]
        assert reviews.rejected_items() == ["cat-on-rocket"] and reviews.accepted_items() == []

    # The static report, offline from file://, shows the decisions and no review controls.
    report = demo_output / "report.html"
    await tab.goto(report.as_uri() + "#filter=rejected", "document.body.dataset.cards === '1'")
    static = await card(tab, "cat-on-rocket")
    assert static["marks"] == ["\u2713", "\u2717"] and static["notes"] == shown["notes"]
    assert static["pressed"] == [] and await tab.js("document.getElementById('review-bar')") is None
    assert await tab.js("document.body.dataset.reviews") == "some"


async def test_another_reviewers_decisions_show_and_a_stale_click_is_not_saved(
    demo_output: Path, browser
):
    """Bob decides (another connection) after the page loaded: Alice's click on that output
    gets a conflict that shows Bob's decision and saves nothing; clicking again decides over
    it on purpose. A later decision of Bob's appears on the next poll."""
    async with review_server(demo_output, token=TOKEN, reviewer="alice") as server:
        url = server.url
        tab = await browser.new_tab()
        await open_review(tab, url)
        with Ledger.open(demo_output) as bob:
            bob.reviews.decide(*FIRST, "approved", "love it", reviewer="bob", expect_version=0)

        reject = "article.card[data-key='cat-on-rocket'] .rv-row[data-output='0'] .rv-btn.reject"
        await tab.click(reject)  # a real mouse click
        await tab.until(f"{IDLE} && document.body.dataset.reviewMessage")
        message = await tab.js("document.getElementById('rv-toast').textContent")
        assert message.startswith("Not saved: cat-on-rocket output 1 was changed by another")
        shown = await card(tab, "cat-on-rocket")
        assert shown["by"] == ["by bob"] and shown["marks"] == ["\u2713"]
        assert await tab.js("document.body.dataset.reviewFocus") == "cat-on-rocket#0"
        with Ledger.open(demo_output) as ledger:
            assert ledger.reviews.decision(*FIRST).reviewer == "bob"  # nothing overwritten

        await tab.click(reject)  # seen now: deciding over it is deliberate
        await tab.until(f"{IDLE} && document.getElementById('rv-rejected').textContent === '1'")
        with Ledger.open(demo_output) as ledger:
            now = ledger.reviews.decision(*FIRST)
            assert (now.decision, now.reviewer, now.note, now.version) == (
                "rejected",
                "alice",
                "love it",
                2,
            )
            ledger.reviews.decide("ink__cat", 0, "approved", reviewer="bob")

        await tab.js("window.fireredReview.poll()")
        await tab.until("document.getElementById('count-approved').textContent === '1'")
        assert (await card(tab, "ink__cat"))["by"] == ["by bob"]
        assert "bob: ink__cat approved" in await tab.js(
            "document.getElementById('rv-toast').textContent"
        )
