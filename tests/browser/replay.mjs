#!/usr/bin/env node
// Headless Chromium tests of the watch page's replays (tests/recording_pages.rs drives them).
//
//   node replay.mjs SCENARIO --base http://127.0.0.1:PORT --stream NAME [--artifacts DIR] [options]
//
// Scenarios:
//   play  the offline watch page lists the stream's past broadcasts; clicking the newest
//         plays it (--expect-mode hls|mp4|any), at --size WxH, about --duration seconds
//         long; seeking to the middle plays on from there (not with --no-seek;
//         then it plays on, past --play-past SECONDS if given);
//         "Back to the live page" brings the offline live player back.
//   chat  /watch/NAME?recording=ID (or --path, the bot's replay link): the session's chat beside the player shows, in order,
//         the messages sent up to the moment on screen (--bodies: JSON array, in the
//         order they were sent), and seeking moves that moment both ways.
// Output, waits and main() are harness.mjs's: one JSON object per stdout line, the last
// the "result"; the page's console errors fail a scenario; waits are conditions with deadlines.

import { BASE, DESKTOP, check, emit, has, main, opt, shots, waitFor, watchConsole } from './harness.mjs';

/** The replay player's figures. */
const replayStats = (page) => page.evaluate(() => {
  const cur = window.roomcast?.replays?.current;
  if (!cur) return null;
  const v = cur.player.video;
  const q = v.getVideoPlaybackQuality();
  return {
    id: cur.rec.id, mode: cur.player.mode, state: cur.player.state, time: v.currentTime, duration: v.duration,
    paused: v.paused, presented: q.totalVideoFrames, width: v.videoWidth, height: v.videoHeight,
    mse_parts: cur.player.parts ? cur.player.parts.loaded.size : null,
    buffered: Array.from({ length: v.buffered.length }, (_, i) => [v.buffered.start(i), v.buffered.end(i)]),
    error: v.error ? v.error.message || String(v.error.code) : null,
    badge: document.getElementById('state').textContent,
    liveHidden: document.querySelector('.rc-player:not(.rc-replay)')?.hidden ?? null,
  };
});

/** Waits until `accept` takes the replay's figures; a timeout says the last ones seen. */
async function waitStats(page, what, accept) {
  let seen = null;
  try {
    return await waitFor(what, async () => {
      seen = await replayStats(page);
      return seen && accept(seen) ? seen : null;
    });
  } catch (e) {
    throw new Error(`${e.message}; the replay's last figures: ${JSON.stringify(seen)}`);
  }
}

/** play: list → click → plays → seek to the middle → plays on from there. */
async function play(browser) {
  const stream = opt('stream', 't1');
  const ctx = await browser.newContext({ viewport: DESKTOP });
  const served = [];
  ctx.on('response', (r) => {
    const u = new URL(r.url());
    if (u.pathname.startsWith('/recordings/')) served.push({ path: u.pathname, status: r.status() });
  });
  const page = await ctx.newPage();
  watchConsole(page, 'replay');
  await page.goto(`${BASE}/watch/${stream}`);
  const items = await waitFor('the list of past broadcasts', () => page.evaluate(() => {
    const el = document.querySelector('.replays');
    if (!el || el.hidden) return null;
    const li = [...el.querySelectorAll('.replay-item')];
    return li.length ? li.map((x) => ({ id: x.dataset.id, text: x.textContent })) : null;
  }));
  emit({ type: 'listed', items });
  const want = opt('id', items[0].id);
  check(items.some((x) => x.id === want), `recording ${want} not listed: ${JSON.stringify(items)}`);
  await page.click(`.replay-item[data-id="${want}"] .replay-link`);
  const st = await waitStats(page, 'the replay to play (30 frames)',
    (s) => s.state === 'playing' && s.presented >= 30 && s.time > 1);
  check(st.id === want && st.badge === 'REPLAY' && st.liveHidden === true, `replay state: ${JSON.stringify(st)}`);
  const url = await page.evaluate(() => location.search);
  check(url.includes(`recording=${want}`), `address: ${url}`);
  const expectMode = opt('expect-mode', 'any');
  check(expectMode === 'any' || st.mode === expectMode, `played through ${st.mode}, expected ${expectMode}`);
  const size = opt('size');
  if (size) check(`${st.width}x${st.height}` === size, `video ${st.width}x${st.height}, expected ${size}`);
  const dur = Number(opt('duration', 'NaN'));
  if (Number.isFinite(dur)) check(Math.abs(st.duration - dur) <= 1.5, `duration ${st.duration} s, expected ${dur} ± 1.5`);
  emit({ type: 'playing', stats: st });
  if (has('no-seek')) {
    // --play-past S: on to S seconds at least (past a hole in the media, say).
    const past = Math.max(st.time + 2, Number(opt('play-past', '0')));
    const on = await waitStats(page, `playback to go on past ${past.toFixed(1)} s`,
      (s) => !s.paused && s.time > past && s.presented > st.presented + 20);
    await shots(page, `replay-${stream}`);
    await ctx.close();
    return {
      mode: st.mode, duration: st.duration, size: `${st.width}x${st.height}`, requests: served.length,
      buffered: on.buffered,
    };
  }

  // Seek to the middle: playback goes on from there, with new frames.
  const mid = st.duration / 2;
  await page.evaluate((t) => window.roomcast.replays.current.player.seek(t), mid);
  const after = await waitStats(page, 'playback to go on from the middle',
    (s) => !s.paused && s.time >= mid + 1 && s.time < mid + 10 && s.presented > st.presented + 10);
  emit({ type: 'seeked', to: mid, stats: after });
  await shots(page, `replay-${stream}`);
  // Back to the live page: the replay goes, the live player and OFFLINE come back.
  await page.click('#back-live');
  const back = await waitFor('the live page again', () => page.evaluate(() => {
    const live = document.querySelector('.rc-player:not(.rc-replay)');
    return !document.querySelector('.rc-replay') && live && !live.hidden && live.dataset.state === 'offline'
      && document.getElementById('state').textContent === 'OFFLINE' && !location.search.includes('recording=')
      ? { state: live.dataset.state, search: location.search } : null;
  }), 10000);
  emit({ type: 'back_to_live', back });
  check(served.some((s) => s.status === 200 || s.status === 206), `nothing served from /recordings: ${JSON.stringify(served)}`);
  await ctx.close();
  return {
    mode: st.mode, duration: st.duration, size: `${st.width}x${st.height}`, seek: { to: mid, time: after.time },
    requests: served.length, mse_parts: after.mse_parts, buffered: after.buffered,
  };
}

