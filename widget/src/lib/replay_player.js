// A recording's replay: its HLS VOD playlist (/recordings/{id}/index.m3u8)
// through hls.js (the same chunk the live player loads for LL-HLS), or the
// browser's own HLS (Safari), or else the progressive download
// (/recordings/{id}.mp4, served with Range so the browser can seek in it).
// VP8 has no MP4 mapping browsers read (Chromium: neither MSE nor <video src>):
// a VP8 recording plays as WebM (/recordings/{id}/replay.webm, remuxed by the
// server), fed to MSE segment by segment so it seeks anywhere (WebmParts), or
// as one file where MSE cannot take it (seekable within what has arrived).
// The browser's own controls do play, pause and seeking.
// For the chat beside it, `wallClock()` says which moment of the broadcast is
// on screen: the EXT-X-PROGRAM-DATE-TIME of the playlist segment holding the
// position, else the recording's start plus the position.
import { withQuery } from './api.js';
import { h } from './dom.js';

/** The WebM remux of a VP8 recording, when this browser plays VP8 in WebM. */
function webmOf(rec, video) {
  const codec = String(rec.video_codec || '').toLowerCase();
  if (!codec.startsWith('vp08') && codec !== 'vp8') return null;
  return video.canPlayType('video/webm; codecs="vp8"') ? `/recordings/${encodeURIComponent(rec.id)}/replay.webm` : null;
}

export class ReplayPlayer extends EventTarget {
  /**
   * @param {HTMLElement} root
   * @param {object} o
   * @param {object} o.recording R of the API (id, playlist, download, started_ms, video_codec…)
   * @param {string|null} [o.access] the page's ?access= (private streams)
   */
  constructor(root, { recording, access = null }) {
    super();
    this.rec = recording;
    this.access = access;
    this.hls = null;
    this.mode = null; // 'hls' | 'native' | 'mp4' | 'webm'
    this.video = h('video', {
      controls: true, playsinline: true, autoplay: true, preload: 'auto', 'aria-label': 'Replay video',
    });
    this.video.muted = true; // autoplay is allowed muted; the controls unmute
    this.status = h('div', { class: 'rc-status', role: 'status', 'aria-live': 'polite', hidden: true });
    this.el = h('div', { class: 'rc-player rc-replay', 'data-state': 'connecting' },
      this.video, h('div', { class: 'rc-center' }, this.status));
    this.video.addEventListener('playing', () => this.setState('playing'));
    this.video.addEventListener('error', () => this.onMediaError());
    root.append(this.el);
    this.start();
  }

  url(path) {
    return withQuery(path, { access: this.access });
  }

  async start() {
    const webm = webmOf(this.rec, this.video);
    if (webm) return this.playWebm(webm);
    const progressive = this.video.canPlayType('video/mp4') !== '';
    let Hls = null;
    try {
      Hls = (await import('hls.js/light')).default;
    } catch {
      Hls = null;
    }
    if (this.destroyed) return;
    if (Hls && Hls.isSupported() && this.rec.playlist) return this.playHls(Hls);
    if (this.rec.playlist && this.video.canPlayType('application/vnd.apple.mpegurl')) {
      this.mode = 'native';
      this.video.src = this.url(this.rec.playlist);
      return this.autoplay();
    }
    if (progressive && this.rec.download) return this.playMp4();
    this.fail('This browser cannot play this recording.');
  }

  playHls(Hls) {
    this.mode = 'hls';
    const token = this.access;
    const hls = new Hls({
      // A VOD: no live edge to chase; keep a little behind for quick seeks back.
      backBufferLength: 60,
      xhrSetup: token ? (xhr) => xhr.setRequestHeader('Authorization', `Bearer ${token}`) : undefined,
    });
    this.hls = hls;
    hls.on(Hls.Events.ERROR, (_ev, data) => {
      if (!data.fatal || this.destroyed) return;
      // MSE refused the codec, or the playlist failed: the download may still play.
      hls.destroy();
      this.hls = null;
      if (this.rec.download && this.video.canPlayType('video/mp4') !== '' && this.mode === 'hls') return this.playMp4();
      this.fail('This recording could not be played.');
    });
    hls.loadSource(this.url(this.rec.playlist));
    hls.attachMedia(this.video);
    this.autoplay();
  }

