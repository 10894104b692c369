// Received backups, on a target (SPEC 20): per paired source, the copies held, the last
// verify, the retention policy, and the recycle bin (put an entry back, purge).
import { api, el, errorBox, notice, table, badge, utc, bytes, live, button } from './lib.js';
import { SOURCE_ROLES } from './inventory.js';

export function received(root) {
  const pick = el('select', { name: 'sid' });
  const news = el('div', {});
  const verify = el('div', { id: 'verify' });
  const policy = el('div', { id: 'retention' });
  const copies = el('div', { id: 'received-list' });
  const bin = el('div', { id: 'recycle' });
  root.append(el('label', {}, 'Source ', pick), news, verify, policy,
    el('h2', {}, 'Recycle bin'), bin, el('h2', {}, 'Copies held'), copies);
  const sid = () => pick.value;
  const q = () => `?sid=${encodeURIComponent(sid())}`;

  async function act(method, path, body, said) {
    try {
      const r = await api(method, path, body);
      news.replaceChildren(notice(said(r)));
      refresh(true);
      // A verify or a new policy takes effect within a second, in the background.
      setTimeout(() => refresh(true), 1000);
    } catch (e) { news.replaceChildren(errorBox(e)); }
  }

  function lastVerify(v) {
    const run = button('Verify now', '', () => act('POST', `/api/replication/verify${q()}`, undefined, () => 'Verify started.'));
    run.name = 'verify';
    let said = 'Not verified yet.';
    if (v && v.running) said = `Verifying since ${utc(v.started)}: ${v.checked} of ${v.total} read.`;
    else if (v) said = `Last verify ${utc(v.finished)}: ${v.checked} of ${v.total} read, ${v.damaged} damaged, ${v.missing} missing.`;
    return el('p', { class: v && (v.damaged || v.missing) ? 'warning' : '' }, said, ' ', run);
  }

  function policyForm(r, days) {
    const last = el('input', { name: 'keep_last', type: 'number', min: 1, size: 5, value: (r && r.keep_last) || '' });
    const age = el('input', { name: 'keep_days', type: 'number', min: 1, size: 5, value: (r && r.keep_days) || '' });
    const save = button('Save', '', () => {
      const rule = {};
      if (last.value) rule.keep_last = Number(last.value);
      if (age.value) rule.keep_days = Number(age.value);
      const retention = Object.keys(rule).length ? rule : null;
      return act('PUT', `/api/replication/source${q()}`, { retention }, () =>
        (retention ? 'Retention saved; what it removes goes to the recycle bin.' : 'Retention: keep all.'));
    });
    save.name = 'save-retention';
    return el('div', { class: 'card row' },
      el('label', {}, 'Keep the last N per client', el('br', {}), last),
      el('label', {}, 'and those younger than D days', el('br', {}), age), save,
      el('p', { class: 'muted' }, `Empty: keep all. Removed copies stay in the bin ${days} days, outside the quota.`));
  }

  function binTable(b) {
    return [el('p', { class: 'muted' }, `${bytes(b.bytes)} in the bin.`), table([
      ['Backup', (e) => e.backup],
      ['Size', (e) => bytes(e.size)],
      ['Removed', (e) => utc(e.removed)],
      ['Purged after', (e) => utc(e.purge_after)],
      ['', (e) => {
        const purge = button('Purge now', 'danger', () => act('DELETE', `/api/replication/recycle${q()}&backup=${encodeURIComponent(e.backup)}`, undefined,
          (r) => `${e.backup} purged (${bytes(r.bytes)}).`));
        purge.hidden = true;
        purge.name = 'confirm-purge';
        const ask = el('button', { type: 'button', name: 'purge', on: { click: () => { purge.hidden = false; ask.hidden = true; } } }, 'Purge…');
        const back = button('Restore', '', () => act('POST', `/api/replication/recycle/restore${q()}`, { backup: e.backup }, () => `${e.backup} is back among the copies held.`));
        back.name = 'restore';
        return el('div', { class: 'row', data: { backup: e.backup } }, back, ask, purge);
      }],
    ], b.recycle || [], 'The bin is empty.')];
  }

  async function refresh(force) {
    if (!sid() || (!force && root.querySelector('[name=confirm-purge]:not([hidden])'))) return;
    try {
      const [r, b] = await Promise.all([api('GET', `/api/replication/received${q()}`), api('GET', `/api/replication/recycle${q()}`)]);
      verify.replaceChildren(lastVerify(r.verify));
      if (force || !policy.contains(document.activeElement)) policy.replaceChildren(policyForm(b.retention, b.recycle_days));
      bin.replaceChildren(...binTable(b));
      copies.replaceChildren(table([
        ['Backup', (c) => c.backup],
        ['Size', (c) => bytes(c.size)],
        ['Received', (c) => utc(c.received)],
        ['Status', (c) => [badge(c.status), c.message ? el('div', { class: 'muted' }, c.message) : null]],
        ['Verified', (c) => utc(c.verified)],
      ], (r.received || []).sort((x, y) => y.received - x.received), 'No copies held.'));
      copies.querySelectorAll('tbody tr').forEach((tr, n) => { tr.dataset.backup = r.received[n].backup; });
    } catch (e) { copies.replaceChildren(errorBox(e)); }
  }

  pick.addEventListener('change', () => refresh(true));
  api('GET', '/api/systems').then((s) => {
    const sources = (s.appliance || []).filter((x) => SOURCE_ROLES.includes(x.role));
    pick.replaceChildren(...sources.map((x) => el('option', { value: String(x.id) }, `${x.name} (id ${x.id})`)));
    if (!sources.length) root.replaceChildren(el('p', { class: 'muted' }, 'No paired sources.'));
    else live(refresh, 5000);
  }, (e) => root.replaceChildren(errorBox(e)));
}
