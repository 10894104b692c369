// Users (superuser only) and the audit log.
import { api, el, errorBox, notice, table, utc, live, button, PRIVILEGES } from './lib.js';

function privilegeSelect(current) {
  return el('select', { name: 'privilege' }, PRIVILEGES.map((p) => el('option', { value: p, selected: p === current }, p)));
}

export function users(root, session) {
  const news = el('div', {});
  const list = el('div', {});
  const name = el('input', { name: 'name', required: true, autocomplete: 'off' });
  const password = el('input', { name: 'password', type: 'password', required: true, minLength: 8, autocomplete: 'new-password' });
  const privilege = privilegeSelect('monitor');
  const createStatus = el('div', {});
  const create = el('form', { class: 'card', id: 'create-user' },
    el('h2', {}, 'New user'),
    el('div', { class: 'row' },
      el('label', {}, 'Name', el('br', {}), name),
      el('label', {}, 'Password (8 or more characters)', el('br', {}), password),
      el('label', {}, 'Privilege', el('br', {}), privilege),
      el('button', { type: 'submit', class: 'primary' }, 'Create')),
    createStatus);
  create.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    createStatus.replaceChildren();
    try {
      await api('POST', '/api/users', { name: name.value, password: password.value, privilege: privilege.value });
      news.replaceChildren(notice(`User ${name.value} created.`));
      create.reset();
      refresh();
    } catch (e) { createStatus.replaceChildren(errorBox(e)); }
  });
  root.append(news, list, create);

  function actions(u) {
    const status = el('div', {});
    const sel = privilegeSelect(u.privilege);
    const pw = el('input', { type: 'password', name: 'new-password', placeholder: 'new password', autocomplete: 'new-password', size: 14 });
    const put = async (body, what) => {
      try {
        await api('PUT', `/api/users/${encodeURIComponent(u.name)}`, body);
        news.replaceChildren(notice(`User ${u.name}: ${what}.`));
        refresh();
      } catch (e) { status.replaceChildren(errorBox(e)); }
    };
    const del = button(`Delete ${u.name} now`, 'danger', async () => {
      try {
        await api('DELETE', `/api/users/${encodeURIComponent(u.name)}`);
        news.replaceChildren(notice(`User ${u.name} deleted.`));
        refresh();
      } catch (e) { status.replaceChildren(errorBox(e)); }
    });
    del.hidden = true;
    const ask = el('button', { type: 'button', on: { click: () => { del.hidden = false; ask.hidden = true; } } }, 'Delete…');
    return el('div', { class: 'row' },
      sel, button('Set privilege', '', () => put({ privilege: sel.value }, `privilege ${sel.value}`)),
      pw, button('Set password', '', () => put({ password: pw.value }, 'password changed, its sessions ended')),
      u.name === session.user ? null : [ask, del], status);
  }

  async function refresh() {
    try {
      const u = await api('GET', '/api/users');
      list.replaceChildren(table([
        ['Name', (x) => x.name],
        ['Privilege', (x) => x.privilege],
        ['Created', (x) => utc(x.created)],
        ['Updated', (x) => utc(x.updated)],
        ['', actions],
      ], u.users || []));
    } catch (e) { list.replaceChildren(errorBox(e)); }
  }
  refresh();
}

/** The audit log pages forward from the oldest entry; the page shows the newest. */
const PAGE = 1000;
const SHOWN = 200;

export function audit(root) {
  const body = el('div', {});
  root.append(el('p', { class: 'muted' }, `The latest ${SHOWN} entries, newest first.`), body);
  let rows = [];
  live(async () => {
    try {
      for (;;) {
        const after = rows.length ? rows[rows.length - 1].id : 0;
        const page = (await api('GET', `/api/audit?after=${after}&limit=${PAGE}`)).audit || [];
        rows = rows.concat(page).slice(-SHOWN);
        if (page.length < PAGE) break;
      }
      body.replaceChildren(table([
        ['Time', (a) => utc(a.time)],
        ['User', (a) => a.user],
        ['Address', (a) => a.address],
        ['Action', (a) => a.action],
        ['Object', (a) => a.object],
        ['Detail', (a) => a.detail],
      ], rows.slice().reverse(), 'The audit log is empty.'));
    } catch (e) { body.replaceChildren(errorBox(e)); }
  }, 10000);
}
