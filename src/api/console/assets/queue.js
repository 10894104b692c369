// The replication queue: what is being sent now (progress, rate, ETA), what waits, what
// finished; add a backup by hand, remove or re-queue items; the strategy and throttle;
// restore. On a target, "sending now" lists what each source is sending here.
import { api, el, errorBox, notice, table, badge, utc, bytes, duration, live, button } from './lib.js';

const STRATEGIES = ['retention', 'recency', 'manual'];

function way(i) {
  if (i.direction === 'restore') return `restore from ${i.target}`;
  return i.sid !== undefined ? `from system ${i.sid}` : i.target;
}

// Wire bytes, and what dedup saved against the logical size.
function wire(i) {
  const sent = i.direction === 'restore' ? i.bytes_received : i.bytes_sent;
  if (sent === undefined || sent === null) return '-';
  const saved = i.size > sent ? Math.floor((100 * (i.size - sent)) / i.size) : 0;
  return [bytes(sent), saved ? el('div', { class: 'muted saved' }, `${saved} % saved`) : null];
}

function rows(box, list) {
  box.querySelectorAll('tbody tr').forEach((tr, n) => {
    tr.dataset.backup = (list[n] || {}).backup;
    tr.dataset.direction = (list[n] || {}).direction || 'send';
  });
}

function percent(done, size) {
  return size ? Math.min(100, Math.floor((100 * done) / size)) : 100;
}

export function queue(root) {
  const news = el('div', {});
  const settings = el('div', { id: 'queue-settings' });
  const active = el('div', { id: 'queue-active' });
  const waiting = el('div', { id: 'queue-waiting' });
  const done = el('div', { id: 'queue-done' });
  const drill = el('div', { id: 'drill' });
  const add = addForm(news);
  const back = restoreForm(news, () => refresh());
  root.append(news, settings,
    el('h2', {}, 'Sending now'), active,
    el('h2', {}, 'Waiting'), waiting,
    el('h2', {}, 'Finished'), done, drill,
    add.form, back.form);

  async function change(item, action, what) {
    try {
      await api('PUT', '/api/replication/queue', { backups: [{ id: item.id }], action });
      news.replaceChildren(notice(`${item.backup}: ${what}.`));
      refresh();
    } catch (e) { news.replaceChildren(errorBox(e)); }
  }

  function progress(i) {
    const pct = percent(i.bytes_done, i.size);
    return el('div', { class: 'progress' },
      el('progress', { max: i.size || 1, value: Math.min(i.bytes_done, i.size || 1), title: `${pct} %` }),
      ' ', el('span', { class: 'pct' }, `${pct} %`),
      el('div', { class: 'muted' }, `${bytes(i.bytes_done)} of ${bytes(i.size)}`));
  }

  async function refresh() {
    try {
      const q = await api('GET', '/api/replication/queue?include_done=1&count=100');
      const finished = (q.done || []).sort((a, b) => (b.finished || 0) - (a.finished || 0)).slice(0, 20);
      active.replaceChildren(table([
        ['Backup', (i) => i.backup],
        ['To', way],
        ['Progress', progress],
        ['Rate', (i) => el('span', { class: 'rate' }, i.rate_bps !== undefined ? `${bytes(i.rate_bps)}/s` : '-')],
        ['ETA', (i) => el('span', { class: 'eta' }, i.eta_s !== undefined ? duration(i.eta_s) : '-')],
        ['Attempt', (i) => (i.attempts !== undefined ? String(i.attempts) : '-')],
        ['Started', (i) => utc(i.started)],
      ], q.active || [], 'Nothing is being sent now.'));
      rows(active, q.active || []);
      waiting.replaceChildren(table([
        ['#', (i) => String(i.queue_position)],
        ['Backup', (i) => i.backup],
        ['To', way],
        ['Size', (i) => bytes(i.size)],
        ['Status', (i) => [badge(i.status), i.message ? el('div', { class: 'muted' }, i.message) : null]],
        ['Attempts', (i) => String(i.attempts)],
        ['Queued', (i) => utc(i.queued)],
        ['', (i) => (i.direction === 'restore' ? null : el('div', { class: 'row' },
          button('Remove', '', () => change(i, 'none', 'removed from the queue')),
          button('Re-queue at the end', '', () => change(i, 'reset', 'queued again at the end'))))],
      ], q.inactive || [], 'Nothing waits.'));
      rows(waiting, q.inactive || []);
      if (q.total_inactive > (q.inactive || []).length) {
        waiting.append(el('p', { class: 'muted' }, `${q.total_inactive} in all; the first ${(q.inactive || []).length} are shown.`));
      }
      done.replaceChildren(table([
        ['Backup', (i) => i.backup],
        ['To', way],
        ['Size', (i) => bytes(i.size)],
        ['On the wire', wire],
        ['Status', (i) => badge(i.status)],
        ['Finished', (i) => utc(i.finished)],
        ['SHA-256', (i) => el('span', { class: 'fp', title: i.sha256 || '' }, i.sha256 ? `${i.sha256.slice(0, 16)}…` : '-')],
      ], finished, 'Nothing has finished yet.'));
      rows(done, finished);
      drill.replaceChildren(lastDrill(await api('GET', '/api/replication/drill'), targetIds, news));
    } catch (e) {
      active.replaceChildren(errorBox(e));
    }
  }

  async function showSettings() {
    try {
      const [c, t] = await Promise.all([api('GET', '/api/replication/config'), api('GET', '/api/replication/throttle')]);
      settings.replaceChildren(settingsForm(c.config || {}, t, news, showSettings));
    } catch (e) {
      settings.replaceChildren(errorBox(e));
    }
  }

  let targetIds = [];
  showSettings();
  add.loadTargets().then((t) => { targetIds = t.map((x) => x.target_id); back.load(t); });
  live(refresh, 2000);
}

