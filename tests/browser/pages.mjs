#!/usr/bin/env node
// Headless Chromium tests of roomcast's web pages (tests/pages_browser.rs drives them).
//
//   node pages.mjs SCENARIO --base http://127.0.0.1:PORT [--artifacts DIR] [options]
//
// Scenarios: watch, chat, embed, multiview, widget, publish, index, hls, hls-codec, ice-fail, ice-restart (see each function),
// and mx-watch, mx-widget, mx-widget-chat against a real Synapse room (tests/matrix_pages.rs).
// Output, waits and main() are harness.mjs's: one JSON object per stdout line
// (e.g. {"type":"offline_shown"} → the Rust test starts the publisher), last
// the "result"; the page's console errors fail a scenario; waits are
// conditions with deadlines, never sleeps.

import { createServer } from 'node:http';
import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import {
  BASE, DESKTOP, PHONE, allowedErrors, check, emit, has, main, opt, shot, shots, waitFor, watchConsole,
} from './harness.mjs';

/** A host page server on loopback (another origin than roomcast's): the "other site"
 *  that frames the embed or runs the Matrix client. It has to be a real local server:
 *  Chromium does not let a public origin frame a loopback one. */
async function hostServer() {
  const pages = new Map();
  const server = createServer((req, res) => {
    const path = new URL(req.url, 'http://x').pathname;
    const body = pages.get(path);
    const type = path.endsWith('.js') ? 'text/javascript' : 'text/html';
    res.writeHead(body ? 200 : 404, { 'Content-Type': `${type}; charset=utf-8`, 'Cache-Control': 'no-store' });
    res.end(body || 'not found');
  });
  await new Promise((r) => server.listen(0, '127.0.0.1', r));
  const origin = `http://localhost:${server.address().port}`;
  return { origin, set: (path, html) => pages.set(path, html), close: () => new Promise((r) => server.close(r)) };
}

/** Captures every EventSource the page opens, so a test can dispatch contract events on it. */
const CAPTURE_SSE = () => {
  const Orig = window.EventSource;
  window.__es = [];
  window.EventSource = class extends Orig {
    constructor(...a) {
      super(...a);
      window.__es.push(this);
    }
  };
};

async function sseEvent(page, name, data, urlPart = '') {
  await page.evaluate(({ name, data, urlPart }) => {
    for (const es of window.__es) {
      if (es.url.includes(urlPart)) es.dispatchEvent(new MessageEvent(name, { data: JSON.stringify(data) }));
    }
  }, { name, data, urlPart });
}

/** WebRTC/HLS figures of one Player in the page (`path` picks it, e.g. "roomcast.slots.1.player"). */
function playerStats(frame, path = 'roomcast.player') {
  return frame.evaluate(async (path) => {
    // (The pages' CSP forbids eval, so walk the path.)
    const p = path.split('.').reduce((o, k) => (o == null ? o : o[k]), window);
    if (!p) return null;
    let v = null;
    let a = null;
    if (p.pc) {
      (await p.pc.getStats()).forEach((s) => {
        if (s.type === 'inbound-rtp' && s.kind === 'video') v = s;
        if (s.type === 'inbound-rtp' && s.kind === 'audio') a = s;
      });
    }
    const so = p.video.srcObject;
    const q = p.video.getVideoPlaybackQuality();
    return {
      state: p.state,
      mode: p.mode,
      connectionState: p.pc ? p.pc.connectionState : null,
      framesDecoded: v ? v.framesDecoded || 0 : 0,
      audioPackets: a ? a.packetsReceived || 0 : 0,
      audioTracks: so ? so.getAudioTracks().length : 0,
      videoTracks: so ? so.getVideoTracks().length : 0,
      presented: q.totalVideoFrames,
      muted: p.video.muted,
      volume: p.video.volume,
      width: p.video.videoWidth,
      height: p.video.videoHeight,
      paused: p.video.paused,
      // WHEP POSTs made, ICE restarts tried and that reconnected (lib/player.js).
      counts: p.counts ? { ...p.counts } : null,
    };
  }, path);
}

// --- scenarios ----------------------------------------------------------------------

/** /watch/{stream}: offline first; starts by itself when live; title, viewers, unmute by
 *  keyboard, fullscreen, SSE title event; offline again and back when the publisher restarts. */
async function watch(browser) {
  const stream = opt('stream', 't1');
  const title = opt('title', stream);
  const ctx = await browser.newContext({ viewport: DESKTOP });
  await ctx.addInitScript(CAPTURE_SSE);
  const page = await ctx.newPage();
  watchConsole(page, 'watch');
  await page.goto(`${BASE}/watch/${stream}`);
  const ui = () => page.evaluate(() => ({
    state: document.querySelector('.rc-player')?.dataset.state,
    badge: document.getElementById('state').textContent,
    title: document.getElementById('title').textContent,
    docTitle: document.title,
    viewers: document.getElementById('viewers').hidden ? null : document.getElementById('viewers').textContent,
    status: document.querySelector('.rc-status').hidden ? null : document.querySelector('.rc-status').textContent,
    chatHidden: document.querySelector('.chat').hidden,
    unmuteVisible: !document.querySelector('.rc-unmute').hidden,
  }));
  const off = await waitFor('the offline state with the title', async () => {
    const u = await ui();
    return u.state === 'offline' && u.badge === 'OFFLINE' && u.title === title ? u : null;
  });
  check(off.status && /offline/i.test(off.status), `offline message: ${JSON.stringify(off)}`);
  check(off.chatHidden, 'the chat panel shows in standalone mode');
  await shots(page, 'watch-offline');
  emit({ type: 'offline_shown', ui: off });
  const t0 = Date.now();

  const live = await waitFor('the page to start playing by itself (60 frames, audio)', async () => {
    const s = await playerStats(page);
    return s && s.framesDecoded >= 60 && s.audioPackets >= 25 && s.audioTracks === 1 && s.state === 'playing' ? s : null;
  });
  emit({ type: 'playing', after_ms: Date.now() - t0, stats: live });
  const u = await waitFor('LIVE badge and viewer count', async () => {
    const x = await ui();
    return x.badge === 'LIVE' && x.viewers && /[1-9]\d* viewers?/.test(x.viewers) ? x : null;
  });
  check(u.title === title && u.docTitle.startsWith(title), `title: ${JSON.stringify(u)}`);
  check(live.muted && u.unmuteVisible, `starts muted with an unmute control: ${JSON.stringify({ live, u })}`);
  check(live.width === Number(opt('width', live.width)), `video width ${live.width}`);
  const path = await page.evaluate(() => document.querySelector('.rc-path').textContent);
  check(path === 'WebRTC', `path label: ${path}`);

  // Keyboard: Tab to the unmute button, Enter.
  let focused = '';
  for (let i = 0; i < 10 && !focused.includes('rc-unmute'); i++) {
    await page.keyboard.press('Tab');
    focused = await page.evaluate(() => document.activeElement?.className || '');
  }
  check(focused.includes('rc-unmute'), `Tab never reached the unmute button (last focus: ${focused})`);
  await page.keyboard.press('Enter');
  await waitFor('unmuted by keyboard', async () => {
    const s = await playerStats(page);
    return !s.muted && !(await ui()).unmuteVisible;
  }, 5000);
  // Fullscreen with F on the focused player, and back.
  await page.focus('.rc-player');
  await page.keyboard.press('f');
  await waitFor('fullscreen', () => page.evaluate(() => document.fullscreenElement?.classList.contains('rc-player')), 5000);
  await page.keyboard.press('f');
  await waitFor('fullscreen to end', () => page.evaluate(() => document.fullscreenElement === null), 5000);
  emit({ type: 'keyboard_ok' });

  // The SSE `title` event (a Matrix room rename) changes the title, as plain text.
  const renamed = 'Renamed <b>not bold</b> & live';
  await sseEvent(page, 'title', { title: renamed });
  await waitFor('the title to follow the SSE title event', async () => {
    const x = await ui();
    return x.title === renamed && x.docTitle.startsWith(renamed);
  }, 5000);
  check(await page.evaluate(() => !document.querySelector('#title b')), 'the title was parsed as HTML');
  await sseEvent(page, 'title', { title });
  await waitFor('title back', async () => (await ui()).title === title, 5000);
  await shots(page, 'watch-live', async () => (await playerStats(page)).state === 'playing');

  // Publisher leaves (SSE offline) and comes back: the page plays again by itself.
  const pc0 = await page.evaluate(() => { window.__pc0 = window.roomcast.player.pc; return true; });
  check(pc0, 'no PeerConnection');
  emit({ type: 'await_publisher_stop' });
  await waitFor('the offline state after the publisher left', async () => (await ui()).state === 'offline');
  const before = (await playerStats(page)).framesDecoded;
  emit({ type: 'offline_again', frames: before });
  const back = await waitFor('playback to resume after the publisher came back', async () => {
    const s = await playerStats(page);
    return s.state === 'playing' && s.framesDecoded >= before + 30 ? s : null;
  });
  const samePc = await page.evaluate(() => window.__pc0 === window.roomcast.player.pc);
  emit({ type: 'resumed', stats: back, same_peer_connection: samePc });
  await ctx.close();
  return { same_peer_connection: samePc };
}

/** The chat panel against the contract, with the Matrix side mocked in the browser: a
 *  snapshot with a room, `chat`/`redaction` events, guest name and posting, error codes. */
