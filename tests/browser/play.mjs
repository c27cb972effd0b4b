#!/usr/bin/env node
// Headless Chromium WHEP player for roomcast's integration tests.
//
// Opens Debian's Chromium through playwright-core, navigates to BASE/healthz (so
// that fetch('/whep/...') is same-origin), creates a recvonly video+audio
// RTCPeerConnection, POSTs the offer to /whep/{stream}, sets the answer, plays the
// tracks in a <video muted autoplay> and samples getStats() every --interval ms.
//
// Every stdout line is one JSON object with a "type":
//   start        {browser_version, args}
//   whep         {status, location, etag, content_type, answer_candidates, ice_lite, post_ms}
//   event        {name: connectionstatechange|iceconnectionstatechange|track|..., state, t_ms}
//   first_frame  {ms, via: "rvfc"}        WHEP POST -> first frame presented (requestVideoFrameCallback)
//   first_decoded{ms}                      WHEP POST -> framesDecoded > 0 (getStats polled every 10 ms)
//   sample       {t_ms, connectionState, video{framesDecoded, keyFramesDecoded, pliCount,
//                 freezeCount, ...}, audio{packetsReceived, ...}, pair{local{protocol,...}, remote{...}}}
//   console      {level, text}            console errors/warnings and page errors
//   error        {message}
//   result       {ok, reason, first_frame_ms, first_decoded_ms, frames_decoded, ...}  (always last)
//
// Modes: --frames N (stop once framesDecoded >= N and audio packetsReceived >= --audio-packets),
// --duration S (run S seconds); --timeout S bounds both. With --stdin-control, a line
// "stop" on stdin (or stdin closing) ends the run early, still printing the result;
// a line "restart-ice" restarts ICE (pc.restartIce() and the WHEP PATCH) and prints
// an {"type":"ice_restart"} line.
// --joins K measures time to first frame instead: K WHEP sessions one after the other in the
// same page (POST, wait for the first decoded frame, DELETE), then a result with every
// join's first_decoded_ms/first_frame_ms and their p50/p95/max.
// Exit status: 0 when the goal was met (or, in duration mode, when frames were decoded), else 1.

import { chromium } from 'playwright-core';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';

const USAGE = `usage: node play.mjs --base http://127.0.0.1:PORT [--stream t1]
  [--frames N [--audio-packets M]] [--duration S] [--timeout S] [--interval MS]
  [--joins K] [--page /healthz] [--wait-ice-ms MS] [--screenshot FILE] [--stdin-control]
  [--chromium /usr/bin/chromium] [--extra-arg ARG]...`;

function parseArgs(argv) {
  const opts = {
    base: null,
    stream: 't1',
    frames: null,
    audioPackets: 0,
    duration: null,
    timeout: 60,
    interval: 250,
    page: '/healthz',
    waitIceMs: 0,
    screenshot: null,
    stdinControl: false,
    chromium: process.env.ROOMCAST_TEST_CHROMIUM || '/usr/bin/chromium',
    extraArgs: [],
    joins: null,
  };
  const need = (i) => {
    if (i + 1 >= argv.length) usage(`missing value for ${argv[i]}`);
    return argv[i + 1];
  };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    switch (a) {
      case '--base': opts.base = need(i).replace(/\/+$/, ''); i++; break;
      case '--stream': opts.stream = need(i); i++; break;
      case '--frames': opts.frames = Number(need(i)); i++; break;
      case '--audio-packets': opts.audioPackets = Number(need(i)); i++; break;
      case '--duration': opts.duration = Number(need(i)); i++; break;
      case '--timeout': opts.timeout = Number(need(i)); i++; break;
      case '--interval': opts.interval = Number(need(i)); i++; break;
      case '--page': opts.page = need(i); i++; break;
      case '--wait-ice-ms': opts.waitIceMs = Number(need(i)); i++; break;
      case '--screenshot': opts.screenshot = need(i); i++; break;
      case '--stdin-control': opts.stdinControl = true; break;
      case '--chromium': opts.chromium = need(i); i++; break;
      case '--extra-arg': opts.extraArgs.push(need(i)); i++; break;
      case '--joins': opts.joins = Number(need(i)); i++; break;
      case '-h': case '--help': console.error(USAGE); process.exit(0); break;
      default: usage(`unknown argument ${a}`);
    }
  }
  if (!opts.base) usage('--base is required');
  if (opts.frames === null && opts.duration === null) opts.frames = 90;
  for (const k of ['frames', 'audioPackets', 'duration', 'timeout', 'interval', 'waitIceMs', 'joins']) {
    if (opts[k] !== null && !Number.isFinite(opts[k])) usage(`--${k} must be a number`);
  }
  return opts;
}

