// The room widget's chat: the room's messages and reactions as the Matrix client
// hands them to the widget (MSC2762 capabilities: live `send_event`, member names
// by `update_state`, recent history by MSC2876 `read_events`), beside the player
// or over it on narrow widths, with a toggle. The client decrypts, so encrypted
// rooms work too. A member reacts through the client (`send.event:m.reaction`).
// If the client refuses the capabilities, nothing of this shows.
// Everything from the room goes into the page as text (textContent), never as HTML.
import { WidgetApiToWidgetAction } from 'matrix-widget-api';
import { h } from './dom.js';

const CAP = {
  timeline: (room) => `org.matrix.msc2762.timeline:${room}`,
  messages: 'org.matrix.msc2762.receive.event:m.room.message',
  reactions: 'org.matrix.msc2762.receive.event:m.reaction',
  redactions: 'org.matrix.msc2762.receive.event:m.room.redaction',
  members: 'org.matrix.msc2762.receive.state_event:m.room.member',
  react: 'org.matrix.msc2762.send.event:m.reaction',
};
const HISTORY_MESSAGES = 50;
const HISTORY_REACTIONS = 300;
const MAX_MESSAGES = 200;
const MAX_BODY = 2000; // characters shown of one message
const MAX_KEY = 32; // characters shown of one reaction key
const MAX_KEYS = 12; // distinct reaction keys shown under one message
const MAX_REACTIONS = 5000; // reactions remembered, across messages
const MAX_MEMBERS = 5000;
const QUICK = ['👍', '❤️', '😂', '🎉', '👏', '😮'];
const NARROW = '(max-width: 640px)';
const ME = '\u0000me'; // the sender of our own reaction until the client echoes it

const str = (v) => (typeof v === 'string' ? v : '');
const clip = (s, n) => (s.length > n ? `${s.slice(0, n)}…` : s);

function timeOf(ts) {
  const d = new Date(ts);
  return Number.isFinite(d.getTime()) ? d.toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' }) : '';
}

/** A reply's body without its fallback quote ("> <@a:b> text" lines, then a blank line). */
export function stripReplyFallback(body) {
  const lines = body.split('\n');
  let i = 0;
  while (i < lines.length && lines[i].startsWith('>')) i++;
  if (i === 0) return body;
  if (i < lines.length && lines[i] === '') i++;
  return lines.slice(i).join('\n');
}

export class RoomChat {
  /**
   * @param {HTMLElement} stage the element that holds the player; the chat goes in it
   * @param {object} o
   * @param {import('matrix-widget-api').WidgetApi} o.widget before start()
   * @param {string} o.roomId
   * @param {string} [o.userId] the viewer's Matrix ID, when the widget URL carries it
   */
  constructor(stage, { widget, roomId, userId = '' }) {
    this.widget = widget;
    this.roomId = roomId;
    this.me = userId || ME;
    this.messages = new Map(); // event id → {ev, li, body}
    this.reactions = new Map(); // target event id → Map key → Map reaction event id → sender
    this.reactionOf = new Map(); // reaction event id → {target, key}
    this.edits = new Map(); // target event id → the latest m.replace event
    this.members = new Map(); // user id → display name
    this.nameCount = new Map(); // display name → members using it
    this.mine = new Set(); // reaction event ids this widget sent
    this.canReact = false;
    this.list = h('ol', { class: 'wc-list', role: 'log', 'aria-live': 'polite', 'aria-label': 'Room messages' });
    this.empty = h('p', { class: 'wc-empty', text: 'No messages yet.' });
    this.scroller = h('div', { class: 'wc-scroll' }, this.empty, this.list);
    this.el = h('aside', { class: 'wc', 'aria-label': 'Room chat', hidden: true }, this.scroller);
    this.toggle = h('button', {
      class: 'w-chat-toggle', type: 'button', hidden: true, text: 'Chat', 'aria-controls': 'room-chat',
      onclick: () => this.setOpen(!this.open, true),
    });
    this.el.id = 'room-chat';
    stage.append(this.el);
    this.narrow = window.matchMedia(NARROW);
    this.userChose = false;
    this.narrow.addEventListener('change', () => { if (!this.userChose) this.setOpen(!this.narrow.matches); });

    widget.requestCapabilities([CAP.timeline(roomId), CAP.messages, CAP.reactions, CAP.redactions, CAP.members, CAP.react]);
    widget.on(`action:${WidgetApiToWidgetAction.SendEvent}`, (ev) => {
      ev.preventDefault();
      widget.transport.reply(ev.detail, {});
      if (this.enabled) this.onEvent(ev.detail.data);
    });
    widget.on(`action:${WidgetApiToWidgetAction.UpdateState}`, (ev) => {
      ev.preventDefault();
      widget.transport.reply(ev.detail, {});
      const state = ev.detail.data && ev.detail.data.state;
      if (Array.isArray(state)) for (const e of state) this.onEvent(e);
    });
    widget.once('ready', () => this.start());
  }