  /** The WebM remux in parts through MSE (seeks anywhere), else as one file. */
  async playWebm(path) {
    let index = null;
    try {
      const r = await fetch(this.url(`${path}?part=index`), { headers: this.authHeaders() });
      index = r.ok ? await r.json() : null;
    } catch {
      index = null;
    }
    if (this.destroyed) return;
    const segs = index && Array.isArray(index.segments_ms) ? index.segments_ms.map(Number) : [];
    if (!window.MediaSource || !segs.length || !MediaSource.isTypeSupported(index.mime)) return this.playFile(path, 'webm');
    this.mode = 'webm';
    this.parts = new WebmParts(this, path, index.mime, segs);
    this.autoplay();
  }

  authHeaders() {
    return this.access ? { Authorization: `Bearer ${this.access}` } : {};
  }

  playMp4() {
    this.playFile(this.rec.download, 'mp4');
  }

  playFile(path, mode) {
    this.mode = mode;
    this.video.src = this.url(path);
    this.autoplay();
  }

  autoplay() {
    this.dispatchEvent(new CustomEvent('mode', { detail: this.mode }));
    const p = this.video.play();
    if (p) p.catch(() => {});
  }

  onMediaError() {
    if (this.destroyed || this.mode === 'hls') return; // hls.js reports its own
    if (this.mode === 'native' && this.rec.download) return this.playMp4();
    this.fail('This recording could not be played.');
  }

  /** The moment of the broadcast on screen, ms since the Unix epoch. */
  wallClock() {
    // From the playlist's segments (hls.js's playingDate lags behind a seek
    // made while paused): the one holding the position, and its PDT.
    const t = this.video.currentTime;
    const h = this.hls;
    const level = h && h.levels && h.levels[Math.max(0, h.currentLevel)];
    const frags = level && level.details ? level.details.fragments : null;
    if (frags && frags.length) {
      let f = frags[0];
      for (const x of frags) {
        if (x.start <= t) f = x;
        else break;
      }
      if (Number.isFinite(f.programDateTime)) return f.programDateTime + (t - f.start) * 1000;
    }
    return (Number(this.rec.started_ms) || 0) + t * 1000;
  }

  seek(seconds) {
    this.video.currentTime = Math.max(0, seconds);
  }

  setState(state, message = '') {
    this.state = state;
    this.el.dataset.state = state;
    this.status.textContent = message;
    this.status.hidden = !message;
  }

  fail(message) {
    this.setState('error', message);
    this.dispatchEvent(new CustomEvent('error', { detail: { message } }));
  }

  destroy() {
    this.destroyed = true;
    this.parts?.close();
    if (this.hls) this.hls.destroy();
    this.hls = null;
    this.video.removeAttribute('src');
    this.video.load();
    this.el.remove();
  }
}

// Seconds buffered ahead of the position; what lies further behind is dropped.
const AHEAD_S = 30;
const BEHIND_S = 30;
// A hole in a recording (a publisher that stalled, frames the recorder had to
// drop) leaves two buffered ranges, and the browser waits at the end of the
// first one for ever. Stalled this long at a hole inside the loaded parts,
// playback jumps to the next range (hls.js's gap controller does the same).
const STALL_CHECK_MS = 250;
const STALL_JUMP_MS = 500;

/** A VP8 recording's WebM fed to MSE segment by segment (?part=init, ?part=N):
 *  the segments around the position are fetched, and a seek fetches from the
 *  segment it lands in. */
class WebmParts {
  constructor(player, path, mime, segs) {
    Object.assign(this, { player, path, mime, segs });
    this.starts = [];
    let t = 0;
    for (const d of segs) { this.starts.push(t / 1000); t += d; }
    this.total = t / 1000;
    this.loaded = new Set();
    this.busy = false;
    this.ms = new MediaSource();
    this.objectUrl = URL.createObjectURL(this.ms);
    const v = player.video;
    v.src = this.objectUrl;
    this.ms.addEventListener('sourceopen', () => this.open(), { once: true });
    this.pump = () => this.fill();
    v.addEventListener('timeupdate', this.pump);
    v.addEventListener('seeking', this.pump);
    this.stalledSince = null;
    this.stallTimer = setInterval(() => this.skipHole(), STALL_CHECK_MS);
  }

