#!/usr/bin/env node
// Headless Chromium publishing its fake camera and microphone over WHIP
// (--use-fake-device-for-media-stream --use-fake-ui-for-media-stream), the way
// a browser publish page does: getUserMedia, sendonly transceivers, POST the
// offer to the WHIP URL with Authorization: Bearer KEY, set the answer.
//
//   node publish.mjs --base http://127.0.0.1:PORT --stream t1 --key KEY [--codec VP8|H264] [--duration S] [--stdin-control]
//
// Every stdout line is JSON: `start`, `whip` {status, location, etag, answer_candidates},
// `event` (connection state), `sample` (outbound-rtp video: framesEncoded, codec,
// pliCount, firCount), `console`, and last `result` {ok, reason, delete_status}.
// ok when the session connected and frames were encoded. A line "stop" on stdin
// (or stdin closing) ends it; the session is DELETEd at the end.

import { chromium } from 'playwright-core';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';

function emit(obj) {
  process.stdout.write(JSON.stringify(obj) + '\n');
}

function parseArgs(argv) {
  const o = { base: null, stream: 't1', key: null, codec: null, duration: null, timeout: 60, stdinControl: false,
    chromium: process.env.ROOMCAST_TEST_CHROMIUM || '/usr/bin/chromium', path: null };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    const v = () => { if (i + 1 >= argv.length) throw new Error(`missing value for ${a}`); return argv[++i]; };
    switch (a) {
      case '--base': o.base = v().replace(/\/+$/, ''); break;
      case '--stream': o.stream = v(); break;
      case '--key': o.key = v(); break;
      case '--codec': o.codec = v(); break;
      case '--path': o.path = v(); break;
      case '--duration': o.duration = Number(v()); break;
      case '--timeout': o.timeout = Number(v()); break;
      case '--stdin-control': o.stdinControl = true; break;
      case '--chromium': o.chromium = v(); break;
      default: throw new Error(`unknown argument ${a}`);
    }
  }
  if (!o.base) throw new Error('--base is required');
  return o;
}

async function pageStart({ url, key, codec }) {
  const emit = (o) => window.__emit(o);
  const media = await navigator.mediaDevices.getUserMedia({ video: { width: 640, height: 360, frameRate: 30 }, audio: true });
  const pc = new RTCPeerConnection({ iceServers: [] });
  window.__pc = pc;
  pc.onconnectionstatechange = () => emit({ type: 'event', name: 'connectionstatechange', state: pc.connectionState });
  for (const track of media.getTracks()) {
    const t = pc.addTransceiver(track, { direction: 'sendonly', streams: [media] });
    if (track.kind === 'video' && codec) {
      const caps = RTCRtpSender.getCapabilities('video').codecs;
      const wanted = caps.filter((c) => c.mimeType.toLowerCase() === `video/${codec.toLowerCase()}`);
      const rest = caps.filter((c) => c.mimeType.toLowerCase() === 'video/rtx');
      t.setCodecPreferences([...wanted, ...rest]);
    }
  }
  await pc.setLocalDescription(await pc.createOffer());
  const headers = { 'Content-Type': 'application/sdp' };
  if (key) headers.Authorization = `Bearer ${key}`;
  const resp = await fetch(url, { method: 'POST', headers, body: pc.localDescription.sdp });
  const text = await resp.text();
  const info = {
    status: resp.status,
    location: resp.headers.get('Location'),
    etag: resp.headers.get('ETag'),
  };
  if (resp.status !== 201) return { ok: false, reason: `WHIP POST answered ${resp.status}: ${text.slice(0, 500)}`, ...info };
  info.answer_candidates = text.split(/\r?\n/).filter((l) => l.startsWith('a=candidate:')).map((l) => l.slice(2));
  window.__location = new URL(info.location, url).toString();
  await pc.setRemoteDescription({ type: 'answer', sdp: text });
  return { ok: true, ...info };
}

