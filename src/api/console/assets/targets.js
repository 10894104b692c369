// Targets, on a source: ask a target for replication (and, the first time, confirm the
// fingerprint of the CA it presented, compared out of band), then follow each request
// through pending, accepted and complete.
import { api, el, errorBox, notice, fields, badge, utc, fingerprint, live, button } from './lib.js';

const STEPS = ['pending', 'accepted', 'complete'];

export function targets(root) {
  const target = el('input', { name: 'target', required: true, placeholder: 'target.example:8443', size: 28 });
  const ip = el('input', { name: 'ip', placeholder: 'optional', size: 18 });
  const storageId = el('input', { name: 'storage_id', placeholder: 'optional', size: 6, inputMode: 'numeric' });
  const token = el('input', { name: 'token', placeholder: 'optional', size: 30, autocomplete: 'off' });
  const join = el('input', { name: 'join', placeholder: 'replgate-join/1/…', size: 60, autocomplete: 'off' });
  const outcome = el('div', { id: 'ask-outcome' });
  const form = el('form', { class: 'card', id: 'ask' },
    el('h2', {}, 'Ask a target for replication'),
    el('div', { class: 'row' },
      el('label', {}, 'Target (host[:port])', el('br', {}), target),
      el('label', {}, 'Connect to address', el('br', {}), ip),
      el('label', {}, 'Storage on the target', el('br', {}), storageId),
      el('label', {}, 'Pairing token', el('br', {}), token),
      el('button', { type: 'submit', class: 'primary', name: 'ask' }, 'Ask')),
    el('div', { class: 'row' },
      el('label', {}, 'Or paste a join line from the target\'s admin', el('br', {}), join),
      el('button', { type: 'button', name: 'join', on: { click: () => joinLine() } }, 'Ask with the join line')),
    outcome);
  const list = el('div', { id: 'target-list' });
  root.append(form, el('h2', {}, 'Requests and pairings'), list);

  function ask(extra) {
    const body = { type: 'appliance', target: target.value.trim(), ...extra };
    if (ip.value.trim()) body.ip = ip.value.trim();
    if (storageId.value.trim()) body.storage_id = storageId.value.trim();
    if (token.value.trim() && !body.token) body.token = token.value.trim();
    return api('POST', '/api/replication/target', body);
  }

  // replgate-join/1/HOST/PORT/FINGERPRINT/TOKEN: the target's address, its CA's
  // fingerprint (so no confirmation step: the target's admin handed it over) and a token.
  function joinLine() {
    const parts = join.value.trim().split('/');
    if (parts.length !== 6 || parts[0] !== 'replgate-join' || parts[1] !== '1') {
      outcome.replaceChildren(errorBox({ message: 'a join line is replgate-join/1/HOST/PORT/FINGERPRINT/TOKEN' }));
      return;
    }
    const [, , host, port, fingerprint, secret] = parts;
    target.value = `${host.includes(':') && !host.startsWith('[') ? `[${host}]` : host}:${port}`;
    submit({ fingerprint, token: secret });
  }

  async function submit(extra) {
    outcome.replaceChildren(el('p', { class: 'muted' }, `Asking ${target.value.trim()}…`));
    try {
      const r = await ask(extra);
      const next = extra.token || token.value.trim()
        ? 'It carries a pairing token, so the target accepts it at once.'
        : 'Read this verification code to the target\'s admin; they accept only if it matches the code on their console.';
      outcome.replaceChildren(
        notice(`Asked ${target.value.trim()}: request ${r.request_id} is ${r.status}. ${next}`),
        el('div', { class: 'code-box' }, el('div', { class: 'label' }, 'Verification code'), el('span', { class: 'code', id: 'asked-code' }, r.verification_code)));
      refresh();
    } catch (e) {
      if (e.status === 412 && e.fingerprint) outcome.replaceChildren(trustPanel(e));
      else outcome.replaceChildren(errorBox(e));
    }
  }

  function trustPanel(e) {
    const shown = e.fingerprint;
    const go = button('The fingerprints match: trust this CA and ask', 'primary', () => submit({ fingerprint: shown }));
    go.name = 'trust';
    return el('div', { class: 'warning', id: 'trust' },
      el('strong', {}, 'This target is not trusted yet.'),
      el('p', {}, e.message),
      el('p', {}, 'It presented a CA with this SHA-256 fingerprint:'),
      el('code', { class: 'fp-big', id: 'presented-fingerprint', data: { fingerprint: shown } }, fingerprint(shown)),
      el('p', {}, 'Compare it, character by character, with the fingerprint the target\'s admin reads to you ' +
        'from their console (Pending requests page) or from "replgate ctl health", over a channel you trust ' +
        'such as the phone, not over this network. If anything differs, someone may be in between: do not go on.'),
      go, ' ',
      el('button', { type: 'button', name: 'cancel', on: { click: () => outcome.replaceChildren() } }, 'Cancel'));
  }

  form.addEventListener('submit', (ev) => {
    ev.preventDefault();
    submit({});
  });

  async function refresh() {
    if (list.querySelector('.confirm-forget:not([hidden])')) return;
    try {
      const t = await api('GET', '/api/replication/targets');
      const rows = t.targets || [];
      list.replaceChildren(...(rows.length ? rows.map(card) : [el('p', { class: 'muted' }, 'No targets yet.')]));
    } catch (e) {
      list.replaceChildren(errorBox(e));
    }
  }

  function steps(status) {
    const at = STEPS.indexOf(status);
    if (at < 0) return el('ol', { class: 'steps' }, el('li', { class: 'now' }, status));
    return el('ol', { class: 'steps' }, STEPS.map((s, i) => el('li', { class: i < at ? 'done' : i === at ? 'now' : '' }, s)));
  }

  function card(t) {
    const status = el('div', {});
    const confirm = button(`Forget ${t.host} now`, 'danger confirm-forget', async () => {
      try {
        await api('DELETE', `/api/replication/target/${encodeURIComponent(t.host)}`);
        refresh();
      } catch (e) { status.replaceChildren(errorBox(e)); }
    });
    confirm.hidden = true;
    const forget = el('button', { type: 'button', name: 'forget', on: { click: () => { confirm.hidden = false; forget.hidden = true; } } }, 'Forget…');
    return el('article', { class: 'card request', data: { targetId: t.target_id, host: t.host, status: t.status } },
      el('div', { class: 'code-box' },
        el('div', { class: 'label' }, 'Verification code'),
        el('span', { class: 'code' }, t.verification_code),
        el('div', { class: 'label' }, `request ${t.request_id}`)),
      el('div', {},
        el('h2', {}, t.host, ' ', badge(t.status)),
        steps(t.status),
        t.message ? el('p', { class: t.status === 'rejected' ? 'warning' : 'error', data: { message: '' } }, `The target says: `, t.message) : null,
        fields([
          ['Target CA', el('span', { class: 'fp' }, fingerprint(t.ca_fingerprint))],
          ['Asked', utc(t.created)],
          ['Updated', utc(t.updated)],
          ['Last poll', utc(t.last_poll)],
          ['Certificate until', t.certificate_expires ? utc(t.certificate_expires) : null],
        ])),
      el('div', { class: 'actions' }, forget, confirm, status));
  }

  live(refresh, 2000);
}
