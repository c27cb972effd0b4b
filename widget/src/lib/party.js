// Screen-share parties in the room widget (server: src/matrix/party.rs). In a
// room with `!live party on`, members trade their OpenID token for a party
// token, see a grid of the members sharing (each tile a WHEP player with its
// own volume; a click focuses it; their own share shows its local preview,
// never played back from the server; names and avatars from the room), and, with enough power, get, beside what
// one more share would cost the server (the view's `estimate`, computed by the
// server from `roomcast plan`'s call model, with the caps it would pass),
// **Share screen**: getDisplayMedia (mic optional) published over WHIP with
// a grant bound to their user and the room. Stop, the shared window closing
// or the tab closing ends it (DELETE on the WHIP resource).
// The grid follows the view's feed (`<base>/events`, Server-Sent Events: the
// view at once and whenever it changes), so a tile goes as the share ends;
// while the feed is down it polls the view, slower, and retries the feed.
import { api, withQuery } from './api.js';
import { mediaUrl } from './chat_render.js';
import { h } from './dom.js';
import { Player } from './player.js';
import { whipPublish } from './whip.js';

/** Polling while the feed is down (the feed brings changes at once). */
const FALLBACK_POLL_MS = 5000;
/** After the browser gave the feed up (the server refused it), try it again this late. */
const FEED_RETRY_MS = 30000;

/** The sharer's avatar from the room (through roomcast's media proxy, with the viewer
 *  token the party view handed for their stream), or their initial. */
function avatarOf(s) {
  const initial = () => h('span', { class: 'pt-avatar is-initial', 'aria-hidden': 'true', text: String(s.display_name || '?').replace(/^@/, '').slice(0, 1).toUpperCase() });
  if (!s.avatar || !s.access_token) return initial();
  const img = h('img', { class: 'pt-avatar', alt: '', width: 20, height: 20, src: mediaUrl(s.stream, s.avatar, 'avatar', s.access_token) });
  img.addEventListener('error', () => img.replaceWith(initial()));
  return img;
}

export class Party {
  /**
   * @param {HTMLElement} root the party shows before it
   * @param {object} o
   * @param {string} o.base the party's API (`/api/v1/rooms/{room}/party` or `/api/v1/parties/{name}`)
   * @param {(say: (text: string) => void) => Promise<object>} o.join gets the party session
   *        ({party_token, user_id, may_share, max_kbps}); throws an Error whose message is shown
   */
  constructor(root, { base, join }) {
    this.base = base;
    this.join = join;
    this.me = null;
    this.token = null;
    this.players = {}; // stream → Player (others' shares)
    this.tiles = new Map(); // stream → tile element
    this.share = null; // {pc, resource, media, grant, connected}
    this.shareBtn = h('button', { type: 'button', class: 'btn w-share', text: 'Share screen', hidden: true, onclick: () => this.start() });
    this.stopBtn = h('button', { type: 'button', class: 'btn secondary w-share-stop', text: 'Stop', hidden: true, onclick: () => this.stop('You stopped sharing.') });
    this.mic = h('input', { type: 'checkbox', name: 'mic' });
    this.micLabel = h('label', { class: 'w-mic', hidden: true }, this.mic, ' with microphone');
    this.status = h('span', { class: 'w-party-status', role: 'status', 'aria-live': 'polite' });
    this.estimate = h('p', { class: 'w-estimate', hidden: true });
    this.grid = h('div', { class: 'w-grid', 'aria-label': 'Members sharing their screen' });
    this.el = h('section', { class: 'w-party', hidden: true },
      h('div', { class: 'w-party-bar' }, this.shareBtn, this.micLabel, this.stopBtn, this.status), this.estimate, this.grid);
    root.before(this.el);
    window.addEventListener('pagehide', () => {
      this.feed?.close();
      this.release(true);
    });
  }

  say(text) { this.status.textContent = text || ''; }

  /** Joins the party and starts showing its sharers. */
  async init() {
    this.el.hidden = false;
    try {
      this.me = await this.join((text) => this.say(text));
    } catch (e) {
      this.say(e.message);
      return false;
    }
    this.token = this.me.party_token;
    this.shareBtn.hidden = !this.me.may_share;
    this.micLabel.hidden = !this.me.may_share;
    this.say(this.me.may_share ? '' : 'You can watch; sharing needs more power in this room.');
    this.watch();
    return true;
  }