// The last restore drill (SPEC 20) and a button that queues one on the first target.
function lastDrill(book, targetIds, news) {
  const d = (book.drills || [])[0];
  if (!d && !targetIds.length) return el('span', {});
  const run = button('Run a drill', '', async () => {
    try {
      await api('POST', '/api/replication/drill', { target_id: targetIds[0] });
      news.replaceChildren(notice('Drill queued.'));
    } catch (e) { news.replaceChildren(errorBox(e)); }
  });
  run.name = 'drill';
  const said = d
    ? [`Last drill ${utc(d.finished || d.requested)}: `, badge(d.result),
      ` ${d.copies} copies, ${bytes(d.bytes)} in ${duration(d.duration_ms / 1000)}`, d.message ? `: ${d.message}` : '', '. ',
      `Last success: ${utc(book.last_success)}. `]
    : 'No restore drill yet. ';
  return el('p', { class: d && d.result === 'failed' ? 'warning' : 'muted' }, said, targetIds.length ? run : null);
}

function settingsForm(config, throttle, news, reload) {
  const strategy = el('select', { name: 'strategy' }, STRATEGIES.map((s) => el('option', { value: s, selected: s === config.strategy }, s)));
  const concurrent = el('input', { name: 'max_concurrent', type: 'number', min: 1, max: 64, value: config.max_concurrent, size: 4 });
  const status = el('div', {});
  const save = button('Save', '', async () => {
    try {
      await api('PUT', '/api/replication/config', { strategy: strategy.value, max_concurrent: Number(concurrent.value) });
      news.replaceChildren(notice(`Queue strategy ${strategy.value}, at most ${concurrent.value} transfers at once per target.`));
      reload();
    } catch (e) { status.replaceChildren(errorBox(e)); }
  });
  const windows = throttle.throttle || [];
  const days = (d) => (d.length === 7 ? 'every day' : d.map((n) => ['Sun', 'Mon', 'Tue', 'Wed', 'Thu', 'Fri', 'Sat'][n]).join(' '));
  return el('div', { class: 'card' },
    el('div', { class: 'row' },
      el('label', {}, 'Strategy', el('br', {}), strategy),
      el('label', {}, 'Transfers at once per target', el('br', {}), concurrent),
      save),
    status,
    el('p', { class: 'muted' },
      windows.length
        ? `Throttle (link ${throttle.link_mbps} Mbit/s): ` + windows.map((w) => `${w.percentage} % ${days(w.days)} ${w.start}:00–${w.end}:00`).join('; ') + '; full speed otherwise.'
        : 'No throttle: transfers run at full speed.'));
}

