// The roomcast player: WebRTC over WHEP (POST /whep/{stream}), with LL-HLS through
// hls.js as the fallback when /hls/{stream}/index.m3u8 exists. The page tells it
// when the stream is live (from the SSE feed); it never polls.
// Fallback rules:
// - no RTCPeerConnection, a 422 no_common_codec, or ICE/DTLS failing before the
//   first WebRTC frame → LL-HLS at once (retrying WebRTC would fail the same way);
// - a connection that worked and drops (no packet for QUIET_MS, which the
//   player sees from its own counters seconds before the browser reports ICE
//   'disconnected'; or 'disconnected' past the grace, or 'failed') first
//   restarts ICE on the same PeerConnection (a WHEP PATCH, RFC 9725 §4.3.2: no
//   new session, no GOP replay, the DTLS session goes on);
// - when that cannot help (the PATCH fails, e.g. 404 for a session the server
//   ended, the restart does not connect within ICE_RESTART_MS, or
//   ICE_RESTARTS_IN_A_ROW restarts went by without a frame), or for a loss
//   before any connection, it re-negotiates (a new WHEP session) with backoff,
//   and after WEBRTC_LOSSES_BEFORE_HLS failed attempts in a row it switches to
//   LL-HLS;
// - while LL-HLS plays because of the network (ICE failed, or losses), it tries
//   WebRTC again in the background (WEBRTC_PROBE_MS apart), and switches back
//   once a probe connects and delivers the video track;
// - without HLS (or when this browser's MSE cannot decode the stream's codec
//   either), it says in plain words why there is no picture.
// A small label (.rc-path) names the path that plays and why. It keeps its
// PeerConnection across a publisher reconnect (the server keeps it too).
import { api, errorFrom, streamPath, withQuery } from './api.js';
import { h, icon } from './dom.js';
import { PathWatch, pathCounters } from './pathwatch.js';
import { SDPFRAG, parseFragment, restartFragment, withIceCredentials } from './sdpfrag.js';

// Answer applied → ICE connected. On a working path ICE connects in well under a
// second; failing here means LL-HLS (see renegotiate), so keep it short.
const CONNECT_TIMEOUT_MS = 8000;
const DISCONNECT_GRACE_MS = 4000; // 'disconnected' this long → re-negotiate
// 'disconnected' this long → ICE restart: it keeps the session, so trying early
// costs one PATCH, and the browser has already waited seconds for consent.
const ICE_RESTART_GRACE_MS = 1000;
// Live and connected, packets were flowing, and none for this long (audio alone
// brings 50 a second): the path is gone, though the browser will not say
// 'disconnected' for seconds yet. An ICE restart then costs one PATCH even when
// the publisher merely paused, so a short wait is cheap.
const QUIET_MS = 1500;
const PATH_WATCH_MS = 500; // how often the packet counters are read
const OFFLINE_CLOSE_MS = 30000; // offline this long → close the PeerConnection
const STALL_MS = 10000; // live and connected but no new frame this long → re-negotiate
// ICE restart started → connected again, or a new session. On a path that works
// again the PATCH and the new checks take well under a second.
const ICE_RESTART_MS = 5000;
// Restarts without a frame in between: more would only delay the new session.
const ICE_RESTARTS_IN_A_ROW = 2;
const WEBRTC_LOSSES_BEFORE_HLS = 3;
// Background WebRTC tries while LL-HLS plays for a network reason: the n-th waits
// the n-th value (the last one repeats). A probe that never connects is never
// counted as a viewer, so the viewer count does not flap.
const WEBRTC_PROBE_MS = [15000, 30000, 60000, 120000, 300000];

// Why LL-HLS plays instead of WebRTC: the label's text.
const WHY = {
  noWebrtc: 'this browser has no WebRTC',
  codec: (c) => `this browser can't play ${c} over WebRTC`,
  ice: 'WebRTC could not connect on this network',
  lost: 'the WebRTC connection kept dropping',
};
// Without HLS as well: what the viewer is told, without protocol names.
const NO_PICTURE = {
  noWebrtc: 'This browser cannot play live video from this site. Try a recent Firefox, Chrome, Edge or Safari.',
  codec: 'This browser cannot play this stream\'s video format. Try another browser, such as Chrome or Edge.',
  ice: 'Your network seems to block live video from this site. Retrying…',
  lost: 'The connection keeps dropping. Retrying…',
};

const MESSAGES = {
  offline: 'The stream is offline. This page starts playing by itself when it goes live.',
  connecting: 'Connecting…',
  reconnecting: 'Connection lost. Reconnecting…',
  // An ICE restart worked (the path answers) and no frame came yet: the
  // publisher may have paused; the connection is fine.
  waiting: 'Waiting for the stream…',
};

