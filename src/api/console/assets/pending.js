// Pending requests on a target: each with its verification code shown large, and the
// three decisions: accept into a chosen storage, reject with a message, ignore.
import { api, el, errorBox, notice, fields, utc, fingerprint, live, megabytes, button } from './lib.js';

export function pending(root, session) {
  const fp = (session.appliance || {}).ca_fingerprint;
  const news = el('div', {});
  const list = el('div', { class: 'list' });
  root.append(
    el('p', { class: 'muted' },
      'Before deciding, compare each verification code with the one the source\'s admin reads ' +
      'out to you over a channel you trust (by phone, say). When a source\'s admin asks for this ' +
      'appliance, they compare this CA fingerprint: ', el('span', { class: 'fp', id: 'own-fingerprint' }, fingerprint(fp))),
    news, list);
  let storages = null;

  async function refresh() {
    // A decision being written stays as it is until it is sent or cancelled.
    if (list.querySelector('.panel')) return;
    try {
      const [answer, store] = await Promise.all([
        api('GET', '/api/replication/pending'),
        storages ? null : api('GET', '/api/storage?usage=backup'),
      ]);
      if (store) storages = store.storage || [];
      const rows = answer.pending || [];
      if (list.querySelector('.panel')) return;
      list.replaceChildren(...(rows.length ? rows.map(card) : [el('p', { class: 'muted', id: 'no-pending' }, 'No pending requests.')]));
    } catch (e) {
      list.replaceChildren(errorBox(e));
    }
  }

  function decided(text) {
    news.replaceChildren(notice(text));
    refresh();
  }

  function card(r) {
    const actions = el('div', { class: 'actions' });
    const article = el('article', { class: 'card request', data: { requestId: r.request_id } },
      el('div', { class: 'code-box' },
        el('div', { class: 'label' }, 'Verification code'),
        el('span', { class: 'code' }, r.verification_code),
        el('div', { class: 'label' }, `request ${r.request_id}`)),
      fields([
        ['Name', r.name],
        ['Host', r.host],
        ['Asset tag', r.asset_tag],
        ['System UUID', r.system_uuid],
        ['From address', r.remote_addr],
        ['Asks for storage', r.requested_storage_id],
        ['Replaces system', r.replaces_system_id],
        ['Filed', utc(r.created)],
        ['Expires', utc(r.expires)],
        ['CSR key fingerprint', r.csr_fingerprint && el('span', { class: 'fp' }, fingerprint(r.csr_fingerprint))],
      ]),
      actions);
    let panel = null;
    const open = (make) => {
      if (panel) panel.remove();
      panel = make(() => { panel.remove(); panel = null; });
      article.append(panel);
      const first = panel.querySelector('select, textarea, button');
      if (first) first.focus();
    };
    actions.append(
      el('button', { type: 'button', class: 'primary', name: 'accept', on: { click: () => open((close) => acceptPanel(r, close)) } }, 'Accept…'),
      el('button', { type: 'button', name: 'reject', on: { click: () => open((close) => rejectPanel(r, close)) } }, 'Reject…'),
      el('button', { type: 'button', name: 'ignore', on: { click: () => open((close) => ignorePanel(r, close)) } }, 'Ignore…'));
    return article;
  }

  function panelOf(title, close, ...body) {
    const status = el('div', {});
    const p = el('div', { class: 'panel' }, el('h2', {}, title), ...body, status,
      el('button', { type: 'button', name: 'cancel', on: { click: close } }, 'Cancel'));
    p.status = status;
    return p;
  }

  function acceptPanel(r, close) {
    const backup = storages || [];
    if (!backup.length) {
      return panelOf(`Accept request ${r.request_id}`, close,
        el('p', { class: 'error' }, 'This appliance has no backup storage to put the source\'s backups in (see Storage).'));
    }
    const wanted = backup.find((s) => s.id === r.requested_storage_id) || backup.find((s) => s.is_default) || backup[0];
    const select = el('select', { name: 'storage' }, backup.map((s) =>
      el('option', { value: String(s.id), selected: s.id === wanted.id },
        `${s.name} (id ${s.id}, ${s.status}, ${megabytes(s.mb_free)} free of ${megabytes(s.mb_size)})`)));
    let p;
    const go = button('Accept and sign', 'primary', async () => {
      p.status.replaceChildren();
      try {
        const res = await api('POST', '/api/replication/source', { request_id: r.request_id, accept: true, storage_id: Number(select.value) });
        close();
        decided(`Request ${r.request_id} accepted${res.system_id ? `: system ${res.system_id}` : ''}; its backups go to storage ${select.value}.`);
      } catch (e) {
        p.status.replaceChildren(errorBox(e));
      }
    });
    go.name = 'confirm-accept';
    p = panelOf(`Accept request ${r.request_id}`, close,
      el('label', {}, 'Keep this source\'s backups in ', select),
      el('p', { class: 'muted' }, 'Accepting signs the source\'s certificate with this appliance\'s CA. ' +
        'The source then opens the tunnel and replicates into the storage chosen here.'),
      go, ' ');
    if (r.requested_storage_id && !backup.some((s) => s.id === r.requested_storage_id)) {
      p.insertBefore(el('p', { class: 'warning' }, `The source asked for storage ${r.requested_storage_id}, which is not a backup storage here: choose one.`), select.parentNode);
    }
    return p;
  }

  function rejectPanel(r, close) {
    const message = el('textarea', { name: 'message', required: true, maxLength: 1000, placeholder: 'Why (the source\'s admin reads this)' });
    let p;
    const written = () => message.value.trim() !== '';
    const go = button('Reject', 'danger', async () => {
      p.status.replaceChildren();
      try {
        await api('POST', '/api/replication/source', { request_id: r.request_id, accept: false, message: message.value.trim() });
        close();
        decided(`Request ${r.request_id} rejected; the source sees your message.`);
      } catch (e) {
        p.status.replaceChildren(errorBox(e));
      }
    }, written);
    go.name = 'confirm-reject';
    const sync = () => { go.disabled = !written(); };
    message.addEventListener('input', sync);
    sync();
    p = panelOf(`Reject request ${r.request_id}`, close,
      el('label', {}, 'Message to the source (required)', el('br', {}), message), go, ' ');
    return p;
  }

  function ignorePanel(r, close) {
    let p;
    const go = button('Ignore', '', async () => {
      p.status.replaceChildren();
      try {
        await api('DELETE', `/api/replication/pending/${r.request_id}`);
        close();
        decided(`Request ${r.request_id} ignored; the source will see it expire.`);
      } catch (e) {
        p.status.replaceChildren(errorBox(e));
      }
    });
    go.name = 'confirm-ignore';
    p = panelOf(`Ignore request ${r.request_id}`, close,
      el('p', {}, 'Ignoring tells the source nothing: its request simply shows as expired.'), go, ' ');
    return p;
  }

  live(refresh, 3000);
}