async function chat(browser) {
  const stream = opt('stream', 't1');
  const ctx = await browser.newContext({ viewport: DESKTOP });
  await ctx.addInitScript(CAPTURE_SSE);
  const posted = [];
  // The snapshot as the Matrix application service will send it.
  await ctx.route(`**/api/v1/streams/${stream}`, async (route) => {
    const r = await route.fetch();
    const snap = await r.json();
    snap.room = { room_id: '!room:localhost', alias: `#_streams_${stream}:localhost`, chat: true };
    snap.access = 'public';
    snap.description = 'Weekly community show.\nBring questions!';
    await route.fulfill({ response: r, json: snap });
  });
  await ctx.route('**/api/v1/guests', async (route) => {
    const body = route.request().postDataJSON();
    if (!body.name || body.name.length > 32) {
      return route.fulfill({ status: 400, json: { error: 'names are 1 to 32 characters', code: 'bad_name' } });
    }
    return route.fulfill({ status: 201, json: { guest_token: 'guest-secret', display_name: `${body.name} (guest)` } });
  });
  const chatAnswers = [
    { status: 429, headers: { 'Retry-After': '1' }, json: { error: 'slow down', code: 'rate_limited' } },
    { status: 201, json: { id: '$sent1' } },
    { status: 403, json: { error: 'you were removed from this chat by a moderator', code: 'guest_banned' } },
  ];
  await ctx.route(`**/api/v1/streams/${stream}/chat`, async (route) => {
    posted.push({ auth: route.request().headers().authorization, body: route.request().postDataJSON() });
    const a = chatAnswers.shift() || { status: 503, json: { error: 'homeserver down', code: 'homeserver_unavailable' } };
    return route.fulfill({ status: a.status, headers: a.headers, contentType: 'application/json', body: JSON.stringify(a.json) });
  });
  // The mocked 429 and 403 are the contract's answers: the browser logs them as failed loads.
  allowedErrors.push(/status of (429|403)/);
  const page = await ctx.newPage();
  watchConsole(page, 'chat');
  await page.goto(`${BASE}/watch/${stream}`);
  await waitFor('the chat panel', () => page.evaluate(() => !document.querySelector('.chat').hidden));
  await waitFor('the description', () => page.evaluate(() => document.getElementById('description').textContent.includes('Bring questions')));
  const evil = '<img src=x onerror="window.__pwned=1">hi & <b>bye</b>';
  const now = Date.now();
  await sseEvent(page, 'chat', { id: '$a', sender: 'Alice', sender_id: '@alice:localhost', body: 'First!', ts: now - 60000, guest: false });
  await sseEvent(page, 'chat', { id: '$b', sender: 'Mallory (guest)', sender_id: '@_streams_guest_1:localhost', body: evil, ts: now - 30000, guest: true });
  await sseEvent(page, 'chat', { id: '$c', sender: 'Bob', sender_id: '@bob:localhost', body: 'to be removed', ts: now - 20000, guest: false });
  await sseEvent(page, 'chat', { id: '$a', sender: 'Alice', sender_id: '@alice:localhost', body: 'First!', ts: now - 60000, guest: false });
  await sseEvent(page, 'redaction', { id: '$c' });
  const msgs = await waitFor('three events → two messages after the redaction', async () => {
    const m = await page.evaluate(() => [...document.querySelectorAll('.chat-msg')].map((li) => ({
      id: li.dataset.id, sender: li.querySelector('.chat-sender').textContent, body: li.querySelector('.chat-body').textContent,
    })));
    return m.length === 2 ? m : null;
  }, 5000);
  check(msgs[0].id === '$a' && msgs[1].id === '$b', `order/dedupe: ${JSON.stringify(msgs)}`);
  check(msgs[1].body === evil, `the body must be shown as plain text: ${JSON.stringify(msgs[1])}`);
  check(await page.evaluate(() => !document.querySelector('.chat img, .chat b') && !window.__pwned), 'chat HTML was parsed');

  // The rich fields (README "Chat messages"). `html` arrives here unsanitized (as if the server's
  // allow-list failed): the page's own allow-list must still keep it inert. Chromium reports the
  // handler attributes of the inert DOMParser document as CSP violations (the third layer: nothing
  // runs, and they are not copied); the server's allow-list never lets them reach a page.
  allowedErrors.push(/inline event handler violates the following Content Security Policy/);
  const hostile = '<img src=x onerror="window.__pwned=2"><script>window.__pwned=3</script>'
    + '<a href="javascript:window.__pwned=4">js</a> <a href="https://example.org/">ok</a>'
    + '<iframe src="/"></iframe><b onclick="window.__pwned=5" style="color:red">bold</b>'
    + '<svg><a href="javascript:1">svg</a></svg><span data-mx-color="#00ff00" data-mx-spoiler>sp</span>';
  await sseEvent(page, 'chat', { id: '$h', sender: 'Eve', sender_id: '@eve:localhost', body: 'fallback', html: hostile, msgtype: 'm.notice', ts: now - 10000, guest: false,
    reply_to: { id: '$a', sender: 'Alice', body: 'First!' } });
  await sseEvent(page, 'chat', { id: '$h', sender: 'Eve', sender_id: '@eve:localhost', body: 'fallback', html: hostile, msgtype: 'm.notice', ts: now - 10000, guest: false,
    reply_to: { id: '$a', sender: 'Alice', body: 'First!' }, reactions: [{ key: '🎉', count: 3 }], edited: true });
  const rich = await waitFor('the formatted message with its reactions', () => page.evaluate(() => {
    const li = document.querySelector('.chat-msg[data-id="$h"]');
    if (!li || !li.querySelector('.chat-reaction')) return null;
    const body = li.querySelector('.chat-body');
    return {
      tags: [...body.querySelectorAll('*')].map((e) => e.localName),
      attrs: [...body.querySelectorAll('*')].flatMap((e) => [...e.attributes].map((a) => `${e.localName}.${a.name}=${a.value}`)),
      text: body.textContent,
      notice: li.classList.contains('is-notice'),
      reply: li.querySelector('.chat-reply')?.textContent,
      reaction: li.querySelector('.chat-reaction')?.textContent,
      edited: !!li.querySelector('.chat-edited'),
      count: document.querySelectorAll('.chat-msg[data-id="$h"]').length,
      pwned: window.__pwned ?? null,
    };
  }), 5000);
  check(rich.pwned === null && !rich.tags.some((t) => ['img', 'script', 'iframe', 'svg'].includes(t)), `hostile HTML ran or stayed: ${JSON.stringify(rich)}`);
  check(JSON.stringify(rich.tags) === '["a","a","b","span"]', `tags: ${JSON.stringify(rich)}`);
  check(!rich.attrs.some((a) => /onclick|onerror|javascript|^b\.style/.test(a)), `attributes: ${JSON.stringify(rich.attrs)}`);
  check(rich.attrs.includes('a.href=https://example.org/') && rich.attrs.includes('a.rel=noopener noreferrer'), `link: ${JSON.stringify(rich.attrs)}`);
  check(rich.notice && rich.reply === 'AliceFirst!' && rich.reaction === '🎉3' && rich.edited && rich.count === 1, `rich parts: ${JSON.stringify(rich)}`);
  await sseEvent(page, 'redaction', { id: '$h' });

  // Guest: a name, then messages; one answer per contract error.
  await page.fill('.chat-form input[name="name"]', 'Alice');
  await page.keyboard.press('Enter');
  await waitFor('the message box', () => page.evaluate(() => !!document.querySelector('.chat-form input[name="body"]')), 5000);
  check(await page.evaluate(() => document.querySelector('.chat-note strong')?.textContent === 'Alice (guest)'), 'guest name shown');
  const errorText = () => page.evaluate(() => { const e = document.querySelector('.chat-error'); return e.hidden ? '' : e.textContent; });
  await page.fill('.chat-form input[name="body"]', 'hello');
  await page.keyboard.press('Enter');
  const rl = await waitFor('the rate-limit message', async () => { const t = await errorText(); return /too fast.*1 s/.test(t) ? t : null; }, 5000);
  await waitFor('send to be possible again after Retry-After', () => page.evaluate(() => !document.querySelector('.chat-form button').disabled), 5000);
  await page.keyboard.press('Enter');
  await waitFor('the sent message to show', () => page.evaluate(() => !!document.querySelector('.chat-msg[data-id="$sent1"]')), 5000);
  // The server echoes the message on the feed: it must not show twice.
  await sseEvent(page, 'chat', { id: '$sent1', sender: 'Alice (guest)', sender_id: '@_streams_guest_2:localhost', body: 'hello', ts: Date.now(), guest: true });
  check(await page.evaluate(() => document.querySelectorAll('.chat-msg[data-id="$sent1"]').length === 1), 'own message shown twice');
  await shots(page, 'watch-chat');
  await page.fill('.chat-form input[name="body"]', 'still here?');
  await page.keyboard.press('Enter');
  await waitFor('the banned state', () => page.evaluate(() => /removed from this chat/.test(document.querySelector('.chat-composer').textContent) && !document.querySelector('.chat-form')), 5000);
  check(posted.length === 3 && posted.every((p) => p.auth === 'Bearer guest-secret'), `posts: ${JSON.stringify(posted)}`);
  check(posted[1].body.body === 'hello', `posted body: ${JSON.stringify(posted[1])}`);
  await ctx.close();
  return { messages: msgs, rate_limit_message: rl };
}

/** /embed/{stream} as an OBS browser source (1920×1080, OBS's default CSS) and in an iframe. */
async function embed(browser) {
  const stream = opt('stream', 't1');
  const ctx = await browser.newContext({ viewport: { width: 1920, height: 1080 } });
  // A private stream's link carries ?access=TOKEN: the player hands it to WHEP as Bearer.
  const whepAuth = [];
  await ctx.route(`**/whep/${stream}`, async (route) => {
    if (route.request().method() === 'POST') whepAuth.push(route.request().headers().authorization || null);
    await route.continue();
  });
  const page = await ctx.newPage();
  watchConsole(page, 'embed-obs');
  await page.goto(`${BASE}/embed/${stream}?muted=0&controls=0&access=link-token`);
  // What OBS injects into every browser source by default.
  await page.addStyleTag({ content: 'body { background-color: rgba(0, 0, 0, 0); margin: 0px auto; overflow: hidden; }' });
  const s = await waitFor('the OBS-sized embed to play (60 frames)', async () => {
    const x = await playerStats(page);
    return x && x.framesDecoded >= 60 && x.state === 'playing' ? x : null;
  });
  const geo = await page.evaluate(() => {
    const r = document.querySelector('video').getBoundingClientRect();
    return {
      video: [r.x, r.y, r.width, r.height],
      html: getComputedStyle(document.documentElement).backgroundColor,
      body: getComputedStyle(document.body).backgroundColor,
      player: getComputedStyle(document.querySelector('.rc-player')).backgroundColor,
      controls: document.querySelectorAll('.rc-bar, .rc-unmute, .rc-play').length,
      status: document.querySelector('.rc-status').hidden,
      pathLabel: document.querySelector('.rc-path').hidden,
      scroll: [document.documentElement.scrollWidth, document.documentElement.scrollHeight],
    };
  });
  check(JSON.stringify(geo.video) === JSON.stringify([0, 0, 1920, 1080]), `video rect ${geo.video}`);
  const clear = (c) => c === 'rgba(0, 0, 0, 0)' || c === 'transparent';
  check(clear(geo.html) && clear(geo.body) && clear(geo.player), `backgrounds must be transparent: ${JSON.stringify(geo)}`);
  check(geo.controls === 0 && geo.status && geo.pathLabel, `controls=0 shows no controls nor labels: ${JSON.stringify(geo)}`);
  check(!s.muted, 'muted=0 should play with sound (OBS allows autoplay with sound)');
  check(geo.scroll[0] === 1920 && geo.scroll[1] === 1080, `no scrollbars: ${geo.scroll}`);
  check(whepAuth.length >= 1 && whepAuth.every((a) => a === 'Bearer link-token'), `WHEP Authorization: ${JSON.stringify(whepAuth)}`);
  await shot(page, 'embed-obs', { omitBackground: true });
  await ctx.close();

  // In an iframe of another site (a loopback origin: Chromium keeps public sites from framing local ones), with the defaults (muted, controls, autoplay).
  const ctx2 = await browser.newContext({ viewport: DESKTOP });
  const site = await hostServer();
  site.set('/post.html', `<!doctype html><title>host</title><body style="background:#eee;margin:0;padding:40px">
      <p>A blog post with a live stream:</p>
      <iframe src="${BASE}/embed/${stream}" width="640" height="360" style="border:0" allow="autoplay; fullscreen"></iframe></body>`);
  const host = await ctx2.newPage();
  watchConsole(host, 'embed-iframe');
  await host.goto(`${site.origin}/post.html`);
  const frame = await waitFor('the iframe', async () => host.frames().find((f) => f.url().includes('/embed/')));
  const fs = await waitFor('the iframe embed to play', async () => {
    const x = await playerStats(frame);
    return x && x.framesDecoded >= 30 && x.state === 'playing' ? x : null;
  });
  check(fs.muted, 'the default embed starts muted');
  check(await frame.evaluate(() => !document.querySelector('.rc-unmute').hidden), 'the muted embed offers to unmute');
  await shots(host, 'embed-iframe');
  await ctx2.close();
  await site.close();
  // The embed alone at desktop and phone width.
  const ctx3 = await browser.newContext({ viewport: DESKTOP });
  const p3 = await ctx3.newPage();
  watchConsole(p3, 'embed');
  await p3.goto(`${BASE}/embed/${stream}`);
  await shots(p3, 'embed', async () => (await playerStats(p3))?.state === 'playing');
  await ctx3.close();
  return { obs: geo };
}

