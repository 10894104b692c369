// The console's frame: log in, the navigation, one page at a time (chosen by the URL's
// #fragment), log out. Pages live in their own modules.
import { api, el, errorBox, may, stopLive, fingerprint } from './lib.js';
import { pending } from './pending.js';
import { systems, storage } from './inventory.js';
import { targets } from './targets.js';
import { queue } from './queue.js';
import { tokens } from './tokens.js';
import { received } from './received.js';
import { users, audit } from './admin.js';

const PAGES = [
  { id: 'pending', title: 'Pending requests', render: pending },
  { id: 'systems', title: 'Systems', render: systems },
  { id: 'storage', title: 'Storage', render: storage },
  { id: 'targets', title: 'Targets', render: targets },
  { id: 'queue', title: 'Replication queue', render: queue },
  { id: 'received', title: 'Received backups', render: received },
  { id: 'tokens', title: 'Pairing tokens', render: tokens },
  { id: 'users', title: 'Users', render: users, needs: 'superuser' },
  { id: 'audit', title: 'Audit', render: audit },
];

const main = document.getElementById('main');
const top = document.getElementById('top');
let session = null;

function showLogin(message) {
  stopLive();
  session = null;
  top.hidden = true;
  const user = el('input', { name: 'username', autocomplete: 'username', required: true });
  const pass = el('input', { name: 'password', type: 'password', autocomplete: 'current-password', required: true });
  const status = el('div', {});
  if (message) status.append(errorBox({ message }));
  const form = el('form', { class: 'card login', id: 'login' },
    el('h1', {}, 'replgate console'),
    el('label', {}, 'User', user),
    el('label', {}, 'Password', pass),
    status,
    el('button', { type: 'submit', class: 'primary' }, 'Log in'));
  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    status.replaceChildren();
    try {
      await api('POST', '/api/session', { username: user.value, password: pass.value });
      await start();
    } catch (e) {
      status.replaceChildren(errorBox(e));
    }
  });
  main.replaceChildren(form);
  pass.focus();
}

function visible() {
  return PAGES.filter((p) => !p.needs || may(session, p.needs));
}

function showPage() {
  stopLive();
  const pages = visible();
  const wanted = location.hash.replace(/^#\/?/, '');
  const page = pages.find((p) => p.id === wanted) || pages[0];
  for (const a of document.querySelectorAll('#nav a')) {
    a.classList.toggle('current', a.dataset.page === page.id);
  }
  const body = el('div', { id: `page-${page.id}` });
  main.replaceChildren(el('h1', {}, page.title), body);
  document.title = `${page.title} · replgate`;
  try {
    page.render(body, session);
  } catch (e) {
    body.replaceChildren(errorBox(e));
  }
}

async function start() {
  try {
    session = await api('GET', '/api/session');
  } catch (e) {
    if (e.status === 401) showLogin();
    else main.replaceChildren(errorBox(e));
    return;
  }
  const a = session.appliance || {};
  document.getElementById('appliance').replaceChildren(el('span', { title: `CA ${fingerprint(a.ca_fingerprint)}` }, `${a.name} · ${a.version}`));
  document.getElementById('who').replaceChildren(el('span', {}, `${session.user} (${session.privilege})`));
  document.getElementById('nav').replaceChildren(...visible().map((p) =>
    el('a', { href: `#/${p.id}`, data: { page: p.id } }, p.title)));
  top.hidden = false;
  showPage();
}

document.getElementById('logout').addEventListener('click', async () => {
  try {
    await api('DELETE', '/api/session');
  } catch (e) {
    // Already ended: the login form is the right next step either way.
  }
  showLogin();
});
document.addEventListener('session-ended', (ev) => showLogin(ev.detail));
window.addEventListener('hashchange', () => { if (session) showPage(); });
start();
