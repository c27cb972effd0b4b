// /publish/{stream}: go live from the browser over WHIP (POST /whip/{stream} with
// Authorization: Bearer <stream key>): camera and microphone or a screen share,
// H.264 or VP8 video and Opus audio, with a preview, a bitrate choice and plain
// error messages.
import '../css/base.css';
import '../css/publish.css';
import { errorFrom } from '../lib/api.js';
import { h, pathParam } from '../lib/dom.js';
import { gathered, preferCodec } from '../lib/whip.js';

const stream = pathParam('/publish/');
const app = document.getElementById('app');
document.title = `Go live: ${stream} · roomcast`;

const video = h('video', { muted: true, autoplay: true, playsinline: true, 'aria-label': 'Preview' });
video.muted = true;
const placeholder = h('div', { class: 'placeholder', text: 'Choose a source and press “Start preview”.' });
const onair = h('span', { class: 'badge live onair', text: 'LIVE', hidden: true });
const key = h('input', { type: 'password', name: 'key', autocomplete: 'off', spellcheck: 'false', placeholder: 'The stream key' });
const source = (value, text, checked) => h('label', { class: 'choice' },
  h('input', { type: 'radio', name: 'source', value, checked }), text);
const codec = h('select', { name: 'codec' },
  h('option', { value: 'H264', text: 'H.264', selected: true }), h('option', { value: 'VP8', text: 'VP8' }));
const bitrate = h('select', { name: 'bitrate' },
  ...[[1000, '1 Mbit/s'], [2500, '2.5 Mbit/s'], [4000, '4 Mbit/s'], [6000, '6 Mbit/s']].map(([v, t]) =>
    h('option', { value: String(v), text: t, selected: v === 2500 })));
const previewBtn = h('button', { type: 'button', class: 'btn secondary', text: 'Start preview', onclick: () => startPreview() });
const liveBtn = h('button', { type: 'submit', class: 'btn', text: 'Go live' });
const stopBtn = h('button', { type: 'button', class: 'btn secondary', text: 'Stop', hidden: true, onclick: () => stop('Stopped. You are no longer live.') });
const status = h('p', { class: 'pub-status', role: 'status', 'aria-live': 'polite' });
const stats = h('p', { class: 'pub-stats', hidden: true });
const form = h('form', { class: 'pub-form', onsubmit: (ev) => { ev.preventDefault(); goLive(); } },
  h('fieldset', {}, h('legend', { text: 'Source' }),
    source('camera', 'Camera and microphone', true), source('screen', 'Screen share (and microphone)', false)),
  h('label', {}, 'Stream key', key, h('span', { class: 'hint', text: 'The key you got for this stream. It is sent to this server only.' })),
  h('div', { class: 'pub-row' }, h('label', {}, 'Video codec', codec), h('label', {}, 'Bitrate', bitrate)),
  h('div', { class: 'pub-actions' }, previewBtn, liveBtn, stopBtn),
  status, stats);
app.append(
  h('h1', {}, 'Go live: ', h('span', { text: stream })),
  h('div', { class: 'preview' }, video, placeholder, onair),
  form);

let media = null;
let pc = null;
let resource = null;
let statsTimer = null;

function say(text, error = false) {
  status.textContent = text;
  status.classList.toggle('error', error);
}

function mediaError(e, what) {
  const n = e && e.name;
  if (!navigator.mediaDevices) return 'Browsers allow camera and screen capture only on https:// pages (or on localhost).';
  if (n === 'NotAllowedError') return what === 'screen' ? 'Screen sharing was cancelled or not allowed.' : 'The browser was not allowed to use the camera or microphone. Allow it (icon in the address bar) and try again.';
  if (n === 'NotFoundError' || n === 'OverconstrainedError') return 'No camera or microphone was found.';
  if (n === 'NotReadableError') return 'The camera or microphone is in use by another program.';
  return `Could not capture: ${e && e.message ? e.message : e}`;
}

async function startPreview() {
  const kind = form.elements.source.value;
  if (!navigator.mediaDevices) return say(mediaError(null, kind), true);
  previewBtn.disabled = true;
  say(kind === 'screen' ? 'Choose what to share…' : 'Asking for the camera and microphone…');
  try {
    let s;
    if (kind === 'screen') {
      s = await navigator.mediaDevices.getDisplayMedia({ video: { frameRate: 30 }, audio: true });
      if (!s.getAudioTracks().length) {
        const mic = await navigator.mediaDevices.getUserMedia({ audio: true }).catch(() => null);
        if (mic) for (const t of mic.getAudioTracks()) s.addTrack(t);
      }
    } else {
      s = await navigator.mediaDevices.getUserMedia({
        video: { width: { ideal: 1280 }, height: { ideal: 720 }, frameRate: { ideal: 30 } }, audio: true,
      });
    }
    if (media) for (const t of media.getTracks()) t.stop();
    media = s;
    video.srcObject = s;
    placeholder.hidden = true;
    s.getVideoTracks()[0]?.addEventListener('ended', () => { if (pc) stop('The shared screen or camera was closed, so the stream stopped.'); });
    say(pc ? 'Live.' : 'Preview on. Enter the stream key and press “Go live”.');
  } catch (e) {
    say(mediaError(e, kind), true);
  } finally {
    previewBtn.disabled = false;
  }
}