export class Player extends EventTarget {
  /**
   * @param {HTMLElement} root
   * @param {object} o
   * @param {string} o.stream
   * @param {() => Promise<string|null>} [o.getToken] Bearer token for WHEP/HLS (private streams);
   *        called with {refresh: true} after a 403.
   * @param {boolean} [o.muted=true]  start muted (browsers allow muted autoplay)
   * @param {boolean} [o.controls=true]
   * @param {boolean} [o.autoplay=true] false: wait for a click on the play button
   * @param {number} [o.volume=1]
   * @param {boolean} [o.overlayText=true] show status sentences over the video
   */
  constructor(root, o) {
    super();
    this.o = { muted: true, controls: true, autoplay: true, volume: 1, overlayText: true, ...o };
    this.stream = o.stream;
    this.getToken = o.getToken || (async () => null);
    this.live = null; // unknown until the page says
    this.wanted = this.o.autoplay;
    this.state = 'idle';
    this.pc = null;
    this.resource = null;
    this.etag = null; // the session's ETag (If-Match of the next ICE restart)
    this.connected = false; // this PeerConnection reached 'connected': an ICE restart may save it
    this.restart = null; // the ICE restart under way
    this.restarts = 0; // ICE restarts since the last frame
    this.path = null; // PathWatch of this PeerConnection's counters
    // For tests and debugging: WHEP sessions made, ICE restarts tried and that reconnected.
    this.counts = { whepPosts: 0, iceRestarts: 0, iceRestartsOk: 0 };
    this.hls = null;
    this.mode = 'webrtc';
    this.failures = 0; // failed WebRTC attempts in a row since the last frame
    this.played = false; // a WebRTC frame was presented (ever): losses re-negotiate
    this.why = null; // key of WHY while LL-HLS plays
    this.probe = null; // a background WebRTC try while LL-HLS plays
    this.probes = 0; // background tries since WebRTC last played
    this.backoff = 1000;
    this.timers = {};
    this.gen = 0; // bumps on every (re)connect, so stale callbacks do nothing
    this.lastFrames = 0;
    this.lastFrameAt = 0;
    this.build(root);
    window.addEventListener('online', () => this.retryNow());
    window.addEventListener('pagehide', () => this.teardown(true));
    this.timers.stall = setInterval(() => this.checkStall(), 2000);
    this.timers.pathWatch = setInterval(() => this.watchPath(), PATH_WATCH_MS);
    this.render();
  }

  build(root) {
    const video = h('video', { playsinline: true, autoplay: true, 'aria-label': 'Live video' });
    video.muted = this.o.muted;
    video.volume = clamp01(this.o.volume);
    video.disablePictureInPicture = false;
    this.video = video;
    this.status = h('div', { class: 'rc-status', role: 'status', 'aria-live': 'polite' });
    // For errors the viewer can act on (e.g. a declined identity check): ask again.
    this.retryBtn = h('button', { class: 'rc-retry', type: 'button', text: 'Try again', onclick: () => this.retry() });
    this.unmuteBtn = h('button', { class: 'rc-unmute', type: 'button', onclick: () => this.setMuted(false) },
      icon('muted'), h('span', { text: matchMedia('(hover: none)').matches ? 'Tap to unmute' : 'Click to unmute' }));
    this.playBtn = h('button', { class: 'rc-play', type: 'button', 'aria-label': 'Play', onclick: () => this.play() },
      icon('play'));
    this.muteBtn = h('button', { class: 'rc-btn', type: 'button', onclick: () => this.setMuted(!this.video.muted) });
    this.volume = h('input', {
      class: 'rc-volume', type: 'range', min: '0', max: '1', step: '0.05', 'aria-label': 'Volume',
      oninput: () => { this.video.volume = Number(this.volume.value); if (this.video.muted) this.setMuted(false); },
    });
    this.volume.value = String(this.video.volume);
    this.liveTag = h('span', { class: 'rc-live', text: 'LIVE' });
    // Which path plays, and why when it is not WebRTC.
    this.pathTag = h('div', { class: 'rc-path', 'aria-live': 'polite' });
    this.fsBtn = h('button', { class: 'rc-btn', type: 'button', onclick: () => this.toggleFullscreen() });
    const bar = h('div', { class: 'rc-bar' }, this.muteBtn, this.volume, this.liveTag, h('span', { class: 'rc-grow' }), this.fsBtn);
    this.el = h('div', {
      class: `rc-player${this.o.controls ? ' rc-has-controls' : ''}`,
      tabindex: this.o.controls ? '0' : null,
      'aria-label': this.o.controls ? 'Video player. M mutes, F toggles full screen.' : null,
      'data-state': 'idle',
    }, video, this.pathTag, h('div', { class: 'rc-center' }, this.status, this.retryBtn),
    this.o.controls ? [this.unmuteBtn, this.playBtn, bar] : []);
    if (this.o.controls) {
      this.el.addEventListener('keydown', (ev) => this.onKey(ev));
      this.el.addEventListener('dblclick', (ev) => { if (ev.target === video) this.toggleFullscreen(); });
      document.addEventListener('fullscreenchange', () => this.render());
    }
    video.addEventListener('volumechange', () => this.render());
    video.addEventListener('playing', () => { this.lastFrameAt = performance.now(); this.setState('playing'); this.onPicture(); });
    // A kept PeerConnection resumes without a new 'playing' event (the element never
    // paused): a presented frame is what says the picture is back.
    if ('requestVideoFrameCallback' in video) {
      const onFrame = () => {
        this.lastFrameAt = performance.now();
        if ((this.state === 'connecting' || this.state === 'reconnecting') && this.live !== false) this.setState('playing');
        this.onPicture();
        video.requestVideoFrameCallback(onFrame);
      };
      video.requestVideoFrameCallback(onFrame);
    }
    root.append(this.el);
  }

