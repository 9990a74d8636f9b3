// The Compare view of a job run on several endpoints (batch/report/compare.py): one row per
// input (its thumbnails and prompt once), one column per endpoint (its output, state, latency
// and cost; a redo below the item it redoes), and a header with each endpoint's totals and the
// total across them (read from the page's compare-data, so they count every item whatever the
// filter). Filters and the search keep the rows with a matching item, the others dimmed. Each
// cell is a card (article.card, with the report's cardHooks), so the review server's keys and
// buttons work here as on the contact sheet. report.js draws it: this registers it first.
(function () {
  'use strict';
  var node = document.getElementById('compare-data');
  var INFO = node ? JSON.parse(node.textContent) : null;
  if (!INFO || !INFO.endpoints || INFO.endpoints.length < 2) return;
  var EPS = INFO.endpoints;
  var ROWS_PER_PAGE = __COMPARE_PER_PAGE__;
  var rows = null; // every input's row, in the data's order: {b, cells: [[items] per endpoint]}
  var matched = null; // keys the filter and search keep (null: every item)

  function usd(v) { // as batch.report.compare.fine_usd: $0.00639, $0.0197, $1,234.50
    if (v === 0 || Math.abs(v) >= 1) {
      return '$' + v.toLocaleString('en-US', {minimumFractionDigits: 2, maximumFractionDigits: 2});
    }
    var parts = Number(v.toPrecision(3)).toFixed(8).replace(/0+$/, '').split('.');
    return '$' + parts[0] + '.' + (parts[1] + '00').slice(0, Math.max(2, parts[1].length));
  }
  function seconds(v) { return v === null || v === undefined ? '\u2013' : v.toFixed(2) + ' s'; }
  function units(v) { return (+v.toPrecision(4)) + (v === 1 ? ' billed unit' : ' billed units'); }
  function allRows(R) {
    if (rows) return rows;
    rows = [];
    var at = {};
    R.data.forEach(function (it) {
      var b = it.b === undefined ? it.k : it.b;
      var row = at[b];
      if (!row) {
        row = at[b] = {b: b, cells: EPS.map(function () { return []; })};
        rows.push(row);
      }
      var col = it.en === undefined ? 0 : it.en;
      (row.cells[col] = row.cells[col] || []).push(it);
    });
    return rows;
  }
  function any(row, test) {
    return row.cells.some(function (cell) { return cell.some(test); });
  }

  // --- the header: totals per endpoint and across them ---------------------------------------
  function stat(R, box, id, value, label, cls) {
    var s = R.el('span', 'stat' + (cls ? ' ' + cls : ''));
    var b = R.el('b', null, value);
    b.id = id;
    s.appendChild(b);
    if (label) s.appendChild(document.createTextNode(' ' + label));
    box.appendChild(s);
  }
  function totals(R, th, tag, t, unpriced) {
    var line = R.el('div', 'cmp-stats');
    stat(R, line, 'cmp-done-' + tag, t.done, 'done', 'ok');
    stat(R, line, 'cmp-failed-' + tag, t.failed, 'failed', t.failed ? 'bad' : '');
    if (t.open) stat(R, line, 'cmp-open-' + tag, t.open, 'to do');
    th.appendChild(line);
    line = R.el('div', 'cmp-stats');
    stat(R, line, 'cmp-median-' + tag, seconds(t.med), null);
    line.lastChild.insertBefore(document.createTextNode('median '), line.lastChild.firstChild);
    stat(R, line, 'cmp-p95-' + tag, seconds(t.p95), null);
    line.lastChild.insertBefore(document.createTextNode('p95 '), line.lastChild.firstChild);
    th.appendChild(line);
    line = R.el('div', 'cmp-stats cmp-money');
    stat(R, line, 'cmp-cost-' + tag, t.cost_t || '\u2014', null, 'cost');
    var more = t.cost_t ? t.per_t : t.u !== null && t.u !== undefined ? units(t.u) : null;
    if (more) {
      var span = R.el('span', 'more', more);
      span.id = (t.cost_t ? 'cmp-per-' : 'cmp-units-') + tag;
      line.appendChild(span);
    }
    if (unpriced) line.appendChild(R.el('span', 'cmp-note', unpriced));
    th.appendChild(line);
  }
  function header(R) {
    var tr = R.el('tr');
    var all = R.el('th', 'cmp-head cmp-all');
    all.scope = 'col';
    all.appendChild(R.el('div', 'cmp-name', 'All ' + EPS.length + ' endpoints'));
    all.appendChild(R.el('div', 'cmp-id', INFO.all.n + ' items'));
    var missing = INFO.all.unpriced || [];
    var note = null;
    if (missing.length && INFO.all.cost_t) note = 'without ' + missing.join(', ') + ' (no price)';
    totals(R, all, 'all', INFO.all, note);
    tr.appendChild(all);
    EPS.forEach(function (ep, n) {
      var th = R.el('th', 'cmp-head');
      th.scope = 'col';
      th.dataset.endpoint = ep.id;
      th.appendChild(R.el('div', 'cmp-name', ep.alias));
      th.appendChild(R.el('div', 'cmp-id', ep.id + (ep.price ? ' \u00b7 ' + ep.price : '')));
      totals(R, th, String(n), ep.t, ep.price ? null : 'no price known');
      tr.appendChild(th);
    });
    var head = R.el('thead');
    head.appendChild(tr);
    return head;
  }

  // --- rows and cells -----------------------------------------------------------------------
  function inputCell(R, row) {
    var first = null;
    row.cells.forEach(function (cell) {
      cell.forEach(function (it) { if (!first || (first.ro && !it.ro)) first = it; });
    });
    var th = R.el('th', 'cmp-input');
    th.scope = 'row';
    var head = R.el('div', 'cmp-key');
    head.appendChild(R.el('span', 'key', row.b));
    if (any(row, function (it) { return it.pl; })) head.appendChild(R.el('span', 'badge pilot', 'pilot'));
    th.appendChild(head);
    var ins = R.el('div', 'side inputs');
    (first ? first.i : []).forEach(function (m) { ins.appendChild(R.media(m, 'input')); });
    R.columns(ins);
    th.appendChild(ins);
    th.appendChild(R.el('p', 'prompt', first ? first.p : ''));
    if (first && first.src) th.appendChild(R.el('p', 'facts', first.src));
    return th;
  }
  function cell(R, it) {
    var c = R.el('article', 'card cell ' + it.s + (it.f ? ' flagged' : ''));
    c.dataset.key = it.k;
    c.dataset.state = it.s;
    c.dataset.endpoint = EPS[it.en] ? EPS[it.en].id : '';
    c.title = it.k;
    if (it.l !== null && it.l !== undefined) c.dataset.latency = String(it.l);
    if (it.c !== null && it.c !== undefined) c.dataset.cost = String(it.c);
    if (matched && !matched[it.k]) c.classList.add('dim');
    var head = R.el('header');
    head.appendChild(R.el('span', 'badge ' + it.s, it.s));
    if (it.f) head.appendChild(R.el('span', 'badge nsfw', 'NSFW'));
    var review = R.reviewOf(it);
    if (review === 'approved' || review === 'rejected') {
      head.appendChild(R.el('span', 'badge rv ' + review, review));
    }
    c.dataset.review = review || 'none';
    if (it.ro) {
      c.classList.add('redo');
      c.dataset.redoOf = it.ro;
      var of = R.el('span', 'badge redo-of', 'redo of ' + it.ro);
      head.insertBefore(of, head.firstChild);
    }
    c.appendChild(head);
    var outs = R.el('div', 'side outputs');
    it.o.forEach(function (m, pos) {
      var box = R.media(m, 'output');
      box.dataset.output = String(R.outputIndex(it, pos));
      R.reviewMark(box, it.rv && it.rv[pos]);
      outs.appendChild(box);
    });
    if (!it.o.length) outs.appendChild(R.media([null, null, it.s === 'failed' ? 'no output' : it.s], 'output'));
    R.columns(outs);
    c.appendChild(outs);
    var facts = R.el('p', 'facts');
    var lat = R.el('span', 'lat', seconds(it.l));
    lat.title = 'latency, submit to done';
    facts.appendChild(lat);
    var money = it.c !== null && it.c !== undefined ? usd(it.c) :
      it.u !== null && it.u !== undefined ? units(it.u) : null;
    if (money !== null) facts.appendChild(R.el('span', 'money', money));
    if (it.a > 1) facts.appendChild(R.el('span', null, it.a + ' attempts'));
    c.appendChild(facts);
    if (it.ro && it.p) c.appendChild(R.el('p', 'prompt', it.p));
    if (it.e || it.et) c.appendChild(R.el('p', 'error', it.e || it.et));
    R.notes(c, it);
    R.cardHooks.forEach(function (hook) { hook(c, it); });
    return c;
  }
  function make(R, slice) {
    var table = R.el('table', 'cmp');
    table.style.setProperty('--endpoints', String(EPS.length));
    table.appendChild(header(R));
    var body = R.el('tbody');
    slice.forEach(function (row) {
      var tr = R.el('tr', 'cmp-row');
      tr.dataset.input = row.b;
      tr.appendChild(inputCell(R, row));
      row.cells.forEach(function (items, n) {
        var td = R.el('td', 'cmp-cell');
        td.dataset.endpoint = EPS[n] ? EPS[n].id : '';
        items.forEach(function (it) { td.appendChild(cell(R, it)); });
        if (!items.length) td.appendChild(R.el('p', 'cmp-none', 'not run on this endpoint'));
        tr.appendChild(td);
      });
      body.appendChild(tr);
    });
    table.appendChild(body);
    var wrap = R.el('div', 'cmp-wrap');
    wrap.appendChild(table);
    return [wrap];
  }
  function keep(R, list) {
    matched = null;
    if (list.length === R.data.length) return allRows(R);
    matched = {};
    list.forEach(function (it) { matched[it.k] = true; });
    return allRows(R).filter(function (row) { return any(row, function (it) { return matched[it.k]; }); });
  }

  window.fireredViews = window.fireredViews || {};
  window.fireredViews.compare = {
    label: 'Compare ' + EPS.length + ' endpoints',
    noun: 'inputs',
    perPage: ROWS_PER_PAGE,
    units: keep,
    make: make,
    cell: cell,
    usd: usd
  };
})();
