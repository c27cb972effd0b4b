// The watch page's past broadcasts: the list of a stream's recordings while it
// is offline (GET /api/v1/streams/{name}/recordings, newest first), and the
// replay of one (?recording=ID in the address, as the bot's "ended" notice
// links it; ?replay=ID too): the
// ReplayPlayer in the player's place and, when the stream has a Matrix room,
// the session's chat beside it (ReplayChat), kept in time with the video.
import { api, streamPath, withQuery } from './api.js';
import { h } from './dom.js';
import { ReplayChat } from './replay_chat.js';
import { ReplayPlayer } from './replay_player.js';

const MAX_LISTED = 20;
const RECHECK_MS = 5000;
const RECHECKS = 12;

/** "1:02:03" or "2:03". */
export function duration(seconds) {
  const s = Math.max(0, Math.round(Number(seconds) || 0));
  const hh = Math.floor(s / 3600);
  const mm = Math.floor((s % 3600) / 60);
  const ss = String(s % 60).padStart(2, '0');
  return hh ? `${hh}:${String(mm).padStart(2, '0')}:${ss}` : `${mm}:${ss}`;
}

function when(ms) {
  const d = new Date(Number(ms));
  return Number.isFinite(d.getTime())
    ? d.toLocaleString([], { dateStyle: 'medium', timeStyle: 'short' })
    : '';
}

export class Replays {
  /**
   * @param {object} o
   * @param {string} o.stream
   * @param {string|null} o.access
   * @param {HTMLElement} o.listRoot where the list goes (under the player)
   * @param {HTMLElement} o.playerBox the player's box; the replay player goes in it
   * @param {HTMLElement} o.chatBox the chat's box; the replay chat goes in it
   * @param {(rec: object|null) => void} o.onChange replay started (R) or ended (null)
   */
  constructor({ stream, access, listRoot, playerBox, chatBox, onChange }) {
    Object.assign(this, { stream, access, playerBox, chatBox, onChange });
    this.current = null; // {rec, player, chat}
    this.list = h('ol', { class: 'replay-list' });
    this.el = h('section', { class: 'replays', 'aria-label': 'Past broadcasts', hidden: true },
      h('h2', { class: 'replays-title', text: 'Past broadcasts' }), this.list);
    listRoot.append(this.el);
    window.addEventListener('popstate', () => this.followAddress());
  }

  /** Lists the recordings (while the stream is offline) or hides the list. */
  async show(on) {
    if (on && !this.wanted) this.tries = 0;
    this.wanted = on;
    if (!on) {
      this.el.hidden = true;
      return;
    }
    let recs = [];
    try {
      const r = await api(withQuery(`${streamPath(this.stream)}/recordings`, { access: this.access }));
      recs = Array.isArray(r && r.recordings) ? r.recordings : [];
    } catch {
      recs = []; // recording off, or no access: no list
    }
    if (!this.wanted) return;
    this.render(recs.filter((x) => x && typeof x.id === 'string' && x.state !== 'recording').slice(0, MAX_LISTED));
    // A broadcast that just ended is finished a few seconds later (the go-live
    // debounce): look again then, a few times at most.
    clearTimeout(this.again);
    if (recs.some((x) => x && x.state === 'recording') && (this.tries = (this.tries || 0) + 1) <= RECHECKS) {
      this.again = setTimeout(() => { if (this.wanted) this.show(true); }, RECHECK_MS);
    }
  }

  render(recs) {
    this.list.replaceChildren(...recs.map((r) => {
      const title = r.title_end || r.title_start || this.stream;
      const playing = this.current && this.current.rec.id === r.id;
      return h('li', { class: `replay-item${playing ? ' is-playing' : ''}`, 'data-id': r.id },
        h('a', {
          class: 'replay-link', href: this.address(r.id),
          'aria-current': playing ? 'true' : null,
          onclick: (ev) => { ev.preventDefault(); this.open(r.id, true); },
        },
        h('span', { class: 'replay-name', text: title }),
        h('span', { class: 'replay-meta', text: `${when(r.started_ms)} · ${duration(r.duration_s)}` })));
    }));
    this.el.hidden = recs.length === 0;
  }

  address(id) {
    const u = new URL(location.href);
    u.searchParams.delete('replay');
    if (id) u.searchParams.set('recording', id);
    else u.searchParams.delete('recording');
    return u.pathname + u.search;
  }

  /** The page's address names a replay: open it (or close the one open). */
  followAddress() {
    const q = new URLSearchParams(location.search);
    const id = q.get('recording') || q.get('replay');
    if (id && (!this.current || this.current.rec.id !== id)) this.open(id, false);
    else if (!id && this.current) this.close(false);
  }

  async open(id, push) {
    let rec;
    try {
      rec = await api(withQuery(`/api/v1/recordings/${encodeURIComponent(id)}`, { access: this.access }));
    } catch (e) {
      this.close(false);
      this.onChange(null, e);
      return;
    }
    this.close(false);
    if (push) history.pushState(null, '', this.address(id));
    const player = new ReplayPlayer(this.playerBox, { recording: rec, access: this.access });
    const chat = rec.room_id
      ? new ReplayChat(this.chatBox, { recording: rec, access: this.access, clock: () => player.wallClock() })
      : null;
    if (chat) {
      const sync = () => chat.sync();
      for (const ev of ['timeupdate', 'seeked', 'seeking', 'loadedmetadata']) player.video.addEventListener(ev, sync);
    }
    this.current = { rec, player, chat };
    this.onChange(rec);
    if (!this.el.hidden) this.show(true);
  }

  close(push = true) {
    if (!this.current) return;
    this.current.player.destroy();
    this.current.chat?.destroy();
    this.current = null;
    if (push) history.pushState(null, '', this.address(null));
    this.onChange(null);
  }
}
