#!/usr/bin/env node
// Join burst in headless Chromium: N WHEP joins one after another, each a fresh
// RTCPeerConnection. Per join: time to first decoded frame (WHEP POST →
// getStats framesDecoded > 0, polled every 5 ms) and, one second after the
// POST, the video inbound-rtp packetsLost / nackCount / packetsReceived, plus
// what the kernel dropped: the browser's UDP sockets' drop counters
// (/proc/net/udp, this process tree only) and the host-wide Udp RcvbufErrors
// (/proc/net/snmp; other programs on the host count there too).
// Usage: node bench/join_burst.mjs --base http://127.0.0.1:8080 --stream demo [--joins 30]
// Prints one JSON line per join and a summary line.
import { createRequire } from 'node:module';
import { join } from 'node:path';
import { readFileSync, readdirSync, readlinkSync } from 'node:fs';
import { execFileSync } from 'node:child_process';

// playwright-core from tests/browser (or ROOMCAST_TEST_NODE_DIR, where it is installed).
const nodeDir = process.env.ROOMCAST_TEST_NODE_DIR || join(process.cwd(), 'tests/browser');
const require = createRequire(join(nodeDir, 'package.json'));
const { chromium } = require('playwright-core');

const args = Object.fromEntries(
  process.argv.slice(2).reduce((acc, a, i, all) => (a.startsWith('--') ? [...acc, [a.slice(2), all[i + 1]]] : acc), []),
);
const base = args.base ?? 'http://127.0.0.1:8080';
const stream = args.stream ?? 'demo';
const joins = Number(args.joins ?? 30);

function rcvbufErrors() {
  const lines = readFileSync('/proc/net/snmp', 'utf8').split('\n').filter((l) => l.startsWith('Udp:'));
  const [names, values] = lines.map((l) => l.trim().split(/\s+/));
  return Number(values[names.indexOf('RcvbufErrors')]);
}

// Socket inodes of this process and its descendants (Chromium's network service).
function treeSocketInodes() {
  const parent = new Map();
  for (const d of readdirSync('/proc')) {
    if (!/^\d+$/.test(d)) continue;
    try {
      const stat = readFileSync(`/proc/${d}/stat`, 'utf8');
      parent.set(Number(d), Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]));
    } catch { /* gone */ }
  }
  const inTree = (pid) => { for (let p = pid; p > 1; p = parent.get(p)) if (p === process.pid) return true; return false; };
  const inodes = new Set();
  for (const pid of parent.keys()) {
    if (!inTree(pid)) continue;
    try {
      for (const fd of readdirSync(`/proc/${pid}/fd`)) {
        const m = /^socket:\[(\d+)\]$/.exec(readlinkSync(`/proc/${pid}/fd/${fd}`));
        if (m) inodes.add(m[1]);
      }
    } catch { /* gone or not ours */ }
  }
  return inodes;
}

// inode → drops for this tree's UDP sockets.
function socketDrops() {
  const mine = treeSocketInodes();
  const out = new Map();
  for (const f of ['/proc/net/udp', '/proc/net/udp6']) {
    for (const line of readFileSync(f, 'utf8').split('\n').slice(1)) {
      const c = line.trim().split(/\s+/);
      if (c.length > 12 && mine.has(c[9])) out.set(c[9], Number(c[c.length - 1]));
    }
  }
  return out;
}

function dropsSince(before) {
  let n = 0;
  const now = socketDrops();
  for (const [inode, d] of now) n += d - (before.get(inode) ?? 0);
  return [n, now.size];
}

