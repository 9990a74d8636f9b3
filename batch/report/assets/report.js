(function () {
  'use strict';
  var DATA = JSON.parse(document.getElementById('report-data').textContent);
  var PER_PAGE = __PER_PAGE__;
  // Views besides the contact sheet ('sheet'), registered before this script runs (compare.js):
  // {label, perPage, noun, units(R, list) → rows, make(R, rows) → nodes, cell(R, it) → card}.
  var VIEWS = window.fireredViews || {};
  var redosOf = lineage(DATA); // original's key → its redo items, each right after it in DATA
  var FILTERS = {
    all: function () { return true; },
    completed: function (it) { return it.s === 'completed'; },
    failed: function (it) { return it.s === 'failed'; },
    flagged: function (it) { return it.f; },
    unfinished: function (it) { return it.s === 'pending' || it.s === 'submitted'; },
    pilot: function (it) { return !!it.pl; },
    redo: function (it) { return !!it.ro || !!redosOf[it.k]; },
    approved: function (it) { return reviewOf(it) === 'approved'; },
    rejected: function (it) { return reviewOf(it) === 'rejected'; },
    unreviewed: function (it) { return reviewOf(it) === 'unreviewed'; }
  };
  var cardHooks = [];
  var view = {view: 'sheet', filter: 'all', q: '', page: 1};
  var grid = document.getElementById('grid');
  var search = document.getElementById('search');
  var generation = 0;

  // Each redo right after the item it redoes (a redo of a redo after that), in place.
  function lineage(data) {
    var byKey = {}, after = {}, any = false;
    data.forEach(function (it) { byKey[it.k] = it; });
    data.forEach(function (it) {
      if (!it.ro || !byKey[it.ro] || it.ro === it.k) return;
      (after[it.ro] = after[it.ro] || []).push(it);
      any = true;
    });
    if (!any) return after;
    var ordered = [], placed = {};
    function put(it) {
      if (placed[it.k]) return;
      placed[it.k] = true;
      ordered.push(it);
      (after[it.k] || []).forEach(put);
    }
    data.forEach(function (it) { if (!it.ro || !byKey[it.ro]) put(it); });
    data.forEach(put); // a cycle of redos (never made by the tool) still shows
    for (var n = 0; n < ordered.length; n++) data[n] = ordered[n];
    return after;
  }
  function readHash() {
    var h = new URLSearchParams(location.hash.slice(1));
    var v = h.get('view');
    view.view = Object.prototype.hasOwnProperty.call(VIEWS, v) ? v : 'sheet';
    var f = h.get('filter');
    view.filter = Object.prototype.hasOwnProperty.call(FILTERS, f) ? f : 'all';
    view.q = h.get('q') || '';
    view.page = Math.max(1, parseInt(h.get('page') || '1', 10) || 1);
    search.value = view.q;
  }
  function writeHash() {
    var h = new URLSearchParams();
    if (view.view !== 'sheet') h.set('view', view.view);
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
  // An item's review: 'rejected' if any output is, 'approved' if every one is, 'unreviewed'
  // while some output is undecided; null for an item without outputs to review.
  function reviewOf(it) {
    if (it.s !== 'completed' || !it.o.length) return null;
    var ok = 0;
    for (var i = 0; i < it.o.length; i++) {
      var r = it.rv && it.rv[i];
      if (r && r.d === 'rejected') return 'rejected';
      if (r && r.d === 'approved') ok++;
    }
    return ok === it.o.length ? 'approved' : 'unreviewed';
  }
  function outputIndex(it, pos) { return it.oi ? it.oi[pos] : pos; }
  function reviewMark(box, r) {
    if (!r || !r.d) return;
    box.classList.add('rv-' + r.d);
    var mark = el('span', 'rv-mark ' + r.d, r.d === 'approved' ? '\u2713' : '\u2717');
    mark.title = r.d + (r.by ? ' by ' + r.by : '');
    box.appendChild(mark);
  }
  function notes(c, it) {
    (it.rv || []).forEach(function (r, pos) {
      if (!r || !r.n) return;
      var who = it.o.length > 1 ? 'Note on output ' + (pos + 1) : 'Note';
      var p = el('p', 'rv-note');
      p.appendChild(el('b', null, who + (r.by ? ' (' + r.by + ')' : '') + ': '));
      p.appendChild(document.createTextNode(r.n));
      c.appendChild(p);
    });
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
  // A side's thumbnails in a near-square grid: 2 side by side, 3 or 4 in 2 columns, and so on
  // (report.css sizes the side from --cols and shrinks it to fit the card).
  function columns(side) {
    var n = side.children.length;
    if (n) side.style.setProperty('--cols', String(Math.ceil(Math.sqrt(n))));
  }
  function card(it) {
    var c = el('article', 'card ' + it.s + (it.f ? ' flagged' : ''));
    c.dataset.key = it.k;
    c.dataset.state = it.s;
    if (it.u !== null && it.u !== undefined) c.dataset.units = String(it.u);
    if (it.et) c.dataset.errorType = it.et;
    var head = el('header');
    head.appendChild(el('span', 'key', it.k));
    head.appendChild(el('span', 'badge ' + it.s, it.s));
    if (it.f) head.appendChild(el('span', 'badge nsfw', 'NSFW'));
    if (it.d) head.appendChild(el('span', 'badge dup', 'possible duplicate'));
    if (it.r) head.appendChild(el('span', 'badge recovered', 'recovered from fal history'));
    lineageBadges(head, c, it);
    var review = reviewOf(it);
    if (review === 'approved' || review === 'rejected') {
      head.appendChild(el('span', 'badge rv ' + review, review));
    }
    c.dataset.review = review || 'none';
    c.appendChild(head);
    var pair = el('div', 'pair');
    var ins = el('div', 'side inputs');
    it.i.forEach(function (m) { ins.appendChild(media(m, 'input')); });
    var outs = el('div', 'side outputs');
    it.o.forEach(function (m, pos) {
      var box = media(m, 'output');
      box.dataset.output = String(outputIndex(it, pos));
      reviewMark(box, it.rv && it.rv[pos]);
      outs.appendChild(box);
    });
    var none = it.s === 'failed' ? 'no output' : it.s;
    if (!it.o.length) outs.appendChild(media([null, null, none], 'output'));
    [ins, outs].forEach(columns);
    pair.appendChild(ins);
    pair.appendChild(el('span', 'arrow', '\u2192'));
    pair.appendChild(outs);
    c.appendChild(pair);
    c.appendChild(el('p', 'prompt', it.p));
    var facts = ['seed ' + (it.sd === null || it.sd === undefined ? '\u2013' : it.sd)];
    if (it.l !== null && it.l !== undefined) facts.push(it.l.toFixed(2) + ' s');
    facts.push(it.a + (it.a === 1 ? ' attempt' : ' attempts'));
    if (it.u !== null && it.u !== undefined) {
      facts.push(it.u + (it.u === 1 ? ' billed unit' : ' billed units'));
    }
    if (it.src) facts.push(it.src);
    c.appendChild(el('p', 'facts', facts.join(' \u00b7 ')));
    if (it.e || it.et) {
      var error = el('p', 'error', it.e || 'error');
      if (it.et) error.appendChild(el('span', 'etype', ' (fal error type: ' + it.et + ')'));
      c.appendChild(error);
    }
    redoStrip(c, it);
    notes(c, it);
    cardHooks.forEach(function (hook) { hook(c, it); });
    return c;
  }
  function lineageBadges(head, c, it) {
    if (it.pl) head.appendChild(el('span', 'badge pilot', 'pilot'));
    if (it.ro) {
      c.classList.add('redo');
      c.dataset.redoOf = it.ro;
      var of = el('button', 'badge redo-of', 'redo of ' + it.ro);
      of.type = 'button';
      of.title = 'Show ' + it.ro;
      of.addEventListener('click', function () { reveal(it.ro); });
      head.appendChild(of);
    }
  }
  // The original's "redone as" strip: each redo's key, state and first output, a click away.
  function redoStrip(c, it) {
    var redos = redosOf[it.k];
    if (!redos) return;
    c.dataset.redoneAs = redos.map(function (r) { return r.k; }).join(' ');
    redos.forEach(function (r) {
      var strip = el('button', 'redone');
      strip.type = 'button';
      strip.dataset.redo = r.k;
      strip.title = 'Show ' + r.k;
      strip.appendChild(el('span', 'redone-label', 'redone as ' + r.k + ' \u2192'));
      strip.appendChild(el('span', 'badge ' + r.s, r.s));
      var review = reviewOf(r);
      if (review === 'approved' || review === 'rejected') {
        strip.appendChild(el('span', 'badge rv ' + review, review));
      }
      if (r.o.length && r.o[0][0]) {
        var img = el('img');
        img.alt = 'output of ' + r.k;
        img.decoding = 'async';
        img.src = r.o[0][0];
        strip.appendChild(img);
      }
      strip.addEventListener('click', function () { reveal(r.k); });
      c.appendChild(strip);
    });
  }
  // Bring an item's card into view: on this page, scroll to it; else search for it.
  function reveal(key) {
    var found = cardOf(key);
    if (found) {
      found.scrollIntoView({block: 'center'});
      found.classList.remove('flash');
      void found.offsetWidth; // restart the highlight
      found.classList.add('flash');
    } else {
      go({filter: 'all', q: key, page: 1});
    }
  }
  function cardOf(key) {
    var cards = grid.querySelectorAll('article.card');
    for (var n = 0; n < cards.length; n++) if (cards[n].dataset.key === key) return cards[n];
    return null;
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
    var mode = VIEWS[view.view] || null;
    var units = mode ? mode.units(api, list) : list;
    var per = mode ? mode.perPage : PER_PAGE;
    var pages = Math.max(1, Math.ceil(units.length / per));
    view.page = Math.min(view.page, pages);
    var start = (view.page - 1) * per;
    var slice = units.slice(start, start + per);
    generation++;
    grid.className = mode ? 'grid view-' + view.view : 'grid';
    grid.replaceChildren.apply(grid, mode ? mode.make(api, slice) : slice.map(card));
    if (!slice.length) grid.appendChild(el('p', 'empty', 'No items match.'));
    document.querySelectorAll('[data-filter]').forEach(function (b) {
      b.classList.toggle('active', b.dataset.filter === view.filter);
    });
    document.querySelectorAll('[data-view]').forEach(function (b) {
      b.classList.toggle('active', b.dataset.view === view.view);
      b.setAttribute('aria-pressed', b.dataset.view === view.view ? 'true' : 'false');
    });
    var noun = mode ? ' ' + mode.noun : '';
    var shown = units.length ? (start + 1) + '\u2013' + (start + slice.length) + ' of ' +
      units.length + noun : '0 of 0' + noun;
    document.getElementById('shown').textContent = shown;
    document.getElementById('page').textContent = 'page ' + view.page + ' of ' + pages;
    document.getElementById('prev').disabled = view.page <= 1;
    document.getElementById('next').disabled = view.page >= pages;
    document.body.dataset.view = view.view;
    document.body.dataset.filter = view.filter;
    document.body.dataset.items = String(list.length);
    document.body.dataset.matches = String(units.length);
    document.body.dataset.cards = String(grid.querySelectorAll('article.card').length);
    watchThumbs(generation);
  }
  function go(changes) {
    for (var k in changes) view[k] = changes[k];
    writeHash();
    render();
    window.scrollTo(0, 0);
  }
  function countFilters() {
    document.querySelectorAll('[data-filter]').forEach(function (b) {
      var n = b.querySelector('.n') || b.appendChild(el('span', 'n'));
      n.textContent = ' (' + DATA.filter(FILTERS[b.dataset.filter]).length + ')';
    });
  }
  // One card made again from its record (a review changed), in place: the view stays.
  function refresh(key) {
    var mode = VIEWS[view.view] || null;
    var cards = grid.querySelectorAll('article.card');
    for (var i = 0; i < cards.length; i++) {
      if (cards[i].dataset.key !== key) continue;
      var it = DATA.find(function (x) { return x.k === key; });
      if (it) cards[i].replaceWith(mode ? mode.cell(api, it) : card(it));
    }
    countFilters();
  }
  countFilters();
  var named = Object.keys(VIEWS);
  if (named.length) {
    document.getElementById('views').hidden = false;
    named.forEach(function (name) {
      var b = document.querySelector('[data-view="' + name + '"]');
      if (b) b.textContent = VIEWS[name].label;
    });
  }
  document.querySelectorAll('[data-view]').forEach(function (b) {
    if (b.dataset.view !== 'sheet' && !VIEWS[b.dataset.view]) b.remove();
    b.addEventListener('click', function () { go({view: b.dataset.view, page: 1}); });
  });
  document.querySelectorAll('[data-filter]').forEach(function (b) {
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
  var api = window.fireredReport = {
    data: DATA, view: view, grid: grid, render: render, go: go, refresh: refresh,
    reviewOf: reviewOf, outputIndex: outputIndex, cardHooks: cardHooks,
    // for the views (compare.js): the card's parts
    el: el, media: media, columns: columns, reviewMark: reviewMark, notes: notes,
    lineageBadges: lineageBadges, redosOf: redosOf, matches: FILTERS, reveal: reveal
  };
  readHash();
  render();
})();
