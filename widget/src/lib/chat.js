// The watch page's chat panel: messages of the stream's Matrix room from the SSE
// feed (`chat`, `redaction`; a message comes again, same id, when it is edited
// or its reactions change), drawn by renderMessage (chat_render.js: formatted
// HTML through an allow-list, replies, media, reactions); guests post plain
// text through the guest API (README, "Guest chat").
import { ApiError, api, streamPath } from './api.js';
import { h } from './dom.js';
import { renderMessage } from './chat_render.js';

export { renderMessage, safeHtml, mediaUrl } from './chat_render.js';

const MAX_MESSAGES = 500;
const MAX_BODY = 1000;
const STORE_KEY = 'roomcast.guest';

function loadGuest() {
  try {
    const g = JSON.parse(localStorage.getItem(STORE_KEY) || 'null');
    return g && typeof g.token === 'string' && typeof g.display_name === 'string' ? g : null;
  } catch {
    return null;
  }
}

function saveGuest(g) {
  try {
    if (g) localStorage.setItem(STORE_KEY, JSON.stringify(g));
    else localStorage.removeItem(STORE_KEY);
  } catch {
    // Storage blocked (private mode, sandboxed iframe): the name lasts this page only.
  }
}

export class Chat {
  constructor(root, { stream, access = null }) {
    this.stream = stream;
    this.access = access;
    this.guest = loadGuest();
    this.byId = new Map();
    this.banned = false;
    this.list = h('ol', { class: 'chat-list', role: 'log', 'aria-live': 'polite', 'aria-label': 'Chat messages' });
    this.empty = h('p', { class: 'chat-empty', text: 'No messages yet. Say hello!' });
    this.error = h('p', { class: 'chat-error', role: 'alert', hidden: true });
    this.composer = h('div', { class: 'chat-composer' });
    this.el = h('aside', { class: 'chat', 'aria-label': 'Chat', hidden: true },
      h('h2', { class: 'chat-title', text: 'Chat' }),
      h('div', { class: 'chat-scroll' }, this.empty, this.list),
      this.error,
      this.composer);
    this.scroller = this.el.querySelector('.chat-scroll');
    root.append(this.el);
    this.renderComposer();
  }

  setAvailable(on) {
    this.el.hidden = !on;
    document.body.classList.toggle('has-chat', on);
  }

  /** A `chat` event (README, "Chat events"). History first, then live; the same id again replaces it. */
  add(m) {
    if (!m || typeof m.id !== 'string') return;
    const atBottom = this.scroller.scrollHeight - this.scroller.scrollTop - this.scroller.clientHeight < 40;
    const li = renderMessage(m, { stream: this.stream, access: this.access });
    const old = this.byId.get(m.id);
    if (old) {
      old.replaceWith(li);
    } else {
      // Keep time order (backfill after a reconnect may repeat or interleave).
      let before = null;
      if (Number.isFinite(m.ts)) {
        for (let n = this.list.lastElementChild; n; n = n.previousElementSibling) {
          if ((Number(n.dataset.ts) || 0) <= m.ts) break;
          before = n;
        }
      }
      this.list.insertBefore(li, before);
    }
    li.dataset.ts = String(m.ts ?? '');
    this.byId.set(m.id, li);
    while (this.list.children.length > MAX_MESSAGES) {
      const first = this.list.firstElementChild;
      this.byId.delete(first.dataset.id);
      first.remove();
    }
    this.empty.hidden = this.list.children.length > 0;
    if (atBottom || old === undefined && m.pending) this.scroller.scrollTop = this.scroller.scrollHeight;
  }

  redact(id) {
    const li = this.byId.get(id);
    if (li) {
      li.remove();
      this.byId.delete(id);
    }
    this.empty.hidden = this.list.children.length > 0;
  }

  showError(text) {
    this.error.textContent = text || '';
    this.error.hidden = !text;
  }

