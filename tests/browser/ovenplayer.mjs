#!/usr/bin/env node
// OvenPlayer (npm `ovenplayer`, from node_modules; no CDN) in headless Chromium
// against roomcast's OME-compatible listener: the producer page of the guide
// roomcast replaces (one `<div>` and one `OvenPlayer.create` per slot, type
// "webrtc", file "ws://HOST:3333/{app}/{stream}"), served by this script.
//
//   node ovenplayer.mjs --url ws://127.0.0.1:3333/show/slot-1 [--url …]… [--frames 60] [--timeout 60]
//
// Every stdout line is JSON: `start`, `sample` (per player: state, decoded
// frames, size, the selected ICE candidate pair's protocol), `console`,
// `player_error`, and last `result` {ok, reason, players[…]}. ok when every
// player decoded --frames frames. Exit status 0 when ok.

import { chromium } from 'playwright-core';
import { createServer } from 'node:http';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { createRequire } from 'node:module';
import { createInterface } from 'node:readline';

const require = createRequire(import.meta.url);

function emit(obj) {
  process.stdout.write(JSON.stringify(obj) + '\n');
}

function parseArgs(argv) {
  const o = { urls: [], frames: 60, timeout: 60, chromium: process.env.ROOMCAST_TEST_CHROMIUM || '/usr/bin/chromium',
    stdinControl: false, interval: 500 };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    const v = () => { if (i + 1 >= argv.length) throw new Error(`missing value for ${a}`); return argv[++i]; };
    switch (a) {
      case '--url': o.urls.push(v()); break;
      case '--frames': o.frames = Number(v()); break;
      case '--timeout': o.timeout = Number(v()); break;
      case '--interval': o.interval = Number(v()); break;
      case '--chromium': o.chromium = v(); break;
      case '--stdin-control': o.stdinControl = true; break;
      default: throw new Error(`unknown argument ${a}`);
    }
  }
  if (!o.urls.length) throw new Error('at least one --url is needed');
  return o;
}

// The guide's page, adapted: the player script comes from this server.
function page(urls) {
  const slots = urls.map((u, i) => `<div id="slot-${i + 1}" class="slot"></div>`).join('\n');
  const players = urls
    .map((u, i) => `  players.push(OvenPlayer.create('slot-${i + 1}', {autoStart: true, mute: true,
    sources: [{label: 'slot-${i + 1}', type: 'webrtc', file: ${JSON.stringify(u)}}]}));`)
    .join('\n');
  return `<!doctype html>
<html><head><meta charset="utf-8"><title>roomcast OvenPlayer test</title>
<style>.slot { width: 320px; height: 180px; display: inline-block; }</style></head>
<body>
${slots}
<script src="/ovenplayer.js"></script>
<script>
  window.players = [];
  window.playerErrors = [];
  const players = window.players;
${players}
  players.forEach((p, i) => p.on('error', (e) => window.playerErrors.push({i, code: e && e.code, message: e && e.message})));
</script>
</body></html>`;
}

// Keeps every RTCPeerConnection the page makes, for getStats.
const INIT = `
  window.__pcs = [];
  const Orig = window.RTCPeerConnection;
  window.RTCPeerConnection = function (...args) { const pc = new Orig(...args); window.__pcs.push(pc); return pc; };
  window.RTCPeerConnection.prototype = Orig.prototype;
  Object.setPrototypeOf(window.RTCPeerConnection, Orig);
`;

async function sampleInPage() {
  const out = [];
  for (let i = 0; i < window.players.length; i++) {
    const p = window.players[i];
    const slot = document.getElementById(`slot-${i + 1}`);
    const v = slot ? slot.querySelector('video') : null;
    const q = v && v.getVideoPlaybackQuality ? v.getVideoPlaybackQuality() : null;
    out.push({
      state: p.getState(),
      frames: q ? q.totalVideoFrames : 0,
      width: v ? v.videoWidth : 0,
      height: v ? v.videoHeight : 0,
      currentTime: v ? v.currentTime : 0,
    });
  }
  const pairs = [];
  for (const pc of window.__pcs) {
    if (pc.connectionState === 'closed') continue;
    const stats = await pc.getStats();
    const byId = new Map();
    let transport = null, video = null;
    stats.forEach((s) => {
      byId.set(s.id, s);
      if (s.type === 'transport') transport = s;
      if (s.type === 'inbound-rtp' && s.kind === 'video') video = s;
    });
    const pair = transport && transport.selectedCandidatePairId ? byId.get(transport.selectedCandidatePairId) : null;
    const remote = pair ? byId.get(pair.remoteCandidateId) : null;
    pairs.push({
      connectionState: pc.connectionState,
      protocol: remote ? remote.protocol : null,
      port: remote ? remote.port : null,
      framesDecoded: video ? video.framesDecoded : 0,
      codec: video && video.codecId && byId.get(video.codecId) ? byId.get(video.codecId).mimeType : null,
    });
  }
  return { players: out, pcs: pairs, errors: window.playerErrors };
}

