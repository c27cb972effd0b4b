#!/usr/bin/env node
// N WHEP viewers in one headless Chromium page: N real RTCPeerConnections
// (recvonly video+audio), each with its own WHEP session, for tests that need
// many viewers without N browsers. No <video> sinks: they only receive.
//
// stdout, one JSON object a line:
//   start   {browser_version}
//   whep    {i, status}                        each POST's answer
//   sample  {t_ms, connected, packets: [..]}   every second: PCs "connected", RTP packets received per PC
//   result  {ok, reason}                       last; ok when all N connected at some point
// Ends on "stop" / EOF on stdin (--stdin-control), SIGTERM, or --timeout.
//
// usage: node viewers.mjs --base http://127.0.0.1:PORT --stream t1 --count 19 [--timeout 120] [--stdin-control]

import { chromium } from 'playwright-core';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';

const emit = (o) => process.stdout.write(JSON.stringify(o) + '\n');

const opts = { base: null, stream: 't1', count: 19, timeout: 120, stdinControl: false,
  chromium: process.env.ROOMCAST_TEST_CHROMIUM || '/usr/bin/chromium' };
const argv = process.argv.slice(2);
for (let i = 0; i < argv.length; i++) {
  switch (argv[i]) {
    case '--base': opts.base = argv[++i]; break;
    case '--stream': opts.stream = argv[++i]; break;
    case '--count': opts.count = Number(argv[++i]); break;
    case '--timeout': opts.timeout = Number(argv[++i]); break;
    case '--chromium': opts.chromium = argv[++i]; break;
    case '--stdin-control': opts.stdinControl = true; break;
    default:
      emit({ type: 'result', ok: false, reason: `bad usage: ${argv[i]}` });
      process.exit(2);
  }
}

const CHROMIUM_ARGS = [
  '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
  '--disable-background-networking', '--disable-component-update', '--disable-sync',
  '--allow-loopback-in-peer-connection', '--disable-features=WebRtcHideLocalIpsWithMdns',
];

// In the page: opens `count` sessions, then reports every second.
async function pageStart({ stream, count }) {
  const emit = (o) => window.__emit(o);
  const t0 = performance.now();
  window.__pcs = [];
  for (let i = 0; i < count; i++) {
    const pc = new RTCPeerConnection({ iceServers: [] });
    pc.addTransceiver('video', { direction: 'recvonly' });
    pc.addTransceiver('audio', { direction: 'recvonly' });
    await pc.setLocalDescription(await pc.createOffer());
    const resp = await fetch(`/whep/${encodeURIComponent(stream)}`, {
      method: 'POST', headers: { 'Content-Type': 'application/sdp' }, body: pc.localDescription.sdp,
    });
    const text = await resp.text();
    emit({ type: 'whep', i, status: resp.status });
    if (resp.status !== 201) return { ok: false, reason: `viewer ${i}: WHEP answered ${resp.status}: ${text.slice(0, 300)}` };
    await pc.setRemoteDescription({ type: 'answer', sdp: text });
    window.__pcs.push(pc);
  }
  window.__sampler = setInterval(async () => {
    const packets = [];
    for (const pc of window.__pcs) {
      let n = 0;
      (await pc.getStats()).forEach((r) => { if (r.type === 'inbound-rtp') n += r.packetsReceived || 0; });
      packets.push(n);
    }
    const connected = window.__pcs.filter((pc) => pc.connectionState === 'connected').length;
    emit({ type: 'sample', t_ms: Math.round(performance.now() - t0), connected, packets });
  }, 1000);
  return { ok: true };
}

async function main() {
  const result = { type: 'result', ok: false };
  let stop;
  const stopped = new Promise((r) => { stop = r; });
  if (opts.stdinControl) {
    const rl = createInterface({ input: process.stdin });
    rl.on('line', (l) => { if (l.trim() === 'stop') stop(); });
    rl.on('close', () => stop());
  }
  for (const sig of ['SIGTERM', 'SIGINT']) process.on(sig, () => stop());
  setTimeout(() => stop(), 1000 * opts.timeout);

  const dir = mkdtempSync(join(tmpdir(), 'roomcast-viewers-'));
  let context = null;
  let allConnected = false;
  try {
    context = await chromium.launchPersistentContext(dir, {
      executablePath: opts.chromium, headless: true, args: CHROMIUM_ARGS,
      handleSIGTERM: false, handleSIGINT: false, timeout: 60_000,
    });
    emit({ type: 'start', browser_version: context.browser()?.version() ?? null });
    const page = context.pages()[0] ?? (await context.newPage());
    await page.exposeFunction('__emit', (o) => {
      if (o.type === 'sample' && o.connected === opts.count) allConnected = true;
      emit(o);
    });
    const resp = await page.goto(opts.base + '/healthz', { timeout: 30_000 });
    if (!resp || !resp.ok()) { result.reason = `GET /healthz answered ${resp ? resp.status() : 'nothing'}`; return; }
    const started = await page.evaluate(pageStart, { stream: opts.stream, count: opts.count });
    if (!started.ok) { result.reason = started.reason; return; }
    await stopped;
    result.ok = allConnected;
    if (!allConnected) result.reason = `never all ${opts.count} connected`;
  } catch (e) {
    result.reason = String(e.message || e).split('\n')[0];
  } finally {
    emit(result);
    if (context) await context.close().catch(() => {});
    rmSync(dir, { recursive: true, force: true });
    process.exit(result.ok ? 0 : 1);
  }
}

main();