/** /multiview with a layout file at 1920×1080: every slot starts by itself, decodes, sits at its
 *  rectangle, has its volume; one slot recovers when its publisher restarts. Then the grid. */
async function multiview(browser) {
  const name = opt('layout', 'four-player');
  const volumes = opt('volumes', '1,0.5,0.25,0');
  const layout = await (await fetch(`${BASE}/api/v1/layouts/${name}`)).json();
  const ctx = await browser.newContext({ viewport: { width: layout.width, height: layout.height } });
  const page = await ctx.newPage();
  watchConsole(page, 'multiview');
  await page.goto(`${BASE}/multiview?layout=${name}&volume=${volumes}`);
  await waitFor('the slots', () => page.evaluate((n) => window.roomcast?.slots?.length === n, layout.slots.length));
  emit({ type: 'slots_ready', slots: layout.slots.length });
  const slotStats = (i) => playerStats(page, `roomcast.slots.${i}.player`);
  const all = await waitFor('every slot to play (30 frames each)', async () => {
    const st = [];
    for (let i = 0; i < layout.slots.length; i++) st.push(await slotStats(i));
    return st.every((x) => x && x.framesDecoded >= 30 && x.state === 'playing') ? st : null;
  }, 90000);
  const rects = await page.evaluate(() => window.roomcast.slots.map((s) => {
    const r = s.player.video.getBoundingClientRect();
    return { stream: s.stream, rect: [r.x, r.y, r.width, r.height] };
  }));
  layout.slots.forEach((sl, i) => {
    const want = [sl.x, sl.y, sl.width, sl.height];
    check(JSON.stringify(rects[i].rect) === JSON.stringify(want), `slot ${sl.id}: on screen ${rects[i].rect}, layout ${want}`);
    check(rects[i].stream === sl.stream, `slot ${sl.id} shows ${rects[i].stream}`);
  });
  const vols = volumes.split(',').map(Number);
  all.forEach((x, i) => check(Math.abs(x.volume - vols[i]) < 1e-6 && x.muted === (vols[i] === 0), `slot ${i} volume ${x.volume} muted ${x.muted}`));
  const bg = await page.evaluate(() => [getComputedStyle(document.documentElement).backgroundColor, getComputedStyle(document.body).backgroundColor]);
  check(bg.every((c) => c === 'rgba(0, 0, 0, 0)'), `background ${bg}`);
  await shot(page, 'multiview-layout', { omitBackground: true });
  emit({ type: 'all_playing', stats: all, rects });

  // Slot 2's publisher leaves and comes back.
  await waitFor('slot 2 offline', () => page.evaluate(() => window.roomcast.slots[1].el.dataset.live === 'false'));
  const before = (await slotStats(1)).framesDecoded;
  emit({ type: 'slot_offline', frames: before });
  const back = await waitFor('slot 2 to play again', async () => {
    const x = await slotStats(1);
    return x.state === 'playing' && x.framesDecoded >= before + 30 ? x : null;
  });
  emit({ type: 'slot_recovered', stats: back });
  await ctx.close();

  // The automatic grid of a streams= list, desktop and phone.
  const streams = layout.slots.map((s) => s.stream).join(',');
  const ctx2 = await browser.newContext({ viewport: DESKTOP });
  const grid = await ctx2.newPage();
  watchConsole(grid, 'multiview-grid');
  await grid.goto(`${BASE}/multiview?streams=${streams}&volume=0`);
  const playingAll = async () => {
    for (let i = 0; i < layout.slots.length; i++) {
      const x = await playerStats(grid, `roomcast.slots.${i}.player`);
      if (!x || x.state !== 'playing' || x.framesDecoded < 10) return false;
    }
    return true;
  };
  await waitFor('every grid slot to play', playingAll, 90000);
  const cells = await grid.evaluate(() => window.roomcast.slots.map((s) => {
    const r = s.el.getBoundingClientRect();
    return [Math.round(r.x), Math.round(r.y), Math.round(r.width), Math.round(r.height)];
  }));
  check(new Set(cells.map((c) => `${c[0]},${c[1]}`)).size === cells.length, `grid cells overlap: ${JSON.stringify(cells)}`);
  await shots(grid, 'multiview-grid', playingAll);
  await ctx2.close();
  return { rects, grid: cells };
}

/** /widget in a host page that runs matrix-widget-api's ClientWidgetApi. The Matrix side of the
 *  API (rooms' streams, viewer access) is mocked in the browser until the Matrix issue lands;
 *  WHEP goes to the real server, which gets the viewer token as Bearer. */
async function widget(browser) {
  const stream = opt('stream', 't1');
  const require = createRequire(import.meta.url);
  // (dist/api.min.js of 1.19.0 exports nothing: its tinyify build drops the exports.)
  const lib = readFileSync(require.resolve('matrix-widget-api/dist/api.js'), 'utf8');
  const snapshot = await (await fetch(`${BASE}/api/v1/streams/${stream}`)).json();
  const runs = [];
  const site = await hostServer();
  site.set('/matrix-widget-api.js', lib);
  for (const [wait, access, theme] of [[true, 'private', 'dark'], [false, 'private', 'light'], [false, 'public', 'dark']]) {
    const ctx = await browser.newContext({ viewport: DESKTOP });
    const seen = { access: [], whepAuth: [], rooms: 0 };
    await ctx.route('**/api/v1/rooms/*/streams', async (route) => {
      seen.rooms++;
      await route.fulfill({ json: [{ ...snapshot, access, room: { room_id: '!room:localhost', alias: null, chat: false } }] });
    });
    await ctx.route(`**/api/v1/streams/${stream}/access`, async (route) => {
      seen.access.push(route.request().postDataJSON());
      await route.fulfill({ json: { access_token: 'viewer-token', expires_in: 3600 } });
    });
    await ctx.route(`**/whep/${stream}`, async (route) => {
      if (route.request().method() === 'POST') seen.whepAuth.push(route.request().headers().authorization || null);
      await route.continue();
    });
    site.set('/room', `<!doctype html><title>client</title><style>html,body{margin:0;height:100%;background:#222}iframe{border:0;width:100%;height:100%;display:block}</style>
             <body><script src="/matrix-widget-api.js"></script></body>`);
    const host = await ctx.newPage();
    watchConsole(host, `widget(wait=${wait},${access})`);
    await host.goto(`${site.origin}/room`);
    await host.evaluate(({ base, wait, theme }) => {
      const { ClientWidgetApi, Widget, WidgetDriver, OpenIDRequestState } = window.mxwidgets;
      window.openidAsked = 0;
      class Driver extends WidgetDriver {
        async validateCapabilities(requested) { return requested; }
        askOpenID(observer) {
          window.openidAsked++;
          observer.update({ state: OpenIDRequestState.Allowed, token: {
            access_token: 'openid-token', token_type: 'Bearer', matrix_server_name: 'localhost', expires_in: 3600 } });
        }
      }
      const w = new Widget({
        id: 'roomcast_stream', creatorUserId: '@_streams_bot:localhost', type: 'm.custom', name: 'Live stream',
        url: `${base}/widget?widgetId=$matrix_widget_id&roomId=$matrix_room_id&theme=$org.matrix.msc2873.client_theme&stream=demo`,
        waitForIframeLoad: wait,
      });
      const url = w.getCompleteUrl({ widgetRoomId: '!room:localhost', currentUserId: '@alice:localhost', clientTheme: theme, clientId: 'test.client' });
      const iframe = document.createElement('iframe');
      iframe.src = `${url}&parentUrl=${encodeURIComponent(location.href)}`;
      iframe.allow = 'autoplay; fullscreen';
      document.body.append(iframe);
      const api = new ClientWidgetApi(w, iframe, new Driver());
      window.clientApi = api;
      window.handshake = false;
      api.once('ready', () => { window.handshake = true; });
    }, { base: BASE, wait, theme });
    await waitFor('the widget handshake', () => host.evaluate(() => window.handshake), 15000);
    // With waitForIframeLoad=false the client must have got content_loaded after the iframe's
    // load event (else it arms a timer that logs "timed out waiting for contentLoaded").
    await waitFor('no pending content_loaded timer', () => host.evaluate(() => window.clientApi.contentLoadedWaitTimer === undefined), 12000);
    const frame = await waitFor('the widget frame', async () => host.frames().find((f) => f.url().includes('/widget')));
    const themeOf = () => frame.evaluate(() => ({ attr: document.documentElement.dataset.theme, bg: getComputedStyle(document.body).backgroundColor }));
    const t1 = await waitFor(`the ${theme} theme`, async () => { const t = await themeOf(); return t.attr === theme ? t : null; }, 5000);
    const st = await waitFor('the widget to play', async () => {
      const x = await playerStats(frame);
      return x && x.framesDecoded >= 30 && x.state === 'playing' ? x : null;
    });
    // The client switches theme while the widget runs.
    const other = theme === 'dark' ? 'light' : 'dark';
    await shots(host, `widget-${theme}`, async () => (await playerStats(frame))?.state === 'playing');
    await host.evaluate((name) => window.clientApi.transport.send('theme_change', { name }), other);
    const t2 = await waitFor(`the ${other} theme after theme_change`, async () => { const t = await themeOf(); return t.attr === other ? t : null; }, 5000);
    check(t1.bg !== t2.bg, `the background did not change with the theme: ${t1.bg}`);
    const asked = await host.evaluate(() => window.openidAsked);
    const run = { wait, access, theme, openid_asked: asked, access_posts: seen.access, whep_auth: seen.whepAuth, rooms_requests: seen.rooms, theme_bg: [t1.bg, t2.bg], stats: st };
    emit({ type: 'widget_run', ...run });
    if (access === 'private') {
      check(asked === 1, `OpenID asked ${asked} times for a private stream`);
      check(seen.access.length === 1 && seen.access[0].openid_token === 'openid-token' && seen.access[0].matrix_server_name === 'localhost',
        `access POST: ${JSON.stringify(seen.access)}`);
      check(seen.whepAuth.length >= 1 && seen.whepAuth.every((a) => a === 'Bearer viewer-token'), `WHEP Authorization: ${JSON.stringify(seen.whepAuth)}`);
    } else {
      check(asked === 0 && seen.access.length === 0, `OpenID asked for a public stream: ${asked}`);
      check(seen.whepAuth.every((a) => a === null), `WHEP Authorization for a public stream: ${JSON.stringify(seen.whepAuth)}`);
    }
    runs.push(run);
    await ctx.close();
  }
  await site.close();

  // Without the mocks: this server has no Matrix rooms (the API answers 404), and the page
  // opened on its own (not in a client) says what it is for.
  allowedErrors.push(/status of 404/);
  const ctx = await browser.newContext({ viewport: PHONE });
  const page = await ctx.newPage();
  watchConsole(page, 'widget-standalone');
  await page.goto(`${BASE}/widget`);
  const msg = await waitFor('the standalone message', () => page.evaluate(() => { const m = document.getElementById('message'); return m.hidden ? null : m.textContent; }), 5000);
  check(/inside a Matrix client/.test(msg), msg);
  await page.goto(`${BASE}/widget?room=!nowhere:localhost`);
  const msg2 = await waitFor('the no-room message', () => page.evaluate(() => { const m = document.getElementById('message'); return m.hidden ? null : m.textContent; }), 5000);
  emit({ type: 'widget_real_rooms_api', message: msg2 });
  await ctx.close();
  return { runs, standalone: msg, real_rooms_api: msg2 };
}

