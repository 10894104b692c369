// Helpers every console page uses: the API call, a DOM builder that only ever makes text,
// the visible escaping of hidden characters, and formatting. No page inserts HTML: the
// CSP's Trusted Types would refuse it anyway.

/** An API answer that was not 2xx: the API's own message, code and status. */
export class ApiError extends Error {
  constructor(status, body) {
    const r = (body && Array.isArray(body.result) && body.result[0]) || {};
    super(r.message || `the daemon answered ${status}`);
    this.status = status;
    this.code = r.code || status;
    this.fingerprint = r.fingerprint;
  }
}

/** Calls the API as the logged-in console: the session cookie goes along by itself. */
export async function api(method, path, body) {
  const init = { method, credentials: 'same-origin', cache: 'no-store', headers: {} };
  if (body !== undefined) {
    init.headers['Content-Type'] = 'application/json';
    init.body = JSON.stringify(body);
  }
  let res;
  try {
    res = await fetch(path, init);
  } catch (e) {
    throw new ApiError(0, { result: [{ message: `the daemon cannot be reached: ${e.message}` }] });
  }
  const text = await res.text();
  let json = null;
  try { json = text ? JSON.parse(text) : {}; } catch (e) { json = null; }
  if (!res.ok) {
    const err = new ApiError(res.status, json);
    if (res.status === 401 && path !== '/api/session') {
      document.dispatchEvent(new CustomEvent('session-ended', { detail: err.message }));
    }
    throw err;
  }
  return json || {};
}

// The one rule for peer-supplied text, the same as `replgate ctl`'s (docs/decisions.md,
// "Showing peer-supplied text"): every character that would not show as itself is shown
// escaped. Controls (C0, DEL, C1); the format characters (Unicode Cf: bidi overrides and
// isolates, zero-width ones, the BOM, tags...); the line and paragraph separators; every
// space but U+0020; the invisible fillers; and the backslash itself, so that a name
// cannot fake an escape.
const HIDDEN = /[\u0000-\u001f\u007f-\u009f\u00ad\u0600-\u0605\u061c\u06dd\u070f\u0890\u0891\u08e2\u180e\u200b-\u200f\u202a-\u202e\u2060-\u2064\u2066-\u206f\ufeff\ufff9-\ufffb\u{110bd}\u{110cd}\u{13430}-\u{1343f}\u{1bca0}-\u{1bca3}\u{1d173}-\u{1d17a}\u{e0001}\u{e0020}-\u{e007f}\u2028\u2029\u00a0\u1680\u2000-\u200a\u202f\u205f\u3000\u034f\u115f\u1160\u3164\uffa0\\]/gu;

/** A hidden character as `replgate ctl` shows it: `\n` `\r` `\t` `\\`, else `\u{hex}`. */
export function escapeChar(c) {
  const named = { '\t': '\\t', '\n': '\\n', '\r': '\\r', '\\': '\\\\' };
  return named[c] || `\\u{${c.codePointAt(0).toString(16)}}`;
}

/** Text for the page: a fragment of text nodes, with each hidden character shown as a
 *  marked escape (`\u{202e}`) instead of taking effect. */
export function shown(value) {
  const text = value === null || value === undefined ? '' : String(value);
  const frag = document.createDocumentFragment();
  let last = 0;
  for (const m of text.matchAll(HIDDEN)) {
    if (m.index > last) frag.append(text.slice(last, m.index));
    const mark = document.createElement('span');
    mark.className = 'esc';
    mark.title = 'a hidden character, shown escaped';
    mark.textContent = escapeChar(m[0]);
    frag.append(mark);
    last = m.index + m[0].length;
  }
  if (last < text.length) frag.append(text.slice(last));
  return frag;
}

/** Builds an element. `props`: `class`, `on` (event handlers), `data` (data-* values),
 *  anything else is set as a property. Children: nodes, arrays, or values shown as text
 *  through `shown`. */
export function el(tag, props, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(props || {})) {
    if (v === undefined || v === null) continue;
    if (k === 'class') e.className = v;
    else if (k === 'on') for (const [ev, f] of Object.entries(v)) e.addEventListener(ev, f);
    else if (k === 'data') for (const [d, dv] of Object.entries(v)) e.dataset[d] = dv;
    else e[k] = v;
  }
  add(e, children);
  return e;
}