  /** Jumps over a hole in the media once playback has waited at it a while. */
  skipHole() {
    const next = this.holeEnd();
    if (next === null) {
      this.stalledSince = null;
      return;
    }
    const now = performance.now();
    if (this.stalledSince === null) this.stalledSince = now;
    if (now - this.stalledSince < STALL_JUMP_MS) return;
    this.stalledSince = null;
    this.player.video.currentTime = next + 0.01;
  }

  /** Where the media goes on when playback waits at a hole, else null. */
  holeEnd() {
    const v = this.player.video;
    if (v.paused || v.seeking || v.ended || v.readyState >= HTMLMediaElement.HAVE_FUTURE_DATA) return null;
    const t = v.currentTime;
    let next = null;
    for (let i = 0; i < v.buffered.length && next === null; i++) {
      if (v.buffered.start(i) > t) next = v.buffered.start(i);
    }
    // Only a hole in what has arrived: a part still on its way is no hole.
    if (next === null) return null;
    for (let n = this.at(t); n <= this.at(next); n++) if (!this.loaded.has(n)) return null;
    return next;
  }

  async open() {
    try {
      this.ms.duration = this.total;
      this.sb = this.ms.addSourceBuffer(this.mime);
      await this.append(await this.fetch('init'));
      this.fill();
    } catch (e) {
      if (!this.player.destroyed) this.player.fail('This recording could not be played.');
    }
  }

  async fetch(part) {
    const r = await fetch(this.player.url(`${this.path}?part=${part}`), { headers: this.player.authHeaders() });
    if (!r.ok) throw new Error(`part ${part}: ${r.status}`);
    return r.arrayBuffer();
  }

  append(buf) {
    return new Promise((resolve, reject) => {
      const done = () => { this.sb.removeEventListener('error', fail); resolve(); };
      const fail = () => { this.sb.removeEventListener('updateend', done); reject(new Error('append failed')); };
      this.sb.addEventListener('updateend', done, { once: true });
      this.sb.addEventListener('error', fail, { once: true });
      this.sb.appendBuffer(buf);
    });
  }

  remove(from, to) {
    return new Promise((resolve) => {
      this.sb.addEventListener('updateend', () => resolve(), { once: true });
      this.sb.remove(from, to);
    });
  }

  /** The segment holding `t` seconds. */
  at(t) {
    let i = 0;
    while (i + 1 < this.starts.length && this.starts[i + 1] <= t) i++;
    return i;
  }

  /** Fetches the next missing segment from the position up to AHEAD_S ahead, one at a time. */
  async fill() {
    if (this.busy || !this.sb || this.closed) return;
    const t = this.player.video.currentTime;
    let n = this.at(t);
    while (n < this.segs.length && this.loaded.has(n)) n++;
    if (n >= this.segs.length) {
      // The last segment is in: the end is the end (an append after a seek back reopens it).
      if (this.loaded.has(this.segs.length - 1) && this.ms.readyState === 'open' && !this.sb.updating) this.ms.endOfStream();
      return;
    }
    if (this.starts[n] > t + AHEAD_S) return;
    this.busy = true;
    try {
      const buf = await this.fetch(n);
      if (this.closed) return;
      if (t > BEHIND_S) {
        // Keep memory flat on long recordings: drop what is far behind.
        await this.remove(0, t - BEHIND_S);
        for (const k of [...this.loaded]) if (this.starts[k] + this.segs[k] / 1000 < t - BEHIND_S) this.loaded.delete(k);
      }
      await this.append(buf);
      this.loaded.add(n);
    } catch (e) {
      if (!this.closed) this.player.fail('This recording could not be played.');
      return;
    } finally {
      this.busy = false;
    }
    this.fill();
  }

  close() {
    this.closed = true;
    clearInterval(this.stallTimer);
    const v = this.player.video;
    v.removeEventListener('timeupdate', this.pump);
    v.removeEventListener('seeking', this.pump);
    URL.revokeObjectURL(this.objectUrl);
  }
}