function usage(msg) {
  emit({ type: 'result', ok: false, reason: `bad usage: ${msg}` });
  console.error(`${msg}\n${USAGE}`);
  process.exit(2);
}

function emit(obj) {
  process.stdout.write(JSON.stringify(obj) + '\n');
}

const CHROMIUM_ARGS = [
  '--headless',
  '--no-sandbox',
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
  '--autoplay-policy=no-user-gesture-required',
  // Loopback only: let ICE use 127.0.0.1 and show real addresses instead of mDNS names.
  '--allow-loopback-in-peer-connection',
  '--disable-features=WebRtcHideLocalIpsWithMdns',
];

// Runs inside the page. Sets everything up and returns after the answer is applied.
async function pageStart({ stream, intervalMs, waitIceMs }) {
  const emit = (o) => window.__emit(o);
  const t0 = performance.now();
  const since = () => Math.round((performance.now() - t0) * 10) / 10;
  const pc = new RTCPeerConnection({ iceServers: [] });
  window.__pc = pc;
  pc.addTransceiver('video', { direction: 'recvonly' });
  pc.addTransceiver('audio', { direction: 'recvonly' });

  const video = document.createElement('video');
  video.muted = true;
  video.autoplay = true;
  video.playsInline = true;
  video.width = 640;
  video.height = 360;
  document.body.appendChild(video);
  window.__video = video;
  const ms = new MediaStream();
  pc.ontrack = (ev) => {
    ms.addTrack(ev.track);
    video.srcObject = ms;
    video.play().catch((e) => emit({ type: 'event', name: 'play_error', message: String(e), t_ms: since() }));
    emit({ type: 'event', name: 'track', kind: ev.track.kind, t_ms: since() });
  };
  // post_ms: since the WHEP POST (a join's ICE and DTLS times).
  const sincePost = () => (window.__tPost === undefined ? null : Math.round((performance.now() - window.__tPost) * 10) / 10);
  pc.onconnectionstatechange = () =>
    emit({ type: 'event', name: 'connectionstatechange', state: pc.connectionState, t_ms: since(), post_ms: sincePost() });
  pc.oniceconnectionstatechange = () =>
    emit({ type: 'event', name: 'iceconnectionstatechange', state: pc.iceConnectionState, t_ms: since(), post_ms: sincePost() });

  await pc.setLocalDescription(await pc.createOffer());
  if (waitIceMs > 0 && pc.iceGatheringState !== 'complete') {
    await new Promise((resolve) => {
      const timer = setTimeout(resolve, waitIceMs);
      pc.addEventListener('icegatheringstatechange', () => {
        if (pc.iceGatheringState === 'complete') { clearTimeout(timer); resolve(); }
      });
    });
  }

  const tPost = performance.now();
  window.__tPost = tPost;
  let resp;
  try {
    resp = await fetch(`/whep/${encodeURIComponent(stream)}`, {
      method: 'POST',
      headers: { 'Content-Type': 'application/sdp' },
      body: pc.localDescription.sdp,
    });
  } catch (e) {
    return { ok: false, reason: `WHEP POST failed: ${e}` };
  }
  const text = await resp.text();
  const info = {
    status: resp.status,
    location: resp.headers.get('Location'),
    etag: resp.headers.get('ETag'),
    content_type: resp.headers.get('Content-Type'),
    post_ms: Math.round((performance.now() - tPost) * 10) / 10,
  };
  if (resp.status !== 201) {
    return { ok: false, reason: `WHEP POST answered ${resp.status}, expected 201`, body: text.slice(0, 2000), ...info };
  }
  info.answer_candidates = text.split(/\r?\n/).filter((l) => l.startsWith('a=candidate:')).map((l) => l.slice(2));
  info.ice_lite = /^a=ice-lite/m.test(text);
  window.__location = info.location;
  try {
    await pc.setRemoteDescription({ type: 'answer', sdp: text });
  } catch (e) {
    return { ok: false, reason: `setRemoteDescription(answer) failed: ${e}`, answer: text.slice(0, 4000), ...info };
  }

  // Time to first frame, two ways: presented (rVFC) and decoded (getStats).
  if ('requestVideoFrameCallback' in video) {
    video.requestVideoFrameCallback((_now, meta) => {
      emit({
        type: 'first_frame', via: 'rvfc',
        ms: Math.round((performance.now() - tPost) * 10) / 10,
        width: meta.width, height: meta.height,
      });
    });
  }
  (async () => {
    while (pc.connectionState !== 'closed') {
      const stats = await pc.getStats();
      let decoded = 0;
      stats.forEach((s) => { if (s.type === 'inbound-rtp' && s.kind === 'video') decoded = s.framesDecoded || 0; });
      if (decoded > 0) {
        emit({ type: 'first_decoded', ms: Math.round((performance.now() - tPost) * 10) / 10 });
        return;
      }
      await new Promise((r) => setTimeout(r, 10));
    }
  })();

  const pick = (s, keys) => {
    if (!s) return null;
    const o = {};
    for (const k of keys) if (s[k] !== undefined) o[k] = s[k];
    return o;
  };
  const candKeys = ['protocol', 'candidateType', 'address', 'port', 'tcpType', 'relayProtocol', 'usernameFragment'];
  const sample = async () => {
    if (pc.connectionState === 'closed' || window.__pc !== pc) return;
    const stats = await pc.getStats();
    const byId = new Map();
    let v = null, a = null, transport = null, pair = null;
    stats.forEach((s) => {
      byId.set(s.id, s);
      if (s.type === 'inbound-rtp' && s.kind === 'video') v = s;
      if (s.type === 'inbound-rtp' && s.kind === 'audio') a = s;
      if (s.type === 'transport') transport = s;
    });
    if (transport && transport.selectedCandidatePairId) pair = byId.get(transport.selectedCandidatePairId) || null;
    if (!pair) stats.forEach((s) => { if (s.type === 'candidate-pair' && s.nominated && s.state === 'succeeded') pair = s; });
    const video = pick(v, ['framesDecoded', 'keyFramesDecoded', 'framesReceived', 'framesDropped', 'pliCount',
      'firCount', 'nackCount', 'freezeCount', 'pauseCount', 'totalFreezesDuration', 'packetsReceived', 'packetsLost',
      'frameWidth', 'frameHeight', 'framesPerSecond', 'decoderImplementation', 'jitter', 'bytesReceived']);
    if (video && v.codecId && byId.get(v.codecId)) video.codec = byId.get(v.codecId).mimeType;
    const audio = pick(a, ['packetsReceived', 'packetsLost', 'totalSamplesReceived', 'concealedSamples',
      'audioLevel', 'jitter', 'bytesReceived']);
    if (audio && a.codecId && byId.get(a.codecId)) audio.codec = byId.get(a.codecId).mimeType;
    const el = window.__video;
    emit({
      type: 'sample',
      t_ms: since(),
      connectionState: pc.connectionState,
      iceConnectionState: pc.iceConnectionState,
      video,
      audio,
      pair: pair && {
        state: pair.state,
        currentRoundTripTime: pair.currentRoundTripTime,
        local: pick(byId.get(pair.localCandidateId), candKeys),
        remote: pick(byId.get(pair.remoteCandidateId), candKeys),
      },
      element: { readyState: el.readyState, paused: el.paused, videoWidth: el.videoWidth, videoHeight: el.videoHeight,
        currentTime: el.currentTime },
    });
  };
  window.__sampler = setInterval(() => { sample().catch((e) => emit({ type: 'error', message: `getStats: ${e}` })); }, intervalMs);
  window.__sampleNow = sample;
  return { ok: true, ...info };
}

