"""The report's page: one HTML document with its CSS, script and data inline.

`render_page` fills the template; `histogram_svg` draws the latency histogram. The script
renders the cards from the embedded JSON (``textContent`` only, never HTML from data), a page
of `PER_PAGE` at a time, and keeps the view in the URL's hash (``#filter=failed&q=cat&page=2``),
so a view can be linked, and a headless browser can open one. When a page's thumbnails have all
settled it sets ``data-thumbs`` on <body> to ``ok`` (every one decoded) or ``broken``.

Item records: ``k`` key, ``s`` state, ``p`` prompt, ``sd`` seed, ``l`` latency (s), ``f`` NSFW
flagged, ``a`` attempts, ``src`` manifest file:line, ``e`` error, ``d`` possible duplicate,
``i``/``o`` inputs/outputs as ``[thumbnail URL, link, label]``.
"""

from __future__ import annotations

import html
import math
from collections.abc import Mapping, Sequence
from typing import Any

PER_PAGE = 100
BINS = 24

_CSS = """
*{box-sizing:border-box}
body{margin:0;font:14px/1.4 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#1d2330;
background:#f3f4f7}
header.top{background:#1d2330;color:#fff;padding:14px 24px;display:flex;flex-wrap:wrap;
gap:8px 24px;align-items:baseline}
header.top h1{font-size:18px;margin:0}
header.top .meta{color:#aab3c5;font-size:12px}
main{padding:16px 24px}
.summary{display:flex;flex-wrap:wrap;gap:12px;align-items:stretch}
.tile{background:#fff;border-radius:8px;padding:10px 16px;min-width:110px;
box-shadow:0 1px 2px rgba(0,0,0,.08);align-self:flex-start}
.tile b{display:block;font-size:22px}
.tile span{color:#5b6477;font-size:12px;text-transform:uppercase;letter-spacing:.04em}
.tile.completed b{color:#1f8a4c}.tile.failed b{color:#c62828}.tile.flagged b{color:#b26a00}
.hist{background:#fff;border-radius:8px;padding:8px 12px;box-shadow:0 1px 2px rgba(0,0,0,.08)}
.hist svg{display:block}
.cost{color:#5b6477;margin:8px 0 0}
.controls{display:flex;flex-wrap:wrap;gap:8px;align-items:center;margin:16px 0;position:sticky;
top:0;background:#f3f4f7;padding:8px 0;z-index:1}
.controls button{border:1px solid #c9cfdb;background:#fff;border-radius:16px;padding:4px 12px;
cursor:pointer;font:inherit}
.controls button.active{background:#1d2330;color:#fff;border-color:#1d2330}
.controls button:disabled{opacity:.4;cursor:default}
.controls input{flex:1;min-width:200px;max-width:420px;padding:5px 10px;border-radius:16px;
border:1px solid #c9cfdb;font:inherit}
#shown{color:#5b6477}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(440px,1fr));gap:14px}
.card{background:#fff;border-radius:8px;padding:10px 12px;box-shadow:0 1px 2px rgba(0,0,0,.08);
border-left:4px solid #1f8a4c;min-width:0}
.card.failed{border-left-color:#c62828}.card.pending,.card.submitted{border-left-color:#8a93a6}
.card.flagged{border-left-color:#b26a00}
.card header{display:flex;gap:6px;align-items:center;margin-bottom:8px;min-width:0}
.key{font-weight:600;overflow:hidden;text-overflow:ellipsis;white-space:nowrap}
.badge{font-size:11px;padding:1px 7px;border-radius:9px;background:#e4f4ea;color:#1f6b3d;
white-space:nowrap}
.badge.failed{background:#fde7e7;color:#a31d1d}.badge.pending,.badge.submitted{background:#eceef3;
color:#4a5264}.badge.nsfw,.badge.dup{background:#fff1db;color:#8a5200}
.pair{display:flex;align-items:center;gap:8px;overflow-x:auto}
.side{display:flex;gap:6px}
.arrow{color:#8a93a6;font-size:20px}
.media{display:block;width:128px;height:128px;border-radius:4px;background:#eceef3;flex:none;
overflow:hidden}
.media img{width:100%;height:100%;object-fit:contain;display:block}
.ph{display:flex;width:100%;height:100%;align-items:center;justify-content:center;color:#6b7487;
font-size:12px;text-align:center;padding:6px}
.prompt{margin:8px 0 4px;overflow-wrap:anywhere}
.facts{color:#5b6477;font-size:12px;margin:0}
.error{color:#a31d1d;font-size:12px;margin:4px 0 0;overflow-wrap:anywhere}
.pager{display:flex;gap:8px;align-items:center;justify-content:center;margin:16px 0}
.empty{color:#5b6477;padding:24px;text-align:center}
"""

