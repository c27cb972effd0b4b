// /: the live public streams with their thumbnails, titles and viewer counts
// (refreshed every 10 s while the page is visible).
import '../css/base.css';
import '../css/index.css';
import { api } from '../lib/api.js';
import { h, icon, plural } from '../lib/dom.js';

const list = document.getElementById('streams');
const status = document.getElementById('status');
const REFRESH_MS = 10000;

// A card's picture: the stream's latest thumbnail (renewed by the server every
// few seconds; the query string changes with each refresh so it is fetched again).
let round = 0;
function preview(s) {
  if (!s.thumbnail) return h('div', { class: 'card-preview no-thumb' });
  const img = h('img', {
    class: 'card-thumb',
    alt: '',
    src: `${s.thumbnail}?r=${round}`,
    onerror: (e) => e.target.closest('.card-preview')?.classList.add('no-thumb'),
  });
  return h('div', { class: 'card-preview' }, img);
}

function card(s) {
  const since = s.started_at ? new Date(s.started_at) : null;
  return h('li', {},
    h('a', { class: 'card', href: `/watch/${encodeURIComponent(s.name)}`, 'data-stream': s.name },
      preview(s),
      h('div', { class: 'card-meta' },
        h('span', { class: 'badge live', text: 'LIVE' }),
        h('span', { class: 'viewers' }, icon('eye'), plural(s.viewers ?? 0, 'viewer', 'viewers'))),
      h('div', { class: 'card-title', text: s.title || s.name }),
      h('div', { class: 'card-name', text: since && Number.isFinite(since.getTime())
        ? `/${s.name} · live since ${since.toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' })}`
        : `/${s.name}` })));
}

async function refresh() {
  try {
    const all = await api('/api/v1/streams');
    round += 1;
    const live = all.filter((s) => s.live && s.access !== 'private')
      .sort((a, b) => (b.viewers ?? 0) - (a.viewers ?? 0) || a.name.localeCompare(b.name));
    list.replaceChildren(...live.map(card));
    status.textContent = live.length ? `${plural(live.length, 'stream', 'streams')} live` : 'Nobody is live right now. This page updates by itself.';
    status.classList.remove('error-text');
  } catch (e) {
    status.textContent = `Could not load the streams: ${e.message}`;
    status.classList.add('error-text');
  }
}

refresh();
setInterval(() => { if (document.visibilityState === 'visible') refresh(); }, REFRESH_MS);
