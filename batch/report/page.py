"""The report's page: one HTML document with its CSS, script and data inline.

The template, CSS and script are package data (``assets/report.html``, ``report.css``,
``report.js``), read once; the script's ``__PER_PAGE__`` becomes `PER_PAGE`. `render_page` fills
the template (``%``-style placeholders); `histogram_svg` draws the latency histogram. The script
renders the cards from the embedded JSON (``textContent`` only, never HTML from data), a page
of `PER_PAGE` at a time, and keeps the view in the URL's hash (``#filter=failed&q=cat&page=2``),
so a view can be linked, and a headless browser can open one. When a page's thumbnails have all
settled it sets ``data-thumbs`` on <body> to ``ok`` (every one decoded) or ``broken``.

Item records: ``k`` key, ``s`` state, ``p`` prompt, ``sd`` seed, ``l`` latency (s), ``f`` NSFW
flagged, ``a`` attempts, ``src`` manifest file:line, ``e`` error, ``d`` possible duplicate,
``r`` recovered from fal's request history, ``i``/``o`` inputs/outputs as
``[thumbnail URL, link, label]``, ``oi`` the outputs' indexes (when not 0, 1, …), ``rv`` their
reviews (``{d: approved|rejected|null, n: note, by: reviewer, v: version}`` or null each).

People's reviews show read-only: a badge on each output, the note, tiles (approved, rejected,
to review) and filters; <body data-reviews> is ``none`` (nothing reviewed yet: the review filters
are hidden), ``some``, or ``live`` (the review server's page). The script exposes
``window.fireredReport`` (its data, view, `render`, `refresh` of one card, and `cardHooks` run on
each card it makes), through which the review server's `PageExtras` script adds its controls.

Pilots and redos: ``pl`` the item was in a pilot's sample (a badge, the Pilot filter), ``ro`` the
key of the rejected item it redoes; the script puts each redo right after its original (a "redo
of" badge), and the original's card shows a "redone as" strip with the redo's output.

A comparison (a ledger with several endpoints, `batch.report.compare`) adds ``en``, ``b`` and
``c`` to the records and embeds its totals as ``compare-data``; ``assets/compare.js`` then offers
the Compare view (``#view=compare``): one row per input, one column per endpoint, a page of
`COMPARE_PER_PAGE` rows at a time. Its cells are cards too (``article.card``, with the same
`cardHooks`), so the review server's keys and buttons work there as on the contact sheet.
"""

from __future__ import annotations

import html
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from importlib.resources import files
from typing import Any

PER_PAGE = 100
COMPARE_PER_PAGE = 50  # rows of the Compare view: each has a card per endpoint
BINS = 24

_ASSETS = files("batch.report") / "assets"


@cache
def _assets() -> tuple[str, str, str]:
    """The page template, its CSS and its script (with `PER_PAGE` filled in), read once. The
    Compare view's script comes first: it registers the view, which the report's script draws."""
    page, css, compare_css, compare, script = (
        (_ASSETS / name).read_text(encoding="utf-8")
        for name in ("report.html", "report.css", "compare.css", "compare.js", "report.js")
    )
    compare = compare.replace("__COMPARE_PER_PAGE__", str(COMPARE_PER_PAGE), 1)
    return page, css + compare_css, compare + script.replace("__PER_PAGE__", str(PER_PAGE), 1)


CSP = (
    "default-src 'none'; img-src 'self' data:; style-src 'unsafe-inline';"
    " script-src 'unsafe-inline'"
)


@dataclass(frozen=True, slots=True)
class PageExtras:
    """What the review server adds to the page: CSS and a script after the report's own, and
    fetch() to the page's own origin (``connect-src 'self'``)."""

    css: str = ""
    script: str = ""


_REVIEW_TILES = (("approved", "approved"), ("rejected", "rejected"), ("unreviewed", "to review"))
_TILES = (
    "total",
    "completed",
    "failed",
    "flagged",
    "pending",
    "submitted",
    "recovered",  # lost submit answers found in fal's history
    "resubmitted",  # lost submit answers sent again
    "pilot",  # items of a pilot's sample (run --sample)
    "redos",  # redos of rejected items (retry --rejected)
)