  /** After the capability negotiation: show the chat if the client lets us read the room. */
  async start() {
    if (!this.widget.hasCapability(CAP.messages)) return; // refused: the player alone
    this.enabled = true;
    this.canReact = this.widget.hasCapability(CAP.react);
    this.timeline = this.widget.hasCapability(CAP.timeline(this.roomId));
    this.el.hidden = false;
    this.toggle.hidden = false;
    document.body.classList.add('has-room-chat');
    this.setOpen(!this.narrow.matches);
    // Recent history, if the client implements read_events (MSC2876): messages, then
    // the reactions to them. A client without it still sends what arrives from now on.
    const rooms = this.timeline ? [this.roomId] : undefined;
    const read = (type, limit) => this.widget.readRoomEvents(type, limit, undefined, rooms).catch(() => []);
    const msgs = await read('m.room.message', HISTORY_MESSAGES);
    const reacts = this.widget.hasCapability(CAP.reactions) ? await read('m.reaction', HISTORY_REACTIONS) : [];
    const byTime = (a, b) => (Number(a?.origin_server_ts) || 0) - (Number(b?.origin_server_ts) || 0);
    for (const e of (Array.isArray(msgs) ? msgs : []).sort(byTime)) this.onEvent(e);
    for (const e of (Array.isArray(reacts) ? reacts : []).sort(byTime)) this.onEvent(e);
    this.historyLoaded = true;
    this.scroller.scrollTop = this.scroller.scrollHeight;
  }

  setOpen(open, byUser = false) {
    if (byUser) this.userChose = true;
    this.open = open;
    this.el.dataset.open = String(open);
    this.toggle.setAttribute('aria-expanded', String(open));
    this.toggle.setAttribute('aria-label', open ? 'Hide chat' : 'Show chat');
  }

  onEvent(e) {
    if (!e || typeof e !== 'object' || typeof e.type !== 'string') return;
    if (e.room_id && e.room_id !== this.roomId) return;
    if (e.type === 'm.room.member') return this.onMember(e);
    if (typeof e.event_id !== 'string' || typeof e.content !== 'object' || !e.content) return;
    if (e.type === 'm.room.message') return this.onMessage(e);
    if (e.type === 'm.reaction') return this.onReaction(e);
    if (e.type === 'm.room.redaction') return this.onRedaction(e);
  }

  onMember(e) {
    const id = str(e.state_key);
    if (!id) return;
    const m = str(e.content?.membership);
    this.countName(this.members.get(id), -1);
    if (m === 'join' || m === 'invite') {
      if (!this.members.has(id) && this.members.size >= MAX_MEMBERS) return;
      const name = str(e.content.displayname).trim();
      this.members.set(id, name);
      this.countName(name, 1);
    } else {
      this.members.delete(id);
    }
    // Names may have changed or become ambiguous: relabel what is shown, once per batch.
    if (!this.relabel) {
      this.relabel = true;
      queueMicrotask(() => {
        this.relabel = false;
        for (const msg of this.messages.values()) this.renderSender(msg);
      });
    }
  }

  countName(name, by) {
    if (!name) return;
    const n = (this.nameCount.get(name) || 0) + by;
    if (n > 0) this.nameCount.set(name, n);
    else this.nameCount.delete(name);
  }

