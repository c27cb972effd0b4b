// A recording's replay: its HLS VOD playlist (/recordings/{id}/index.m3u8)
// through hls.js (the same chunk the live player loads for LL-HLS), or the
// browser's own HLS (Safari), or else the progressive download
// (/recordings/{id}.mp4, served with Range so the browser can seek in it).
// VP8 has no MP4 mapping browsers read (Chromium: neither MSE nor <video src>):
// a VP8 recording plays as WebM (/recordings/{id}/replay.webm, remuxed by the
// server, no Range: seekable within what has arrived).
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
    if (webm) return this.playFile(webm, 'webm');
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
    if (this.hls) this.hls.destroy();
    this.hls = null;
    this.video.removeAttribute('src');
    this.video.load();
    this.el.remove();
  }
}