function add(parent, children) {
  for (const c of children) {
    if (c === null || c === undefined || c === false) continue;
    if (Array.isArray(c)) add(parent, c);
    else if (c instanceof Node) parent.append(c);
    else parent.append(shown(c));
  }
}

/** The API's message for a failed call, as the page shows it. */
export function errorBox(err) {
  return el('div', { class: 'error', role: 'alert' }, err && err.message ? err.message : String(err));
}

export function notice(text) {
  return el('div', { class: 'notice', role: 'status' }, text);
}

/** A table: `columns` is a list of [title, row => cell content]. */
export function table(columns, rows, empty) {
  if (!rows.length) return el('p', { class: 'muted' }, empty || 'Nothing to show.');
  return el('table', {},
    el('thead', {}, el('tr', {}, columns.map(([title]) => el('th', {}, title)))),
    el('tbody', {}, rows.map((r) => el('tr', {}, columns.map(([, cell]) => el('td', {}, cell(r)))))));
}

/** A definition list of [label, value] pairs, leaving out empty values. */
export function fields(pairs) {
  return el('dl', { class: 'fields' }, pairs
    .filter(([, v]) => v !== undefined && v !== null && v !== '')
    .map(([k, v]) => [el('dt', {}, k), el('dd', {}, v)]));
}

export function badge(status) {
  return el('span', { class: `status ${String(status).replace(/[^a-z_-]/gi, '')}` }, status);
}

/** Unix seconds as `YYYY-MM-DD HH:MM:SS UTC` (as `ctl` shows times). */
export function utc(t) {
  if (!t) return '-';
  const d = new Date(t * 1000);
  return Number.isNaN(d.getTime()) ? String(t) : `${d.toISOString().slice(0, 19).replace('T', ' ')} UTC`;
}

export function bytes(n) {
  if (n === undefined || n === null) return '-';
  const units = ['B', 'KB', 'MB', 'GB', 'TB', 'PB'];
  let v = Number(n);
  let i = 0;
  while (v >= 1000 && i < units.length - 1) { v /= 1000; i += 1; }
  return `${i ? v.toFixed(v < 10 ? 2 : 1) : v} ${units[i]}`;
}

export function megabytes(mb) {
  return bytes(Number(mb) * 1e6);
}

export function duration(s) {
  if (s === undefined || s === null) return '-';
  const n = Math.round(Number(s));
  if (n < 60) return `${n} s`;
  if (n < 3600) return `${Math.floor(n / 60)} min ${n % 60} s`;
  return `${Math.floor(n / 3600)} h ${Math.floor((n % 3600) / 60)} min`;
}

/** A SHA-256 fingerprint in pairs (`ab:cd:…`), easier to read out and compare. */
export function fingerprint(hex) {
  return String(hex || '').toLowerCase().replace(/[^0-9a-f]/g, '').replace(/(..)(?=.)/g, '$1:');
}

const PRIVILEGES = ['monitor', 'manage', 'administer', 'superuser'];

/** Whether the session's privilege is at least `needed`. */
export function may(session, needed) {
  return PRIVILEGES.indexOf(session.privilege) >= PRIVILEGES.indexOf(needed);
}

export { PRIVILEGES };

// Refreshes that belong to the page on screen; the app stops them when the page changes.
const timers = new Set();

/** Runs `refresh` now and every `ms` while this page is shown (and the tab is visible). */
export function live(refresh, ms) {
  let running = false;
  const tick = async () => {
    if (running) return;
    running = true;
    try { await refresh(); } finally { running = false; }
  };
  tick();
  const id = setInterval(() => { if (!document.hidden) tick(); }, ms);
  timers.add(id);
}

export function stopLive() {
  for (const id of timers) clearInterval(id);
  timers.clear();
}

/** A button that runs `action` once per click, disabled while it runs, and afterwards
 *  whenever `ready` (if given) says it cannot be sent. */
export function button(label, cls, action, ready) {
  const b = el('button', { type: 'button', class: cls });
  b.textContent = label;
  b.addEventListener('click', async () => {
    b.disabled = true;
    try { await action(); } finally { b.disabled = ready ? !ready() : false; }
  });
  return b;
}