// Runs inside the page: an ICE restart as a WHEP client makes it (RFC 9725
// §4.3.2): pc.restartIce(), the new offer's ufrag/pwd PATCHed to the session
// with If-Match: *, the server's new ones put in the remote description.
async function pageRestartIce() {
  const pc = window.__pc;
  const attr = (sdp, k) => ((new RegExp(`^a=${k}:(.+)$`, 'm')).exec(sdp) || [])[1]?.trim();
  const t0 = performance.now();
  pc.restartIce();
  await pc.setLocalDescription(await pc.createOffer());
  const offer = pc.localDescription.sdp;
  const body = `a=ice-ufrag:${attr(offer, 'ice-ufrag')}\r\na=ice-pwd:${attr(offer, 'ice-pwd')}\r\n` +
    `m=video 9 UDP/TLS/RTP/SAVPF 0\r\na=mid:${attr(offer, 'mid')}\r\n`;
  let resp;
  try {
    resp = await fetch(window.__location, {
      method: 'PATCH',
      headers: { 'Content-Type': 'application/trickle-ice-sdpfrag', 'If-Match': '*' },
      body,
    });
  } catch (e) {
    return { status: 0, reason: String(e) };
  }
  const text = await resp.text();
  const info = { status: resp.status, etag: resp.headers.get('ETag'), content_type: resp.headers.get('Content-Type') };
  if (resp.status !== 200) return { ...info, body: text.slice(0, 500) };
  const old = pc.remoteDescription.sdp;
  const [ufrag, pwd] = [attr(text, 'ice-ufrag'), attr(text, 'ice-pwd')];
  // The answer's candidates name the ufrag too.
  const sdp = old.split(attr(old, 'ice-ufrag')).join(ufrag).split(attr(old, 'ice-pwd')).join(pwd);
  try {
    await pc.setRemoteDescription({ type: 'answer', sdp });
  } catch (e) {
    return { ...info, reason: `setRemoteDescription: ${e}` };
  }
  return { ...info, server_ufrag: ufrag, ms: Math.round(performance.now() - t0) };
}