/** /publish/{stream} with Chromium's fake camera. Without WHIP on the server: a clear error.
 *  With --expect-whip: it goes live and a watch page plays it. */
async function publish(browser) {
  const stream = opt('stream', 't1');
  const key = opt('key', 'wrong-key-0123456789');
  const ctx = await browser.newContext({ viewport: DESKTOP });
  const page = await ctx.newPage();
  watchConsole(page, 'publish');
  allowedErrors.push(/status of (404|405)/);
  await page.goto(`${BASE}/publish/${stream}`);
  await shots(page, 'publish-empty');
  await page.click('button:has-text("Start preview")');
  await waitFor('the camera preview', () => page.evaluate(() => {
    const v = document.querySelector('.preview video');
    return v.srcObject && v.videoWidth > 0 && v.getVideoPlaybackQuality().totalVideoFrames > 5;
  }), 15000);
  await page.fill('input[name="key"]', key);
  await page.selectOption('select[name="codec"]', opt('codec', 'H264'));
  await page.click('button:has-text("Go live")');
  const status = () => page.evaluate(() => ({ text: document.querySelector('.pub-status').textContent, error: document.querySelector('.pub-status').classList.contains('error') }));
  if (!has('expect-whip')) {
    const s = await waitFor('the no-WHIP message', async () => { const x = await status(); return x.error ? x : null; }, 15000);
    check(/does not accept publishing from the browser \(WHIP\)/.test(s.text), `message: ${s.text}`);
    await shots(page, 'publish-preview');
    await ctx.close();
    return { message: s.text };
  }
  const s = await waitFor('going live over WHIP', async () => {
    const x = await status();
    if (x.error) throw Object.assign(new Error(`the publish page says: ${x.text}`), { fatal: true });
    return /You are live/.test(x.text) ? x : null;
  }, 30000);
  await shots(page, 'publish-live');
  const watcher = await ctx.newPage();
  watchConsole(watcher, 'publish-watch');
  await watcher.goto(`${BASE}/watch/${stream}`);
  const w = await waitFor('the watch page to play the browser publisher', async () => {
    const x = await playerStats(watcher);
    return x && x.framesDecoded >= 30 && x.audioPackets > 0 ? x : null;
  });
  await ctx.close();
  return { message: s.text, watch: w };
}

/** /: the live public streams with title and viewers; with --thumbnails, each card shows
 *  its stream's thumbnail (loaded, not blank). */
async function index(browser) {
  const live = (opt('live') || '').split(',').filter(Boolean);
  const offline = (opt('offline') || '').split(',').filter(Boolean);
  const ctx = await browser.newContext({ viewport: DESKTOP });
  const page = await ctx.newPage();
  watchConsole(page, 'index');
  await page.goto(`${BASE}/`);
  const cards = await waitFor('the stream cards', async () => {
    const c = await page.evaluate(() => [...document.querySelectorAll('.card')].map((a) => ({
      stream: a.dataset.stream, href: a.getAttribute('href'), title: a.querySelector('.card-title').textContent,
      viewers: a.querySelector('.viewers').textContent,
    })));
    return c.length === live.length ? c : null;
  }, 10000);
  for (const s of live) check(cards.some((c) => c.stream === s && c.href === `/watch/${s}`), `no card for ${s}: ${JSON.stringify(cards)}`);
  for (const s of offline) check(!cards.some((c) => c.stream === s), `offline ${s} listed`);
  let thumbnails = null;
  if (has('thumbnails')) {
    // Each live card shows its stream's thumbnail: loaded, and a picture (its
    // luma varies: not a blank or placeholder frame), read back from a canvas.
    thumbnails = await waitFor('every card to show a thumbnail', async () => {
      const t = await page.evaluate(() => [...document.querySelectorAll('.card')].map((a) => {
        const img = a.querySelector('.card-thumb');
        if (!img || !img.complete || !img.naturalWidth) return null;
        const c = document.createElement('canvas');
        c.width = img.naturalWidth; c.height = img.naturalHeight;
        const g = c.getContext('2d');
        g.drawImage(img, 0, 0);
        const d = g.getImageData(0, 0, c.width, c.height).data;
        let sum = 0; let sq = 0; const n = d.length / 4;
        for (let i = 0; i < d.length; i += 4) { const y = 0.299 * d[i] + 0.587 * d[i + 1] + 0.114 * d[i + 2]; sum += y; sq += y * y; }
        const mean = sum / n;
        const box = img.getBoundingClientRect();
        return { stream: a.dataset.stream, width: img.naturalWidth, height: img.naturalHeight, stddev: Math.sqrt(sq / n - mean * mean), shown: [Math.round(box.width), Math.round(box.height)] };
      }));
      return t.length === live.length && t.every(Boolean) ? t : null;
    }, 20000);
    for (const t of thumbnails) check(t.stddev > 10 && t.shown[0] > 100, `thumbnail of ${t.stream} looks blank or hidden: ${JSON.stringify(t)}`);
  }
  await shots(page, 'index');
  await ctx.close();
  return { cards, thumbnails };
}

/** The LL-HLS fallback: in a browser without WebRTC the player loads roomcast's
 *  /hls/{stream}/index.m3u8 with hls.js and plays the live stream (playlist, init and
 *  parts from the real server; --size WxH: at that size); then, unless --only-play,
 *  when the server answers 404 for HLS (turned off) the page says it cannot connect
 *  and keeps trying. */
async function hls(browser) {
  const stream = opt('stream', 't1');
  const noWebrtc = () => { delete window.RTCPeerConnection; delete window.webkitRTCPeerConnection; };
  const ctx = await browser.newContext({ viewport: DESKTOP });
  await ctx.addInitScript(noWebrtc);
  const served = [];
  ctx.on('response', (r) => {
    const u = new URL(r.url());
    if (u.pathname.startsWith(`/hls/${stream}/`)) served.push({ name: u.pathname.split('/').pop(), status: r.status(), type: r.headers()['content-type'] });
  });
  const page = await ctx.newPage();
  watchConsole(page, 'hls');
  await page.goto(`${BASE}/watch/${stream}`);
  const st = await waitFor('hls.js playback', async () => {
    const x = await playerStats(page);
    return x && x.mode === 'hls' && x.presented >= 30 && x.state === 'playing' ? x : null;
  });
  const t0 = await page.evaluate(() => window.roomcast.player.video.currentTime);
  await waitFor('playback to advance', async () => (await page.evaluate(() => window.roomcast.player.video.currentTime)) > t0 + 1);
  const label = await page.evaluate(() => document.querySelector('.rc-path').textContent);
  check(label === 'LL-HLS: this browser has no WebRTC', `path label: ${label}`);
  // --size WxH: the picture size the publisher sends.
  const size = opt('size');
  if (size) check(`${st.width}x${st.height}` === size, `video ${st.width}x${st.height}, expected ${size}`);
  const latency = await page.evaluate(() => {
    const h = window.roomcast.player.hls;
    const d = h && h.playingDate;
    return { live_edge: h ? h.latency : null, pdt: d ? (Date.now() - d.getTime()) / 1000 : null };
  });
  const ok = (n) => served.some((s) => s.status === 200 && n(s));
  check(ok((s) => s.name === 'index.m3u8' && /mpegurl/.test(s.type)), `playlist: ${JSON.stringify(served)}`);
  check(ok((s) => /^init-.*\.mp4$/.test(s.name) && s.type === 'video/mp4'), `init: ${JSON.stringify(served)}`);
  check(ok((s) => /^(part|seg)-.*\.m4s$/.test(s.name)), `media: ${JSON.stringify(served)}`);
  await shots(page, `watch-hls${size ? `-${stream}` : ''}`, async () => (await playerStats(page))?.state === 'playing');
  await ctx.close();
  if (has('only-play')) return { hls: st, latency, label, requests: served.length };

  // A server without HLS (404): a plain sentence without protocol names.
  allowedErrors.push(/status of 404/);
  const ctx2 = await browser.newContext({ viewport: DESKTOP });
  await ctx2.addInitScript(noWebrtc);
  await ctx2.route(`**/hls/${stream}/*`, (route) => route.fulfill({ status: 404, json: { error: 'HLS is turned off', code: 'not_found' } }));
  const p2 = await ctx2.newPage();
  watchConsole(p2, 'hls-missing');
  await p2.goto(`${BASE}/watch/${stream}`);
  const msg = await waitFor('the cannot-connect message', () => p2.evaluate(() => {
    const el = document.querySelector('.rc-status');
    return !el.hidden && /cannot play live video/i.test(el.textContent) ? el.textContent : null;
  }), 15000);
  check(!/WebRTC|HLS|codec/i.test(msg), `jargon in: ${msg}`);
  await ctx2.close();
  return { hls: st, latency, label, requests: served.length, without_playlist: msg };
}

/** /watch/{stream} in a browser without WebRTC whose MSE refuses the stream's codec
 *  (--refuse CODEC, e.g. vp09: isTypeSupported says no and addSourceBuffer throws, as in a
 *  browser without that decoder): the page says in plain words that this browser cannot
 *  play the stream's video format, and keeps saying it (no retry loop). */