const browser = await chromium.launch({
  executablePath: process.env.ROOMCAST_TEST_CHROMIUM || '/usr/bin/chromium',
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync',
    '--autoplay-policy=no-user-gesture-required', '--allow-loopback-in-peer-connection'],
});
const page = await browser.newPage();
await page.goto(`${base}/healthz`);
const rows = [];
for (let i = 0; i < joins; i++) {
  const drops0 = socketDrops();
  const rcvbuf0 = rcvbufErrors();
  const r = await page.evaluate(async (stream) => {
    const pc = new RTCPeerConnection();
    window.__pc = pc;
    pc.addTransceiver('video', { direction: 'recvonly' });
    pc.addTransceiver('audio', { direction: 'recvonly' });
    const v = document.createElement('video');
    v.muted = true; v.autoplay = true; document.body.appendChild(v);
    window.__v = v;
    pc.ontrack = (e) => { v.srcObject = e.streams[0] ?? new MediaStream([e.track]); };
    await pc.setLocalDescription(await pc.createOffer());
    const t0 = performance.now();
    const resp = await fetch(`/whep/${stream}`, { method: 'POST', headers: { 'Content-Type': 'application/sdp' }, body: pc.localDescription.sdp });
    if (resp.status !== 201) return { error: `WHEP ${resp.status}: ${await resp.text()}` };
    window.__loc = resp.headers.get('Location');
    await pc.setRemoteDescription({ type: 'answer', sdp: await resp.text() });
    const video = async () => {
      let v = null;
      (await pc.getStats()).forEach((s) => { if (s.type === 'inbound-rtp' && s.kind === 'video') v = s; });
      return v;
    };
    let ttff = null;
    while (performance.now() - t0 < 1000) {
      const s = await video();
      if (ttff === null && s && s.framesDecoded > 0) ttff = performance.now() - t0;
      await new Promise((r) => setTimeout(r, ttff === null ? 5 : 20));
    }
    const s = (await video()) ?? {};
    return {
      ttff_ms: ttff, packets_lost: s.packetsLost ?? null, nacks: s.nackCount ?? null,
      packets: s.packetsReceived ?? null, frames_decoded: s.framesDecoded ?? null,
      plis: s.pliCount ?? null, freezes: s.freezeCount ?? null,
    };
  }, stream);
  const [socket_drops, udp_sockets] = dropsSince(drops0);
  if (i === 0) {
    // The receive buffers Chromium's sockets got (it asks for 1 MB; the kernel caps at rmem_max).
    const ss = execFileSync('ss', ['-uampn'], { encoding: 'utf8' }).split('\n');
    const rb = new Set();
    ss.forEach((l, k) => { if (l.includes('chrom') && /skmem:\(.*rb(\d+)/.test(ss[k + 1] ?? '')) rb.add(Number(/rb(\d+)/.exec(ss[k + 1])[1])); });
    console.log(JSON.stringify({ chromium_udp_rcvbuf_bytes: [...rb] }));
  }
  const rcvbuf_errors = rcvbufErrors() - rcvbuf0;
  await page.evaluate(async () => {
    window.__pc?.close(); window.__v?.remove();
    if (window.__loc) await fetch(window.__loc, { method: 'DELETE' });
    window.__pc = null; window.__loc = null;
  });
  const row = { join: i, ...r, socket_drops, rcvbuf_errors, udp_sockets };
  if (row.ttff_ms !== null && row.ttff_ms !== undefined) row.ttff_ms = Math.round(row.ttff_ms);
  console.log(JSON.stringify(row));
  rows.push(row);
  // Join at a random point of the GOP, as real viewers do.
  await new Promise((r) => setTimeout(r, 200 + Math.random() * 800));
}
await browser.close();
console.log(JSON.stringify(summary('chromium', rows)));

function summary(client, rows) {
  const ok = rows.filter((r) => !r.error && r.ttff_ms !== null);
  const t = ok.map((r) => r.ttff_ms).sort((a, b) => a - b);
  const q = (p) => (t.length ? t[Math.min(t.length - 1, Math.ceil(p * t.length) - 1)] : null);
  const sum = (k) => ok.reduce((n, r) => n + (r[k] ?? 0), 0);
  return {
    summary: 'join_burst', client, joins: rows.length, played: ok.length,
    joins_with_loss: ok.filter((r) => r.socket_drops > 0 || r.packets_lost > 0 || r.nacks > 0).length,
    socket_drops: sum('socket_drops'), max_socket_drops: Math.max(0, ...ok.map((r) => r.socket_drops)),
    rcvbuf_errors: sum('rcvbuf_errors'), packets_lost: sum('packets_lost'), nacks: sum('nacks'),
    ttff_p50_ms: q(0.5), ttff_p95_ms: q(0.95), ttff_max_ms: t.at(-1) ?? null,
  };
}