async function pageStop() {
  clearInterval(window.__sampler);
  if (window.__sampleNow) await window.__sampleNow();
  let deleteStatus = null;
  if (window.__location) {
    try {
      deleteStatus = (await fetch(window.__location, { method: 'DELETE' })).status;
    } catch (e) {
      deleteStatus = `error: ${e}`;
    }
  }
  if (window.__pc) window.__pc.close();
  if (window.__video) window.__video.remove();
  window.__pc = null;
  window.__video = null;
  window.__location = null;
  window.__sampleNow = null;
  return { deleteStatus };
}

function percentile(sorted, p) {
  if (!sorted.length) return null;
  const idx = Math.min(sorted.length - 1, Math.ceil((p / 100) * sorted.length) - 1);
  return sorted[Math.max(0, idx)];
}

// K sequential WHEP sessions; time from POST to the first decoded (and presented) frame.
async function measureJoins(page, opts, state, result) {
  const joins = [];
  const deadline = Date.now() + 1000 * opts.timeout;
  for (let i = 1; i <= opts.joins && !state.stopRequested && Date.now() < deadline; i++) {
    state.firstDecodedMs = null;
    state.firstFrameMs = null;
    state.iceMs = null;
    state.connectedMs = null;
    const started = await page.evaluate(pageStart, {
      stream: opts.stream, intervalMs: 1000, waitIceMs: opts.waitIceMs,
    });
    const { ok, reason, ...whep } = started;
    if (!ok) {
      result.reason = `join ${i}: ${reason}`;
      emit({ type: 'whep', ...whep });
      break;
    }
    const joinDeadline = Math.min(deadline, Date.now() + 10_000);
    while (state.firstDecodedMs === null && Date.now() < joinDeadline) {
      await new Promise((r) => setTimeout(r, 20));
    }
    const presentDeadline = Math.min(deadline, Date.now() + 2_000);
    while (state.firstDecodedMs !== null && state.firstFrameMs === null && Date.now() < presentDeadline) {
      await new Promise((r) => setTimeout(r, 20));
    }
    // ice_ms: ICE connected; connected_ms: DTLS done (connectionState), from the POST.
    const join = { type: 'join', i, first_decoded_ms: state.firstDecodedMs, first_frame_ms: state.firstFrameMs,
      post_ms: whep.post_ms, ice_ms: state.iceMs, connected_ms: state.connectedMs };
    emit(join);
    joins.push(join);
    await page.evaluate(pageStop).catch(() => {});
    if (join.first_decoded_ms === null) {
      result.reason = `join ${i}: no frame decoded within 10 s`;
      break;
    }
  }
  const stat = (key) => {
    const v = joins.map((j) => j[key]).filter((x) => x !== null).sort((a, b) => a - b);
    return { n: v.length, p50: percentile(v, 50), p95: percentile(v, 95), max: v.length ? v[v.length - 1] : null };
  };
  Object.assign(result, { joins, first_decoded: stat('first_decoded_ms'), first_frame: stat('first_frame_ms'),
    ice: stat('ice_ms'), connected: stat('connected_ms') });
  result.ok = joins.length === opts.joins && joins.every((j) => j.first_decoded_ms !== null);
  if (!result.ok && !result.reason) result.reason = `only ${joins.length} of ${opts.joins} joins ran`;
}