async function hlsCodec(browser) {
  const stream = opt('stream', 't1');
  const refuse = opt('refuse', 'vp09');
  const ctx = await browser.newContext({ viewport: DESKTOP });
  await ctx.addInitScript((refuse) => {
    delete window.RTCPeerConnection;
    delete window.webkitRTCPeerConnection;
    const supported = MediaSource.isTypeSupported.bind(MediaSource);
    MediaSource.isTypeSupported = (t) => !t.includes(refuse) && supported(t);
    const add = MediaSource.prototype.addSourceBuffer;
    MediaSource.prototype.addSourceBuffer = function (t) {
      if (t.includes(refuse)) throw new DOMException(`${t} is not supported`, 'NotSupportedError');
      return add.call(this, t);
    };
  }, refuse);
  const page = await ctx.newPage();
  watchConsole(page, 'hls-codec');
  await page.goto(`${BASE}/watch/${stream}`);
  const status = () => page.evaluate(() => {
    const el = document.querySelector('.rc-status');
    const p = window.roomcast && window.roomcast.player;
    return { text: el && !el.hidden ? el.textContent : null, state: p ? p.state : null, mode: p ? p.mode : null };
  });
  const first = await waitFor('the cannot-play-this-format sentence', async () => {
    const x = await status();
    return x.text && /cannot play this stream's video format/i.test(x.text) ? x : null;
  }, 20000);
  check(!/WebRTC|HLS|codec|MSE/i.test(first.text), `jargon in: ${first.text}`);
  // It stays: no retry loop through "Reconnecting…".
  const seen = new Set([first.text]);
  const until = Date.now() + 5000;
  while (Date.now() < until) {
    const x = await status();
    if (x.text) seen.add(x.text);
    check(x.state !== 'playing', `plays although ${refuse} is refused`);
    await new Promise((r) => setTimeout(r, 200));
  }
  check(seen.size === 1, `the sentence changed: ${JSON.stringify([...seen])}`);
  await ctx.close();
  return { status: first.text, state: first.state };
}

/** /watch/{stream} of a live H.264 stream on a server whose ICE candidates nobody can
 *  reach (tests/pages_browser.rs sets webrtc.public_ips to a TEST-NET address): the
 *  page gives up on WebRTC before its first frame and plays LL-HLS within --within
 *  seconds, with a label saying why, and the viewer count never changes. */
async function iceFail(browser) {
  const stream = opt('stream', 't1');
  const within = Number(opt('within', '12')) * 1000;
  const ctx = await browser.newContext({ viewport: DESKTOP });
  await ctx.addInitScript(() => {
    // Every viewer count the page shows, from the first.
    window.__viewers = [];
    new MutationObserver(() => {
      const el = document.getElementById('viewers');
      const t = el && !el.hidden ? el.textContent : null;
      if (t !== null && window.__viewers[window.__viewers.length - 1] !== t) window.__viewers.push(t);
    }).observe(document, { subtree: true, childList: true, characterData: true, attributes: true });
  });
  const page = await ctx.newPage();
  watchConsole(page, 'ice-fail');
  const t0 = Date.now();
  await page.goto(`${BASE}/watch/${stream}`);
  const st = await waitFor('LL-HLS playback after ICE failed', async () => {
    const x = await playerStats(page);
    return x && x.mode === 'hls' && x.state === 'playing' && x.presented >= 10 ? x : null;
  }, within + 5000);
  const after = Date.now() - t0;
  check(after <= within, `LL-HLS played after ${after} ms (limit ${within} ms)`);
  const label = await page.evaluate(() => document.querySelector('.rc-path').textContent);
  check(label === 'LL-HLS: WebRTC could not connect on this network', `path label: ${label}`);
  const v0 = await page.evaluate(() => window.roomcast.player.video.currentTime);
  await waitFor('playback to advance', async () => (await page.evaluate(() => window.roomcast.player.video.currentTime)) > v0 + 3, 15000);
  const viewers = await page.evaluate(() => window.__viewers);
  check(viewers.length <= 1, `the viewer count changed: ${JSON.stringify(viewers)}`);
  const stillHls = await playerStats(page);
  check(stillHls.mode === 'hls' && stillHls.state === 'playing', `after: ${JSON.stringify(stillHls)}`);
  await shots(page, 'watch-ice-fail', async () => (await playerStats(page))?.state === 'playing');
  await ctx.close();
  return { hls_after_ms: after, label, viewers, stats: st };
}

/** /watch/{stream} of a server behind the test's UDP relay (tests/pages_browser.rs): after
 *  "playing" the Rust test black-holes the viewer's UDP path, and restores it after
 *  "restart_started" (the player's PATCH was sent). The player must restart ICE on the
 *  same PeerConnection (a PATCH, never a second WHEP POST), and the video goes on.
 *  --gone: the test also DELETEs the session while the path is cut; the PATCH then gets
 *  404 and the player makes a new session (a second POST) and plays again.
 *  --stall: the path stays up and the Rust test stops the publisher (ffmpeg) instead,
 *  until "restart_done": one restart, done on STUN answers alone, then the same
 *  PeerConnection plays on. */
async function iceRestart(browser) {
  const stream = opt('stream', 't1');
  const gone = has('gone');
  const stall = has('stall');
  // The browser logs a 404 answer as a console error: here it is the point.
  if (gone) allowedErrors.push(/status of 404/);
  const ctx = await browser.newContext({ viewport: DESKTOP });
  const page = await ctx.newPage();
  watchConsole(page, 'ice-restart');
  // Every WHEP request the page makes, as the network sees it: {method, status}.
  const whep = [];
  page.on('request', (q) => {
    if (q.url().includes('/whep/')) whep.push({ method: q.method(), status: null, q });
  });
  page.on('response', (r) => {
    const e = whep.find((w) => w.q === r.request());
    if (e) e.status = r.status();
  });
  const ofMethod = (m) => whep.filter((w) => w.method === m).map((w) => w.status);
  await page.goto(`${BASE}/watch/${stream}`);
  await page.evaluate(() => {
    const p = window.roomcast.player;
    window.__states = [];
    window.__restarts = [];
    p.addEventListener('connectionstate', (e) => window.__states.push(e.detail));
    p.addEventListener('icerestart', (e) => window.__restarts.push(e.detail));
  });
  const before = await waitFor('the page to play over WebRTC (30 frames)', async () => {
    const x = await playerStats(page);
    return x && x.mode === 'webrtc' && x.state === 'playing' && x.framesDecoded >= 30 ? x : null;
  });
  const info = await page.evaluate(async () => {
    const p = window.roomcast.player;
    window.__pc0 = p.pc;
    // The selected pair's remote address: the relay's, which the server advertises.
    const stats = await p.pc.getStats();
    let remote = null;
    stats.forEach((s) => {
      if (s.type !== 'transport' || !s.selectedCandidatePairId) return;
      remote = stats.get(stats.get(s.selectedCandidatePairId)?.remoteCandidateId)?.address ?? null;
    });
    return { resource: p.resource, remote };
  });
  check(info.remote === '127.0.0.2', `the viewer does not go through the relay: ${JSON.stringify(info)}`);
  check(ofMethod('POST').length === 1, `WHEP requests before the cut: ${JSON.stringify(ofMethod('POST'))}`);
  emit({ type: 'playing', resource: info.resource, stats: before });

  // The path is cut: the player sees the loss, waits out its grace and restarts ICE.
  const t0 = Date.now();
  await waitFor('the player to restart ICE (a PATCH) after the cut', async () => {
    if (ofMethod('POST').length > 1) {
      throw Object.assign(new Error(`a new WHEP POST instead of an ICE restart: ${JSON.stringify(whep.map(({ q, ...w }) => w))}`), { fatal: true });
    }
    return ofMethod('PATCH').length > 0;
  }, 30000);
  const states = await page.evaluate(() => window.__states);
  const tPatch = Date.now();
  const stalled = (await playerStats(page)).framesDecoded;
  emit({ type: 'restart_started', after_ms: tPatch - t0, states });

  const done = await waitFor('the icerestart event', async () => (await page.evaluate(() => window.__restarts))[0], 15000);
  // The player noticed the silence itself, before the browser's ICE did.
  check(done.trigger === 'quiet', `what started the ICE restart: ${JSON.stringify(done)} (connection states ${JSON.stringify(states)})`);
  if (!gone) {
    check(done.ok === true, `the ICE restart failed: ${JSON.stringify(done)}`);
    // --stall: done while the publisher is still stopped (the server's STUN
    // answers, no media), and the page says it waits for the stream, not that
    // the connection was lost; the Rust test lets ffmpeg go on after longer
    // than the player's 10 s frame-stall check.
    if (stall) {
      const shown = await page.evaluate(() => ({ state: window.roomcast.player.state, text: document.querySelector('.rc-status')?.textContent }));
      check(shown.state === 'connecting' && /Waiting for the stream/.test(shown.text), `the page during the stall: ${JSON.stringify(shown)}`);
    }
    emit({ type: 'restart_done', restart: done });
    await waitFor('a new frame decoded', async () => (await playerStats(page)).framesDecoded > stalled, stall ? 30000 : 10000);
    const frameAfterMs = Date.now() - tPatch;
    const after = await waitFor('60 more frames on the same PeerConnection', async () => {
      const same = await page.evaluate(() => window.roomcast.player.pc === window.__pc0);
      if (!same) throw Object.assign(new Error('the PeerConnection was replaced'), { fatal: true });
      const x = await playerStats(page);
      return x.state === 'playing' && x.framesDecoded >= before.framesDecoded + 60 ? x : null;
    }, stall ? 40000 : 20000); // --stall: the publisher is stopped for 11 s more
    check(JSON.stringify(ofMethod('POST')) === '[201]' && JSON.stringify(ofMethod('PATCH')) === '[200]',
      `WHEP requests: ${JSON.stringify(whep.map(({ q, ...w }) => w))}`);
    check(after.counts.whepPosts === 1 && after.counts.iceRestarts === 1 && after.counts.iceRestartsOk === 1,
      `player counts: ${JSON.stringify(after.counts)}`);
    await ctx.close();
    return {
      restart: done, frame_after_patch_ms: frameAfterMs, resumed_after_ms: Date.now() - t0, states,
      counts: after.counts, frames: [before.framesDecoded, stalled, after.framesDecoded],
    };
  }
  check(done.ok === false && done.status === 404, `the ICE restart of a deleted session: ${JSON.stringify(done)}`);
  const after = await waitFor('a new session to play (30 frames)', async () => {
    const fresh = await page.evaluate(() => window.roomcast.player.pc && window.roomcast.player.pc !== window.__pc0);
    const x = await playerStats(page);
    return fresh && x.state === 'playing' && x.framesDecoded >= 30 ? x : null;
  }, 30000);
  check(JSON.stringify(ofMethod('PATCH')) === '[404]' && ofMethod('POST').length === 2 && ofMethod('POST')[1] === 201,
    `WHEP requests: ${JSON.stringify(whep.map(({ q, ...w }) => w))}`);
  check(after.counts.whepPosts === 2 && after.counts.iceRestarts === 1 && after.counts.iceRestartsOk === 0,
    `player counts: ${JSON.stringify(after.counts)}`);
  await ctx.close();
  return { restart: done, resumed_after_ms: Date.now() - t0, states, counts: after.counts };
}

// --- with a real Matrix room (tests/matrix_pages.rs: real Synapse, real roomcast, ffmpeg) ---

/** JSON of a `--NAME` argument. */
const jsonOpt = (name, dflt = null) => {
  const v = opt(name);
  return v === null ? dflt : JSON.parse(v);
};

/** /watch/{stream} of a `!live new` room: the Rust test renames the room, sends messages and
 *  redacts them in Synapse between the steps announced here; the page's guest posts for real. */