  /** A frame is on screen: over WebRTC, later losses re-negotiate before any fallback. */
  onPicture() {
    if (this.mode !== 'webrtc' || !this.pc || this.pc.connectionState !== 'connected') return;
    this.played = true;
    this.failures = 0;
    this.probes = 0;
    this.restarts = 0;
  }

  // --- public API ---------------------------------------------------------

  /** From the SSE feed: the stream went live (true) or offline (false). */
  setLive(live) {
    const was = this.live;
    this.live = live;
    if (live) {
      clearTimeout(this.timers.offlineClose);
      if (!this.wanted) return this.setState('idle');
      if (this.mode === 'hls' && this.hls) return;
      if (this.pc && ['connected', 'connecting', 'new'].includes(this.pc.connectionState)) {
        // The server kept our PeerConnection across the publisher's reconnect.
        if (this.state === 'offline') this.setState('connecting');
        return;
      }
      if (was !== true || !this.pc) {
        this.backoff = 1000;
        this.connect();
      }
    } else {
      this.setState('offline');
      clearTimeout(this.timers.retry);
      clearTimeout(this.timers.offlineClose);
      this.timers.offlineClose = setTimeout(() => this.teardown(), OFFLINE_CLOSE_MS);
    }
  }

  play() {
    this.wanted = true;
    if (this.live) this.connect();
    else this.render();
  }

  setMuted(muted) {
    this.video.muted = muted;
    if (!muted) {
      if (this.video.volume === 0) this.video.volume = 1;
      this.video.play().catch(() => {});
    }
    this.render();
  }

  setVolume(v) {
    this.video.volume = clamp01(v);
    this.render();
  }

  destroy() {
    for (const t of Object.values(this.timers)) { clearTimeout(t); clearInterval(t); }
    this.teardown(true);
    this.el.remove();
  }

  // --- connection ---------------------------------------------------------

  /** The "Try again" button of a retryable error. */
  retry() {
    this.retryable = false;
    this.refreshedToken = false;
    this.wanted = true;
    this.backoff = 1000;
    if (this.live) this.connect();
    else this.setState(this.live === false ? 'offline' : 'idle');
  }

  retryNow() {
    if (this.restart) return; // back online: the ICE restart under way goes on
    if (this.live && this.wanted && this.state !== 'playing') {
      this.backoff = 1000;
      this.connect();
    }
  }

  scheduleRetry(message) {
    clearTimeout(this.timers.retry);
    const wait = this.backoff * (0.8 + Math.random() * 0.4);
    this.backoff = Math.min(this.backoff * 2, 15000);
    if (message) this.setState('reconnecting', message);
    this.timers.retry = setTimeout(() => this.reconnect(), wait);
  }

  /** A retry: first asks whether the stream is still live. When a stream ends,
   *  the server ends its viewers' connections, and this page may learn of the
   *  loss before its feed says "offline": a new offer then would only get a 503
   *  (which the browser logs as an error). Offline: wait and ask again (the
   *  feed's "offline" stops this, its "live" connects at once). */
  async reconnect() {
    if (!this.live || !this.wanted) return;
    const gen = this.gen;
    let live = null; // unknown: try to connect, as before this check
    try {
      const token = await this.getToken({ refresh: false });
      live = (await api(streamPath(this.stream), { token }))?.live;
    } catch {
      // A refused or failed look says nothing about the stream: connect,
      // and let the offer's answer say what is wrong.
    }
    if (gen !== this.gen || !this.live || !this.wanted) return;
    if (live === false) return this.scheduleRetry(null);
    this.connect();
  }

