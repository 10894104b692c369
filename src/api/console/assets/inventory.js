// Systems (this appliance, its replication sources, managed systems, pending requests)
// and storage, as GET /api/systems and GET /api/storage list them.
import { api, el, errorBox, notice, table, badge, utc, megabytes, live, button } from './lib.js';

export const SOURCE_ROLES = ['Replication Source', 'Non-Managed Replication Source'];

export function systems(root) {
  const news = el('div', {});
  const body = el('div', {});
  root.append(news, body);
  let storages = [];
  let editing = false;

  async function refresh() {
    if (editing) return;
    try {
      const [sys, store] = await Promise.all([api('GET', '/api/systems'), api('GET', '/api/storage?usage=backup')]);
      storages = store.storage || [];
      if (editing) return;
      body.replaceChildren(table([
        ['ID', (s) => String(s.id)],
        ['Name', (s) => s.name],
        ['Host', (s) => s.host],
        ['Asset tag', (s) => s.asset_tag],
        ['Role', (s) => s.role],
        ['Status', (s) => [badge(s.status), s.message ? el('div', { class: 'muted' }, s.message) : null]],
        ['Online', (s) => (s.online ? 'yes' : 'no')],
        ['Storage', (s) => (s.storage_id ? String(s.storage_id) : '-')],
        ['Version', (s) => [s.version, s.version_status ? el('div', { class: 'muted' }, s.version_status) : null]],
        ['Certificate until', (s) => utc(s.certificate_expires)],
        ['Last seen', (s) => utc(s.last_seen)],
        ['', (s) => (SOURCE_ROLES.includes(s.role) ? actions(s) : null)],
      ], sys.appliance || []));
    } catch (e) {
      body.replaceChildren(errorBox(e));
    }
  }

  function actions(s) {
    const cell = el('div', { class: 'row' });
    const status = el('div', {});
    const select = el('select', { name: 'storage' }, storages.map((st) =>
      el('option', { value: String(st.id), selected: st.id === s.storage_id }, `${st.name} (id ${st.id})`)));
    const move = button('Move', '', async () => {
      try {
        await api('PUT', `/api/replication/source?sid=${s.id}`, { storage_id: Number(select.value) });
        editing = false;
        news.replaceChildren(notice(`System ${s.id} now stores into storage ${select.value}.`));
        refresh();
      } catch (e) { status.replaceChildren(errorBox(e)); }
    });
    const confirm = button('Unpair now', 'danger', async () => {
      try {
        await api('DELETE', `/api/replication/source?sid=${s.id}`);
        editing = false;
        news.replaceChildren(notice(`System ${s.id} unpaired: its certificate is revoked; received backups stay in storage.`));
        refresh();
      } catch (e) { status.replaceChildren(errorBox(e)); }
    });
    confirm.hidden = true;
    const unpair = el('button', { type: 'button', on: { click: () => { editing = true; confirm.hidden = false; unpair.hidden = true; } } }, 'Unpair…');
    // While a choice is being made here, the table is not refreshed under it.
    select.addEventListener('focus', () => { editing = true; });
    select.addEventListener('blur', () => { editing = !confirm.hidden; });
    cell.append(select, move, unpair, confirm, status);
    return cell;
  }

  live(refresh, 5000);
}

export function storage(root) {
  const body = el('div', {});
  root.append(body);
  live(async () => {
    try {
      const s = await api('GET', '/api/storage');
      const t = s.totals || {};
      body.replaceChildren(
        table([
          ['ID', (x) => String(x.id)],
          ['Name', (x) => x.name],
          ['Usage', (x) => x.usage],
          ['Status', (x) => badge(x.status)],
          ['Kind', (x) => (x.s3 ? 'S3 bucket' : 'directory')],
          ['Path', (x) => el('span', { class: 'fp' }, x.s3 ? `${x.path} at ${x.s3.endpoint}` : x.path)],
          ['Used', (x) => (x.mb_size ? el('progress', { max: x.mb_size, value: x.mb_size - x.mb_free, title: `${Math.round(100 * (1 - x.mb_free / x.mb_size))} % used` }) : '-')],
          ['Free', (x) => `${megabytes(x.mb_free)} of ${megabytes(x.mb_size)}`],
          ['Default', (x) => (x.is_default ? 'default for accepts' : '')],
        ], s.storage || [], 'No storage is configured.'),
        el('p', { class: 'muted' }, `Backup storage: ${megabytes(t.backup_mb_free)} free of ${megabytes(t.backup_mb_size)}. ` +
          `All storage: ${megabytes(t.total_mb_free)} free of ${megabytes(t.total_mb_size)}. Storage is declared in the config file.`));
    } catch (e) {
      body.replaceChildren(errorBox(e));
    }
  }, 10000);
}