  renderComposer() {
    this.composer.replaceChildren();
    if (this.banned) {
      this.composer.append(h('p', { class: 'chat-note', text: 'You were removed from this chat by a moderator.' }));
      return;
    }
    if (!this.guest) {
      const input = h('input', {
        type: 'text', name: 'name', maxlength: '32', required: true, autocomplete: 'nickname',
        placeholder: 'Your name', 'aria-label': 'Your name for the chat',
      });
      const form = h('form', { class: 'chat-form', onsubmit: (ev) => { ev.preventDefault(); this.join(input.value, form); } },
        input, h('button', { type: 'submit', class: 'btn', text: 'Join chat' }));
      this.composer.append(h('p', { class: 'chat-note', text: 'Pick a name to chat as a guest.' }), form);
      return;
    }
    const input = h('input', {
      type: 'text', name: 'body', maxlength: String(MAX_BODY), autocomplete: 'off',
      placeholder: 'Send a message', 'aria-label': 'Message',
    });
    const send = h('button', { type: 'submit', class: 'btn', text: 'Send' });
    const form = h('form', { class: 'chat-form', onsubmit: (ev) => { ev.preventDefault(); this.send(input, send); } }, input, send);
    const change = h('button', { type: 'button', class: 'link', text: 'change', onclick: () => { this.guest = null; saveGuest(null); this.renderComposer(); } });
    this.composer.append(form, h('p', { class: 'chat-note' }, 'Chatting as ', h('strong', { text: this.guest.display_name }), ' · ', change));
    this.input = input;
  }

  async join(name, form) {
    const trimmed = name.trim();
    if (!trimmed) return this.showError('Type a name first.');
    form.querySelector('button').disabled = true;
    try {
      const r = await api('/api/v1/guests', { method: 'POST', body: { name: trimmed } });
      this.guest = { token: r.guest_token, display_name: r.display_name };
      saveGuest(this.guest);
      this.showError('');
      this.renderComposer();
      this.input?.focus();
    } catch (e) {
      form.querySelector('button').disabled = false;
      this.handleError(e);
    }
  }

  async send(input, button) {
    const body = input.value;
    if (!body.trim()) return this.showError('Type a message first.');
    if (body.length > MAX_BODY) return this.showError(`Messages can be at most ${MAX_BODY} characters.`);
    button.disabled = true;
    try {
      const r = await api(`${streamPath(this.stream)}/chat`, { method: 'POST', body: { body }, token: this.guest.token });
      input.value = '';
      this.showError('');
      if (r && typeof r.id === 'string' && !this.byId.has(r.id)) {
        this.add({ id: r.id, sender: this.guest.display_name, body, ts: Date.now(), guest: true, pending: true });
      }
      button.disabled = false;
      input.focus();
    } catch (e) {
      this.handleError(e, button);
    }
  }

  /** One plain sentence per error code of the contract. */
  handleError(e, button) {
    const reenable = () => { if (button) button.disabled = false; };
    if (!(e instanceof ApiError)) {
      reenable();
      return this.showError(String(e && e.message ? e.message : e));
    }
    switch (e.code) {
      case 'guest_token_required':
        this.guest = null;
        saveGuest(null);
        this.renderComposer();
        return this.showError('Your guest session ended. Pick a name to chat again.');
      case 'guest_banned':
        this.banned = true;
        this.renderComposer();
        return this.showError('');
      case 'members_only':
        reenable();
        return this.showError('Only members of the Matrix room can chat here. Join the room from a Matrix client to take part.');
      case 'rate_limited': {
        const s = Math.ceil(e.retryAfter || 5);
        this.showError(`You are sending messages too fast. Wait ${s} s.`);
        setTimeout(() => { reenable(); this.showError(''); }, s * 1000);
        return;
      }
      case 'no_chat':
        this.setAvailable(false);
        return;
      case 'homeserver_unavailable':
        reenable();
        return this.showError('The chat server is not reachable right now. Try again in a moment.');
      case 'message_too_long':
        reenable();
        return this.showError(`Messages can be at most ${MAX_BODY} characters.`);
      case 'empty_message':
        reenable();
        return this.showError('Type a message first.');
      case 'bad_name':
        reenable();
        return this.showError(e.message || 'Names are 1 to 32 characters, without control characters.');
      default:
        reenable();
        return this.showError(e.message);
    }
  }
}