  async connect() {
    clearTimeout(this.timers.retry);
    this.teardown();
    const gen = this.gen;
    if (typeof RTCPeerConnection === 'undefined') return this.tryHls(gen, 'noWebrtc');
    if (this.mode === 'hls') this.mode = 'webrtc';
    // A retry keeps saying why it retries ("Connection lost" only if it played).
    const retrying = this.state === 'reconnecting' || this.state === 'connecting';
    this.setState(this.played ? 'reconnecting' : 'connecting', retrying ? this.message : null);

    let token;
    try {
      token = await this.getToken({ refresh: false });
    } catch (e) {
      if (gen === this.gen) this.fail(e.message || String(e), e.code, { retry: Boolean(e.retry) });
      return;
    }
    if (gen !== this.gen) return;

    const pc = new RTCPeerConnection({ iceServers: [], bundlePolicy: 'max-bundle' });
    this.pc = pc;
    this.path = new PathWatch(QUIET_MS);
    pc.addTransceiver('video', { direction: 'recvonly' });
    pc.addTransceiver('audio', { direction: 'recvonly' });
    const ms = new MediaStream();
    pc.ontrack = (ev) => {
      if (gen !== this.gen) return;
      ms.addTrack(ev.track);
      if (this.video.srcObject !== ms) this.video.srcObject = ms;
      this.startPlayback();
    };
    pc.onconnectionstatechange = () => this.onPcState(pc, gen);

    let resp;
    try {
      await pc.setLocalDescription(await pc.createOffer());
      const headers = { 'Content-Type': 'application/sdp' };
      if (token) headers.Authorization = `Bearer ${token}`;
      this.counts.whepPosts++;
      resp = await fetch(`/whep/${encodeURIComponent(this.stream)}`, {
        method: 'POST', headers, body: pc.localDescription.sdp,
      });
    } catch (e) {
      if (gen !== this.gen) return;
      this.teardown();
      return this.scheduleRetry('Could not reach the server. Retrying…');
    }
    if (gen !== this.gen) return;
    if (resp.status !== 201) {
      const err = await errorFrom(resp);
      if (gen !== this.gen) return;
      this.teardown();
      return this.onWhepError(err, this.gen);
    }
    const loc = resp.headers.get('Location');
    // After a 307 to another node (cluster.redirect_viewers), the resource
    // lives there: resolve against the URL that answered.
    this.resource = loc ? new URL(loc, resp.url || location.href).href : null;
    this.resourceToken = token;
    this.etag = resp.headers.get('ETag');
    const answer = await resp.text();
    try {
      await pc.setRemoteDescription({ type: 'answer', sdp: answer });
    } catch (e) {
      if (gen !== this.gen) return;
      this.teardown();
      return this.fail(`The server's answer was not usable: ${e.message || e}`);
    }
    clearTimeout(this.timers.connect);
    this.timers.connect = setTimeout(() => {
      if (gen === this.gen && pc.connectionState !== 'connected') this.webrtcFailed();
    }, CONNECT_TIMEOUT_MS);
  }

  onWhepError(err, gen) {
    switch (err.code) {
      case 'stream_offline':
        // The feed said live; the publisher may be between two connections.
        if (this.live) return this.scheduleRetry(null);
        return this.setState('offline');
      case 'unknown_stream':
        return this.fail(`There is no stream called “${this.stream}”.`, err.code);
      case 'access_required':
        return this.fail('This stream is private. Open it from the link you were given, or from its Matrix room.', err.code);
      case 'no_common_codec':
        // This browser cannot decode the stream's codec over WebRTC (e.g. Firefox
        // without OpenH264 and an H.264 stream): HLS at once, when there is HLS
        // (H.264, VP9 and AV1 streams; the playlist answers 422 for VP8).
        return this.tryHls(gen, 'codec', codecIn(err.message));
      case 'access_denied':
        if (!this.refreshedToken) {
          this.refreshedToken = true;
          return this.getToken({ refresh: true }).then(
            () => { if (gen === this.gen) this.connect(); },
            (e) => this.fail(e.message || String(e), e.code, { retry: Boolean(e.retry) }),
          );
        }
        return this.fail('Your access to this private stream has expired or is not valid. Ask for a new link.', err.code);
      default:
        if (err.status >= 500 || err.status === 429 || err.status === 0) return this.scheduleRetry(`${err.message}. Retrying…`);
        return this.fail(err.message, err.code);
    }
  }

  onPcState(pc, gen) {
    if (gen !== this.gen) return;
    const s = pc.connectionState;
    this.dispatchEvent(new CustomEvent('connectionstate', { detail: s }));
    clearTimeout(this.timers.disconnected);
    if (s === 'connected') {
      clearTimeout(this.timers.connect);
      this.connected = true;
      this.failures = 0;
      this.backoff = 1000;
      this.refreshedToken = false;
      // A restart is done once the server's new credentials are in (before
      // that, this is the old ICE generation back: the PATCH is on its way).
      if (this.restart?.applied) this.restartDone({ ok: true });
      if (this.state !== 'playing' && this.live !== false) this.setState('connecting');
      this.startPlayback();
    } else if (s === 'disconnected') {
      // A restart under way has its own deadline (ICE_RESTART_MS).
      if (this.restart) return;
      this.timers.disconnected = setTimeout(() => {
        if (gen === this.gen && pc.connectionState === 'disconnected') this.lost(pc, gen, 'disconnected');
      }, this.canRestartIce() ? ICE_RESTART_GRACE_MS : DISCONNECT_GRACE_MS);
    } else if (s === 'failed') {
      this.lost(pc, gen, 'failed');
    }
  }

