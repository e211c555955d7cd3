// The eventline console page: it polls api/status, draws the tables and the lag charts (keeping
// the history itself), and sends actions as POST requests with the token in a header.
'use strict';
(function () {
  const TOKEN_KEY = 'eventline-console-token';
  const TOKEN_HEADER = 'X-Eventline-Token';
  const $ = (sel) => document.querySelector(sel);

  // A token in the fragment (#token=...) is kept for this tab and removed from the address bar.
  const fragment = new URLSearchParams(location.hash.slice(1));
  if (fragment.has('token')) {
    sessionStorage.setItem(TOKEN_KEY, fragment.get('token'));
    history.replaceState(null, '', location.pathname + location.search);
  }
  const token = () => sessionStorage.getItem(TOKEN_KEY) || '';

  let info = null;          // the console's settings, from the first status
  let timer = null;         // the next poll
  let polling = false;      // a poll is in flight
  const samples = new Map(); // unit key -> [{t, lag, lagS}], oldest first

  function el(tag, attrs, ...children) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === undefined || v === null || v === false) continue;
      if (k === 'class') e.className = v;
      else if (k.startsWith('data-')) e.setAttribute(k, v);
      else if (k === 'onclick') e.addEventListener('click', v);
      else e[k] = v;
    }
    for (const c of children) {
      if (c === '' || c === undefined || c === null) continue;
      e.append(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return e;
  }
  const svgEl = (tag, attrs) => {
    const e = document.createElementNS('http://www.w3.org/2000/svg', tag);
    for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
    return e;
  };
  // errorCell is a table cell with an error, or a muted "-".
  const errorCell = (text) => text ? el('td', { class: 'error' }, text) : el('td', { class: 'none' }, '-');
  const dash = (s) => (s === '' || s === null || s === undefined ? '-' : s);
  const ago = (seconds) => seconds < 60 ? `${seconds.toFixed(1)}s ago` : `${Math.round(seconds / 60)}m ago`;
  const waiting = (w) => `position ${w.position}` +
    (w.appender_pid || w.transaction ? `: appender pid ${w.appender_pid} (transaction ${w.transaction}) open for ${w.age_seconds.toFixed(1)}s` : '');
  // A unit is a partition of a layout (version and partition count): during a partition change,
  // v1/1 and v1/4 both have a partition 0.
  const unitKey = (p) => `${p.projection}@${p.version}#${p.partition}/${p.partitions}`;

  function setMessage(kind, text) {
    const m = $('#message');
    m.hidden = false;
    m.className = 'message ' + kind;
    m.textContent = text;
  }

  function setConn(ok, text) {
    const c = $('#conn');
    c.className = ok ? 'conn' : 'conn error';
    c.textContent = text;
  }

  function replaceRows(tbody, rows, columns, emptyText) {
    tbody.replaceChildren(...(rows.length ? rows : [el('tr', {}, el('td', { colSpan: columns, class: 'empty' }, emptyText))]));
  }

  // record adds a sample per unit and drops those older than the history.
  function record(status) {
    const now = Date.parse(status.time);
    const horizon = now - info.history_seconds * 1000;
    const seen = new Set();
    for (const p of status.projections) {
      const key = unitKey(p);
      seen.add(key);
      let list = samples.get(key);
      if (!list) samples.set(key, (list = []));
      list.push({ t: now, lag: p.lag, lagS: p.lag_seconds });
      while (list.length && list[0].t < horizon) list.shift();
    }
    for (const key of [...samples.keys()]) if (!seen.has(key)) samples.delete(key);
    return now;
  }

  // chart draws a unit's lag in events (solid) and in seconds (dashed), each on its own scale,
  // over the samples kept, ending now.
  function chart(key, now) {
    const W = 160, H = 30, pad = 2;
    const list = samples.get(key) || [];
    // The window is the history kept, up to History: the chart fills the box from the start.
    const span = Math.max(2 * info.poll_interval_ms, Math.min(info.history_seconds * 1000, list.length ? now - list[0].t : 0));
    const svg = svgEl('svg', { class: 'chart', width: W, height: H, viewBox: `0 0 ${W} ${H}`, 'data-samples': list.length });
    svg.append(svgEl('line', { class: 'axis', x1: 0, y1: H - pad, x2: W, y2: H - pad }));
    const maxLag = Math.max(1, ...list.map((s) => s.lag));
    const maxSec = Math.max(1, ...list.map((s) => s.lagS));
    const x = (t) => (W * (1 - (now - t) / span)).toFixed(1);
    const y = (v, max) => (H - pad - (H - 2 * pad) * (v / max)).toFixed(1);
    if (list.length) {
      svg.append(svgEl('polyline', { class: 'seconds', points: list.map((s) => `${x(s.t)},${y(s.lagS, maxSec)}`).join(' ') }));
      svg.append(svgEl('polyline', { class: 'events', points: list.map((s) => `${x(s.t)},${y(s.lag, maxLag)}`).join(' ') }));
    }
    const title = svgEl('title', {});
    title.textContent = `last ${span < 120000 ? Math.round(span / 1000) + 's' : Math.round(span / 60000) + ' min'}: up to ${Math.max(0, ...list.map((s) => s.lag))} events, ` +
      `${Math.max(0, ...list.map((s) => s.lagS)).toFixed(1)}s behind`;
    svg.append(title);
    return svg;
  }

  function actionButton(label, action, attrs, path, confirmText, disabledWhy) {
    const enabled = info.actions && !disabledWhy;
    const why = !info.actions ? 'read-only console (start it with --allow-actions)' : disabledWhy;
    return el('button', {
      type: 'button', 'data-action': action, disabled: !enabled, title: why || '', ...attrs,
      onclick: () => act(path, `${label}`, confirmText),
    }, label);
  }

  function render(body) {
    const s = body.status;
    const now = record(s);
    $('#history').textContent = `${Math.round(info.history_seconds / 60)} min`;

    replaceRows($('#units tbody'), s.projections.map((p) => {
      const lastErr = p.last_error && p.failed_position > 0 ? `at ${p.failed_position}: ${p.last_error}` : p.last_error;
      return el('tr', { 'data-unit': unitKey(p), 'data-projection': p.projection },
        el('td', {}, p.projection),
        el('td', { class: 'version' }, p.version),
        el('td', { class: 'partition' }, p.partitions > 1 ? `${p.partition}/${p.partitions}` : '-'),
        el('td', { class: 'owner mono', title: p.lease_owner ? `last lease: ${p.lease_owner}` : '' }, dash(p.owner)),
        el('td', { class: 'num position' }, p.position),
        el('td', { class: 'num head' }, p.head),
        el('td', { class: 'num lag' }, p.lag),
        el('td', { class: 'num lag-seconds' }, p.lag_seconds.toFixed(1)),
        el('td', { class: 'chart' }, chart(unitKey(p), now)),
        el('td', { class: 'num rate' }, p.events_per_second ? p.events_per_second.toFixed(0) : '-'),
        el('td', { class: 'role' }, p.role),
        el('td', { class: 'state' }, el('span', { class: 'state ' + p.state }, p.state),
          p.waiting_on ? el('div', { class: 'waiting' }, 'waiting on ' + waiting(p.waiting_on)) : ''),
        errorCell(lastErr || (p.owner_error ? 'retrying after: ' + p.owner_error : '')));
    }), 13, 'no projections (no checkpoints yet)');

    const problems = $('#problems');
    problems.hidden = !body.problems.length;
    problems.replaceChildren(...body.problems.map((pr) => el('li', { 'data-kind': pr.kind }, (pr.unit || pr.projection) ? `${pr.unit || pr.projection}: ${pr.reason}` : pr.reason)));

    replaceRows($('#projections tbody'), s.lifecycle.map((l) => {
      const name = l.projection, path = (a) => `api/projections/${encodeURIComponent(name)}/${a}`;
      let change = '-';
      if (l.target_mode === 'build') change = `building v${l.target_version}/${l.target_partitions}` + (l.barrier !== null ? ` (cut-over at ${l.barrier})` : '');
      else if (l.target_mode === 'switch') change = `switching to v${l.target_version}/${l.target_partitions} at ${dash(l.barrier)}`;
      // Resume clears a pause, and the failure of units a handler failure stopped.
      const stopped = s.projections.some((p) => p.projection === name && p.state === 'stopped');
      const rebuildWhy = l.detached ? 'detached handlers are not rebuilt (it would repeat their side effects)'
        : !l.resettable ? 'the projection has no Reset to empty its read model' : '';
      return el('tr', { 'data-projection': name },
        el('td', {}, name),
        el('td', {}, `v${l.active_version}/${l.active_partitions}`),
        el('td', {}, change),
        el('td', { class: 'paused' }, l.paused ? 'paused' : 'no'),
        el('td', {}, `${l.rebuilds}` + (l.rebuild_pending ? ' (one pending)' : '')),
        el('td', { class: 'num' }, l.dead_letters || '-'),
        el('td', {}, l.detached ? 'detached' : l.resettable ? 'resettable' : 'no Reset'),
        errorCell(l.last_error),
        el('td', { class: 'actions' },
          l.paused ? '' : actionButton('Pause', 'pause', { 'data-projection': name }, path('pause')),
          l.paused || stopped ? actionButton('Resume', 'resume', { 'data-projection': name }, path('resume')) : '',
          actionButton('Rebuild', 'rebuild', { 'data-projection': name }, path('rebuild'),
            `Rebuild ${name}? Its read model is emptied and every event is applied again.`, rebuildWhy)));
    }), 9, 'no projections');

    $('#dead-letters-count').textContent = body.dead_letters_total > body.dead_letters.length
      ? `; the first ${body.dead_letters.length} of ${body.dead_letters_total} ('eventline dead-letters list' lists them all)` : '';
    replaceRows($('#dead-letters tbody'), body.dead_letters.map((d) => {
      const path = (a) => `api/dead-letters/${d.id}/${a}`;
      return el('tr', { 'data-dead-letter': d.id },
        el('td', { class: 'num' }, d.id),
        el('td', {}, d.projection),
        el('td', {}, d.version),
        el('td', { class: 'num' }, d.global_position),
        el('td', { class: 'mono' }, `${d.aggregate_type}/${d.aggregate_id}`),
        el('td', { class: 'num' }, d.blocked_by > 0 ? d.blocked_by : '-'),
        el('td', { class: 'num attempts' }, d.attempts),
        el('td', {}, d.retry_requested ? 'requested' : '-'),
        el('td', { title: d.created_at }, ago((now - Date.parse(d.created_at)) / 1000)),
        el('td', { class: 'error' }, d.error),
        el('td', { class: 'actions' },
          actionButton('Retry', 'retry', { 'data-dead-letter': d.id }, path('retry'), '', d.retry_requested ? 'a retry is already requested' : ''),
          actionButton('Discard', 'discard', { 'data-dead-letter': d.id }, path('discard'),
            `Discard dead letter ${d.id}? Its event will never be applied to ${d.projection}.`)));
    }), 11, 'no dead letters');

    replaceRows($('#nodes tbody'), s.nodes.map((n) => el('tr', {},
      el('td', { class: 'mono' }, n.id),
      el('td', {}, n.hostname),
      el('td', { class: 'num' }, n.pid),
      el('td', {}, ago(n.heartbeat_age_seconds)),
      el('td', { title: n.started_at }, new Date(n.started_at).toLocaleString()),
      el('td', { class: 'num' }, n.horizon || '-'),
      el('td', { class: 'num' }, n.owned),
      el('td', { class: 'num' }, n.events_per_second ? n.events_per_second.toFixed(0) : '-'),
      el('td', {}, dash(n.projections.join(', '))))), 9, 'no live runner processes');
  }

  function setupHeader() {
    const mode = $('#mode');
    mode.textContent = info.actions ? 'actions allowed' : 'read-only';
    mode.className = info.actions ? 'badge actions' : 'badge';
    const form = $('#token-form');
    form.hidden = !info.actions;
    $('#token-state').textContent = token() ? 'token set' : 'no token';
  }

  async function poll() {
    if (polling) return;
    polling = true;
    clearTimeout(timer);
    try {
      const res = await fetch('api/status', { cache: 'no-store' });
      const body = await res.json().catch(() => ({}));
      if (!res.ok) throw new Error(body.error || `HTTP ${res.status}`);
      const first = info === null;
      info = body.console;
      if (first) setupHeader();
      render(body);
      setConn(true, 'updated ' + new Date().toLocaleTimeString());
    } catch (e) {
      setConn(false, 'cannot read the status: ' + e.message);
    } finally {
      polling = false;
      timer = setTimeout(poll, info ? info.poll_interval_ms : 2000);
    }
  }

  async function act(path, label, confirmText) {
    if (confirmText && !window.confirm(confirmText)) return;
    setMessage('pending', `${label}...`);
    try {
      const res = await fetch(path, { method: 'POST', headers: { [TOKEN_HEADER]: token() } });
      const body = await res.json().catch(() => ({}));
      if (res.ok) setMessage('ok', body.message || `${label}: done`);
      else setMessage('error', `${label} refused (HTTP ${res.status}): ${body.error || res.statusText}`);
    } catch (e) {
      setMessage('error', `${label} failed: ${e.message}`);
    }
    poll();
  }

  $('#token-form').addEventListener('submit', (ev) => {
    ev.preventDefault();
    const input = $('#token');
    if (input.value) sessionStorage.setItem(TOKEN_KEY, input.value);
    else sessionStorage.removeItem(TOKEN_KEY);
    input.value = '';
    $('#token-state').textContent = token() ? 'token set' : 'no token';
  });

  poll();
})();