  /** The sender as the spec says to show it: the display name, with the ID when another member shares it. */
  nameOf(userId) {
    const name = this.members.get(userId) || '';
    if (!name) return userId;
    return this.nameCount.get(name) > 1 || /^@[^:]+:/.test(name) ? `${name} (${userId})` : name;
  }

  onMessage(e) {
    const rel = e.content['m.relates_to'] || {};
    if (rel.rel_type === 'm.thread') return; // threads stay in the client
    if (rel.rel_type === 'm.replace' && typeof rel.event_id === 'string') return this.onEdit(e, rel.event_id);
    if (typeof e.content.body !== 'string' || this.messages.has(e.event_id)) return;
    const atBottom = this.scroller.scrollHeight - this.scroller.scrollTop - this.scroller.clientHeight < 40;
    const m = { ev: e, li: h('li', { class: 'wc-msg', 'data-id': e.event_id }) };
    this.messages.set(e.event_id, m);
    this.render(m);
    // Time order (history and live may interleave).
    const ts = Number(e.origin_server_ts) || 0;
    let before = null;
    for (let n = this.list.lastElementChild; n; n = n.previousElementSibling) {
      if ((Number(n.dataset.ts) || 0) <= ts) break;
      before = n;
    }
    m.li.dataset.ts = String(ts);
    this.list.insertBefore(m.li, before);
    while (this.list.children.length > MAX_MESSAGES) this.drop(this.list.firstElementChild.dataset.id);
    this.empty.hidden = this.list.children.length > 0;
    if (atBottom) this.scroller.scrollTop = this.scroller.scrollHeight;
  }

  onEdit(e, target) {
    const old = this.edits.get(target);
    if (old && (Number(old.origin_server_ts) || 0) > (Number(e.origin_server_ts) || 0)) return;
    this.edits.set(target, e);
    if (this.edits.size > MAX_MESSAGES) this.edits.delete(this.edits.keys().next().value);
    const m = this.messages.get(target);
    if (m) this.render(m);
  }

  render(m) {
    const e = m.ev;
    const edit = this.edits.get(e.event_id);
    // Only the sender may edit their message.
    const content = edit && edit.sender === e.sender && edit.content['m.new_content'] && typeof edit.content['m.new_content'].body === 'string'
      ? edit.content['m.new_content'] : e.content;
    const type = str(content.msgtype) || str(e.content.msgtype);
    const reply = e.content['m.relates_to']?.['m.in_reply_to']?.event_id;
    let body = str(content.body);
    if (reply && content === e.content) body = stripReplyFallback(body);
    const media = { 'm.image': 'an image', 'm.video': 'a video', 'm.audio': 'an audio clip', 'm.file': 'a file' }[type];
    const sender = h('span', { class: 'wc-sender', title: str(e.sender) });
    m.sender = sender;
    this.renderSender(m);
    const text = h('span', { class: 'wc-body' });
    if (media) text.append(h('em', { text: `sent ${media}: ` }), clip(body, MAX_BODY));
    else text.textContent = clip(body, MAX_BODY);
    m.li.className = `wc-msg${type === 'm.notice' ? ' is-notice' : ''}${type === 'm.emote' ? ' is-emote' : ''}`;
    m.li.replaceChildren(
      reply ? this.quote(reply) : '',
      h('span', { class: 'wc-meta' }, sender,
        h('time', { class: 'wc-time', text: timeOf(e.origin_server_ts) }),
        edit ? h('span', { class: 'wc-edited', text: '(edited)' }) : ''),
      text,
      this.reactionRow(e.event_id));
  }

  renderSender(m) {
    if (!m.sender) return;
    const name = this.nameOf(str(m.ev.sender));
    m.sender.textContent = str(m.ev.content.msgtype) === 'm.emote' ? `* ${name}` : name;
  }

  quote(id) {
    const q = this.messages.get(id);
    const text = q ? `${this.nameOf(str(q.ev.sender))}: ${clip(stripReplyFallback(str(q.ev.content.body)), 80)}` : 'an earlier message';
    return h('span', { class: 'wc-quote', text: `↳ ${text}` });
  }