  /** Every PATH_WATCH_MS: reads the connection's packet counters. A path gone
   *  quiet restarts ICE; a restart under way is done once the path answers. */
  async watchPath() {
    const pc = this.pc;
    const gen = this.gen;
    if (this.mode !== 'webrtc' || !pc || !this.path || !this.connected || this.path.busy) return;
    const watch = this.path;
    watch.busy = true;
    let counters;
    try {
      counters = await pathCounters(pc);
    } catch {
      return;
    } finally {
      watch.busy = false;
    }
    if (gen !== this.gen || watch !== this.path) return;
    const now = performance.now();
    watch.sample(counters, now);
    const restart = this.restart;
    if (restart) {
      if (restart.applied && watch.answeredSince(restart.t0)) this.restartDone({ ok: true });
      return;
    }
    if (this.live && pc.connectionState === 'connected' && watch.takeQuiet(now)) this.lost(pc, gen, 'quiet');
  }

  /** The connection dropped ('disconnected' past the grace) or failed: an ICE
   *  restart when it can save the session, else a new session. */
  lost(pc, gen, trigger) {
    if (gen !== this.gen || this.restart) return; // a restart's deadline decides
    if (this.canRestartIce()) return this.restartIce(pc, gen, trigger);
    // A quiet path the browser still calls connected: its own timers decide.
    if (trigger !== 'quiet') this.renegotiate(gen);
  }

  /** Whether an ICE restart can save this session: a connection that worked
   *  (ICE that never connected fails the same way with new credentials). */
  canRestartIce() {
    return Boolean(this.connected && this.resource && this.live && this.mode === 'webrtc'
      && this.restarts < ICE_RESTARTS_IN_A_ROW);
  }

  /** An ICE restart of the WHEP session (RFC 9725 §4.3.2) on the same
   *  PeerConnection: the new offer's ufrag and pwd PATCHed to the session, the
   *  server's new ones put in the remote description. Media goes on over the
   *  new path without a new session, DTLS handshake or GOP replay. */
  async restartIce(pc, gen, trigger) {
    const restart = { t0: performance.now(), applied: false, trigger };
    this.restart = restart;
    this.restarts++;
    this.counts.iceRestarts++;
    const current = () => gen === this.gen && this.restart === restart;
    this.setState('reconnecting', MESSAGES.reconnecting);
    // One deadline for all of it: a PATCH that hangs counts too.
    clearTimeout(this.timers.iceRestart);
    this.timers.iceRestart = setTimeout(() => {
      if (current()) this.restartDone({ ok: false, reason: 'timeout' });
    }, ICE_RESTART_MS);
    let resp;
    try {
      if (pc.restartIce) pc.restartIce();
      await pc.setLocalDescription(await pc.createOffer({ iceRestart: true }));
      if (!current()) return;
      // The ETag of the last answer: a 412 means the session's ICE state is
      // not what this page knows, and a new session is the way out.
      const headers = { 'Content-Type': SDPFRAG, 'If-Match': this.etag || '*' };
      if (this.resourceToken) headers.Authorization = `Bearer ${this.resourceToken}`;
      resp = await fetch(this.resource, {
        method: 'PATCH', headers, body: restartFragment(pc.localDescription.sdp),
      });
    } catch (e) {
      if (current()) this.restartDone({ ok: false, reason: String(e.message || e) });
      return;
    }
    if (!current()) return;
    if (resp.status !== 200) {
      // 404/410: the server ended the session (nothing to DELETE); 412, 5xx,
      // 405: no restart here. Either way: a new session.
      if (resp.status === 404 || resp.status === 410) this.resource = null;
      return this.restartDone({ ok: false, status: resp.status });
    }
    try {
      const frag = parseFragment(await resp.text());
      if (!current()) return;
      if (!frag.ufrag || !frag.pwd) throw new Error('no ice-ufrag/ice-pwd in the answer');
      this.etag = resp.headers.get('ETag') || this.etag;
      await pc.setRemoteDescription({ type: 'answer', sdp: withIceCredentials(pc.remoteDescription.sdp, frag) });
      restart.applied = true;
    } catch (e) {
      if (current()) this.restartDone({ ok: false, status: 200, reason: String(e.message || e) });
      return;
    }
    // Done when the path answers: a packet or a STUN response after the start
    // (watchPath). A browser without those counters: when it calls the path
    // connected (a path that never went away, or the old generation back).
    if (current() && !this.path?.reportsResponses && pc.connectionState === 'connected') this.restartDone({ ok: true });
  }

