#!/usr/bin/env node
// Time to first frame over WHEP in headless Chromium: WHEP POST → first decoded
// video frame (getStats framesDecoded > 0, polled every 5 ms), N sessions one
// after another in one browser, each a fresh RTCPeerConnection.
// Usage: node bench/ttff.mjs --base http://127.0.0.1:8080 --stream demo [--runs 20]
// Prints one line per run and a summary JSON line with p50/p95/max.
import { createRequire } from 'node:module';
import { join } from 'node:path';

const require = createRequire(join(process.cwd(), 'tests/browser/package.json'));
const { chromium } = require('playwright-core');

const args = Object.fromEntries(
  process.argv.slice(2).reduce((acc, a, i, all) => (a.startsWith('--') ? [...acc, [a.slice(2), all[i + 1]]] : acc), []),
);
const base = args.base ?? 'http://127.0.0.1:8080';
const stream = args.stream ?? 'demo';
const runs = Number(args.runs ?? 20);

const browser = await chromium.launch({
  executablePath: '/usr/bin/chromium',
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync',
    '--autoplay-policy=no-user-gesture-required', '--allow-loopback-in-peer-connection'],
});
const page = await browser.newPage();
await page.goto(`${base}/healthz`);
const times = [];
for (let i = 0; i < runs; i++) {
  const r = await page.evaluate(async (stream) => {
    const pc = new RTCPeerConnection();
    pc.addTransceiver('video', { direction: 'recvonly' });
    pc.addTransceiver('audio', { direction: 'recvonly' });
    const v = document.createElement('video');
    v.muted = true; v.autoplay = true; document.body.appendChild(v);
    pc.ontrack = (e) => { v.srcObject = e.streams[0] ?? new MediaStream([e.track]); };
    await pc.setLocalDescription(await pc.createOffer());
    const t0 = performance.now();
    const resp = await fetch(`/whep/${stream}`, { method: 'POST', headers: { 'Content-Type': 'application/sdp' }, body: pc.localDescription.sdp });
    if (resp.status !== 201) return { error: `WHEP ${resp.status}: ${await resp.text()}` };
    const loc = resp.headers.get('Location');
    await pc.setRemoteDescription({ type: 'answer', sdp: await resp.text() });
    let connected = null;
    pc.onconnectionstatechange = () => { if (pc.connectionState === 'connected') connected = performance.now() - t0; };
    for (;;) {
      const stats = await pc.getStats();
      let decoded = 0;
      stats.forEach((s) => { if (s.type === 'inbound-rtp' && s.kind === 'video') decoded = s.framesDecoded || 0; });
      if (decoded > 0) break;
      if (performance.now() - t0 > 10000) return { error: 'no frame within 10 s' };
      await new Promise((r) => setTimeout(r, 5));
    }
    const ms = performance.now() - t0;
    pc.close(); v.remove();
    await fetch(loc, { method: 'DELETE' });
    return { ms, connected_ms: connected };
  }, stream);
  if (r.error) { console.log(JSON.stringify({ run: i, error: r.error })); continue; }
  times.push(r.ms);
  console.log(JSON.stringify({ run: i, first_frame_ms: Math.round(r.ms), connected_ms: r.connected_ms && Math.round(r.connected_ms) }));
}
await browser.close();
times.sort((a, b) => a - b);
const q = (p) => Math.round(times[Math.min(times.length - 1, Math.ceil(p * times.length) - 1)]);
console.log(JSON.stringify({ summary: 'ttff', runs: times.length, p50_ms: q(0.5), p95_ms: q(0.95), max_ms: Math.round(times.at(-1)) }));