  /** Follows the view's feed; polling stops once a view comes through it. */
  watch() {
    this.feed?.close();
    // EventSource cannot set headers: the party token goes as `?access=`.
    const es = new EventSource(withQuery(`${this.base}/events`, { access: this.token }));
    this.feed = es;
    es.addEventListener('view', (ev) => {
      let view;
      try {
        view = JSON.parse(ev.data);
      } catch {
        return;
      }
      clearTimeout(this.timer);
      this.timer = null;
      this.render(view);
    });
    es.onerror = () => {
      if (this.feed !== es) return;
      // A dropped feed is retried by the browser; a refused one is given up
      // (CLOSED) and retried by poll() later. Polling covers both meanwhile.
      if (es.readyState === EventSource.CLOSED) {
        es.close();
        this.feed = null;
        this.feedFailed = Date.now();
      }
      if (!this.timer) this.timer = setTimeout(() => this.poll(), FALLBACK_POLL_MS);
    };
  }

  /** The view without the feed. */
  async poll() {
    this.timer = null;
    try {
      const view = await api(this.base, { token: this.token });
      this.render(view);
    } catch {
      // The next poll retries.
    }
    if (this.feed && this.feed.readyState === EventSource.OPEN) return;
    if (!this.feed && Date.now() - this.feedFailed >= FEED_RETRY_MS) this.watch();
    clearTimeout(this.timer);
    this.timer = setTimeout(() => this.poll(), FALLBACK_POLL_MS);
  }

  render(view) {
    // Kept to show our own tile when our share starts (its view may have come first).
    this.lastView = view;
    const live = view.sharers.filter((s) => s.live);
    const want = new Set(live.map((s) => s.stream));
    for (const [stream, tile] of this.tiles) {
      if (want.has(stream)) continue;
      const p = this.players[stream];
      // The share ended, and the server ended its viewers with it: no DELETE (it would 404).
      if (p) { p.resource = null; p.destroy(); }
      delete this.players[stream];
      tile.remove();
      this.tiles.delete(stream);
    }
    for (const s of live) {
      if (this.tiles.has(s.stream)) continue;
      const mine = this.me && s.user_id === this.me.user_id;
      if (mine && !this.share) continue; // an old share of ours still ending
      const box = h('div', { class: 'pt-video' });
      const tile = h('figure', { class: 'pt', 'data-stream': s.stream, 'data-user': s.user_id, tabindex: '0' },
        box, h('figcaption', { class: 'pt-name' }, avatarOf(s), h('span', { class: 'pt-label', text: mine ? `${s.display_name} (you)` : s.display_name })));
      tile.addEventListener('click', (ev) => {
        if (ev.target.closest('input, button')) return;
        const on = !tile.classList.contains('focused');
        for (const t of this.tiles.values()) t.classList.remove('focused');
        tile.classList.toggle('focused', on);
        this.grid.classList.toggle('has-focus', on);
      });
      if (mine) {
        const v = h('video', { muted: true, autoplay: true, playsinline: true, 'aria-label': 'Your shared screen' });
        v.muted = true;
        v.srcObject = this.share.media;
        box.append(v);
      } else {
        const token = s.access_token;
        const p = new Player(box, { stream: s.stream, muted: true, controls: false, autoplay: true, overlayText: false, getToken: async () => token });
        p.setLive(true);
        this.players[s.stream] = p;
        const vol = h('input', { type: 'range', min: '0', max: '1', step: '0.05', value: '0', class: 'pt-volume', 'aria-label': `Volume of ${s.display_name}` });
        vol.addEventListener('input', () => {
          const v = Number(vol.value);
          p.setMuted(v === 0);
          p.setVolume(v);
        });
        tile.append(vol);
      }
      this.tiles.set(s.stream, tile);
      this.grid.append(tile);
    }
    this.grid.dataset.count = String(this.tiles.size);
    // The server ended our share (we left the room, lost the power, the party is off).
    // Not live in its first 3 s may only be late: look again then, since a feed sends
    // no view until something changes.
    clearTimeout(this.lookAgain);
    if (this.share && this.share.connected && !live.some((s) => s.stream === this.share.grant.stream)) {
      const young = this.share.connected + 3000 - Date.now();
      if (young < 0) this.stop('Your share was ended by the server.', { ended: true });
      else this.lookAgain = setTimeout(() => this.lastView && this.render(this.lastView), young + 100);
    }
    if (!view.enabled) {
      this.shareBtn.hidden = true;
      this.micLabel.hidden = true;
    }
    this.showEstimate(view.estimate);
  }

