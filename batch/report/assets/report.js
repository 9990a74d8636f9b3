(function () {
  'use strict';
  var DATA = JSON.parse(document.getElementById('report-data').textContent);
  var PER_PAGE = __PER_PAGE__;
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
    c.appendChild(head);
    var pair = el('div', 'pair');
    var ins = el('div', 'side inputs');
    it.i.forEach(function (m) { ins.appendChild(media(m, 'input')); });
    var outs = el('div', 'side outputs');
    it.o.forEach(function (m) { outs.appendChild(media(m, 'output')); });
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