async function mxWatch(browser) {
  const stream = opt('stream');
  const title = opt('title');
  const renamed = opt('renamed');
  const htmlBody = opt('html-body');
  const sender = opt('sender');
  const guestName = opt('guest-name', 'Carol');
  const guestBody = opt('guest-body', 'hello from the page');
  const historyBody = opt('history-body');
  const ctx = await browser.newContext({ viewport: DESKTOP });
  // When each title text first appears (Date.now(), compared with the rename time by the test).
  await ctx.addInitScript(() => {
    window.__titles = {};
    const note = () => {
      const t = document.getElementById('title')?.textContent;
      if (t && !(t in window.__titles)) window.__titles[t] = Date.now();
    };
    new MutationObserver(note).observe(document, { subtree: true, childList: true, characterData: true });
  });
  const page = await ctx.newPage();
  watchConsole(page, 'mx-watch');
  await page.goto(`${BASE}/watch/${stream}`);
  const ui = () => page.evaluate(() => ({
    title: document.getElementById('title').textContent,
    docTitle: document.title,
    badge: document.getElementById('state').textContent,
    chatShown: !document.querySelector('.chat').hidden,
    messages: [...document.querySelectorAll('.chat-msg')].map((li) => ({
      id: li.dataset.id,
      sender: li.querySelector('.chat-sender').textContent,
      sender_id: li.querySelector('.chat-sender').getAttribute('title'),
      body: li.querySelector('.chat-body').textContent,
      guest: li.classList.contains('is-guest'),
      elements: li.querySelector('.chat-body').children.length,
    })),
  }));
  const st = await waitFor('the watch page to play the stream (30 frames)', async () => {
    const x = await playerStats(page);
    return x && x.framesDecoded >= 30 && x.state === 'playing' ? x : null;
  });
  const u0 = await waitFor('the room name as title, LIVE and the chat panel with the earlier message', async () => {
    const x = await ui();
    const earlier = !historyBody || x.messages.some((m) => m.body === historyBody && m.sender === sender);
    return x.title === title && x.badge === 'LIVE' && x.chatShown && earlier ? x : null;
  }, 20000);
  emit({ type: 'ready', stats: st, ui: u0 });

  // The test renames the room in Synapse now.
  const seenAt = await waitFor(`the title to become ${JSON.stringify(renamed)}`,
    () => page.evaluate((t) => window.__titles[t] || null, renamed), 15000);
  check((await ui()).docTitle.startsWith(renamed), `document title: ${(await ui()).docTitle}`);
  emit({ type: 'renamed', seen_at: seenAt });

  // The test sends a message with HTML in it from Matrix now.
  const mx = await waitFor('the Matrix message in the chat panel', async () => (await ui()).messages.find((m) => m.body === htmlBody), 20000);
  check(mx.elements === 0, `the message's HTML was parsed: ${JSON.stringify(mx)}`);
  check(mx.sender === sender && !mx.guest, `sender: ${JSON.stringify(mx)}`);
  emit({ type: 'matrix_message_shown', message: mx });

  // A guest picks a name and posts.
  await page.fill('.chat-form input[name="name"]', guestName);
  await page.keyboard.press('Enter');
  await waitFor('the message box', () => page.evaluate(() => !!document.querySelector('.chat-form input[name="body"]')), 15000);
  const chattingAs = await page.evaluate(() => document.querySelector('.chat-note strong')?.textContent);
  check(chattingAs === `${guestName} (guest)`, `chatting as ${chattingAs}`);
  await page.fill('.chat-form input[name="body"]', guestBody);
  await page.keyboard.press('Enter');
  const own = await waitFor('the guest message to show', async () => (await ui()).messages.find((m) => m.body === guestBody && m.id.startsWith('$')), 20000);
  emit({ type: 'guest_posted', message: own, display_name: chattingAs });
  // The server's echo on the feed (it carries sender_id) replaces the page's own copy.
  const echo = await waitFor('the feed to echo the guest message', async () => {
    const x = await ui();
    const same = x.messages.filter((m) => m.id === own.id);
    return same.length === 1 && same[0].sender_id ? same[0] : null;
  }, 20000);
  check(echo.guest && echo.sender === `${guestName} (guest)` && (await ui()).messages.filter((m) => m.body === guestBody).length === 1,
    `echo: ${JSON.stringify(echo)}`);
  const errorText = await page.evaluate(() => { const e = document.querySelector('.chat-error'); return e.hidden ? '' : e.textContent; });
  check(!errorText, `chat error shown: ${errorText}`);
  await shots(page, 'mx-watch', async () => (await playerStats(page))?.state === 'playing');

  // The test redacts both messages in Matrix now.
  emit({ type: 'await_redactions', ids: [mx.id, own.id] });
  await waitFor('the redacted messages to leave the chat panel', async () => {
    const x = await ui();
    return !x.messages.some((m) => m.id === mx.id || m.id === own.id);
  }, 20000);
  const left = (await ui()).messages;
  emit({ type: 'redacted', left });
  await ctx.close();
  return { rename_seen_at: seenAt, matrix_message: mx, guest_message: echo, left };
}

/** mx-chat: the watch page's chat of a room where the test posted formatted, reply, thread, edited,
 *  emote, image and sticker messages, a reaction and an avatar before roomcast restarted (so all of it
 *  comes from the backfill). Reports what the panel shows; the test asserts. Then a reaction made
 *  live must count, and its redaction uncount. */
async function mxChat(browser) {
  const stream = opt('stream');
  const expect = Number(opt('messages'));
  const reactTo = opt('react-to');
  const ctx = await browser.newContext({ viewport: DESKTOP });
  const page = await ctx.newPage();
  watchConsole(page, 'mx-chat');
  await page.goto(`${BASE}/watch/${stream}`);
  const ui = () => page.evaluate(() => {
    const img = (el) => el && { src: el.getAttribute('src'), loaded: el.complete && el.naturalWidth > 0, w: el.naturalWidth };
    return {
      xss: window.__xss ?? null,
      scripts_in_chat: document.querySelectorAll('.chat script, .chat [onerror], .chat img:not(.chat-avatar):not(.chat-media)').length,
      messages: [...document.querySelectorAll('.chat-list > .chat-msg')].map((li) => {
        const body = li.querySelector('.chat-body');
        return {
          id: li.dataset.id,
          classes: li.className,
          sender: li.querySelector('.chat-sender').textContent,
          body: body.textContent,
          tags: [...body.querySelectorAll('*')].map((e) => e.localName),
          links: [...body.querySelectorAll('a')].map((a) => ({ href: a.getAttribute('href'), rel: a.rel, target: a.target })),
          reply: li.querySelector('.chat-reply') && {
            sender: li.querySelector('.chat-reply-sender')?.textContent ?? null,
            body: li.querySelector('.chat-reply-body').textContent,
          },
          reactions: [...li.querySelectorAll('.chat-reaction')].map((r) => ({
            key: r.querySelector('.chat-reaction-key').textContent, count: Number(r.querySelector('.chat-reaction-count').textContent),
          })),
          media: img(li.querySelector('.chat-media')),
          avatar: img(li.querySelector('img.chat-avatar')),
          edited: !!li.querySelector('.chat-edited'),
        };
      }),
    };
  });
  const shown = await waitFor(`${expect} messages in the chat panel, their images loaded`, async () => {
    const x = await ui();
    const imgs = x.messages.flatMap((m) => [m.media, m.avatar]).filter(Boolean);
    return x.messages.length >= expect && imgs.every((i) => i.loaded) ? x : null;
  }, 30000);
  await shots(page, 'mx-chat');
  emit({ type: 'shown', ui: shown });
  const count = (x, key) => x.messages.find((m) => m.id === reactTo)?.reactions.find((r) => r.key === key)?.count ?? 0;
  // The test reacts again now, from a second user.
  await waitFor('the live reaction to count 2', async () => count(await ui(), '👍') === 2, 20000);
  emit({ type: 'reaction_counted' });
  // The test redacts that reaction now.
  await waitFor('the redacted reaction to uncount', async () => count(await ui(), '👍') === 1, 20000);
  emit({ type: 'reaction_uncounted' });
  await ctx.close();
  return {};
}

/** The Matrix client around the widget: a room view with the app drawer on top, as Element lays out a
 *  widget pinned with `io.element.widgets.layout` (container top, height in % of the room view). */
const CLIENT_HTML = (heightPct) => `<!doctype html><title>Matrix client</title>
<style>
  html, body { margin: 0; height: 100%; font: 14px system-ui, sans-serif; background: #15191e; color: #e6e9ee; }
  body { display: flex; }
  nav { width: 240px; background: #21262c; padding: 12px; box-sizing: border-box; flex: none; }
  main { flex: 1; display: flex; flex-direction: column; min-width: 0; }
  header { height: 56px; display: flex; align-items: center; padding: 0 16px; border-bottom: 1px solid #2f353c; font-weight: 600; flex: none; }
  .apps { height: ${heightPct}%; padding: 8px; box-sizing: border-box; flex: none; border-bottom: 1px solid #2f353c; }
  .apps iframe { border: 0; width: 100%; height: 100%; display: block; border-radius: 8px; }
  .timeline { flex: 1; padding: 16px; color: #8d97a5; }
  dialog { background: #21262c; color: inherit; border: 1px solid #394049; border-radius: 8px; }
  body.light { background: #fff; color: #17191c; } body.light nav { background: #f4f6fa; } body.light header, body.light .apps { border-color: #e3e8f0; }
  @media (max-width: 600px) { nav { display: none; } }
</style>
<body><nav>Rooms</nav><main><header id="room-name"></header><div class="apps" id="apps"></div>
<div class="timeline">Timeline</div></main>
<dialog id="consent"><p>This widget wants to verify your identity.</p><button id="allow">Continue</button> <button id="deny">Cancel</button></dialog>
<script src="/matrix-widget-api.js"></script></body>`;

/** The widget the bot wrote into the room (`im.vector.modular.widgets`, read from Synapse by the
 *  test), templated and framed the way Element Web does it, talking to a ClientWidgetApi. Each run is
 *  one user: its OpenID token comes from Synapse when the widget asks (with a consent step, or
 *  remembered). `expect: "play"` → frames decoded; `"refused"` → the page says why. */
