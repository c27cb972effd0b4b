#!/usr/bin/env node
// Prints the SDP offers headless Chromium makes: a WHEP viewer (recvonly
// video + audio) and a WHIP publisher (its fake camera and microphone,
// sendonly), as JSON lines {name, sdp}; with `--answer FILE`, also
// Chromium's answer to the offer in FILE (what OvenPlayer sends back).
// Needs playwright-core: run it from a directory whose node_modules has it,
// e.g. a copy in tests/browser/.
import { chromium } from 'playwright-core';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

const answerFor = process.argv[2] === '--answer' ? readFileSync(process.argv[3], 'utf8') : null;
const dir = mkdtempSync(join(tmpdir(), 'roomcast-offers-'));
const context = await chromium.launchPersistentContext(dir, {
  executablePath: process.env.ROOMCAST_TEST_CHROMIUM || '/usr/bin/chromium',
  headless: true,
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--no-first-run',
    '--use-fake-device-for-media-stream', '--use-fake-ui-for-media-stream'],
});
try {
  const page = context.pages()[0] ?? (await context.newPage());
  // getUserMedia needs a secure context: http://localhost is one.
  await page.route('http://localhost/**', (r) => r.fulfill({ contentType: 'text/html', body: '<html></html>' }));
  await page.goto('http://localhost/');
  const out = await page.evaluate(async (answerFor) => {
    const gathered = (pc) => new Promise((resolve) => {
      if (pc.iceGatheringState === 'complete') return resolve();
      pc.addEventListener('icegatheringstatechange', () => pc.iceGatheringState === 'complete' && resolve());
      setTimeout(resolve, 3000);
    });
    const res = [];
    const viewer = new RTCPeerConnection();
    viewer.addTransceiver('video', { direction: 'recvonly' });
    viewer.addTransceiver('audio', { direction: 'recvonly' });
    await viewer.setLocalDescription(await viewer.createOffer());
    await gathered(viewer);
    res.push({ name: 'chromium_whep_offer', sdp: viewer.localDescription.sdp });
    const media = await navigator.mediaDevices.getUserMedia({ video: { width: 640, height: 360 }, audio: true });
    const pub = new RTCPeerConnection();
    for (const t of media.getTracks()) pub.addTransceiver(t, { direction: 'sendonly' });
    await pub.setLocalDescription(await pub.createOffer());
    await gathered(pub);
    res.push({ name: 'chromium_whip_offer', sdp: pub.localDescription.sdp });
    if (answerFor) {
      const pc = new RTCPeerConnection();
      await pc.setRemoteDescription({ type: 'offer', sdp: answerFor });
      await pc.setLocalDescription(await pc.createAnswer());
      await gathered(pc);
      res.push({ name: 'chromium_answer', sdp: pc.localDescription.sdp });
    }
    return res;
  }, answerFor);
  for (const o of out) process.stdout.write(JSON.stringify(o) + '\n');
} finally {
  await context.close();
  rmSync(dir, { recursive: true, force: true });
}
