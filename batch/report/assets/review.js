// The review server's additions to the report page (batch/report/review.py): approve, reject,
// note and undo per output image, by keyboard (j/k move, a/r decide, n note, u undo, ? help)
// and mouse. Every write names the version of the review it saw; a 409 means another reviewer
// came first: the page shows their decision and says so. Other reviewers' decisions arrive by
// polling GET api/decisions?since=<last event>. Writes go one at a time, in order.
(function () {
  'use strict';
  var R = window.fireredReport;
  var CONFIG = __REVIEW_CONFIG__;
  if (!R) return;
  var byKey = {};
  R.data.forEach(function (it) { byKey[it.k] = it; });
  var focus = null; // {k: item key, i: output index}
  var mine = []; // outputs this page decided, newest last: what u undoes
  var last = CONFIG.last;
  var chain = Promise.resolve();
  var busy = 0;
  var body = document.body;

  function el(tag, cls, text) {
    var node = document.createElement(tag);
    if (cls) node.className = cls;
    if (text !== undefined && text !== null) node.textContent = String(text);
    return node;
  }
  function posOf(it, idx) { return it.oi ? it.oi.indexOf(idx) : (idx < it.o.length ? idx : -1); }
  function reviewAt(it, idx) { return (it.rv && it.rv[posOf(it, idx)]) || null; }
  function versionAt(it, idx) { var r = reviewAt(it, idx); return r ? r.v : 0; }
  function reviewable(it) { return it.s === 'completed' && it.o.length > 0; }
  function label(t) {
    var it = byKey[t.k];
    return t.k + (it && it.o.length > 1 ? ' output ' + (posOf(it, t.i) + 1) : '');
  }

  // A review from the server (Decision.as_dict) into the page's data; false if not newer.
  function apply(d) {
    var it = byKey[d.k];
    if (!it) return false;
    var pos = posOf(it, d.i);
    var cur = reviewAt(it, d.i);
    if (pos < 0 || (cur && cur.v >= d.v)) return false;
    if (!it.rv) it.rv = it.o.map(function () { return null; });
    it.rv[pos] = {d: d.d, n: d.n, by: d.by, v: d.v};
    return true;
  }
  function counts(c) {
    if (!c) return;
    ['approved', 'rejected', 'unreviewed'].forEach(function (name) {
      var tile = document.getElementById('count-' + name);
      if (tile) tile.textContent = String(c[name]);
      var bar = document.getElementById('rv-' + name);
      if (bar) bar.textContent = String(c[name]);
    });
  }
  function say(text, kind) {
    var toast = document.getElementById('rv-toast');
    toast.textContent = text;
    toast.className = 'rv-toast' + (kind ? ' ' + kind : '');
    body.dataset.reviewMessage = text;
  }

  // --- focus ------------------------------------------------------------------------------
  function targets() {
    var out = [];
    R.grid.querySelectorAll('article.card').forEach(function (c) {
      var it = byKey[c.dataset.key];
      if (!it || !reviewable(it)) return;
      it.o.forEach(function (m, pos) { out.push({k: it.k, i: R.outputIndex(it, pos)}); });
    });
    return out;
  }
  function cardOf(key) {
    var cards = R.grid.querySelectorAll('article.card');
    for (var n = 0; n < cards.length; n++) if (cards[n].dataset.key === key) return cards[n];
    return null;
  }
  function showFocus(scroll) {
    R.grid.querySelectorAll('.rv-current, .rv-focus').forEach(function (node) {
      node.classList.remove('rv-current', 'rv-focus');
    });
    body.dataset.reviewFocus = focus ? focus.k + '#' + focus.i : '';
    var c = focus && cardOf(focus.k);
    if (!c) return;
    c.classList.add('rv-current');
    c.querySelectorAll('[data-output="' + focus.i + '"]').forEach(function (node) {
      node.classList.add('rv-focus');
    });
    if (scroll) c.scrollIntoView({block: 'nearest'});
  }
  function setFocus(t, scroll) { focus = t; showFocus(scroll); }
  function move(step) {
    var list = targets();
    var at = -1;
    list.forEach(function (t, n) { if (focus && t.k === focus.k && t.i === focus.i) at = n; });
    var next = at < 0 ? (step > 0 ? 0 : list.length - 1) : at + step;
    if (next >= list.length || next < 0) {
      var page = R.view.page + step;
      if (!document.getElementById(step > 0 ? 'next' : 'prev').disabled) {
        R.go({page: page});
        list = targets();
        next = step > 0 ? 0 : list.length - 1;
      } else {
        next = at;
      }
    }
    if (list[next]) setFocus(list[next], true);
  }

  // --- writes, one at a time ----------------------------------------------------------------
  function post(action, t, note) {
    var it = byKey[t.k];
    var payload = {k: t.k, i: t.i, action: action, v: versionAt(it, t.i)};
    if (note !== undefined) payload.n = note;
    return fetch('api/decisions', {
      method: 'POST',
      credentials: 'same-origin',
      headers: {'Content-Type': 'application/json', 'X-Firered-Review': '1'},
      body: JSON.stringify(payload)
    }).then(function (res) {
      return res.json().then(function (data) { return {status: res.status, data: data}; });
    });
  }
  function handle(action, t, answer) {
    var data = answer.data;
    counts(data.counts);
    if (answer.status === 200) {
      apply(data.decision);
      last = Math.max(last, data.last || 0);
      if (action !== 'undo') mine.push(t);
      var d = data.decision;
      var what = action === 'undo' ? 'undone: now ' + (d.d || 'unreviewed') :
        action === 'note' ? 'note saved' : d.d;
      say(label(t) + ': ' + what, 'ok');
    } else if (answer.status === 409) {
      var cur = data.current;
      if (cur) apply(cur);
      var now = cur && cur.d ? cur.d + (cur.by ? ' by ' + cur.by : '') : 'unreviewed';
      say(data.error === 'conflict' ?
        'Not saved: ' + label(t) + ' was changed by another reviewer first (now ' + now +
          '). Press again to decide over it.' :
        'Nothing to undo on ' + label(t) + '.', 'conflict');
      var c = cardOf(t.k);
      if (c) c.classList.add('rv-conflict');
    } else {
      say('Not saved (' + answer.status + '): ' + (data.message || data.error || ''), 'error');
    }
    R.refresh(t.k);
    showFocus(false);
  }
  function enqueue(work) {
    busy++;
    body.dataset.reviewBusy = String(busy);
    chain = chain.then(work).catch(function (err) {
      say('Not saved: ' + err, 'error');
    }).then(function () {
      busy--;
      body.dataset.reviewBusy = String(busy);
    });
    return chain;
  }
  function act(action, t, note) {
    if (!t) { say('Press j to pick an output first.', 'error'); return chain; }
    setFocus(t, false);
    return enqueue(function () {
      return post(action, t, note).then(function (a) { handle(action, t, a); });
    });
  }
  function undo() {
    return enqueue(function () {
      var t = mine.pop();
      if (!t) { say('Nothing of yours to undo.', 'error'); return null; }
      setFocus(t, true);
      return post('undo', t).then(function (a) { handle('undo', t, a); });
    });
  }

  // --- others' decisions ------------------------------------------------------------------
  function poll() {
    return fetch('api/decisions?since=' + last, {credentials: 'same-origin'}).then(function (res) {
      return res.ok ? res.json() : null;
    }).then(function (data) {
      if (!data) return;
      var changed = {};
      data.decisions.forEach(function (d) {
        if (apply(d)) {
          changed[d.k] = true;
          if (d.by && d.by !== CONFIG.reviewer) say(d.by + ': ' + label(d) + ' ' + (d.d || 'undone'));
        }
      });
      Object.keys(changed).forEach(R.refresh);
      if (Object.keys(changed).length) showFocus(false);
      counts(data.counts);
      last = Math.max(last, data.last);
      body.dataset.reviewLast = String(last);
    }).catch(function () { /* the next poll tries again */ });
  }

  // --- the page's additions ---------------------------------------------------------------
  function button(action, text, key, pressed) {
    var b = el('button', 'rv-btn ' + action, text);
    b.type = 'button';
    b.dataset.action = action;
    b.title = text + ' (' + key + ')';
    if (pressed !== undefined) b.setAttribute('aria-pressed', pressed ? 'true' : 'false');
    return b;
  }
  R.cardHooks.push(function (c, it) {
    if (!reviewable(it)) return;
    var box = el('div', 'rv-controls');
    it.o.forEach(function (m, pos) {
      var idx = R.outputIndex(it, pos);
      var r = reviewAt(it, idx);
      var row = el('div', 'rv-row');
      row.dataset.output = String(idx);
      if (it.o.length > 1) row.appendChild(el('span', 'rv-label', 'Output ' + (pos + 1)));
      row.appendChild(button('approve', '\u2713 Approve', 'a', !!r && r.d === 'approved'));
      row.appendChild(button('reject', '\u2717 Reject', 'r', !!r && r.d === 'rejected'));
      row.appendChild(button('note', '\u270e Note', 'n'));
      if (r && r.d && r.by) row.appendChild(el('span', 'rv-by', 'by ' + r.by));
      box.appendChild(row);
    });
    c.appendChild(box);
    if (focus && focus.k === it.k) { // the card made again keeps the focus ring
      c.classList.add('rv-current');
      c.querySelectorAll('[data-output="' + focus.i + '"]').forEach(function (node) {
        node.classList.add('rv-focus');
      });
    }
    c.addEventListener('click', function (event) {
      var b = event.target.closest('button[data-action]');
      var row = event.target.closest('[data-output]');
      if (event.target.closest('a') && !b) return; // the image's link opens the full image
      var t = {k: it.k, i: row ? Number(row.dataset.output) : R.outputIndex(it, 0)};
      if (!b) { setFocus(t, false); return; }
      if (b.dataset.action === 'note') openNote(t); else act(b.dataset.action, t);
    });
  });

  var bar = el('div', 'rv-bar');
  bar.id = 'review-bar';
  bar.innerHTML = '<span class="rv-who"></span>' +
    '<span class="rv-count approved">\u2713 <b id="rv-approved">0</b> approved</span>' +
    '<span class="rv-count rejected">\u2717 <b id="rv-rejected">0</b> rejected</span>' +
    '<span class="rv-count unreviewed"><b id="rv-unreviewed">0</b> to review</span>' +
    '<span id="rv-toast" class="rv-toast" role="status" aria-live="polite"></span>' +
    '<span class="rv-keys"><kbd>j</kbd><kbd>k</kbd> move <kbd>a</kbd> approve <kbd>r</kbd> ' +
    'reject <kbd>n</kbd> note <kbd>u</kbd> undo <kbd>?</kbd> help</span>';
  bar.querySelector('.rv-who').textContent = 'Reviewing as ' + CONFIG.reviewer;
  body.appendChild(bar);
  counts({
    approved: Number(document.getElementById('count-approved').textContent),
    rejected: Number(document.getElementById('count-rejected').textContent),
    unreviewed: Number(document.getElementById('count-unreviewed').textContent)
  });

  var help = el('div', 'rv-overlay');
  help.id = 'rv-help';
  help.hidden = true;
  help.innerHTML = '<div class="rv-panel"><h2>Reviewing</h2><dl>' +
    '<dt><kbd>j</kbd> / <kbd>k</kbd></dt><dd>next / previous output image</dd>' +
    '<dt><kbd>a</kbd></dt><dd>approve it</dd><dt><kbd>r</kbd></dt><dd>reject it</dd>' +
    '<dt><kbd>n</kbd></dt><dd>write a note on it</dd>' +
    '<dt><kbd>u</kbd></dt><dd>undo your last decision or note</dd>' +
    '<dt><kbd>?</kbd></dt><dd>this help; <kbd>Esc</kbd> closes it</dd></dl>' +
    '<p>Decisions are saved in the ledger at once. Other reviewers\u2019 decisions appear ' +
    'within seconds; if someone decided an image after you saw it, yours is not saved until ' +
    'you press again.</p></div>';
  help.addEventListener('click', function () { help.hidden = true; });
  body.appendChild(help);

  var dialog = el('div', 'rv-overlay');
  dialog.id = 'rv-dialog';
  dialog.hidden = true;
  dialog.innerHTML = '<form class="rv-panel"><h2 id="rv-note-title"></h2>' +
    '<textarea id="rv-note-text" rows="4" maxlength="2000"></textarea>' +
    '<p class="rv-hint"><kbd>Enter</kbd> saves, <kbd>Shift</kbd>+<kbd>Enter</kbd> new line, ' +
    '<kbd>Esc</kbd> cancels</p><div class="rv-actions">' +
    '<button type="button" class="rv-btn" id="rv-note-cancel">Cancel</button>' +
    '<button type="submit" class="rv-btn approve">Save note</button></div></form>';
  body.appendChild(dialog);
  var noteText = dialog.querySelector('textarea');
  var noteFor = null;
  function openNote(t) {
    if (!t) { say('Press j to pick an output first.', 'error'); return; }
    setFocus(t, true);
    noteFor = t;
    var r = reviewAt(byKey[t.k], t.i);
    document.getElementById('rv-note-title').textContent = 'Note on ' + label(t);
    noteText.value = r ? r.n || '' : '';
    dialog.hidden = false;
    body.dataset.reviewDialog = 'open';
    noteText.focus();
  }
  function closeNote() {
    dialog.hidden = true;
    body.dataset.reviewDialog = 'closed';
  }
  dialog.querySelector('form').addEventListener('submit', function (event) {
    event.preventDefault();
    var t = noteFor;
    closeNote();
    act('note', t, noteText.value);
  });
  document.getElementById('rv-note-cancel').addEventListener('click', closeNote);
  noteText.addEventListener('keydown', function (event) {
    if (event.key === 'Enter' && !event.shiftKey) {
      event.preventDefault();
      dialog.querySelector('form').requestSubmit();
    } else if (event.key === 'Escape') {
      closeNote();
    }
  });

  document.addEventListener('keydown', function (event) {
    if (event.ctrlKey || event.metaKey || event.altKey) return;
    if (event.target.closest && event.target.closest('input, textarea, select')) return;
    if (!dialog.hidden) return;
    var key = event.key;
    if (key === '?') { help.hidden = !help.hidden; }
    else if (key === 'Escape') { help.hidden = true; }
    else if (key === 'j') { move(1); }
    else if (key === 'k') { move(-1); }
    else if (key === 'a') { act('approve', focus); }
    else if (key === 'r') { act('reject', focus); }
    else if (key === 'n') { openNote(focus); }
    else if (key === 'u') { undo(); }
    else { return; }
    event.preventDefault();
  });

  R.render();
  body.dataset.reviewBusy = '0';
  body.dataset.reviewLast = String(last);
  body.dataset.reviewReady = 'yes';
  setInterval(poll, CONFIG.poll);
  window.fireredReview = {poll: poll, idle: function () { return chain; }};
})();