  /** The ICE restart under way ended: `ok` it reconnected, else a new session
   *  (renegotiate: backoff, and LL-HLS after repeated losses). */
  restartDone(outcome) {
    const { t0, trigger } = this.restart;
    const detail = { ...outcome, trigger, ms: Math.round(performance.now() - t0) };
    clearTimeout(this.timers.iceRestart);
    this.restart = null;
    if (detail.ok) {
      this.counts.iceRestartsOk++;
      if (this.state === 'reconnecting') this.setState('connecting', MESSAGES.waiting);
    }
    this.dispatchEvent(new CustomEvent('icerestart', { detail }));
    if (!detail.ok) this.renegotiate(this.gen);
  }

  /** The connection failed, timed out, dropped or stalled. What counts is whether
   *  WebRTC ever showed a frame (this.played), not the page's state: ICE may fail
   *  before or after the connect timer. */
  renegotiate(gen) {
    if (gen !== this.gen) return;
    this.teardown();
    if (!this.live) return this.setState('offline');
    this.failures++;
    if (!this.played) return this.tryHls(this.gen, 'ice');
    if (this.failures >= WEBRTC_LOSSES_BEFORE_HLS) return this.tryHls(this.gen, 'lost');
    this.scheduleRetry(MESSAGES.reconnecting);
  }

  /** The connect timer ran out before ICE connected. */
  webrtcFailed() {
    this.renegotiate(this.gen);
  }

  /** LL-HLS instead of WebRTC, for the reason `why` (a key of WHY), if the stream has it. */
  async tryHls(gen, why, codec = 'this video') {
    const token = await this.getToken({ refresh: false }).catch(() => null);
    const url = withQuery(`/hls/${encodeURIComponent(this.stream)}/index.m3u8`, { access: token });
    let ok = false;
    try {
      const r = await fetch(url, { method: 'GET', cache: 'no-store' });
      ok = r.ok;
    } catch {
      ok = false;
    }
    if (gen !== this.gen) return;
    if (!ok) {
      this.mode = 'webrtc';
      this.why = null;
      // Nothing else to try for a browser that cannot decode or has no WebRTC;
      // a network problem may pass, so keep trying (with backoff).
      if (why === 'noWebrtc' || why === 'codec') return this.fail(NO_PICTURE[why], `no_picture_${why}`);
      return this.scheduleRetry(NO_PICTURE[why]);
    }
    this.mode = 'hls';
    this.why = typeof WHY[why] === 'function' ? WHY[why](codec) : WHY[why];
    this.setState('connecting');
    let Hls = null;
    try {
      Hls = (await import('hls.js/light')).default;
    } catch {
      Hls = null;
    }
    if (gen !== this.gen) return;
    if (Hls && Hls.isSupported()) {
      // Up to 1.5× speed to catch up with the live edge after a join or a stall.
      const hls = new Hls({ lowLatencyMode: true, backBufferLength: 30, maxLiveSyncPlaybackRate: 1.5 });
      this.hls = hls;
      // This browser's MSE cannot decode the stream's codec (e.g. AV1 where no
      // decoder is built in): no picture either way, so say so, not retry.
      const codecErrors = [Hls.ErrorDetails.BUFFER_ADD_CODEC_ERROR,
        Hls.ErrorDetails.BUFFER_INCOMPATIBLE_CODECS_ERROR, Hls.ErrorDetails.MANIFEST_INCOMPATIBLE_CODECS_ERROR];
      hls.on(Hls.Events.ERROR, (_ev, data) => {
        if (gen !== this.gen) return;
        if (codecErrors.includes(data.details) && this.state !== 'playing') {
          return this.fail(NO_PICTURE.codec, 'no_picture_codec');
        }
        if (!data.fatal) return;
        this.teardown();
        this.mode = 'webrtc';
        this.why = null;
        this.failures = 0;
        this.played = false;
        if (this.live) this.scheduleRetry('Playback stopped. Reconnecting…');
      });
      hls.loadSource(url);
      hls.attachMedia(this.video);
    } else if (this.video.canPlayType('application/vnd.apple.mpegurl')) {
      this.video.src = url;
    } else {
      return this.fail(NO_PICTURE.noWebrtc, 'no_picture_noWebrtc');
    }
    this.dispatchEvent(new CustomEvent('mode', { detail: 'hls' }));
    this.startPlayback();
    // A network problem may pass (a codec or a missing WebRTC will not).
    if (why === 'ice' || why === 'lost') this.scheduleProbe(this.gen);
  }

  scheduleProbe(gen) {
    clearTimeout(this.timers.probe);
    const wait = WEBRTC_PROBE_MS[Math.min(this.probes, WEBRTC_PROBE_MS.length - 1)];
    this.probes++;
    this.timers.probe = setTimeout(() => this.probeWebrtc(gen), wait);
  }

