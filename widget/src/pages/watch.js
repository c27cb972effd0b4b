// /watch/{stream}: the player, title and live state from the SSE feed, viewer
// count, and the chat panel when the stream has a Matrix room. While the stream
// is offline, its past broadcasts are listed, and one plays (?recording=ID) with its
// chat in time with the video (lib/replays.js).
import '../css/base.css';
import '../css/player.css';
import '../css/watch.css';
import { accessToken, api, streamPath, withQuery } from '../lib/api.js';
import { Chat } from '../lib/chat.js';
import { icon, pathParam, plural } from '../lib/dom.js';
import { StreamEvents } from '../lib/events.js';
import { Player } from '../lib/player.js';
import { Replays } from '../lib/replays.js';

const stream = pathParam('/watch/');
const access = accessToken();
const titleEl = document.getElementById('title');
const stateEl = document.getElementById('state');
const viewersEl = document.getElementById('viewers');
const descEl = document.getElementById('description');
const roomLostEl = document.getElementById('room-lost');
const backLiveEl = document.getElementById('back-live');
const replayErrorEl = document.getElementById('replay-error');
let liveTitle = stream;
let live = null; // the last live state of the feed
let chatAvailable = false; // the live chat, shown again after a replay
let replaying = null; // R of the recording that plays instead of the live stream
let admitted = false; // the snapshot answered: this viewer may see the stream (and its recordings)

const player = new Player(document.getElementById('player'), {
  stream, muted: true, controls: true, autoplay: true, getToken: async () => access,
});
const chat = new Chat(document.getElementById('chat'), { stream, access });
const replays = new Replays({
  stream, access, listRoot: document.querySelector('.stage'),
  playerBox: document.getElementById('player'), chatBox: document.getElementById('chat'), onChange: onReplay,
});
backLiveEl.addEventListener('click', () => replays.close());

function setTitle(t) {
  liveTitle = t || stream;
  if (!replaying) showTitle(liveTitle);
}

function showTitle(title) {
  titleEl.textContent = title;
  document.title = `${title} · roomcast`;
}

function setLive(on) {
  live = on;
  listReplays();
  if (replaying) return;
  showBadge();
  player.setLive(on);
}

/** Past broadcasts are listed while offline, once the snapshot said the viewer may see the stream. */
function listReplays() {
  replays.show(live === false && admitted);
}

function showBadge() {
  const [text, cls] = replaying ? ['REPLAY', 'replay'] : live ? ['LIVE', 'live'] : ['OFFLINE', 'offline'];
  stateEl.textContent = text;
  stateEl.className = `badge ${cls}`;
}

function setChatAvailable(on) {
  chatAvailable = on;
  if (!replaying) chat.setAvailable(on);
}

/** A replay starts (R) or ends (null): it takes the live player's and chat's places. */
function onReplay(rec, err) {
  replayErrorEl.hidden = !err;
  replayErrorEl.textContent = err ? `This recording cannot be played: ${err.message}` : '';
  const was = replaying;
  replaying = rec;
  backLiveEl.hidden = !rec;
  document.body.classList.toggle('is-replay', Boolean(rec));
  if (rec) {
    if (!was) player.teardown();
    player.el.hidden = true;
    chat.el.hidden = true;
    showTitle(rec.title_end || rec.title_start || liveTitle);
  } else {
    player.el.hidden = false;
    chat.setAvailable(chatAvailable);
    showTitle(liveTitle);
    if (was && live !== null) {
      player.live = null; // so setLive connects again
      player.setLive(live);
    }
  }
  showBadge();
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
  if (lost) setChatAvailable(false);
}

/** The snapshot tells what the feed's first events do not: room (chat) and description. */
function applySnapshot(s) {
  if (!s) return;
  if (!admitted) {
    admitted = true;
    listReplays();
  }
  if (typeof s.description === 'string') setDescription(s.description);
  setChatAvailable(Boolean(s.room && s.room.chat) && !s.room_lost);
  setRoomLost(s.room_lost);
}

if (!stream) {
  setTitle('No stream');
  player.fail('This address names no stream. Watch pages look like /watch/NAME.');
} else {
  setTitle(stream);
  replays.followAddress();
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
      if (!replaying) player.fail(`There is no stream called “${stream}”.`, e.code);
    }
  });
}

window.roomcast = { player, chat, replays };