async function mxWidget(browser) {
  const widget = jsonOpt('widget');
  const layout = jsonOpt('layout', {});
  const roomId = opt('room');
  const roomName = opt('room-name', '');
  const hs = opt('hs');
  const runs = jsonOpt('runs');
  const label = opt('name', 'mx-widget');
  const require = createRequire(import.meta.url);
  const lib = readFileSync(require.resolve('matrix-widget-api/dist/api.js'), 'utf8');
  const site = await hostServer();
  site.set('/matrix-widget-api.js', lib);
  const heightPct = layout?.widgets?.[widget.id]?.container === 'top' ? (layout.widgets[widget.id].height || 40) : 100;
  site.set('/room', CLIENT_HTML(heightPct));
  const results = [];
  for (const run of runs) {
    if (run.expect === 'refused') allowedErrors.push(/status of 403/);
    const ctx = await browser.newContext({ viewport: run.viewport === 'phone' ? PHONE : DESKTOP });
    const host = await ctx.newPage();
    const name = `${label}-${run.label}`;
    watchConsole(host, name);
    const seen = { whepAuth: [], access: [] };
    host.on('request', (r) => {
      const p = new URL(r.url()).pathname;
      if (r.method() === 'POST' && p.startsWith('/whep/')) seen.whepAuth.push(r.headers().authorization || null);
    });
    host.on('response', (r) => {
      const p = new URL(r.url()).pathname;
      if (r.request().method() === 'POST' && /^\/api\/v1\/streams\/[^/]+\/access$/.test(p)) seen.access.push(r.status());
    });
    await host.goto(`${site.origin}/room`);
    const src = await host.evaluate(({ widget, roomId, roomName, hs, run }) => {
      const { ClientWidgetApi, Widget, WidgetDriver, OpenIDRequestState } = window.mxwidgets;
      if (run.theme === 'light') document.body.classList.add('light');
      document.getElementById('room-name').textContent = roomName;
      window.openidAsked = 0;
      const getToken = async () => {
        const r = await fetch(`${hs}/_matrix/client/v3/user/${encodeURIComponent(run.user_id)}/openid/request_token`, {
          method: 'POST', headers: { Authorization: `Bearer ${run.access_token}`, 'Content-Type': 'application/json' }, body: '{}',
        });
        if (!r.ok) throw new Error(`openid/request_token: ${r.status}`);
        return r.json();
      };
      // What Element's StopGapWidgetDriver does: ask the user once (a dialog), or use the remembered answer.
      class Driver extends WidgetDriver {
        async validateCapabilities(requested) { return requested; }
        async askOpenID(observer) {
          window.openidAsked++;
          if (!run.consent) return observer.update({ state: OpenIDRequestState.Allowed, token: await getToken() });
          observer.update({ state: OpenIDRequestState.PendingUserConfirmation });
          const dialog = document.getElementById('consent');
          dialog.showModal();
          document.getElementById('allow').onclick = async () => {
            dialog.close();
            observer.update({ state: OpenIDRequestState.Allowed, token: await getToken() });
          };
          document.getElementById('deny').onclick = () => {
            dialog.close();
            observer.update({ state: OpenIDRequestState.Blocked });
          };
        }
      }
      const w = new Widget({ ...widget, creatorUserId: widget.creatorUserId });
      // Element Web's StopGapWidget.runUrlTemplate.
      const templated = w.getCompleteUrl({
        widgetRoomId: roomId, currentUserId: run.user_id, userDisplayName: run.display_name, userHttpAvatarUrl: undefined,
        clientId: 'io.element.web', clientTheme: run.theme, clientLanguage: 'en', deviceId: 'TESTDEVICE', baseUrl: hs,
      });
      const parsed = new URL(templated);
      parsed.searchParams.set('widgetId', w.id);
      parsed.searchParams.set('parentUrl', window.location.href.split('#', 2)[0]);
      const url = parsed.toString().replace(/%24/g, '$');
      // Element's AppTile iframe.
      const iframe = document.createElement('iframe');
      iframe.allow = 'microphone; camera; encrypted-media; autoplay; display-capture; clipboard-write; clipboard-read;';
      iframe.allowFullscreen = true;
      iframe.sandbox = 'allow-forms allow-popups allow-popups-to-escape-sandbox allow-same-origin allow-scripts allow-presentation allow-downloads';
      iframe.title = widget.name;
      iframe.src = url;
      document.getElementById('apps').append(iframe);
      const api = new ClientWidgetApi(w, iframe, new Driver());
      window.clientApi = api;
      window.handshake = false;
      api.once('ready', () => { window.handshake = true; });
      return url;
    }, { widget, roomId, roomName, hs, run });
    await waitFor('the widget handshake', () => host.evaluate(() => window.handshake), 20000);
    const frame = await waitFor('the widget frame', async () => host.frames().find((f) => f.url().includes('/widget')));
    const got = await frame.evaluate(() => Object.fromEntries(new URLSearchParams(location.search)));
    check(got.roomId === roomId && got.widgetId === widget.id && got.theme === run.theme && !/\$/.test(JSON.stringify(got)),
      `the widget's parameters after templating: ${JSON.stringify(got)} (iframe src ${src})`);
    const status = () => frame.evaluate(() => {
      const s = document.querySelector('.rc-status');
      const m = document.getElementById('message');
      return {
        player: document.querySelector('.rc-player')?.dataset.state || null,
        status: s && !s.hidden ? s.textContent : '',
        message: m && !m.hidden ? m.textContent : '',
        retry: !!document.querySelector('.rc-retry') && !document.querySelector('.rc-retry').hidden,
        title: document.querySelector('.w-title')?.textContent || '',
        theme: document.documentElement.dataset.theme,
      };
    });
    if (run.consent) {
      await waitFor('the client to ask for consent', () => host.evaluate(() => document.getElementById('consent').open), 20000);
      // Meanwhile the widget says what it waits for (not just "Connecting…").
      const pending = await waitFor('the widget to say it waits for the client', async () => {
        const x = await status();
        return /Matrix client/.test(x.status) ? x : null;
      }, 5000);
      emit({ type: 'consent_asked', run: run.label, widget: pending });
      if (run.consent === 'allow') await shots(host, `${name}-consent`);
      await host.click(run.consent === 'allow' ? '#allow' : '#deny');
    }
    const out = { label: run.label, expect: run.expect, src, params: got };
    if (run.expect === 'play') {
      out.stats = await waitFor('the widget to play (30 frames)', async () => {
        const x = await playerStats(frame);
        return x && x.framesDecoded >= 30 && x.state === 'playing' ? x : null;
      });
      out.ui = await status();
      check(!roomName || out.ui.title === roomName, `widget title ${JSON.stringify(out.ui.title)}, room ${JSON.stringify(roomName)}`);
      check(out.ui.theme === (run.theme === 'dark' ? 'dark' : 'light'), `theme ${out.ui.theme}`);
    } else {
      out.ui = await waitFor('the refusal on the page', async () => {
        const x = await status();
        return x.player === 'error' && x.status ? x : null;
      }, 30000);
      if (run.says) check(new RegExp(run.says).test(out.ui.status), `the refusal says ${JSON.stringify(out.ui.status)}, expected /${run.says}/`);
      check(out.ui.retry, `no "Try again" with ${JSON.stringify(out.ui.status)}`);
      const frames = (await playerStats(frame))?.framesDecoded || 0;
      check(frames === 0, `a refused viewer decoded ${frames} frames`);
      await shots(host, name);
    }
    if (run.retry_allow) {
      // The viewer changes their mind: "Try again", and this time confirms in the client.
      await frame.click('.rc-retry');
      await waitFor('the client to ask again', () => host.evaluate(() => document.getElementById('consent').open), 20000);
      await host.click('#allow');
      out.stats = await waitFor('the widget to play after trying again', async () => {
        const x = await playerStats(frame);
        return x && x.framesDecoded >= 30 && x.state === 'playing' ? x : null;
      });
      out.ui_after_retry = await status();
    }
    out.openid_asked = await host.evaluate(() => window.openidAsked);
    out.whep_auth = seen.whepAuth.map((a) => (a ? a.replace(/^(Bearer v[12]\.\d+)\..*/, '$1.…') : a));
    out.access_status = seen.access;
    if (run.openid) {
      const wantAccess = run.retry_allow ? [200] : run.consent === 'deny' ? [] : [run.expect === 'play' ? 200 : 403];
      check(out.openid_asked === (run.retry_allow ? 2 : 1), `OpenID asked ${out.openid_asked} times`);
      check(JSON.stringify(seen.access) === JSON.stringify(wantAccess), `access answers ${seen.access}, expected ${wantAccess}`);
    } else {
      check(out.openid_asked === 0 && seen.access.length === 0, `OpenID asked for a public stream: ${out.openid_asked}`);
    }
    if (run.expect === 'play' || run.retry_allow) {
      check(seen.whepAuth.length >= 1 && seen.whepAuth.every((a) => (run.openid ? /^Bearer v[12]\./.test(a || '') : a === null)),
        `WHEP Authorization: ${JSON.stringify(out.whep_auth)}`);
    } else {
      check(seen.whepAuth.length === 0, `a refused viewer still offered WHEP: ${JSON.stringify(out.whep_auth)}`);
    }
    emit({ type: 'widget_run', ...out });
    if (run.expect === 'play') await shots(host, name, async () => (await playerStats(frame))?.state === 'playing');
    results.push(out);
    await ctx.close();
  }
  await site.close();
  return { runs: results };
}

/** The widget's room chat (widget/src/lib/room_chat.js) in the Element-like client of mx-widget, whose
 *  driver is backed by the real Synapse as the user's client: read_events from `/messages`, member state
 *  from `/state`, sends with `PUT /send`, and every new event of a `/sync` long-poll pushed with
 *  `feedEvent` (state with `feedStateUpdate`). Run "granted": the history shows beside the player as text
 *  (senders by display name, disambiguated),
 *  a message the Rust test sends (`live_wanted` → `live_shown`) appears live, a 👍 from the widget reaches
 *  Synapse (`reacted`; the test reads it back) and counts once after the echo; on a phone the chat opens
 *  over the player with its toggle. Run "refused": the client grants nothing; the player plays, no chat. */