function addForm(news) {
  const target = el('select', { name: 'target_id' });
  const backup = el('input', { name: 'backup', placeholder: 'client/backup-name', size: 40, required: true });
  const status = el('div', {});
  const form = el('form', { class: 'card', id: 'queue-add' },
    el('h2', {}, 'Add a backup by hand'),
    el('div', { class: 'row' },
      el('label', {}, 'Target', el('br', {}), target),
      el('label', {}, 'Backup (path under the backup storage)', el('br', {}), backup),
      el('button', { type: 'submit' }, 'Add')),
    status);
  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    status.replaceChildren();
    try {
      const item = await api('POST', '/api/replication/queue', { target_id: Number(target.value), backup: backup.value.trim() });
      news.replaceChildren(notice(`${item.backup} queued for ${item.target}.`));
      form.reset();
    } catch (e) { status.replaceChildren(errorBox(e)); }
  });
  async function loadTargets() {
    try {
      const t = await api('GET', '/api/replication/targets');
      const complete = (t.targets || []).filter((x) => x.status === 'complete');
      target.replaceChildren(...complete.map((x) => el('option', { value: String(x.target_id) }, x.host)));
      form.hidden = !complete.length;
      return complete;
    } catch (e) { form.hidden = true; return []; }
  }
  return { form, loadTargets };
}

// Restore (SPEC 20) what a target holds for us.
function restoreForm(news, refresh) {
  const target = el('select', { name: 'restore_target' });
  const what = el('select', { name: 'restore_what' },
    el('option', { value: 'all' }, 'everything'),
    el('option', { value: 'clients' }, 'these clients'),
    el('option', { value: 'backups' }, 'these backups'));
  const names = el('input', { name: 'restore_names', placeholder: 'a, b', size: 30 });
  const storage = el('select', { name: 'restore_storage' }, el('option', { value: '' }, 'the default backup storage'));
  const overwrite = el('input', { name: 'overwrite', type: 'checkbox' });
  const status = el('div', {});
  const form = el('form', { class: 'card', id: 'restore' },
    el('h2', {}, 'Restore from a target'),
    el('div', { class: 'row' },
      el('label', {}, 'Target', el('br', {}), target),
      el('label', {}, 'Restore', el('br', {}), what),
      el('label', {}, 'Names', el('br', {}), names),
      el('label', {}, 'Into', el('br', {}), storage),
      el('label', {}, overwrite, ' replace different local files'),
      el('button', { type: 'submit', class: 'primary' }, 'Restore')),
    status);
  form.hidden = true;
  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    status.replaceChildren();
    const body = { target_id: Number(target.value), overwrite: overwrite.checked };
    const list = names.value.split(',').map((n) => n.trim()).filter(Boolean);
    body[what.value] = what.value === 'all' ? true : list;
    if (storage.value) body.storage_id = Number(storage.value);
    try {
      const r = await api('POST', '/api/replication/restore', body);
      const n = r.restore.length;
      news.replaceChildren(notice(`${n} backup${n === 1 ? '' : 's'} queued to restore from ${target.selectedOptions[0].text}.`));
      form.reset();
      refresh();
    } catch (e) { status.replaceChildren(errorBox(e)); }
  });
  async function load(complete) {
    target.replaceChildren(...complete.map((x) => el('option', { value: String(x.target_id) }, x.host)));
    form.hidden = !complete.length;
    const s = await api('GET', '/api/storage?usage=backup').catch(() => ({}));
    storage.append(...(s.storage || []).map((x) => el('option', { value: String(x.id) }, `${x.name} (id ${x.id})`)));
  }
  return { form, load };
}