  /** While LL-HLS plays: negotiate a second PeerConnection; when it connects and
   *  has the video track, WebRTC takes over (HLS is closed); otherwise it is
   *  closed quietly and tried again later. */
  async probeWebrtc(gen) {
    if (gen !== this.gen || this.mode !== 'hls' || this.probe) return;
    if (!this.live) return this.scheduleProbe(gen);
    const token = await this.getToken({ refresh: false }).catch(() => null);
    if (gen !== this.gen) return;
    const pc = new RTCPeerConnection({ iceServers: [], bundlePolicy: 'max-bundle' });
    const probe = { pc, ms: new MediaStream(), resource: null, etag: null, token, video: false, timer: null };
    this.probe = probe;
    const done = (ok) => {
      if (this.probe !== probe) return;
      clearTimeout(probe.timer);
      this.probe = null;
      if (ok && gen === this.gen && this.mode === 'hls') return this.adoptProbe(probe);
      closeProbe(probe);
      if (gen === this.gen && this.mode === 'hls') this.scheduleProbe(gen);
    };
    pc.addTransceiver('video', { direction: 'recvonly' });
    pc.addTransceiver('audio', { direction: 'recvonly' });
    pc.ontrack = (ev) => {
      probe.ms.addTrack(ev.track);
      if (ev.track.kind === 'video') probe.video = true;
      if (probe.video && pc.connectionState === 'connected') done(true);
    };
    pc.onconnectionstatechange = () => {
      const st = pc.connectionState;
      if (st === 'connected' && probe.video) done(true);
      else if (st === 'failed' || st === 'closed') done(false);
    };
    probe.timer = setTimeout(() => done(false), CONNECT_TIMEOUT_MS);
    try {
      await pc.setLocalDescription(await pc.createOffer());
      const headers = { 'Content-Type': 'application/sdp' };
      if (token) headers.Authorization = `Bearer ${token}`;
      this.counts.whepPosts++;
      const resp = await fetch(`/whep/${encodeURIComponent(this.stream)}`, {
        method: 'POST', headers, body: pc.localDescription.sdp,
      });
      if (resp.status !== 201) return done(false);
      const loc = resp.headers.get('Location');
      probe.resource = loc ? new URL(loc, resp.url || location.href).href : null;
      probe.etag = resp.headers.get('ETag');
      // Given up meanwhile (timer, teardown): end the session just made.
      if (this.probe !== probe) return closeProbe(probe);
      await pc.setRemoteDescription({ type: 'answer', sdp: await resp.text() });
    } catch {
      done(false);
    }
  }

  /** A background probe connected: it becomes the player's PeerConnection. */
  adoptProbe(probe) {
    this.teardown(); // closes HLS
    const gen = this.gen;
    this.mode = 'webrtc';
    this.why = null;
    this.failures = 0;
    this.played = false; // a failure before its first frame falls back again at once
    this.pc = probe.pc;
    this.resource = probe.resource;
    this.resourceToken = probe.token;
    this.etag = probe.etag;
    this.connected = true; // adopted once connected
    probe.pc.ontrack = (ev) => {
      if (gen === this.gen) probe.ms.addTrack(ev.track);
    };
    probe.pc.onconnectionstatechange = () => this.onPcState(probe.pc, gen);
    this.video.srcObject = probe.ms;
    this.setState('connecting');
    this.dispatchEvent(new CustomEvent('mode', { detail: 'webrtc' }));
    this.startPlayback();
  }

  startPlayback() {
    const v = this.video;
    const p = v.play();
    if (!p) return;
    p.catch((e) => {
      if (e && e.name === 'NotAllowedError' && !v.muted) {
        // Autoplay with sound is blocked: play muted and offer to unmute.
        v.muted = true;
        this.render();
        v.play().catch(() => this.render());
      } else if (e && e.name === 'NotAllowedError') {
        this.render();
      }
    });
  }

  checkStall() {
    if (this.state !== 'playing' || !this.live || this.mode !== 'webrtc' || !this.pc) return;
    const q = this.video.getVideoPlaybackQuality ? this.video.getVideoPlaybackQuality() : null;
    const frames = q ? q.totalVideoFrames : 0;
    const now = performance.now();
    if (frames !== this.lastFrames) {
      this.lastFrames = frames;
      this.lastFrameAt = now;
    } else if (now - this.lastFrameAt > STALL_MS && this.pc.connectionState === 'connected') {
      this.lastFrameAt = now;
      this.renegotiate(this.gen);
    }
  }