async function pageSample() {
  const pc = window.__pc;
  if (!pc) return null;
  const stats = await pc.getStats();
  let v = null, a = null;
  const byId = new Map();
  stats.forEach((s) => {
    byId.set(s.id, s);
    if (s.type === 'outbound-rtp' && s.kind === 'video') v = s;
    if (s.type === 'outbound-rtp' && s.kind === 'audio') a = s;
  });
  return {
    connectionState: pc.connectionState,
    video: v && { framesEncoded: v.framesEncoded, keyFramesEncoded: v.keyFramesEncoded, pliCount: v.pliCount,
      firCount: v.firCount, frameWidth: v.frameWidth, frameHeight: v.frameHeight,
      codec: v.codecId && byId.get(v.codecId) ? byId.get(v.codecId).mimeType : null },
    audio: a && { packetsSent: a.packetsSent },
  };
}

async function pageStop() {
  let status = null;
  if (window.__location) {
    try { status = (await fetch(window.__location, { method: 'DELETE' })).status; } catch (e) { status = `error: ${e}`; }
  }
  if (window.__pc) window.__pc.close();
  return status;
}

async function main() {
  let opts;
  try {
    opts = parseArgs(process.argv.slice(2));
  } catch (e) {
    emit({ type: 'result', ok: false, reason: `bad usage: ${e.message}` });
    process.exit(2);
  }
  let stop = false;
  if (opts.stdinControl) {
    const rl = createInterface({ input: process.stdin });
    rl.on('line', (l) => { if (l.trim() === 'stop') stop = true; });
    rl.on('close', () => { stop = true; });
  }
  const userDataDir = mkdtempSync(join(tmpdir(), 'roomcast-publish-'));
  const result = { type: 'result', ok: false };
  let context = null;
  const states = [];
  let last = null;
  try {
    context = await chromium.launchPersistentContext(userDataDir, {
      executablePath: opts.chromium,
      headless: true,
      args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
        '--disable-background-networking', '--disable-component-update', '--disable-sync',
        '--use-fake-device-for-media-stream', '--use-fake-ui-for-media-stream',
        '--allow-loopback-in-peer-connection', '--disable-features=WebRtcHideLocalIpsWithMdns'],
      timeout: 60_000,
    });
    emit({ type: 'start', browser_version: context.browser()?.version() ?? null });
    const page = context.pages()[0] ?? (await context.newPage());
    page.on('console', (m) => { if (m.type() === 'error') emit({ type: 'console', text: m.text() }); });
    await page.exposeFunction('__emit', (o) => { if (o.name === 'connectionstatechange') states.push(o.state); emit(o); });
    await page.goto(opts.base + '/healthz', { timeout: 30_000 });
    const path = opts.path || `/whip/${encodeURIComponent(opts.stream)}`;
    const started = await page.evaluate(pageStart, { url: opts.base + path, key: opts.key, codec: opts.codec });
    const { ok, reason, ...whip } = started;
    emit({ type: 'whip', ...whip });
    if (!ok) {
      result.reason = reason;
      return;
    }
    const end = Date.now() + 1000 * (opts.duration ?? 1e6);
    const hard = Date.now() + 1000 * Math.max(opts.timeout, opts.duration ?? 0);
    while (!stop && Date.now() < Math.min(end, opts.duration ? hard : Infinity)) {
      last = await page.evaluate(pageSample);
      emit({ type: 'sample', ...last });
      if (states.includes('failed')) break;
      await new Promise((r) => setTimeout(r, 500));
    }
    result.delete_status = await page.evaluate(pageStop).catch((e) => `error: ${e}`);
    result.ok = states.includes('connected') && (last?.video?.framesEncoded ?? 0) > 0;
    if (!result.ok) result.reason = `connection states ${JSON.stringify(states)}, framesEncoded ${last?.video?.framesEncoded}`;
  } catch (e) {
    result.reason = `crashed: ${e && e.stack ? e.stack : e}`;
  } finally {
    result.connection_states = states;
    result.last_sample = last;
    emit(result);
    if (context) await context.close().catch(() => {});
    rmSync(userDataDir, { recursive: true, force: true });
    process.exit(result.ok ? 0 : 1);
  }
}

main();