function whipError(err) {
  if (err.status === 401 || err.status === 403) return err.code === 'http_401' || err.code === 'http_403'
    ? 'The stream key was rejected. Check it and try again.' : `The stream key was rejected: ${err.message}`;
  if (err.status === 404 && err.code === 'unknown_stream') return `There is no stream called “${stream}” on this server.`;
  if (err.status === 404 || err.status === 405 || err.status === 501) {
    return 'This server does not accept publishing from the browser (WHIP) yet. Use OBS or ffmpeg over RTMP instead.';
  }
  if (err.status === 0) return 'Could not reach the server. Check your connection.';
  return err.message;
}

async function goLive() {
  if (!key.value.trim()) return say('Enter the stream key first.', true);
  if (!media) await startPreview();
  if (!media) return;
  liveBtn.disabled = true;
  say('Connecting…');
  const kbps = Number(bitrate.value);
  pc = new RTCPeerConnection({ bundlePolicy: 'max-bundle' });
  const vt = media.getVideoTracks()[0];
  const at = media.getAudioTracks()[0];
  if (vt) {
    vt.contentHint = form.elements.source.value === 'screen' ? 'detail' : 'motion';
    const tr = pc.addTransceiver(vt, { direction: 'sendonly', streams: [media], sendEncodings: [{ maxBitrate: kbps * 1000 }] });
    preferCodec(tr, codec.value);
  }
  if (at) pc.addTransceiver(at, { direction: 'sendonly', streams: [media] });
  const thisPc = pc;
  pc.onconnectionstatechange = () => {
    if (pc !== thisPc) return;
    const s = thisPc.connectionState;
    if (s === 'connected') {
      onair.hidden = false;
      say('You are live. Viewers can watch at ');
      status.append(h('a', { href: `/watch/${encodeURIComponent(stream)}`, target: '_blank', text: `/watch/${stream}` }), '.');
    } else if (s === 'failed') {
      stop('The connection to the server was lost. Press “Go live” to try again.', true);
    }
  };
  let resp;
  try {
    await pc.setLocalDescription(await pc.createOffer());
    await gathered(pc, 2000);
    resp = await fetch(`/whip/${encodeURIComponent(stream)}`, {
      method: 'POST',
      headers: { 'Content-Type': 'application/sdp', Authorization: `Bearer ${key.value.trim()}` },
      body: pc.localDescription.sdp,
    });
  } catch (e) {
    return stop(whipError({ status: 0 }), true);
  }
  if (resp.status !== 201) {
    const err = await errorFrom(resp);
    return stop(whipError(err), true);
  }
  const loc = resp.headers.get('Location');
  resource = loc ? new URL(loc, location.href).href : null;
  try {
    await pc.setRemoteDescription({ type: 'answer', sdp: await resp.text() });
  } catch (e) {
    return stop(`The server's answer was not usable: ${e.message || e}`, true);
  }
  stopBtn.hidden = false;
  liveBtn.hidden = true;
  startStats();
}

function startStats() {
  let last = null;
  clearInterval(statsTimer);
  statsTimer = setInterval(async () => {
    if (!pc) return;
    // Firefox never settles getStats() of a PeerConnection closed meanwhile, and
    // a late answer must not show figures after stop().
    const mine = pc;
    const r = await mine.getStats();
    if (pc !== mine) return;
    r.forEach((s) => {
      if (s.type !== 'outbound-rtp' || s.kind !== 'video') return;
      if (last) {
        const kbit = ((s.bytesSent - last.bytesSent) * 8) / (s.timestamp - last.timestamp);
        stats.textContent = `Sending ${Math.round(kbit)} kbit/s · ${s.frameWidth || '?'}×${s.frameHeight || '?'} at ${Math.round(s.framesPerSecond || 0)} fps`;
        stats.hidden = false;
      }
      last = s;
    });
  }, 1000);
}

function stop(message, error = false) {
  clearInterval(statsTimer);
  stats.hidden = true;
  if (resource) {
    fetch(resource, { method: 'DELETE', headers: { Authorization: `Bearer ${key.value.trim()}` } }).catch(() => {});
    resource = null;
  }
  if (pc) {
    pc.onconnectionstatechange = null;
    pc.close();
    pc = null;
  }
  onair.hidden = true;
  liveBtn.hidden = false;
  liveBtn.disabled = false;
  stopBtn.hidden = true;
  say(message, error);
}

window.addEventListener('pagehide', () => {
  if (resource) fetch(resource, { method: 'DELETE', headers: { Authorization: `Bearer ${key.value.trim()}` }, keepalive: true }).catch(() => {});
});

if (!stream) say('This address names no stream. Publishing pages look like /publish/NAME.', true);
window.roomcast = { get pc() { return pc; }, startPreview, goLive };
