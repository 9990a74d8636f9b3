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
``[thumbnail URL, link, label]``.
"""

from __future__ import annotations

import html
import math
from collections.abc import Mapping, Sequence
from functools import cache
from importlib.resources import files
from typing import Any

PER_PAGE = 100
BINS = 24

_ASSETS = files("batch.report") / "assets"


@cache
def _assets() -> tuple[str, str, str]:
    """The page template, its CSS and its script (with `PER_PAGE` filled in), read once."""
    page, css, script = (
        (_ASSETS / name).read_text(encoding="utf-8")
        for name in ("report.html", "report.css", "report.js")
    )
    return page, css, script.replace("__PER_PAGE__", str(PER_PAGE), 1)


_TILES = (
    "total",
    "completed",
    "failed",
    "flagged",
    "pending",
    "submitted",
    "recovered",  # lost submit answers found in fal's history
    "resubmitted",  # lost submit answers sent again
)


def render_page(
    *, title: str, generated: str, summary: Mapping[str, Any], histogram: str, items_json: str
) -> str:
    """The whole document. `items_json` must already be safe inside <script> (no ``<``)."""
    tiles = "\n".join(
        f'<div class="tile {name}"><b id="count-{name}">{int(summary.get(name, 0))}</b>'
        f"<span>{name}</span></div>"
        for name in _TILES
        if name in ("total", "completed", "failed") or summary.get(name)
    )
    cost = summary.get("cost")
    page, css, script = _assets()
    return page % {
        "title": html.escape(title),
        "generated": html.escape(generated),
        "total": int(summary.get("total", 0)),
        "tiles": tiles,
        "histogram": histogram,
        "cost": f'<p class="cost" id="cost">Cost: {html.escape(cost)}</p>' if cost else "",
        "css": css,
        "items": items_json,
        "script": script,
    }


def histogram_svg(values: Sequence[float], *, width: int = 440, height: int = 120) -> str:
    """An inline SVG histogram of latencies (seconds), with median and p95 in its caption."""
    if not values:
        return (
            f'<svg id="latency" width="{width}" height="40" role="img" aria-label="no latencies">'
            '<text x="0" y="24" font-size="12" fill="#5b6477">Latency: no completed items yet'
            "</text></svg>"
        )
    ordered = sorted(values)
    median, p95 = _quantile(ordered, 0.5), _quantile(ordered, 0.95)
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


def _quantile(ordered: Sequence[float], q: float) -> float:
    index = max(0, math.ceil(q * len(ordered)) - 1)
    return ordered[index]