_SCRIPT = r"""
(function () {
  'use strict';
  var DATA = JSON.parse(document.getElementById('report-data').textContent);
  var PER_PAGE = %(per_page)d;
  var FILTERS = {
    all: function () { return true; },
    completed: function (it) { return it.s === 'completed'; },
    failed: function (it) { return it.s === 'failed'; },
    flagged: function (it) { return it.f; },
    unfinished: function (it) { return it.s === 'pending' || it.s === 'submitted'; }
  };
  var view = {filter: 'all', q: '', page: 1};
  var grid = document.getElementById('grid');
  var search = document.getElementById('search');
  var generation = 0;

  function readHash() {
    var h = new URLSearchParams(location.hash.slice(1));
    var f = h.get('filter');
    view.filter = Object.prototype.hasOwnProperty.call(FILTERS, f) ? f : 'all';
    view.q = h.get('q') || '';
    view.page = Math.max(1, parseInt(h.get('page') || '1', 10) || 1);
    search.value = view.q;
  }
  function writeHash() {
    var h = new URLSearchParams();
    if (view.filter !== 'all') h.set('filter', view.filter);
    if (view.q) h.set('q', view.q);
    if (view.page > 1) h.set('page', String(view.page));
    var text = h.toString();
    history.replaceState(null, '', text ? '#' + text : location.pathname + location.search);
  }
  function el(tag, cls, text) {
    var node = document.createElement(tag);
    if (cls) node.className = cls;
    if (text !== undefined && text !== null) node.textContent = String(text);
    return node;
  }
  function media(m, what) {
    var box = el(m[1] ? 'a' : 'div', 'media ' + what);
    if (m[1]) { box.href = m[1]; box.target = '_blank'; box.rel = 'noopener'; }
    box.title = what + ' (' + m[2] + ')';
    if (m[0]) {
      var img = el('img');
      img.alt = what;
      img.decoding = 'async';
      img.src = m[0];
      box.appendChild(img);
    } else {
      box.appendChild(el('span', 'ph', m[2]));
    }
    return box;
  }
  function card(it) {
    var c = el('article', 'card ' + it.s + (it.f ? ' flagged' : ''));
    c.dataset.key = it.k;
    c.dataset.state = it.s;
    var head = el('header');
    head.appendChild(el('span', 'key', it.k));
    head.appendChild(el('span', 'badge ' + it.s, it.s));
    if (it.f) head.appendChild(el('span', 'badge nsfw', 'NSFW'));
    if (it.d) head.appendChild(el('span', 'badge dup', 'possible duplicate'));
    c.appendChild(head);
    var pair = el('div', 'pair');
    var ins = el('div', 'side inputs');
    it.i.forEach(function (m) { ins.appendChild(media(m, 'input')); });
    var outs = el('div', 'side outputs');
    it.o.forEach(function (m) { outs.appendChild(media(m, 'output')); });
    var none = it.s === 'failed' ? 'no output' : it.s;
    if (!it.o.length) outs.appendChild(media([null, null, none], 'output'));
    pair.appendChild(ins);
    pair.appendChild(el('span', 'arrow', '\u2192'));
    pair.appendChild(outs);
    c.appendChild(pair);
    c.appendChild(el('p', 'prompt', it.p));
    var facts = ['seed ' + (it.sd === null || it.sd === undefined ? '\u2013' : it.sd)];
    if (it.l !== null && it.l !== undefined) facts.push(it.l.toFixed(2) + ' s');
    facts.push(it.a + (it.a === 1 ? ' attempt' : ' attempts'));
    if (it.src) facts.push(it.src);
    c.appendChild(el('p', 'facts', facts.join(' \u00b7 ')));
    if (it.e) c.appendChild(el('p', 'error', it.e));
    return c;
  }
  function matching() {
    var q = view.q.toLowerCase();
    var keep = FILTERS[view.filter];
    return DATA.filter(function (it) {
      return keep(it) && (!q || it.k.toLowerCase().indexOf(q) >= 0 ||
        (it.p || '').toLowerCase().indexOf(q) >= 0);
    });
  }
  function watchThumbs(gen) {
    var imgs = Array.prototype.slice.call(grid.querySelectorAll('img'));
    var left = imgs.length, broken = 0;
    function settle(img) {
      if (!(img.naturalWidth > 0)) broken++;
      if (--left === 0) finish();
    }
    function finish() {
      if (gen !== generation) return;
      document.body.dataset.thumbs = broken ? 'broken' : 'ok';
      document.body.dataset.thumbsLoaded = String(imgs.length - broken);
      document.body.dataset.thumbsBroken = String(broken);
    }
    document.body.dataset.thumbs = 'loading';
    if (!imgs.length) { finish(); return; }
    imgs.forEach(function (img) {
      if (img.complete) { settle(img); return; }
      img.addEventListener('load', function () { settle(img); }, {once: true});
      img.addEventListener('error', function () { settle(img); }, {once: true});
    });
  }
  function render() {
    var list = matching();
    var pages = Math.max(1, Math.ceil(list.length / PER_PAGE));
    view.page = Math.min(view.page, pages);
    var start = (view.page - 1) * PER_PAGE;
    var slice = list.slice(start, start + PER_PAGE);
    generation++;
    grid.replaceChildren.apply(grid, slice.map(card));
    if (!slice.length) grid.appendChild(el('p', 'empty', 'No items match.'));
    document.querySelectorAll('[data-filter]').forEach(function (b) {
      b.classList.toggle('active', b.dataset.filter === view.filter);
    });
    var shown = list.length ? (start + 1) + '\u2013' + (start + slice.length) + ' of ' +
      list.length : '0 of 0';
    document.getElementById('shown').textContent = shown;
    document.getElementById('page').textContent = 'page ' + view.page + ' of ' + pages;
    document.getElementById('prev').disabled = view.page <= 1;
    document.getElementById('next').disabled = view.page >= pages;
    document.body.dataset.filter = view.filter;
    document.body.dataset.matches = String(list.length);
    document.body.dataset.cards = String(slice.length);
    watchThumbs(generation);
  }
  function go(changes) {
    for (var k in changes) view[k] = changes[k];
    writeHash();
    render();
    window.scrollTo(0, 0);
  }
  document.querySelectorAll('[data-filter]').forEach(function (b) {
    var n = DATA.filter(FILTERS[b.dataset.filter]).length;
    b.appendChild(document.createTextNode(' (' + n + ')'));
    b.addEventListener('click', function () { go({filter: b.dataset.filter, page: 1}); });
  });
  var typing = null;
  search.addEventListener('input', function () {
    clearTimeout(typing);
    typing = setTimeout(function () { go({q: search.value.trim(), page: 1}); }, 150);
  });
  document.getElementById('prev').addEventListener('click', function () {
    go({page: view.page - 1});
  });
  document.getElementById('next').addEventListener('click', function () {
    go({page: view.page + 1});
  });
  window.addEventListener('hashchange', function () { readHash(); render(); });
  readHash();
  render();
})();
"""

_PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; img-src 'self' data:; \
style-src 'unsafe-inline'; script-src 'unsafe-inline'">
<title>%(title)s · firered-batch report</title>
<style>%(css)s</style>
</head>
<body data-thumbs="loading">
<header class="top"><h1>%(title)s</h1><span class="meta">firered-batch report · %(generated)s \
· %(total)s items</span></header>
<main>
<section class="summary">
%(tiles)s
<div class="hist">%(histogram)s</div>
</section>
%(cost)s
<nav class="controls">
<button type="button" data-filter="all">All</button>
<button type="button" data-filter="completed">Completed</button>
<button type="button" data-filter="failed">Failed</button>
<button type="button" data-filter="flagged">Flagged</button>
<button type="button" data-filter="unfinished">Unfinished</button>
<input id="search" type="search" placeholder="Search prompt or id" aria-label="Search prompt or id">
<span id="shown"></span>
</nav>
<div id="grid" class="grid"></div>
<nav class="pager"><button type="button" id="prev">\u2190 Previous</button><span id="page">\
</span><button type="button" id="next">Next \u2192</button></nav>
</main>
<script type="application/json" id="report-data">%(items)s</script>
<script>%(script)s</script>
</body>
</html>
"""

_TILES = ("total", "completed", "failed", "flagged", "pending", "submitted")


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
    return _PAGE % {
        "title": html.escape(title),
        "generated": html.escape(generated),
        "total": int(summary.get("total", 0)),
        "tiles": tiles,
        "histogram": histogram,
        "cost": f'<p class="cost" id="cost">Cost: {html.escape(cost)}</p>' if cost else "",
        "css": _CSS,
        "items": items_json,
        "script": _SCRIPT % {"per_page": PER_PAGE},
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