async function main() {
  const opts = parseArgs(process.argv.slice(2));
  const startedAt = Date.now();
  const state = {
    samples: 0,
    last: null,
    maxFrames: 0,
    firstFrameMs: null,
    firstDecodedMs: null,
    connectionStates: [],
    consoleErrors: [],
    errors: [],
    whep: null,
    stopRequested: false,
    restartRequested: false,
  };
  let wake = () => {};
  const record = (obj) => {
    emit(obj);
    if (obj.type === 'sample') {
      state.samples++;
      state.last = obj;
      const f = obj.video?.framesDecoded ?? 0;
      if (f > state.maxFrames) state.maxFrames = f;
    } else if (obj.type === 'first_frame' && state.firstFrameMs === null) {
      state.firstFrameMs = obj.ms;
    } else if (obj.type === 'first_decoded' && state.firstDecodedMs === null) {
      state.firstDecodedMs = obj.ms;
    } else if (obj.type === 'event' && obj.name === 'connectionstatechange') {
      state.connectionStates.push(obj.state);
      if (obj.state === 'connected' && state.connectedMs == null) state.connectedMs = obj.post_ms;
    } else if (obj.type === 'event' && obj.name === 'iceconnectionstatechange') {
      if (obj.state === 'connected' && state.iceMs == null) state.iceMs = obj.post_ms;
    } else if (obj.type === 'error') {
      state.errors.push(obj.message);
    }
    wake();
  };

  if (opts.stdinControl) {
    const rl = createInterface({ input: process.stdin });
    rl.on('line', (line) => {
      if (line.trim() === 'stop') state.stopRequested = true;
      if (line.trim() === 'restart-ice') state.restartRequested = true;
      wake();
    });
    rl.on('close', () => { state.stopRequested = true; wake(); });
  }
  for (const sig of ['SIGTERM', 'SIGINT']) {
    process.on(sig, () => { state.stopRequested = true; wake(); });
  }

  const userDataDir = mkdtempSync(join(tmpdir(), 'roomcast-chromium-'));
  const args = [...CHROMIUM_ARGS, ...opts.extraArgs];
  let context = null;
  const result = { type: 'result', ok: false };
  try {
    try {
      context = await chromium.launchPersistentContext(userDataDir, {
        executablePath: opts.chromium,
        headless: true,
        args,
        handleSIGTERM: false,
        handleSIGINT: false,
        timeout: 60_000,
      });
    } catch (e) {
      result.reason = `could not launch Chromium at ${opts.chromium}: ${String(e.message || e).split('\n')[0]}` +
        ' (install it with: apt-get install chromium)';
      return;
    }
    emit({ type: 'start', browser_version: context.browser()?.version() ?? null, args });
    const page = context.pages()[0] ?? (await context.newPage());
    page.on('console', (msg) => {
      if (msg.type() === 'error' || msg.type() === 'warning') {
        const text = msg.text();
        const o = { type: 'console', level: msg.type(), text };
        emit(o);
        // A missing favicon is the browser's doing, not the player's.
        if (msg.type() === 'error' && !/favicon/i.test(text + (msg.location()?.url ?? ''))) state.consoleErrors.push(text);
      }
    });
    page.on('pageerror', (err) => {
      emit({ type: 'console', level: 'pageerror', text: String(err) });
      state.consoleErrors.push(String(err));
    });
    await page.exposeFunction('__emit', (obj) => record(obj));

    const pageUrl = opts.base + opts.page;
    try {
      const resp = await page.goto(pageUrl, { timeout: 30_000 });
      if (!resp || !resp.ok()) {
        result.reason = `GET ${pageUrl} answered ${resp ? resp.status() : 'nothing'}`;
        return;
      }
    } catch (e) {
      result.reason = `could not open ${pageUrl}: ${String(e.message || e).split('\n')[0]}`;
      return;
    }

    if (opts.joins !== null) {
      await measureJoins(page, opts, state, result);
      return;
    }

    const started = await page.evaluate(pageStart, {
      stream: opts.stream, intervalMs: opts.interval, waitIceMs: opts.waitIceMs,
    });
    const { ok: startedOk, reason: startReason, ...whep } = started;
    state.whep = whep;
    emit({ type: 'whep', ...whep });
    result.whep_status = whep.status;
    if (!startedOk) {
      result.reason = startReason;
      return;
    }

    const deadline = startedAt + 1000 * (opts.duration ?? opts.timeout);
    const hardDeadline = startedAt + 1000 * Math.max(opts.timeout, opts.duration ?? 0);
    const goalMet = () =>
      opts.frames !== null && opts.duration === null &&
      state.maxFrames >= opts.frames &&
      (state.last?.audio?.packetsReceived ?? 0) >= opts.audioPackets;
    while (!goalMet() && !state.stopRequested && Date.now() < Math.min(deadline, hardDeadline)) {
      if (state.connectionStates.includes('failed') && opts.duration === null) break;
      if (state.restartRequested) {
        state.restartRequested = false;
        const r = await page.evaluate(pageRestartIce).catch((e) => ({ status: 0, reason: String(e) }));
        emit({ type: 'ice_restart', ...r });
      }
      await new Promise((resolve) => {
        wake = resolve;
        setTimeout(resolve, 200);
      });
    }
    wake = () => {};

    const stop = await page.evaluate(pageStop).catch((e) => ({ deleteStatus: `error: ${e}` }));
    result.delete_status = stop.deleteStatus;
    if (opts.screenshot) {
      await page.screenshot({ path: opts.screenshot }).catch((e) => emit({ type: 'error', message: `screenshot: ${e}` }));
    }
    if (goalMet()) {
      result.ok = true;
    } else if (opts.duration !== null || state.stopRequested) {
      result.ok = state.maxFrames > 0;
      if (!result.ok) result.reason = 'no video frame decoded';
    } else {
      result.reason = `gave up after ${((Date.now() - startedAt) / 1000).toFixed(1)} s: framesDecoded ${state.maxFrames}` +
        `/${opts.frames}, audio packetsReceived ${state.last?.audio?.packetsReceived ?? 0}/${opts.audioPackets}, ` +
        `connection states ${JSON.stringify(state.connectionStates)}`;
    }
  } catch (e) {
    result.reason = `player crashed: ${e && e.stack ? e.stack : e}`;
  } finally {
    Object.assign(result, {
      frames_decoded: state.maxFrames,
      first_frame_ms: state.firstFrameMs,
      first_decoded_ms: state.firstDecodedMs,
      connection_states: state.connectionStates,
      console_errors: state.consoleErrors,
      errors: state.errors,
      samples: state.samples,
      last_sample: state.last,
      elapsed_ms: Date.now() - startedAt,
    });
    emit(result);
    if (context) await context.close().catch(() => {});
    rmSync(userDataDir, { recursive: true, force: true });
    process.exit(result.ok ? 0 : 1);
  }
}

main();
