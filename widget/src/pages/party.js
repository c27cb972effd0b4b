// /party/{name}: a screen-share party without Matrix (`[[parties]]` in the config). Each
// participant enters the party key and picks a display name; then the same grid and
// Share screen as the room widget (lib/party.js). The key is sent to this server only
// and kept in this tab's sessionStorage, so a reload rejoins.
import '../css/base.css';
import '../css/player.css';
import '../css/publish.css';
import '../css/widget.css';
import { api } from '../lib/api.js';
import { h, pathParam } from '../lib/dom.js';
import { Party } from '../lib/party.js';

const name = pathParam('/party/');
const app = document.getElementById('app');
const stage = document.getElementById('stage');
document.title = `Party: ${name} · roomcast`;
const base = `/api/v1/parties/${encodeURIComponent(name)}`;

const key = h('input', { type: 'password', name: 'key', autocomplete: 'off', spellcheck: 'false', placeholder: 'The party key' });
const who = h('input', { type: 'text', name: 'display_name', maxlength: '32', placeholder: 'Your name' });
const status = h('p', { class: 'pub-status', role: 'status', 'aria-live': 'polite' });
const form = h('form', { class: 'pub-form party-join', onsubmit: (ev) => { ev.preventDefault(); join(); } },
  h('label', {}, 'Party key', key, h('span', { class: 'hint', text: 'The key the party’s host gave you.' })),
  h('label', {}, 'Your name', who, h('span', { class: 'hint', text: 'Shown to the others on your screen share.' })),
  h('div', { class: 'pub-actions' }, h('button', { type: 'submit', class: 'btn', text: 'Join' })),
  status);
app.prepend(h('h1', {}, 'Screen-share party: ', h('span', { text: name })), form);
key.value = sessionStorage.getItem(`party-key:${name}`) || '';
who.value = sessionStorage.getItem('party-name') || '';

let party = null;
async function join() {
  if (party) return;
  status.textContent = '';
  status.classList.remove('error');
  let me;
  try {
    me = await api(`${base}/join`, { method: 'POST', body: { key: key.value.trim(), display_name: who.value } });
  } catch (e) {
    status.textContent = e.code === 'party_key_rejected' ? 'That party key is not right.' : e.message;
    status.classList.add('error');
    return;
  }
  sessionStorage.setItem(`party-key:${name}`, key.value.trim());
  sessionStorage.setItem('party-name', who.value);
  form.hidden = true;
  party = new Party(stage, { base, join: async () => me });
  window.roomcast.party = party;
  party.init();
}

window.roomcast = { party: null, join };
if (!name) {
  status.textContent = 'This address names no party. Party pages look like /party/NAME.';
  status.classList.add('error');
}
