#!/usr/bin/env node
// Headless Chromium LL-HLS player (hls.js) for roomcast's integration tests.
//
//   node hls.mjs --url http://127.0.0.1:PORT/hls/t1/index.m3u8 [--hlsjs FILE]
//                [--duration S] [--timeout S] [--interval MS] [--stdin-control]
//
// Serves a small page from its own loopback server (another origin than
// roomcast's, so CORS is exercised) that loads hls.js (default: the widget's
// node_modules/hls.js/dist/hls.min.js) with lowLatencyMode and plays --url.
// Every stdout line is one JSON object with a "type":
//   start   {browser_version, hlsjs_version}
//   sample  {t_ms, currentTime, frames, dropped, latency, pdt_latency, buffer_ahead,
//            target_latency, level: {codecs, width, height}, waiting}
//            latency: hls.js' live-edge distance (s); pdt_latency: wall clock minus
//            the PROGRAM-DATE-TIME of the frame on screen (s)
//   hls     {event, ...}        hls.js events worth seeing (MANIFEST_PARSED, errors)
//   console {level, text}
//   result  {ok, reason, frames, current_time, latency_p50, pdt_latency_p50, fatal_errors, ...}
// With --stdin-control a line "stop" (or EOF) on stdin ends the run early.
// Exit status 0 when frames were presented and no fatal hls.js error happened.

