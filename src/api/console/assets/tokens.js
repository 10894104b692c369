// Pairing tokens, on a target: create one (its secret and join line are shown once),
// list them with their use, revoke one; one may take over a lost source.
import { api, el, errorBox, notice, table, badge, utc, live, button } from './lib.js';

const DAY = 86400;

export function tokens(root) {
  const news = el('div', {});
  const secret = el('div', { id: 'token-secret' });
  const list = el('div', { id: 'token-list' });
  const storage = el('select', { name: 'storage_id' }, el('option', { value: '' }, 'the default backup storage'));
  const uses = el('input', { name: 'uses', type: 'number', min: 1, defaultValue: '1', size: 5 });
  const days = el('input', { name: 'expires_days', type: 'number', min: 1, max: 90, defaultValue: '7', size: 4 });
  const quota = el('input', { name: 'quota_mb', type: 'number', min: 1, placeholder: 'none', size: 8 });
  const host = el('input', { name: 'host', placeholder: 'any', size: 18 });
  const uuid = el('input', { name: 'system_uuid', placeholder: 'any', size: 20 });
  const note = el('input', { name: 'note', placeholder: 'who it is for', size: 24 });
  const replaces = el('select', { name: 'replaces_system_id' }, el('option', { value: '' }, 'no one: a new source'));
  const status = el('div', {});
  const form = el('form', { class: 'card', id: 'token-create' },
    el('h2', {}, 'New pairing token'),
    el('p', { class: 'muted' }, 'A source that files its request with a valid token is accepted at once, into this storage and quota.'),
    el('div', { class: 'row' },
      el('label', {}, 'Storage', el('br', {}), storage),
      el('label', {}, 'Quota (MB)', el('br', {}), quota),
      el('label', {}, 'Uses', el('br', {}), uses),
      el('label', {}, 'Valid for (days)', el('br', {}), days)),
    el('div', { class: 'row' },
      el('label', {}, 'Only for host', el('br', {}), host),
      el('label', {}, 'Only for system UUID', el('br', {}), uuid),
      el('label', {}, 'Note', el('br', {}), note),
      el('label', {}, 'Takes over (a lost source)', el('br', {}), replaces),
      el('button', { type: 'submit', class: 'primary', name: 'create' }, 'Create token')),
    status);
  root.append(news, form, secret, el('h2', {}, 'Tokens'), list);

  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    status.replaceChildren();
    const body = { uses: Number(uses.value), expires_in: Number(days.value) * DAY };
    if (storage.value) body.storage_id = Number(storage.value);
    if (quota.value) body.quota_mb = Number(quota.value);
    if (replaces.value) body.replaces_system_id = Number(replaces.value);
    for (const [k, input] of [['host', host], ['system_uuid', uuid], ['note', note]]) {
      if (input.value.trim()) body[k] = input.value.trim();
    }
    try {
      const t = await api('POST', '/api/replication/tokens', body);
      form.reset();
      secret.replaceChildren(el('div', { class: 'warning' },
        el('strong', {}, `Token ${t.token_id}: copy it now. It is shown only this once; the appliance keeps only its hash.`),
        t.replaces_system_id ? el('p', { id: 'token-takes-over' }, `Its user takes over system ${t.replaces_system_id}: backups, quota, lineage.`) : null,
        el('p', {}, 'The join line (for "replgate ctl request-target --join" or the source\'s console) carries this appliance\'s address, its CA fingerprint and the token:'),
        el('code', { class: 'fp-big', id: 'token-join' }, t.join),
        el('p', {}, 'The token alone:'),
        el('code', { class: 'fp-big', id: 'token-text' }, t.token),
        el('button', { type: 'button', on: { click: () => secret.replaceChildren() } }, 'I have copied it: hide it')));
      refresh();
    } catch (e) { status.replaceChildren(errorBox(e)); }
  });

  async function refresh() {
    try {
      const t = await api('GET', '/api/replication/tokens');
      list.replaceChildren(table([
        ['ID', (x) => x.token_id],
        ['Status', (x) => badge(x.status)],
        ['Used', (x) => `${x.used} of ${x.uses}`],
        ['Expires', (x) => utc(x.expires)],
        ['Last used', (x) => utc(x.last_used)],
        ['Storage', (x) => (x.storage_id ? String(x.storage_id) : 'default')],
        ['Quota', (x) => (x.quota_mb ? `${x.quota_mb} MB` : '-')],
        ['Only for', (x) => [x.host, x.system_uuid, x.replaces_system_id && `takes over system ${x.replaces_system_id}`].filter(Boolean).join(' ') || 'any source'],
        ['Note', (x) => x.note || ''],
        ['Created', (x) => [utc(x.created), el('div', { class: 'muted' }, x.created_by)]],
        ['', (x) => (x.status === 'valid' ? button('Revoke', 'danger', async () => {
          try {
            await api('DELETE', `/api/replication/tokens/${encodeURIComponent(x.token_id)}`);
            news.replaceChildren(notice(`Token ${x.token_id} revoked; sources that used it stay paired.`));
            refresh();
          } catch (e) { news.replaceChildren(errorBox(e)); }
        }) : null)],
      ], t.tokens || [], 'No tokens yet.'));
    } catch (e) { list.replaceChildren(errorBox(e)); }
  }

  api('GET', '/api/storage?usage=backup').then((s) => {
    storage.append(...(s.storage || []).map((x) => el('option', { value: String(x.id) }, `${x.name} (id ${x.id})`)));
  }).catch(() => {});
  api('GET', '/api/systems').then((s) => {
    replaces.append(...(s.appliance || []).filter((x) => /Replication Source/.test(x.role))
      .map((x) => el('option', { value: String(x.id) }, `${x.name} (system ${x.id})`)));
  }).catch(() => {});
  live(refresh, 10000);
}
