// The chat of a replayed broadcast, beside the player and in time with it: the
// messages of the session (GET /api/v1/recordings/{id}/chat, read by the server
// from the room's timeline) drawn as the live chat draws them (renderMessage),
// each shown once the video reaches the moment it was sent. Seeking back hides
// the later ones again. Read-only: the broadcast is over.
import { api, withQuery } from './api.js';
import { h } from './dom.js';
import { renderMessage } from './chat_render.js';

export class ReplayChat {
  /**
   * @param {HTMLElement} root
   * @param {object} o
   * @param {object} o.recording R of the API
   * @param {() => number} o.clock the moment on screen, ms since the Unix epoch
   * @param {string|null} [o.access]
   */
  constructor(root, { recording, clock, access = null }) {
    this.rec = recording;
    this.clock = clock;
    this.items = []; // {ts, li}, oldest first
    this.list = h('ol', { class: 'chat-list', role: 'log', 'aria-label': 'Chat of this broadcast' });
    this.empty = h('p', { class: 'chat-empty', text: 'Loading the chat of this broadcast…' });
    this.note = h('p', { class: 'chat-note replay-chat-note', hidden: true });
    this.scroller = h('div', { class: 'chat-scroll' }, this.empty, this.list);
    this.el = h('aside', { class: 'chat replay-chat', 'aria-label': 'Chat replay' },
      h('h2', { class: 'chat-title', text: 'Chat replay' }), this.scroller, this.note);
    root.append(this.el);
    document.body.classList.add('has-chat');
    this.load(access);
  }

  async load(access) {
    try {
      const r = await api(withQuery(`/api/v1/recordings/${encodeURIComponent(this.rec.id)}/chat`, { access }));
      if (this.destroyed) return;
      const msgs = Array.isArray(r && r.messages) ? r.messages : [];
      for (const m of msgs) {
        if (!m || typeof m.id !== 'string') continue;
        const li = renderMessage(m, {});
        const ts = Number(m.ts) || 0;
        li.dataset.ts = String(ts);
        li.hidden = true;
        this.items.push({ ts, li });
        this.list.append(li);
      }
      this.items.sort((a, b) => a.ts - b.ts);
      if (r && r.complete === false) {
        this.note.textContent = 'Only the first part of this broadcast\'s chat is shown.';
        this.note.hidden = false;
      }
      this.loaded = true;
      this.sync();
    } catch (e) {
      if (this.destroyed) return;
      if (e && e.code === 'no_chat') return this.setAvailable(false);
      this.empty.textContent = `The chat of this broadcast could not be loaded: ${e && e.message ? e.message : e}`;
    }
  }

  /** Shows the messages sent up to the moment on screen; call on timeupdate and seeks. */
  sync() {
    if (!this.loaded) return;
    const now = this.clock();
    const atBottom = this.scroller.scrollHeight - this.scroller.scrollTop - this.scroller.clientHeight < 40;
    let shown = 0;
    let changed = false;
    for (const it of this.items) {
      const hide = it.ts > now;
      if (it.li.hidden !== hide) { it.li.hidden = hide; changed = true; }
      if (!hide) shown++;
    }
    this.shown = shown;
    this.empty.hidden = shown > 0;
    this.empty.textContent = this.items.length ? 'No messages yet at this point of the broadcast.' : 'Nobody chatted during this broadcast.';
    if (changed && atBottom) this.scroller.scrollTop = this.scroller.scrollHeight;
  }

  setAvailable(on) {
    this.el.hidden = !on;
    document.body.classList.toggle('has-chat', on);
  }

  destroy() {
    this.destroyed = true;
    this.el.remove();
    document.body.classList.remove('has-chat');
  }
}
