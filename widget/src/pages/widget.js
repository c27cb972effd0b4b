// /widget: the room widget. Speaks the Matrix widget API through
// matrix-widget-api (works whether the client waits for the iframe's load event
// or for our content_loaded), finds the room's streams from ?room=$matrix_room_id,
// follows the client's theme (?theme=… and live `theme_change`), and asks for an
// OpenID token only when a stream is private, to trade it for a viewer token.
// In a client it also asks to read the room (lib/room_chat.js): granted, the
// room's chat shows beside the player; refused, the player stays alone.
//
// Widget URL: /widget?room=$matrix_room_id&theme=$org.matrix.msc2873.client_theme&widgetId=$matrix_widget_id
import '../css/base.css';
import '../css/player.css';
import '../css/widget.css';
import { WidgetApi, WidgetApiToWidgetAction } from 'matrix-widget-api';
import { api, streamPath } from '../lib/api.js';
import { h, icon, params, plural } from '../lib/dom.js';
import { StreamEvents } from '../lib/events.js';
import { Party } from '../lib/party.js';
import { Player } from '../lib/player.js';
import { RoomChat } from '../lib/room_chat.js';

// The bot writes `roomId` (and the stream the widget was added for, `stream`);
// the other spellings are for widgets added by hand.
const roomId = params.get('roomId') || params.get('room') || params.get('room_id') || params.get('matrix_room_id') || '';
const preferredStream = params.get('stream') || '';
const widgetId = params.get('widgetId') || params.get('widget_id') || '';
const inClient = window.parent !== window && widgetId !== '';
const tabs = document.getElementById('tabs');
const stage = document.getElementById('stage');
const playerBox = document.getElementById('player');
const message = document.getElementById('message');

// --- theme ---------------------------------------------------------------
function applyTheme(name) {
  if (typeof name !== 'string' || !name) return;
  const dark = /dark|black/i.test(name);
  document.documentElement.dataset.theme = dark ? 'dark' : 'light';
}
applyTheme(params.get('theme') || params.get('client_theme'));

// --- widget API ------------------------------------------------------------
let widget = null;
let chat = null;
let ready = Promise.resolve(false);
if (inClient) {
  let parentOrigin;
  try {
    parentOrigin = params.get('parentUrl') ? new URL(params.get('parentUrl')).origin : undefined;
  } catch {
    parentOrigin = undefined;
  }
  widget = new WidgetApi(widgetId, parentOrigin);
  // The player needs no capabilities (OpenID is asked for separately); the chat asks
  // to read the room's messages and reactions, and to react.
  if (roomId) chat = new RoomChat(stage, { widget, roomId, userId: params.get('userId') || '' });
  widget.on(`action:${WidgetApiToWidgetAction.ThemeChange}`, (ev) => {
    ev.preventDefault();
    applyTheme(ev.detail.data && ev.detail.data.name);
    widget.transport.reply(ev.detail, {});
  });
  ready = new Promise((resolve) => widget.once('ready', () => resolve(true)));
  widget.start();
  // Clients with waitForIframeLoad=false wait for this; the others answer it with an
  // error we do not need. Sent after our load event, so after the client's iframe onload.
  const loaded = () => setTimeout(() => widget.sendContentLoaded().catch(() => {}), 0);
  if (document.readyState === 'complete') loaded();
  else window.addEventListener('load', loaded, { once: true });
}

function say(text) {
  message.textContent = text;
  message.hidden = !text;
}

// --- viewer access for private streams ------------------------------------
const grants = new Map(); // stream → {token, expires}
async function viewerToken(stream, { refresh = false, status = () => {} } = {}) {
  const g = grants.get(stream);
  if (g && !refresh && g.expires > Date.now() + 30000) return g.token;
  if (!widget) {
    const e = new Error('This stream is private: open it in its Matrix room to watch.');
    e.code = 'access_required';
    throw e;
  }
  await ready;
  let cred;
  // The client may ask its user first (Element shows a dialog the first time): say so
  // instead of "Connecting…" while that dialog waits.
  status('Waiting for your Matrix client to confirm who you are…');
  try {
    cred = await widget.requestOpenIDConnectToken();
    status(null);
  } catch (err) {
    const e = new Error('This stream is private. Allow the widget to verify your Matrix identity to watch it.');
    e.code = 'openid_declined';
    e.retry = true;
    throw e;
  }
  let r;
  try {
    r = await api(`${streamPath(stream)}/access`, {
      method: 'POST',
      body: { openid_token: cred.access_token, matrix_server_name: cred.matrix_server_name },
    });
  } catch (err) {
    const e = new Error(err.code === 'not_a_member'
      ? 'Only members of this room can watch this stream. Join the room, then try again.'
      : `Could not get access to the stream: ${err.message}`);
    e.code = err.code;
    e.retry = true;
    throw e;
  }
  grants.set(stream, { token: r.access_token, expires: Date.now() + 1000 * (Number(r.expires_in) || 3600) });
  return r.access_token;
}