import { chromium } from 'playwright-core';
import { createServer } from 'node:http';
import { readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
const argv = process.argv.slice(2);
const opt = (name, dflt = null) => {
  const i = argv.indexOf(`--${name}`);
  return i >= 0 && i + 1 < argv.length ? argv[i + 1] : dflt;
};
const has = (name) => argv.includes(`--${name}`);
const URL_ = opt('url');
const HLSJS = opt('hlsjs', join(here, '..', '..', 'widget', 'node_modules', 'hls.js', 'dist', 'hls.min.js'));
const DURATION = opt('duration') ? Number(opt('duration')) * 1000 : null;
const TIMEOUT = Number(opt('timeout', '120')) * 1000;
const INTERVAL = Number(opt('interval', '500'));

function emit(o) {
  process.stdout.write(`${JSON.stringify(o)}\n`);
}

const PAGE = `<!doctype html><meta charset="utf-8"><title>hls.js</title>
<video id="v" muted autoplay playsinline style="width:640px"></video>
<script src="/hls.js"></script>
<script>
  window.events = [];
  window.fatal = [];
  const v = document.getElementById('v');
  const hls = new Hls({ lowLatencyMode: true, backBufferLength: 10, maxLiveSyncPlaybackRate: 1.5 });
  window.hls = hls;
  for (const ev of [Hls.Events.MANIFEST_PARSED, Hls.Events.LEVEL_UPDATED]) {
    hls.on(ev, (_e, d) => window.events.push({ event: ev, live: d.details ? d.details.live : undefined,
      canBlockReload: d.details ? d.details.canBlockReload : undefined,
      partTarget: d.details ? d.details.partTarget : undefined }));
  }
  hls.on(Hls.Events.ERROR, (_e, d) => {
    const o = { event: 'error', type: d.type, details: d.details, fatal: d.fatal,
      status: d.response ? d.response.code : undefined, url: d.url || (d.frag && d.frag.url) || undefined };
    window.events.push(o);
    if (d.fatal) window.fatal.push(o);
  });
  hls.loadSource(${JSON.stringify(URL_)});
  hls.attachMedia(v);
  v.play().catch(() => {});
</script>`;

async function main() {
  const result = { type: 'result', ok: false };
  let browser = null;
  let server = null;
  const started = Date.now();
  const samples = [];
  try {
    if (!URL_) throw new Error('usage: node hls.mjs --url PLAYLIST_URL');
    const hlsjs = readFileSync(HLSJS);
    server = createServer((req, res) => {
      if (req.url === '/hls.js') {
        res.writeHead(200, { 'Content-Type': 'text/javascript' });
        return res.end(hlsjs);
      }
      res.writeHead(200, { 'Content-Type': 'text/html; charset=utf-8' });
      res.end(PAGE);
    });
    await new Promise((r) => server.listen(0, '127.0.0.1', r));
    const origin = `http://localhost:${server.address().port}`;
    browser = await chromium.launch({
      executablePath: process.env.ROOMCAST_TEST_CHROMIUM || '/usr/bin/chromium',
      headless: true,
      timeout: 60000,
      args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
        '--disable-background-networking', '--disable-component-update', '--disable-sync',
        '--autoplay-policy=no-user-gesture-required'],
    });
    const page = await browser.newPage();
    page.on('console', (m) => {
      if (m.type() === 'error' || m.type() === 'warning') emit({ type: 'console', level: m.type(), text: m.text() });
    });
    page.on('pageerror', (e) => emit({ type: 'console', level: 'pageerror', text: String(e) }));
    await page.goto(`${origin}/`);
    emit({ type: 'start', browser_version: browser.version(), hlsjs_version: await page.evaluate(() => Hls.version) });

    let stop = false;
    if (has('stdin-control')) {
      const rl = createInterface({ input: process.stdin });
      rl.on('line', (l) => { if (l.trim() === 'stop') stop = true; });
      rl.on('close', () => { stop = true; });
    }
    let seen = 0;
    const deadline = started + (DURATION ?? TIMEOUT);
    while (!stop && Date.now() < Math.min(deadline, started + TIMEOUT)) {
      const s = await page.evaluate(() => {
        const v = document.getElementById('v');
        const q = v.getVideoPlaybackQuality();
        const h = window.hls;
        const lvl = h.levels && h.levels[h.currentLevel >= 0 ? h.currentLevel : 0];
        let ahead = 0;
        for (let i = 0; i < v.buffered.length; i++) {
          if (v.buffered.start(i) <= v.currentTime && v.currentTime <= v.buffered.end(i)) ahead = v.buffered.end(i) - v.currentTime;
        }
        const pd = h.playingDate;
        return {
          currentTime: v.currentTime,
          frames: q.totalVideoFrames,
          dropped: q.droppedVideoFrames,
          latency: h.latency,
          target_latency: h.targetLatency,
          pdt_latency: pd ? (Date.now() - pd.getTime()) / 1000 : null,
          buffer_ahead: ahead,
          waiting: v.readyState < 3,
          paused: v.paused,
          level: lvl ? { codecs: `${lvl.videoCodec || ''},${lvl.audioCodec || ''}`, width: lvl.width, height: lvl.height } : null,
          width: v.videoWidth,
          height: v.videoHeight,
          events: window.events.splice(0),
          fatal: window.fatal.length,
        };
      });
      for (const e of s.events) emit({ type: 'hls', ...e });
      delete s.events;
      s.t_ms = Date.now() - started;
      samples.push(s);
      emit({ type: 'sample', ...s });
      seen = Math.max(seen, s.frames);
      await new Promise((r) => setTimeout(r, INTERVAL));
    }
    const last = samples[samples.length - 1] || {};
    const median = (xs) => {
      const v = xs.filter((x) => typeof x === 'number' && Number.isFinite(x)).sort((a, b) => a - b);
      return v.length ? v[Math.floor(v.length / 2)] : null;
    };
    // Latency once playing (the second half of the run).
    const playing = samples.filter((s) => s.frames > 0).slice(-Math.ceil(samples.length / 2));
    Object.assign(result, {
      frames: last.frames || 0,
      current_time: last.currentTime || 0,
      width: last.width,
      height: last.height,
      latency_p50: median(playing.map((s) => s.latency)),
      pdt_latency_p50: median(playing.map((s) => s.pdt_latency)),
      pdt_latency_max: playing.length ? Math.max(...playing.map((s) => s.pdt_latency ?? 0)) : null,
      fatal_errors: last.fatal || 0,
      samples: samples.length,
    });
    result.ok = result.frames > 0 && result.fatal_errors === 0;
    if (!result.ok) result.reason = result.fatal_errors ? 'hls.js reported a fatal error' : 'no frame presented';
  } catch (e) {
    result.reason = String(e && e.stack ? e.stack : e);
  } finally {
    result.elapsed_ms = Date.now() - started;
    emit(result);
    if (browser) await browser.close().catch(() => {});
    if (server) server.close();
    process.exit(result.ok ? 0 : 1);
  }
}

main();