async function mxWidgetChat(browser) {
  const widget = jsonOpt('widget');
  const layout = jsonOpt('layout', {});
  const roomId = opt('room');
  const roomName = opt('room-name', '');
  const hs = opt('hs');
  const user = jsonOpt('user');
  const history = jsonOpt('history', {}); // body → the sender the chat must show
  const historyReaction = opt('history-reaction', '');
  const liveBody = opt('live-body');
  const label = opt('name', 'mx-widget-chat');
  const require = createRequire(import.meta.url);
  const site = await hostServer();
  site.set('/matrix-widget-api.js', readFileSync(require.resolve('matrix-widget-api/dist/api.js'), 'utf8'));
  const heightPct = layout?.widgets?.[widget.id]?.container === 'top' ? (layout.widgets[widget.id].height || 40) : 100;
  site.set('/room', CLIENT_HTML(heightPct));
  const out = {};
  for (const grant of [true, false]) {
    const run = grant ? 'granted' : 'refused';
    const ctx = await browser.newContext({ viewport: DESKTOP });
    const host = await ctx.newPage();
    watchConsole(host, `${label}-${run}`);
    await host.goto(`${site.origin}/room`);
    await host.evaluate(({ widget, roomId, roomName, hs, user, grant }) => {
      const { ClientWidgetApi, Widget, WidgetDriver } = window.mxwidgets;
      document.getElementById('room-name').textContent = roomName;
      const enc = encodeURIComponent;
      const mx = async (path, method = 'GET', body = undefined) => {
        const r = await fetch(`${hs}/_matrix/client/v3${path}`, {
          method, headers: { Authorization: `Bearer ${user.access_token}`, 'Content-Type': 'application/json' },
          body: body === undefined ? undefined : JSON.stringify(body),
        });
        if (!r.ok) throw new Error(`${method} ${path.split('?')[0]}: ${r.status} ${await r.text()}`);
        return r.json();
      };
      window.log = { asked: [], reads: [], states: 0, sent: [], fed: [] };
      class Driver extends WidgetDriver {
        async validateCapabilities(requested) {
          window.log.asked = [...requested];
          return grant ? requested : new Set();
        }
        async readRoomTimeline(room, type, msgtype, stateKey, limit) {
          window.log.reads.push({ room, type, limit });
          const filter = enc(JSON.stringify({ types: [type] }));
          const r = await mx(`/rooms/${enc(room)}/messages?dir=b&limit=${Math.min(limit || 50, 100)}&filter=${filter}`);
          return r.chunk.filter((e) => (stateKey === undefined ? e.state_key === undefined : e.state_key === stateKey)
            && (!msgtype || e.content?.msgtype === msgtype)).map((e) => ({ ...e, room_id: room }));
        }
        async readRoomState(room, type, stateKey) {
          window.log.states++;
          const all = await mx(`/rooms/${enc(room)}/state`);
          return all.filter((e) => e.type === type && (stateKey === undefined || e.state_key === stateKey)).map((e) => ({ ...e, room_id: room }));
        }
        async sendEvent(type, content, stateKey, room) {
          const target = room || roomId;
          const txn = `w${Date.now()}${Math.random().toString(36).slice(2)}`;
          const r = await mx(`/rooms/${enc(target)}/send/${enc(type)}/${txn}`, 'PUT', content);
          window.log.sent.push({ type, content, event_id: r.event_id });
          return { roomId: target, eventId: r.event_id };
        }
      }
      const w = new Widget({ ...widget });
      const parsed = new URL(w.getCompleteUrl({
        widgetRoomId: roomId, currentUserId: user.user_id, userDisplayName: user.display_name,
        clientId: 'io.element.web', clientTheme: 'dark', clientLanguage: 'en', deviceId: 'TESTDEVICE', baseUrl: hs,
      }));
      parsed.searchParams.set('widgetId', w.id);
      parsed.searchParams.set('parentUrl', window.location.href.split('#', 2)[0]);
      const iframe = document.createElement('iframe');
      iframe.allow = 'autoplay; encrypted-media; display-capture; clipboard-write; clipboard-read;';
      iframe.allowFullscreen = true;
      iframe.sandbox = 'allow-forms allow-popups allow-popups-to-escape-sandbox allow-same-origin allow-scripts allow-presentation allow-downloads';
      iframe.src = parsed.toString().replace(/%24/g, '$');
      document.getElementById('apps').append(iframe);
      const api = new ClientWidgetApi(w, iframe, new Driver());
      window.clientApi = api;
      window.handshake = false;
      api.once('ready', () => { window.handshake = true; });
      // The client's sync: what the room gets from now on goes to the widget (the API drops
      // what the widget may not receive).
      (async () => {
        const filter = enc(JSON.stringify({ room: { rooms: [roomId], timeline: { limit: 1 } }, presence: { types: [] }, account_data: { types: [] } }));
        let since = (await mx(`/sync?timeout=0&filter=${filter}`)).next_batch;
        while (!window.stopSync) {
          const r = await mx(`/sync?since=${enc(since)}&timeout=5000&filter=${filter}`);
          since = r.next_batch;
          for (const ev of r.rooms?.join?.[roomId]?.timeline?.events || []) {
            const raw = { ...ev, room_id: roomId };
            window.log.fed.push({ type: ev.type, event_id: ev.event_id });
            if (ev.state_key !== undefined) await api.feedStateUpdate(raw);
            else await api.feedEvent(raw);
          }
        }
      })().catch((e) => { if (!window.stopSync) console.error(`sync: ${e.message}`); });
    }, { widget, roomId, roomName, hs, user, grant });
    await waitFor('the widget handshake', () => host.evaluate(() => window.handshake), 20000);
    const frame = await waitFor('the widget frame', async () => host.frames().find((f) => f.url().includes('/widget')));
    const stats = await waitFor('the widget to play (30 frames)', async () => {
      const x = await playerStats(frame);
      return x && x.framesDecoded >= 30 && x.state === 'playing' ? x : null;
    });
    const ui = () => frame.evaluate(() => {
      const box = (el) => { if (!el) return null; const r = el.getBoundingClientRect(); return { left: r.left, right: r.right, top: r.top, bottom: r.bottom, width: r.width, height: r.height }; };
      const chat = document.querySelector('.wc');
      const toggle = document.querySelector('.w-chat-toggle');
      return {
        chat_shown: !!chat && !chat.hidden && getComputedStyle(chat).display !== 'none',
        toggle_shown: !!toggle && !toggle.hidden && document.body.contains(toggle),
        chat: box(chat), player: box(document.querySelector('.rc-player')),
        html_elements: chat ? chat.querySelectorAll('img, script, b, i, a').length : 0,
        xss: window.__xss === true,
        messages: [...document.querySelectorAll('.wc-msg')].map((li) => ({
          id: li.dataset.id, sender: li.querySelector('.wc-sender')?.textContent, body: li.querySelector('.wc-body')?.textContent,
          chips: [...li.querySelectorAll('.wc-chip')].map((c) => ({ text: c.textContent, mine: c.getAttribute('aria-pressed') === 'true' })),
        })),
      };
    });
    if (!grant) {
      const x = await ui();
      const log = await host.evaluate(() => window.log);
      check(!x.chat_shown && !x.toggle_shown, `chat shown although the client refused: ${JSON.stringify(x)}`);
      check(log.reads.length === 0 && log.states === 0, `the widget read the room without the capabilities: ${JSON.stringify(log)}`);
      out.refused = { asked: log.asked, stats };
      await shots(host, `${label}-refused`, async () => (await playerStats(frame))?.state === 'playing');
      await host.evaluate(() => { window.stopSync = true; });
      await ctx.close();
      continue;
    }
    const asked = await host.evaluate(() => window.log.asked);
    for (const cap of ['org.matrix.msc2762.receive.event:m.room.message', 'org.matrix.msc2762.receive.event:m.reaction', 'org.matrix.msc2762.send.event:m.reaction']) {
      check(asked.includes(cap), `the widget did not ask for ${cap}: ${JSON.stringify(asked)}`);
    }
    // The history, as text, with the sender's display name (member state from the client).
    const shown = await waitFor('the room history in the widget chat', async () => {
      const x = await ui();
      return Object.keys(history).every((b) => x.messages.some((m) => m.body === b)) ? x : null;
    }, 20000);
    // Senders by display name from the member state the client pushed (two "Alice"s told apart).
    await waitFor('the senders by display name', async () => {
      const x = await ui();
      return Object.entries(history).every(([b, who]) => x.messages.find((m) => m.body === b)?.sender === who);
    }, 10000);
    check(shown.html_elements === 0 && !shown.xss, `HTML of a message became elements: ${JSON.stringify(shown)}`);
    check(shown.chat_shown && shown.chat.left >= shown.player.right - 1 && shown.chat.height > 100,
      `the chat is not beside the player: ${JSON.stringify({ chat: shown.chat, player: shown.player })}`);
    if (historyReaction) {
      await waitFor('the earlier reaction under its message', async () => (await ui()).messages.some((m) => m.chips.some((c) => c.text === `${historyReaction} 1`)), 10000);
    }
    emit({ type: 'live_wanted', messages: shown.messages });
    const live = await waitFor('the live message', async () => (await ui()).messages.find((m) => m.body === liveBody), 20000);
    emit({ type: 'live_shown', message: live, seen_at: Date.now() });
    // A 👍 from the widget: sent through the client, shown at once, counted once after the echo.
    const li = `.wc-msg[data-id="${live.id}"]`;
    await frame.click(`${li} .wc-add`);
    await frame.click(`${li} .wc-pick[aria-label="React with 👍"]`);
    const sent = await waitFor('the reaction sent by the client', async () => (await host.evaluate(() => window.log.sent)).find((s) => s.type === 'm.reaction'), 10000);
    check(sent.content['m.relates_to']?.event_id === live.id && sent.content['m.relates_to'].key === '👍', `sent ${JSON.stringify(sent)}`);
    emit({ type: 'reacted', event_id: sent.event_id, target: live.id, key: '👍' });
    await waitFor('the reaction echo from the sync', async () => (await host.evaluate(() => window.log.fed)).some((f) => f.event_id === sent.event_id), 20000);
    const after = await waitFor('👍 1, pressed', async () => {
      const m = (await ui()).messages.find((m) => m.id === live.id);
      const chip = m?.chips.find((c) => c.text.startsWith('👍'));
      return chip && chip.text === '👍 1' && chip.mine ? m : null;
    }, 10000);
    await shot(host, `${label}-granted`);
    // A phone: the chat starts closed, its toggle opens it over the player.
    await host.setViewportSize(PHONE);
    await waitFor('the chat closed on a phone', async () => { const x = await ui(); return !x.chat_shown && x.toggle_shown; }, 5000);
    await shot(host, `${label}-phone-closed`);
    await frame.click('.w-chat-toggle');
    const over = await waitFor('the chat over the player', async () => {
      const x = await ui();
      return x.chat_shown && x.chat.left > x.player.left && x.chat.right <= x.player.right + 1 ? x : null;
    }, 5000);
    await shot(host, `${label}-phone-open`);
    out.granted = { asked, history: shown.messages, live, reaction: sent, after, phone: { chat: over.chat, player: over.player }, stats };
    await host.evaluate(() => { window.stopSync = true; });
    await ctx.close();
  }
  await site.close();
  return out;
}

// --- main ---------------------------------------------------------------------------
/** The watch page of a full cluster node (cluster.redirect_viewers): its WHEP POST is
 *  answered 307 to another node, which the player follows; it plays from there, and its
 *  session's resource (PATCH/DELETE) is on that node. --expect-resource PREFIX: the
 *  resource URL must start with it. Then the page is closed. */
async function watchRedirect(browser) {
  const stream = opt('stream', 't1');
  const ctx = await browser.newContext({ viewport: DESKTOP });
  const page = await ctx.newPage();
  watchConsole(page, 'watch-redirect');
  await page.goto(`${BASE}/watch/${stream}`);
  const stats = await waitFor('the page to play (30 frames)', async () => {
    const s = await playerStats(page);
    return s && s.framesDecoded >= 30 && s.state === 'playing' ? s : null;
  });
  const resource = await page.evaluate(() => window.roomcast.player.resource);
  const prefix = opt('expect-resource', '');
  check(resource && resource.startsWith(prefix), `the session's resource ${resource} is not under ${prefix}`);
  emit({ type: 'playing', resource, stats });
  // Closing the page ends the session (the player's pagehide DELETE, or the
  // PeerConnection's close, whichever B sees first).
  await ctx.close();
  return { resource };
}

const SCENARIOS = { 'watch-redirect': watchRedirect, watch, chat, embed, multiview, widget, publish, index, hls, 'hls-codec': hlsCodec, 'ice-fail': iceFail, 'ice-restart': iceRestart, 'mx-watch': mxWatch, 'mx-widget': mxWidget, 'mx-widget-chat': mxWidgetChat, 'mx-chat': mxChat };

main(SCENARIOS, (name) => (name === 'publish' ? ['--use-fake-device-for-media-stream', '--use-fake-ui-for-media-stream'] : []));