// --- streams ----------------------------------------------------------------
let current = null;
function show(snap, all) {
  if (current) {
    current.player.destroy();
    current.events.close();
    current.head.remove();
  }
  for (const b of tabs.children) b.setAttribute('aria-selected', String(b.dataset.stream === snap.name));
  const title = h('h1', { class: 'w-title', text: snap.title || snap.name });
  const badge = h('span', { class: 'badge offline', text: '…' });
  const viewers = h('span', { class: 'viewers', hidden: true });
  const head = h('div', { class: 'w-head' }, title, viewers, badge);
  stage.before(head);
  if (chat) head.append(chat.toggle);
  const priv = snap.access === 'private';
  // A private stream's feed needs the viewer token too: it opens once the
  // player has one (one OpenID request for both).
  const events = {
    feed: null,
    closed: false,
    open(access) { if (!this.feed && !this.closed) this.feed = new StreamEvents(snap.name, handlers, { access }); },
    close() { this.closed = true; this.feed?.close(); },
  };
  const player = new Player(playerBox, {
    stream: snap.name, muted: true, controls: true, autoplay: true,
    getToken: priv
      ? (o) => viewerToken(snap.name, { ...o, status: (text) => player.setState('connecting', text) })
        .then((t) => { events.open(t); return t; })
      : async () => null,
  });
  const setLive = (live) => {
    badge.textContent = live ? 'LIVE' : 'OFFLINE';
    badge.className = `badge ${live ? 'live' : 'offline'}`;
    player.setLive(live);
  };
  const handlers = {
    title: (d) => { title.textContent = d.title; },
    viewers: (d) => { viewers.replaceChildren(icon('eye'), plural(d.viewers, 'viewer', 'viewers')); viewers.hidden = false; },
    live: () => setLive(true),
    offline: () => setLive(false),
  };
  // Without the feed, a private stream's player is told to try at once: its
  // first connect asks for the token (and shows why, if refused), then the
  // feed opens with it and says whether the stream is really live.
  if (priv) player.setLive(true);
  else events.open(null);
  current = { player, events, head };
  window.roomcast.player = player;
  if (all.length > 1) tabs.hidden = false;
}

// --- screen-share party (lib/party.js) ---------------------------------------
async function startParty() {
  const base = `/api/v1/rooms/${encodeURIComponent(roomId)}/party`;
  // Only a room with a party is worth an OpenID request.
  const info = await api(base).catch(() => null);
  if (!info || !info.enabled) return;
  party = new Party(stage, {
    base,
    join: async (status) => {
      await ready;
      status('Waiting for your Matrix client to confirm who you are…');
      let cred;
      try {
        cred = await widget.requestOpenIDConnectToken();
      } catch {
        throw new Error('Allow the widget to verify your Matrix identity to join the screen-share party.');
      }
      try {
        return await api(`${base}/session`, {
          method: 'POST', body: { openid_token: cred.access_token, matrix_server_name: cred.matrix_server_name },
        });
      } catch (e) {
        throw new Error(e.code === 'not_a_member' ? 'Join the room to take part in its screen-share party.' : `Could not join the party: ${e.message}`);
      }
    },
  });
  window.roomcast.party = party;
  party.init();
}

async function main() {
  if (!roomId) {
    return say(inClient
      ? 'This widget has no room: its URL needs ?roomId=$matrix_room_id.'
      : 'This page runs inside a Matrix client as a room widget. To watch a stream, open its watch page.');
  }
  let streams;
  try {
    streams = await api(`/api/v1/rooms/${encodeURIComponent(roomId)}/streams`);
  } catch (e) {
    return say(e.status === 404 && e.code !== 'unknown_room'
      ? 'This roomcast server has no Matrix integration, so no stream belongs to this room.'
      : `Could not load this room’s streams: ${e.message}`);
  }
  // Members' screen shares (`party`) show in the party grid, not as tabs.
  if (Array.isArray(streams)) streams = streams.filter((s) => !s.party);
  if (inClient) startParty();
  if (!Array.isArray(streams) || !streams.length) return say('No stream is attached to this room yet.');
  // Live streams first, the widget's own stream first among equals; the first one plays.
  streams.sort((a, b) => Number(b.live) - Number(a.live)
    || Number(b.name === preferredStream) - Number(a.name === preferredStream));
  tabs.replaceChildren(...streams.map((s) => h('button', {
    class: 'w-tab', type: 'button', role: 'tab', 'data-stream': s.name, text: s.title || s.name,
    onclick: () => show(s, streams),
  })));
  show(streams[0], streams);
}

let party = null;
window.roomcast = { widget, ready, player: null, chat, party };
main();