def render_page(
    *,
    title: str,
    generated: str,
    summary: Mapping[str, Any],
    histogram: str,
    items_json: str,
    extras: PageExtras | None = None,
    compare_json: str | None = None,
) -> str:
    """The whole document. `items_json` and `compare_json` (`Compared.json`; None: no
    comparison) must already be safe inside <script> (no ``<``). ``summary["review"]``: output
    images by review (`ReviewCounts.as_dict`), if known."""
    tiles = "\n".join(
        _tile(name, name, summary.get(name, 0))
        for name in _TILES
        if name in ("total", "completed", "failed") or summary.get(name)
    )
    review = summary.get("review") or {}
    reviews = (
        "live" if extras else "some" if review.get("approved") or review.get("rejected") else "none"
    )
    if reviews != "none":
        tiles += "\n" + "\n".join(
            _tile(name, label, review.get(name, 0), "review ") for name, label in _REVIEW_TILES
        )
    cost = summary.get("cost")
    page, css, script = _assets()
    if extras is not None:
        css, script = css + extras.css, script + extras.script
    return page % {
        "csp": CSP + ("; connect-src 'self'" if extras else ""),
        "reviews": reviews,
        "pilot": "some" if summary.get("pilot") else "none",
        "redos": "some" if summary.get("redos") else "none",
        "title": html.escape(title),
        "generated": html.escape(generated),
        "total": int(summary.get("total", 0)),
        "tiles": tiles,
        "histogram": histogram,
        "cost": f'<p class="cost" id="cost">Cost: {html.escape(cost)}</p>' if cost else "",
        "css": css,
        "items": items_json,
        "compare": (
            ""
            if compare_json is None
            else f'<script type="application/json" id="compare-data">{compare_json}</script>'
        ),
        "script": script,
    }


def _tile(name: str, label: str, value: Any, kind: str = "") -> str:
    return (
        f'<div class="tile {kind}{name}"><b id="count-{name}">{int(value or 0)}</b>'
        f"<span>{html.escape(label)}</span></div>"
    )


def histogram_svg(values: Sequence[float], *, width: int = 440, height: int = 120) -> str:
    """An inline SVG histogram of latencies (seconds), with median and p95 in its caption."""
    if not values:
        return (
            f'<svg id="latency" width="{width}" height="40" role="img" aria-label="no latencies">'
            '<text x="0" y="24" font-size="12" fill="#5b6477">Latency: no completed items yet'
            "</text></svg>"
        )
    ordered = sorted(values)
    median, p95 = quantile(ordered, 0.5), quantile(ordered, 0.95)
    top = ordered[-1] if ordered[-1] > 0 else 1.0
    step = top / BINS
    counts = [0] * BINS
    for v in ordered:
        counts[min(BINS - 1, int(v / step))] += 1
    plot_h, base = height - 44, height - 22
    peak = max(counts)
    bar_w = width / BINS
    bars = "".join(
        f'<rect x="{i * bar_w + 1:.1f}" y="{base - c / peak * plot_h:.1f}" width="{bar_w - 2:.1f}"'
        f' height="{c / peak * plot_h:.1f}" fill="#4a7bd0"><title>{i * step:.2f}–'
        f"{(i + 1) * step:.2f} s: {c}</title></rect>"
        for i, c in enumerate(counts)
        if c
    )
    caption = f"Latency, submit to done: median {median:.2f} s, p95 {p95:.2f} s"
    return (
        f'<svg id="latency" width="{width}" height="{height}" viewBox="0 0 {width} {height}"'
        f' role="img" aria-label="{html.escape(caption)}">'
        f'<text x="0" y="12" font-size="12" fill="#1d2330">{html.escape(caption)}</text>'
        f'<line x1="0" y1="{base}" x2="{width}" y2="{base}" stroke="#c9cfdb"/>{bars}'
        f'<text x="0" y="{height - 6}" font-size="11" fill="#5b6477">0 s</text>'
        f'<text x="{width}" y="{height - 6}" font-size="11" fill="#5b6477" text-anchor="end">'
        f"{top:.2f} s</text></svg>"
    )


def quantile(ordered: Sequence[float], q: float) -> float:
    index = max(0, math.ceil(q * len(ordered)) - 1)
    return ordered[index]