  /** Closes the PeerConnection (telling the server with DELETE) and HLS. */
  teardown(unloading = false) {
    this.gen++;
    clearTimeout(this.timers.connect);
    clearTimeout(this.timers.disconnected);
    clearTimeout(this.timers.iceRestart);
    clearTimeout(this.timers.probe);
    this.restart = null;
    this.path = null;
    this.connected = false;
    this.etag = null;
    if (this.probe) {
      clearTimeout(this.probe.timer);
      closeProbe(this.probe, unloading);
      this.probe = null;
    }
    if (this.pc) {
      this.pc.ontrack = null;
      this.pc.onconnectionstatechange = null;
      this.pc.close();
      this.pc = null;
    }
    if (this.resource) {
      const headers = this.resourceToken ? { Authorization: `Bearer ${this.resourceToken}` } : {};
      fetch(this.resource, { method: 'DELETE', headers, keepalive: unloading }).catch(() => {});
      this.resource = null;
    }
    if (this.hls) {
      this.hls.destroy();
      this.hls = null;
    }
    if (this.video.srcObject) this.video.srcObject = null;
    if (this.video.getAttribute('src')) {
      this.video.removeAttribute('src');
      this.video.load();
    }
  }

  /** Stops with a message; `retry`: the viewer can fix the cause (offer "Try again"). */
  fail(message, code = null, { retry = false } = {}) {
    this.retryable = retry;
    this.teardown();
    this.setState('error', message);
    this.dispatchEvent(new CustomEvent('error', { detail: { message, code } }));
  }

  // --- UI -----------------------------------------------------------------

  setState(state, message = null) {
    this.state = state;
    this.message = message;
    this.dispatchEvent(new CustomEvent('state', { detail: { state, message } }));
    this.render();
  }

  render() {
    const st = this.state;
    this.el.dataset.state = st;
    this.renderPath();
    let text = '';
    if (st === 'offline') text = MESSAGES.offline;
    else if (st === 'connecting') text = this.message || MESSAGES.connecting;
    else if (st === 'reconnecting') text = this.message || MESSAGES.reconnecting;
    else if (st === 'error') text = this.message || 'Something went wrong.';
    else if (st === 'idle' && !this.wanted) text = this.live === false ? MESSAGES.offline : '';
    if (!this.o.overlayText && st !== 'error') text = '';
    this.status.textContent = text;
    this.status.hidden = !text;
    this.retryBtn.hidden = !(st === 'error' && this.retryable);
    if (!this.o.controls) return;
    const muted = this.video.muted || this.video.volume === 0;
    this.unmuteBtn.hidden = !(muted && st === 'playing');
    this.playBtn.hidden = this.wanted || st === 'error';
    this.muteBtn.replaceChildren(icon(muted ? 'muted' : 'sound'));
    this.muteBtn.setAttribute('aria-label', muted ? 'Unmute' : 'Mute');
    this.volume.value = String(this.video.muted ? 0 : this.video.volume);
    const fs = document.fullscreenElement === this.el;
    this.fsBtn.replaceChildren(icon(fs ? 'exitFullscreen' : 'fullscreen'));
    this.fsBtn.setAttribute('aria-label', fs ? 'Exit full screen' : 'Full screen');
    this.fsBtn.hidden = !(document.fullscreenEnabled || this.video.webkitEnterFullscreen);
    this.liveTag.hidden = st !== 'playing';
  }

  renderPath() {
    // Not over the picture of an embed without controls (an OBS source broadcasts it).
    const text = this.state !== 'playing' || !this.o.overlayText ? ''
      : this.mode === 'hls' ? `LL-HLS: ${this.why || 'fallback'}` : 'WebRTC';
    if (this.pathTag.textContent !== text) this.pathTag.textContent = text;
    this.pathTag.hidden = !text;
  }

  toggleFullscreen() {
    if (document.fullscreenElement) {
      document.exitFullscreen().catch(() => {});
    } else if (this.el.requestFullscreen) {
      this.el.requestFullscreen().catch(() => {});
    } else if (this.video.webkitEnterFullscreen) {
      this.video.webkitEnterFullscreen(); // iOS Safari
    }
  }

  onKey(ev) {
    if (ev.target !== this.el || ev.ctrlKey || ev.metaKey || ev.altKey) return;
    const k = ev.key.toLowerCase();
    if (k === 'm') { this.setMuted(!this.video.muted); ev.preventDefault(); }
    else if (k === 'f') { this.toggleFullscreen(); ev.preventDefault(); }
    else if ((k === ' ' || k === 'enter') && !this.wanted) { this.play(); ev.preventDefault(); }
  }
}

/** Closes a background probe's PeerConnection and its WHEP session. */
function closeProbe(probe, unloading = false) {
  probe.pc.ontrack = null;
  probe.pc.onconnectionstatechange = null;
  probe.pc.close();
  if (probe.resource) {
    const headers = probe.token ? { Authorization: `Bearer ${probe.token}` } : {};
    fetch(probe.resource, { method: 'DELETE', headers, keepalive: unloading }).catch(() => {});
  }
}

/** The codec named by the server's no_common_codec message ("offer has no H.264 …"). */
function codecIn(message) {
  const m = /\b(H\.264|H\.265|VP8|VP9|AV1)\b/.exec(message || '');
  return m ? m[1] : 'this video';
}

function clamp01(v) {
  const n = Number(v);
  return Number.isFinite(n) ? Math.min(1, Math.max(0, n)) : 1;
}