/** The replay chat's messages as shown: [{id, body, shown}] in page order. */
const chatUi = (page) => page.evaluate(() => {
  const cur = window.roomcast?.replays?.current;
  const el = document.querySelector('.replay-chat');
  if (!cur || !el) return null;
  return {
    loaded: Boolean(cur.chat && cur.chat.loaded),
    hidden: el.hidden,
    clock: cur.player.wallClock(),
    time: cur.player.video.currentTime,
    duration: cur.player.video.duration,
    state: cur.player.state,
    messages: [...el.querySelectorAll('.chat-msg')].map((li) => ({
      id: li.dataset.id, ts: Number(li.dataset.ts), body: li.querySelector('.chat-body').textContent,
      sender: li.querySelector('.chat-sender').textContent, shown: !li.hidden,
    })),
  };
});

/** chat: ?recording=ID with the session's chat, in order and in time with the video. */
async function chat(browser) {
  const stream = opt('stream', 't1');
  const id = opt('id');
  const bodies = JSON.parse(opt('bodies', '[]'));
  const ctx = await browser.newContext({ viewport: DESKTOP });
  const page = await ctx.newPage();
  watchConsole(page, 'replay-chat');
  await page.goto(`${BASE}${opt('path', `/watch/${stream}?recording=${encodeURIComponent(id)}`)}`);
  const loaded = await waitFor('the replay to play and its chat to load', async () => {
    const x = await chatUi(page);
    return x && x.loaded && !x.hidden && x.state === 'playing' && Number.isFinite(x.duration) ? x : null;
  });
  const order = loaded.messages.map((m) => m.body);
  emit({ type: 'loaded', messages: loaded.messages });
  check(JSON.stringify(order) === JSON.stringify(bodies), `chat order ${JSON.stringify(order)}, expected ${JSON.stringify(bodies)}`);
  const consistent = (x) => x.messages.every((m) => m.shown === (m.ts <= x.clock));
  const at = async (t, what) => {
    await page.evaluate((s) => {
      const p = window.roomcast.replays.current.player;
      p.video.pause();
      p.seek(s);
    }, t);
    return waitFor(what, async () => {
      const x = await chatUi(page);
      return x && Math.abs(x.time - t) < 0.6 && consistent(x) ? x : null;
    }, 20000);
  };
  // The start: nothing sent yet (the test's first message comes seconds in).
  const start = await at(0, 'the chat at the start');
  const shownAtStart = start.messages.filter((m) => m.shown).length;
  check(shownAtStart < bodies.length, `all ${bodies.length} messages shown at 0 s: ${JSON.stringify(start)}`);
  // The end: everything, in order.
  const end = await at(Math.max(0, loaded.duration - 0.5), 'the chat at the end');
  check(end.messages.every((m) => m.shown), `not all shown at the end: ${JSON.stringify(end.messages)}`);
  await shots(page, `replay-chat-${stream}`);
  // The middle: a prefix, and back to the start hides again.
  const midT = loaded.duration / 2;
  const mid = await at(midT, 'the chat in the middle');
  const shownMid = mid.messages.map((m) => m.shown);
  check(shownMid.every((s, i) => !s || shownMid.slice(0, i).every(Boolean)), `not a prefix: ${JSON.stringify(mid.messages)}`);
  const back = await at(0, 'the chat back at the start');
  check(back.messages.filter((m) => m.shown).length === shownAtStart, `seeking back did not hide: ${JSON.stringify(back.messages)}`);
  // Playing on shows the next message by itself.
  await page.evaluate(() => window.roomcast.replays.current.player.video.play());
  const grew = await waitFor('a message to appear as the video plays', async () => {
    const x = await chatUi(page);
    return x && x.messages.filter((m) => m.shown).length > shownAtStart && consistent(x) ? x : null;
  });
  await ctx.close();
  return {
    order, shown: { start: shownAtStart, middle: shownMid.filter(Boolean).length, end: end.messages.length },
    appeared_at_s: grew.time,
  };
}

const SCENARIOS = { play, chat };

main(SCENARIOS);
