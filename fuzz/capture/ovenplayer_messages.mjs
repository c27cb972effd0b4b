#!/usr/bin/env node
// Seeds for the ome_signalling target: an OvenPlayer session against a real
// roomcast. Headless Chromium opens the signalling WebSocket (URL argument),
// sends request_offer, answers roomcast's offer with an RTCPeerConnection and
// writes what OvenPlayer 0.10's dist/ovenplayer.js would send: the answer
// (with the stereo=1 it adds to Opus), its candidates, change_rendition and
// stop, one JSON message per line, the offer's id replaced by 1 (the n-th
// offer of a fuzz input has wire id n). Run it from a directory whose
// node_modules has playwright-core (e.g. a copy in tests/browser/).
//   node ovenplayer_messages.mjs ws://127.0.0.1:OME/app/STREAM http://127.0.0.1:HTTP > session.txt
// (the page is roomcast's /healthz: Chromium lets a loopback page reach loopback)
import { chromium } from 'playwright-core';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

const [url, base] = process.argv.slice(2);
const dir = mkdtempSync(join(tmpdir(), 'roomcast-op-'));
const context = await chromium.launchPersistentContext(dir, {
  executablePath: process.env.ROOMCAST_TEST_CHROMIUM || '/usr/bin/chromium',
  headless: true,
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--no-first-run',
    '--allow-loopback-in-peer-connection', '--disable-features=WebRtcHideLocalIpsWithMdns'],
});
try {
  const page = context.pages()[0] ?? (await context.newPage());
  await page.goto(base + '/healthz');
  const lines = await page.evaluate(async (url) => {
    const ws = new WebSocket(url);
    const next = () => new Promise((resolve, reject) => {
      ws.onmessage = (m) => resolve(JSON.parse(m.data));
      ws.onerror = reject;
    });
    await new Promise((r) => { ws.onopen = r; });
    const out = [];
    const send = (o) => { out.push(JSON.stringify(o)); ws.send(JSON.stringify(o)); };
    send({ command: 'request_offer' });
    let offer = await next();
    while (offer.command !== 'offer') offer = await next();
    const pc = new RTCPeerConnection();
    const cands = [];
    pc.onicecandidate = (e) => e.candidate && cands.push(e.candidate.toJSON());
    await pc.setRemoteDescription(offer.sdp);
    for (const c of offer.candidates || []) await pc.addIceCandidate(c);
    const answer = await pc.createAnswer();
    // OvenPlayer: stereo=1 on the Opus fmtp line.
    const lines = answer.sdp.split('\r\n');
    const opus = lines.find((l) => /^a=rtpmap:\d+ opus\//i.test(l));
    if (opus) {
      const pt = opus.split(':')[1].split(' ')[0];
      for (let i = 0; i < lines.length; i++) {
        if (lines[i].startsWith('a=fmtp:' + pt) && !lines[i].includes('stereo=1')) { lines[i] += ';stereo=1'; break; }
      }
    }
    const sdp = { type: 'answer', sdp: lines.join('\r\n') };
    send({ id: offer.id, peer_id: offer.peer_id ?? 0, command: 'answer', sdp });
    await pc.setLocalDescription(sdp);
    await new Promise((r) => setTimeout(r, 1000));
    for (const c of cands.slice(0, 2)) send({ id: offer.id, peer_id: offer.peer_id ?? 0, command: 'candidate', candidates: [c] });
    send({ command: 'change_rendition', id: offer.id, auto: true });
    send({ command: 'stop', id: offer.id });
    ws.close();
    pc.close();
    return out.map((l) => l.replaceAll(`"id":${offer.id}`, '"id":1'));
  }, url);
  process.stdout.write(lines.join('\n') + '\n');
} finally {
  await context.close();
  rmSync(dir, { recursive: true, force: true });
}