async function main() {
  let opts;
  try {
    opts = parseArgs(process.argv.slice(2));
  } catch (e) {
    emit({ type: 'result', ok: false, reason: `bad usage: ${e.message}` });
    process.exit(2);
  }
  const playerJs = readFileSync(join(dirname(require.resolve('ovenplayer/package.json')), 'dist', 'ovenplayer.js'));
  const html = page(opts.urls);
  const server = createServer((req, res) => {
    if (req.url === '/ovenplayer.js') {
      res.writeHead(200, { 'Content-Type': 'text/javascript' });
      res.end(playerJs);
    } else if (req.url === '/' || req.url === '/index.html') {
      res.writeHead(200, { 'Content-Type': 'text/html; charset=utf-8' });
      res.end(html);
    } else if (req.url === '/favicon.ico') {
      res.writeHead(204);
      res.end();
    } else {
      emit({ type: 'not_found', url: req.url });
      res.writeHead(404);
      res.end();
    }
  });
  await new Promise((r) => server.listen(0, '127.0.0.1', r));
  const base = `http://127.0.0.1:${server.address().port}`;

  let stop = false;
  if (opts.stdinControl) {
    const rl = createInterface({ input: process.stdin });
    rl.on('line', (l) => { if (l.trim() === 'stop') stop = true; });
    rl.on('close', () => { stop = true; });
  }
  const userDataDir = mkdtempSync(join(tmpdir(), 'roomcast-ovenplayer-'));
  const result = { type: 'result', ok: false };
  let context = null;
  const consoleErrors = [];
  try {
    context = await chromium.launchPersistentContext(userDataDir, {
      executablePath: opts.chromium,
      headless: true,
      args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
        '--disable-background-networking', '--disable-component-update', '--disable-sync',
        '--autoplay-policy=no-user-gesture-required', '--allow-loopback-in-peer-connection',
        '--disable-features=WebRtcHideLocalIpsWithMdns'],
      timeout: 60_000,
    });
    emit({ type: 'start', browser_version: context.browser()?.version() ?? null, page: base });
    const pg = context.pages()[0] ?? (await context.newPage());
    pg.on('console', (m) => {
      if (m.type() === 'error') {
        consoleErrors.push(m.text());
        emit({ type: 'console', level: m.type(), text: m.text() });
      }
    });
    pg.on('pageerror', (e) => { consoleErrors.push(String(e)); emit({ type: 'console', level: 'pageerror', text: String(e) }); });
    await pg.addInitScript(INIT);
    await pg.goto(base + '/', { timeout: 30_000 });
    const deadline = Date.now() + opts.timeout * 1000;
    let last = null;
    while (!stop && Date.now() < deadline) {
      last = await pg.evaluate(sampleInPage);
      emit({ type: 'sample', ...last });
      if (last.players.every((p) => p.frames >= opts.frames)) break;
      await new Promise((r) => setTimeout(r, opts.interval));
    }
    result.players = last ? last.players : [];
    result.pcs = last ? last.pcs : [];
    result.player_errors = last ? last.errors : [];
    result.ok = !!last && last.players.every((p) => p.frames >= opts.frames);
    if (!result.ok) {
      result.reason = stop ? 'stopped' : `not every player decoded ${opts.frames} frames within ${opts.timeout} s`;
    }
  } catch (e) {
    result.reason = `crashed: ${e && e.stack ? e.stack : e}`;
  } finally {
    result.console_errors = consoleErrors;
    emit(result);
    if (context) await context.close().catch(() => {});
    server.close();
    rmSync(userDataDir, { recursive: true, force: true });
    process.exit(result.ok ? 0 : 1);
  }
}

main();
