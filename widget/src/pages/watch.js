// /watch/{stream}: the player, title and live state from the SSE feed, viewer
// count, and the chat panel when the stream has a Matrix room.
import '../css/base.css';
import '../css/player.css';
import '../css/watch.css';
import { accessToken, api, streamPath, withQuery } from '../lib/api.js';
import { Chat } from '../lib/chat.js';
import { icon, pathParam, plural } from '../lib/dom.js';
import { StreamEvents } from '../lib/events.js';
import { Player } from '../lib/player.js';

const stream = pathParam('/watch/');
const access = accessToken();
const titleEl = document.getElementById('title');
const stateEl = document.getElementById('state');
const viewersEl = document.getElementById('viewers');
const descEl = document.getElementById('description');
const roomLostEl = document.getElementById('room-lost');

const player = new Player(document.getElementById('player'), {
  stream, muted: true, controls: true, autoplay: true, getToken: async () => access,
});
const chat = new Chat(document.getElementById('chat'), { stream, access });

function setTitle(t) {
  const title = t || stream;
  titleEl.textContent = title;
  document.title = `${title} · roomcast`;
}

function setLive(live) {
  stateEl.textContent = live ? 'LIVE' : 'OFFLINE';
  stateEl.className = `badge ${live ? 'live' : 'offline'}`;
  player.setLive(live);
}

function setViewers(n) {
  if (!Number.isFinite(n)) return;
  viewersEl.replaceChildren(icon('eye'), plural(n, 'viewer', 'viewers'));
  viewersEl.setAttribute('aria-label', `${plural(n, 'person', 'people')} watching`);
  viewersEl.hidden = false;
}

function setDescription(d) {
  descEl.textContent = d || '';
  descEl.hidden = !d;
}

/** The bot lost the stream's Matrix room: no chat, and say so. */
function setRoomLost(lost) {
  roomLostEl.hidden = !lost;
  roomLostEl.textContent = lost ? 'This stream lost its Matrix room: chat is off until the room is back.' : '';
  if (lost) chat.setAvailable(false);
}

/** The snapshot tells what the feed's first events do not: room (chat) and description. */
function applySnapshot(s) {
  if (!s) return;
  if (typeof s.description === 'string') setDescription(s.description);
  chat.setAvailable(Boolean(s.room && s.room.chat) && !s.room_lost);
  setRoomLost(s.room_lost);
}

if (!stream) {
  setTitle('No stream');
  player.fail('This address names no stream. Watch pages look like /watch/NAME.');
} else {
  setTitle(stream);
  const events = new StreamEvents(stream, {
    title: (d) => setTitle(d.title),
    viewers: (d) => setViewers(d.viewers),
    live: (snap) => { applySnapshot(snap); setLive(true); },
    offline: () => setLive(false),
    description: (d) => setDescription(d.description),
    room: (d) => { setRoomLost(d.room_lost); if (!d.room_lost) api(withQuery(streamPath(stream), { access })).then(applySnapshot, () => {}); },
    chat: (m) => chat.add(m),
    redaction: (d) => chat.redact(d.id),
  }, { access });
  api(withQuery(streamPath(stream), { access })).then(applySnapshot, (e) => {
    if (e.code === 'unknown_stream') {
      events.close();
      stateEl.hidden = true;
      player.fail(`There is no stream called “${stream}”.`, e.code);
    }
  });
}

window.roomcast = { player, chat };
