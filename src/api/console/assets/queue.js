// The replication queue: what is being sent now (progress, rate, ETA), what waits, what
// finished; add a backup by hand, remove or re-queue items; the strategy and throttle.
// On a target, "sending now" lists what each source is sending here.
import { api, el, errorBox, notice, table, badge, utc, bytes, duration, live, button } from './lib.js';

const STRATEGIES = ['retention', 'recency', 'manual'];

function percent(done, size) {
  return size ? Math.min(100, Math.floor((100 * done) / size)) : 100;
}

export function queue(root) {
  const news = el('div', {});
  const settings = el('div', { id: 'queue-settings' });
  const active = el('div', { id: 'queue-active' });
  const waiting = el('div', { id: 'queue-waiting' });
  const done = el('div', { id: 'queue-done' });
  const add = addForm(news);
  root.append(news, settings,
    el('h2', {}, 'Sending now'), active,
    el('h2', {}, 'Waiting'), waiting,
    el('h2', {}, 'Finished'), done,
    add.form);

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
      active.replaceChildren(table([
        ['Backup', (i) => i.backup],
        ['To', (i) => (i.sid !== undefined ? `from system ${i.sid}` : i.target)],
        ['Progress', progress],
        ['Rate', (i) => el('span', { class: 'rate' }, i.rate_bps !== undefined ? `${bytes(i.rate_bps)}/s` : '-')],
        ['ETA', (i) => el('span', { class: 'eta' }, i.eta_s !== undefined ? duration(i.eta_s) : '-')],
        ['Attempt', (i) => (i.attempts !== undefined ? String(i.attempts) : '-')],
        ['Started', (i) => utc(i.started)],
      ], q.active || [], 'Nothing is being sent now.'));
      active.querySelectorAll('tbody tr').forEach((tr, n) => { tr.dataset.backup = (q.active[n] || {}).backup; });
      waiting.replaceChildren(table([
        ['#', (i) => String(i.queue_position)],
        ['Backup', (i) => i.backup],
        ['To', (i) => i.target],
        ['Size', (i) => bytes(i.size)],
        ['Status', (i) => [badge(i.status), i.message ? el('div', { class: 'muted' }, i.message) : null]],
        ['Attempts', (i) => String(i.attempts)],
        ['Queued', (i) => utc(i.queued)],
        ['', (i) => el('div', { class: 'row' },
          button('Remove', '', () => change(i, 'none', 'removed from the queue')),
          button('Re-queue at the end', '', () => change(i, 'reset', 'queued again at the end')))],
      ], q.inactive || [], 'Nothing waits.'));
      if (q.total_inactive > (q.inactive || []).length) {
        waiting.append(el('p', { class: 'muted' }, `${q.total_inactive} in all; the first ${(q.inactive || []).length} are shown.`));
      }
      done.replaceChildren(table([
        ['Backup', (i) => i.backup],
        ['To', (i) => i.target],
        ['Size', (i) => bytes(i.size)],
        ['Sent', (i) => bytes(i.bytes_sent)],
        ['Status', (i) => badge(i.status)],
        ['Finished', (i) => utc(i.finished)],
        ['SHA-256', (i) => el('span', { class: 'fp', title: i.sha256 || '' }, i.sha256 ? `${i.sha256.slice(0, 16)}…` : '-')],
      ], (q.done || []).slice(0, 20), 'Nothing has finished yet.'));
      done.querySelectorAll('tbody tr').forEach((tr, n) => { tr.dataset.backup = (q.done[n] || {}).backup; });
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

  showSettings();
  add.loadTargets();
  live(refresh, 2000);
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
    } catch (e) { form.hidden = true; }
  }
  return { form, loadTargets };
}