  reactionRow(target) {
    const row = h('span', { class: 'wc-reactions' });
    const keys = this.reactions.get(target);
    if (keys) {
      for (const [key, byId] of [...keys].slice(0, MAX_KEYS)) {
        const senders = new Set(byId.values());
        if (!senders.size) continue;
        const mine = senders.has(this.me) || [...byId.keys()].some((id) => this.mine.has(id));
        row.append(h('button', {
          class: 'wc-chip', type: 'button', 'aria-pressed': String(mine), disabled: !this.canReact || mine,
          title: [...senders].filter((s) => s !== ME).map((s) => this.nameOf(s)).join(', '),
          'data-key': key, text: `${clip(key, MAX_KEY)} ${senders.size}`,
          onclick: () => this.react(target, key),
        }));
      }
    }
    if (this.canReact) {
      const picker = h('span', { class: 'wc-picker', hidden: true },
        QUICK.map((k) => h('button', { class: 'wc-pick', type: 'button', text: k, 'aria-label': `React with ${k}`, onclick: () => { picker.hidden = true; this.react(target, k); } })));
      row.append(h('button', {
        class: 'wc-add', type: 'button', text: '+', 'aria-label': 'Add a reaction',
        onclick: () => { picker.hidden = !picker.hidden; },
      }), picker);
    }
    return row;
  }

  refreshReactions(target) {
    const m = this.messages.get(target);
    if (m) m.li.querySelector('.wc-reactions')?.replaceWith(this.reactionRow(target));
  }

  onReaction(e) {
    const rel = e.content['m.relates_to'];
    if (!rel || rel.rel_type !== 'm.annotation' || typeof rel.event_id !== 'string' || typeof rel.key !== 'string') return;
    this.addReaction(e.event_id, rel.event_id, rel.key, str(e.sender));
  }

  addReaction(id, target, key, sender) {
    const known = this.reactionOf.get(id);
    if (!known && this.reactionOf.size >= MAX_REACTIONS) {
      const [oldest] = this.reactionOf.keys();
      this.removeReaction(oldest);
    }
    if (!this.reactions.has(target)) this.reactions.set(target, new Map());
    const keys = this.reactions.get(target);
    if (!keys.has(key)) keys.set(key, new Map());
    keys.get(key).set(id, sender); // our echo replaces the ME placeholder
    this.reactionOf.set(id, { target, key });
    this.refreshReactions(target);
  }

  removeReaction(id) {
    const r = this.reactionOf.get(id);
    if (!r) return;
    this.reactionOf.delete(id);
    const keys = this.reactions.get(r.target);
    keys?.get(r.key)?.delete(id);
    if (keys?.get(r.key)?.size === 0) keys.delete(r.key);
    if (keys?.size === 0) this.reactions.delete(r.target);
    this.refreshReactions(r.target);
  }

  onRedaction(e) {
    const id = str(e.redacts) || str(e.content.redacts);
    if (this.messages.has(id)) this.drop(id);
    else this.removeReaction(id);
    this.empty.hidden = this.list.children.length > 0;
  }

  drop(id) {
    const m = this.messages.get(id);
    if (!m) return;
    m.li.remove();
    this.messages.delete(id);
    this.edits.delete(id);
    for (const ids of this.reactions.get(id)?.values() || []) for (const r of ids.keys()) this.reactionOf.delete(r);
    this.reactions.delete(id);
  }

  /** Sends a reaction through the client; it shows at once, and the client's echo confirms it. */
  async react(target, key) {
    if (!this.canReact) return;
    try {
      const r = await this.widget.sendRoomEvent('m.reaction',
        { 'm.relates_to': { rel_type: 'm.annotation', event_id: target, key } },
        this.timeline ? this.roomId : undefined);
      if (r && typeof r.event_id === 'string') {
        this.mine.add(r.event_id);
        if (!this.reactionOf.has(r.event_id)) this.addReaction(r.event_id, target, key, this.me);
      }
    } catch (err) {
      // The client said no (or the homeserver did): the chips stay as they were.
      console.warn('roomcast: the client did not send the reaction:', err?.message || err);
    }
  }
}