  /** What one more share costs the server (none while we share). */
  showEstimate(e) {
    const show = !!e && !!this.me?.may_share && !this.share;
    this.estimate.hidden = !show;
    if (!show) return;
    const pct = e.cores * 100;
    const cpu = pct < 1 ? 'under 1 %' : `about ${Math.round(pct)} %`;
    const who = e.sharers === 1 ? 'you would be the only one sharing' : `${e.sharers} members would share and watch each other`;
    this.estimate.textContent = `If you share, ${who}: ${e.streams_in} in, ${e.streams_out} out, `
      + `${e.mbps_out.toFixed(1)} Mbit/s from the server, ${cpu} of one CPU core. Each member only watching adds ${(e.kbps_per_share / 1000).toFixed(1)} Mbit/s per share.`;
    this.estimate.classList.toggle('over', e.over.length > 0);
    if (e.over.length) this.estimate.textContent += ` Sharing is not possible now: ${e.over.join('; ')}.`;
    this.estimate.dataset.mbpsOut = e.mbps_out.toFixed(2);
  }

  async start() {
    if (this.share || !this.token) return;
    this.shareBtn.disabled = true;
    this.say('Choose what to share…');
    let media;
    try {
      media = await navigator.mediaDevices.getDisplayMedia({ video: { frameRate: 30 }, audio: true });
      if (this.mic.checked) {
        const m = await navigator.mediaDevices.getUserMedia({ audio: true }).catch(() => null);
        if (m && !media.getAudioTracks().length) for (const t of m.getAudioTracks()) media.addTrack(t);
      }
    } catch (e) {
      this.shareBtn.disabled = false;
      return this.say(e && e.name === 'NotAllowedError' ? 'Screen sharing was cancelled or not allowed.' : `Could not capture the screen: ${e && e.message ? e.message : e}`);
    }
    this.say('Connecting…');
    try {
      const grant = await api(`${this.base}/share`, { method: 'POST', token: this.token });
      const { pc, resource } = await whipPublish(grant.whip_url, grant.publish_token, media, { codec: 'VP8', kbps: grant.max_kbps });
      this.share = { pc, resource, media, grant, connected: 0 };
      if (this.lastView) this.render(this.lastView);
      pc.onconnectionstatechange = () => {
        if (!this.share || this.share.pc !== pc) return;
        if (pc.connectionState === 'connected') {
          this.share.connected = Date.now();
          this.say('You are sharing your screen.');
          if (this.lastView) this.render(this.lastView);
        } else if (pc.connectionState === 'failed') {
          this.stop('The connection to the server was lost.');
        }
      };
      media.getVideoTracks()[0]?.addEventListener('ended', () => this.stop('The shared screen was closed, so sharing stopped.'));
      this.shareBtn.hidden = true;
      this.micLabel.hidden = true;
      this.estimate.hidden = true;
      this.stopBtn.hidden = false;
    } catch (e) {
      for (const t of media.getTracks()) t.stop();
      const plain = ['not_enough_power', 'not_a_member', 'party_over_capacity'];
      this.say(plain.includes(e.code) ? e.message : `Could not share: ${e.message || e}`);
    } finally {
      this.shareBtn.disabled = false;
    }
  }

  /** Ends our share on the server (keepalive: also while the page unloads). The DELETE goes
   *  before the PeerConnection closes: closing first ends the session by DTLS, and the
   *  DELETE would then 404. */
  release(unloading = false, ended = false) {
    const s = this.share;
    if (!s) return;
    this.share = null;
    for (const t of s.media.getTracks()) t.stop();
    s.pc.onconnectionstatechange = null;
    // (`ended`: the server already ended the session.)
    const gone = s.resource && !ended
      ? fetch(s.resource, { method: 'DELETE', keepalive: unloading }).catch(() => {})
      : Promise.resolve();
    if (unloading) s.pc.close();
    else gone.finally(() => s.pc.close());
  }

  stop(message, { ended = false } = {}) {
    const stream = this.share?.grant.stream;
    this.release(false, ended);
    const tile = stream && this.tiles.get(stream);
    if (tile) { tile.remove(); this.tiles.delete(stream); }
    this.stopBtn.hidden = true;
    this.shareBtn.hidden = !this.me?.may_share;
    this.micLabel.hidden = !this.me?.may_share;
    this.say(message);
  }
}
