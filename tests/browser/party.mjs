#!/usr/bin/env node
// Screen-share party in the room widget (tests/party.rs): one headless Chromium with fake
// screen capture, one browser context per Matrix user, each a Matrix client host page running
// matrix-widget-api's ClientWidgetApi around the widget the bot wrote into the room (templated as
// Element does; OpenID tokens from Synapse). `sharers` press Share screen; every widget must show
// the others' tiles decoding (never its own share played back); `watchers` must get no button.
// Each tile shows the sharer's avatar (through roomcast's media proxy) or their initial.
// Then each sharer presses Stop and the tile goes from every other widget within 2 s.
//
//   node party.mjs --base URL --hs URL --room ID --widget JSON --users JSON [--artifacts DIR]
//   node party.mjs --base URL --standalone NAME --key KEY --users JSON   (the /party/{name} page)
// users: [{label, user_id, access_token, display_name, share: bool, ended_by_server: bool,
//          close_tab: bool, refused: bool}]
// (ended_by_server: instead of pressing Stop, wait for the server to end the share;
// close_tab: instead of pressing Stop, close the tab: the share must end within 5 s;
// refused: once the others share, the widget's estimate says a cap is passed, and pressing
// Share screen is refused with the server's message and gives no tile.)
// Prints JSON lines; the last is {"type":"result","ok":…}.
import { chromium } from 'playwright-core';
import { createServer } from 'node:http';
import { mkdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { createRequire } from 'node:module';
import { ARTIFACTS, BASE, check, emit, opt, waitFor } from './harness.mjs';

const errors = [];

async function hostServer() {
  const pages = new Map();
  const server = createServer((req, res) => {
    const body = pages.get(new URL(req.url, 'http://x').pathname);
    res.writeHead(body ? 200 : 404, { 'Content-Type': 'text/html; charset=utf-8', 'Cache-Control': 'no-store' });
    res.end(body || 'not found');
  });
  await new Promise((r) => server.listen(0, '127.0.0.1', r));
  return { origin: `http://localhost:${server.address().port}`, set: (p, b) => pages.set(p, b), close: () => new Promise((r) => server.close(r)) };
}

/** What a party widget shows: the button, its status, and each tile with its decoded frames. */
function partyState(frame) {
  return frame.evaluate(async () => {
    const party = window.roomcast && window.roomcast.party;
    const q = (s) => document.querySelector(s);
    const tiles = [];
    for (const t of document.querySelectorAll('.w-grid .pt')) {
      const p = party && party.players[t.dataset.stream];
      let frames = 0;
      if (p && p.pc) (await p.pc.getStats()).forEach((s) => { if (s.type === 'inbound-rtp' && s.kind === 'video') frames = s.framesDecoded || 0; });
      const av = t.querySelector('.pt-avatar');
      const avatar = av ? { img: av.tagName === 'IMG', loaded: av.tagName === 'IMG' && av.complete && av.naturalWidth > 0,
        width: av.naturalWidth || 0, initial: av.classList.contains('is-initial') ? av.textContent : null } : null;
      tiles.push({ stream: t.dataset.stream, user: t.dataset.user, name: t.querySelector('.pt-label')?.textContent, avatar, played: !!p, frames,
        local: !!t.querySelector('video[aria-label="Your shared screen"]'), volume: !!t.querySelector('.pt-volume') });
    }
    return {
      shown: !!q('.w-party') && !q('.w-party').hidden,
      session: !!(party && party.me),
      may_share: party && party.me ? party.me.may_share : null,
      button: !!q('.w-share') && !q('.w-share').hidden,
      stop: !!q('.w-share-stop') && !q('.w-share-stop').hidden,
      estimate: q('.w-estimate') && !q('.w-estimate').hidden
        ? { text: q('.w-estimate').textContent, over: q('.w-estimate').classList.contains('over'), mbps_out: Number(q('.w-estimate').dataset.mbpsOut) } : null,
      status: q('.w-party-status')?.textContent || '',
      tiles,
    };
  });
}

async function main() {
  const widget = JSON.parse(opt('widget'));
  const users = JSON.parse(opt('users'));
  const roomId = opt('room');
  const hs = opt('hs');
  const require = createRequire(import.meta.url);
  const lib = readFileSync(require.resolve('matrix-widget-api/dist/api.js'), 'utf8');
  const site = await hostServer();
  site.set('/matrix-widget-api.js', lib);
  site.set('/room', `<!doctype html><title>client</title><style>html,body{margin:0;height:100%;background:#15191e}iframe{border:0;width:100%;height:100%;display:block}</style>
<body><script src="/matrix-widget-api.js"></script></body>`);
  const browser = await chromium.launch({
    executablePath: process.env.ROOMCAST_TEST_CHROMIUM || '/usr/bin/chromium', headless: true, timeout: 60000,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--autoplay-policy=no-user-gesture-required', '--allow-loopback-in-peer-connection',
      '--disable-features=WebRtcHideLocalIpsWithMdns',
      // Fake screen capture: getDisplayMedia answers at once with a generated picture.
      '--use-fake-ui-for-media-stream', '--use-fake-device-for-media-stream', '--auto-select-desktop-capture-source=Entire screen'],
  });
  emit({ type: 'start', browser_version: browser.version() });
  const clients = [];
  const standalone = opt('standalone');
  for (const u of users) {
    const ctx = await browser.newContext({ viewport: { width: 1280, height: 800 } });
    const host = await ctx.newPage();
    if (standalone) {
      // /party/{name}: a wrong key is refused on the page, then the right one joins.
      host.on('console', (m) => {
        if (m.type() !== 'error') return;
        const url = m.location()?.url || '';
        emit({ type: 'console', user: u.label, text: m.text(), url });
        // (The wrong key's 403, and a refused share's 503 for the member meant to be refused.)
        const expected = u.refused ? /favicon|status of 403|status of 503/i : /favicon|status of 403/i;
        if (!expected.test(`${m.text()} ${url}`)) errors.push(`${u.label}: ${m.text()} (${url})`);
      });
      host.on('pageerror', (e) => errors.push(`${u.label}: ${e}`));
      await host.goto(`${BASE}/party/${standalone}`);
      await host.fill('input[name=display_name]', u.display_name);
      await host.fill('input[name=key]', 'not-the-party-key-000');
      await host.click('form.party-join button[type=submit]');
      const refused = await waitFor(`${u.label}'s wrong key refused`, () => host.evaluate(() => document.querySelector('.pub-status.error')?.textContent), 10000);
      check(/not right/.test(refused), `wrong key: ${refused}`);
      await host.fill('input[name=key]', opt('key'));
      await host.click('form.party-join button[type=submit]');
      clients.push({ ...u, host, frame: host.mainFrame() });
      continue;
    }
    host.on('console', (m) => {
      if (m.type() !== 'error') return;
      const url = m.location()?.url || '';
      emit({ type: 'console', user: u.label, text: m.text(), url });
      // (The host page's origin has no favicon.)
      if (!/favicon/i.test(`${m.text()} ${url}`)) errors.push(`${u.label}: ${m.text()} (${url})`);
    });
    host.on('pageerror', (e) => errors.push(`${u.label}: ${e}`));
    await host.goto(`${site.origin}/room`);
    await host.evaluate(({ widget, roomId, hs, u }) => {
      const { ClientWidgetApi, Widget, WidgetDriver, OpenIDRequestState } = window.mxwidgets;
      class Driver extends WidgetDriver {
        async validateCapabilities(requested) { return requested; }
        async askOpenID(observer) {
          const r = await fetch(`${hs}/_matrix/client/v3/user/${encodeURIComponent(u.user_id)}/openid/request_token`, {
            method: 'POST', headers: { Authorization: `Bearer ${u.access_token}`, 'Content-Type': 'application/json' }, body: '{}' });
          observer.update({ state: OpenIDRequestState.Allowed, token: await r.json() });
        }
      }
      const w = new Widget(widget);
      const url = new URL(w.getCompleteUrl({ widgetRoomId: roomId, currentUserId: u.user_id, userDisplayName: u.display_name,
        clientId: 'io.element.web', clientTheme: 'dark', clientLanguage: 'en', deviceId: 'TEST', baseUrl: hs }));
      url.searchParams.set('widgetId', w.id);
      url.searchParams.set('parentUrl', location.href);
      const iframe = document.createElement('iframe');
      iframe.allow = 'microphone; camera; autoplay; display-capture';
      iframe.src = url.toString().replace(/%24/g, '$');
      document.body.append(iframe);
      window.clientApi = new ClientWidgetApi(w, iframe, new Driver());
    }, { widget, roomId, hs, u });
    const frame = await waitFor(`${u.label}'s widget frame`, async () => host.frames().find((f) => f.url().includes('/widget')), 20000);
    clients.push({ ...u, host, frame });
  }
  // Every widget joins the party; only those with the power get the button.
  for (const c of clients) {
    const s = await waitFor(`${c.label}'s party session`, async () => { const x = await partyState(c.frame); return x.session ? x : null; }, 30000);
    c.user_id = await c.frame.evaluate(() => window.roomcast.party.me.user_id);
    emit({ type: 'joined', user: c.label, user_id: c.user_id, state: s });
    const want = standalone ? true : c.share;
    check(s.button === want, `${c.label}: Share screen button shown=${s.button}, expected ${want}`);
  }
  const sharers = clients.filter((c) => c.share);
  for (const c of sharers) {
    await c.frame.click('.w-share');
    await waitFor(`${c.label} sharing`, async () => { const x = await partyState(c.frame); return x.stop && /sharing/.test(x.status) ? x : null; }, 30000);
  }
  // Each widget shows every sharer: the others' tiles decode, its own is the local preview.
  const decoded = {};
  for (const c of clients) {
    const s = await waitFor(`${c.label}'s grid to decode every sharer`, async () => {
      const x = await partyState(c.frame);
      if (x.tiles.length !== sharers.length) return null;
      for (const t of x.tiles) {
        const mine = t.user === c.user_id;
        if (!t.avatar || (t.avatar.img && !t.avatar.loaded)) return null;
        if (mine ? !(t.local && !t.played) : !(t.played && t.frames >= 30 && t.volume)) return null;
      }
      return x;
    }, 60000);
    decoded[c.label] = s.tiles;
    emit({ type: 'grid', user: c.label, tiles: s.tiles });
    mkdirSync(ARTIFACTS, { recursive: true });
    await c.host.screenshot({ path: join(ARTIFACTS, `party-${standalone ? 'page-' : ''}${c.label}.png`) });
  }
  // Focus a tile by clicking it.
  const watcher = clients.find((c) => !c.share) || clients[0];
  await watcher.frame.click('.w-grid .pt');
  const focused = await watcher.frame.evaluate(() => document.querySelectorAll('.w-grid .pt.focused').length);
  check(focused === 1, `clicking a tile focused ${focused} tiles`);
  // Over a cap: the estimate says so before, and the share is refused with the reason.
  const refused = {};
  for (const c of clients.filter((x) => x.refused)) {
    const before = await waitFor(`${c.label}'s estimate to show the cap`, async () => {
      const x = await partyState(c.frame);
      return x.estimate && x.estimate.over ? x : null;
    }, 10000);
    await c.frame.click('.w-share');
    const after = await waitFor(`${c.label}'s share to be refused`, async () => {
      const x = await partyState(c.frame);
      return /go over a limit/.test(x.status) ? x : null;
    }, 30000);
    check(!after.stop && after.button, `${c.label}: refused, yet Stop=${after.stop} button=${after.button}`);
    check(!after.tiles.some((t) => t.user === c.user_id), `${c.label}: refused, yet has a tile`);
    refused[c.label] = { estimate: before.estimate, status: after.status };
    emit({ type: 'refused', user: c.label, estimate: before.estimate, status: after.status });
  }
  emit({ type: 'sharing', streams: decoded, refused });
  // Stop: the tile leaves every other widget within 2 s.
  const stopped = [];
  for (const c of sharers) {
    const stream = decoded[c.label].find((t) => t.user === c.user_id).stream;
    if (c.ended_by_server) {
      // The test takes this member's power away: the server ends the share, every other
      // widget drops the tile, and the sharer's widget says why.
      for (const o of clients.filter((x) => x !== c)) {
        await waitFor(`${c.label}'s tile to leave ${o.label}'s grid`, async () => !(await partyState(o.frame)).tiles.some((t) => t.stream === stream), 30000);
      }
      const st = await waitFor(`${c.label}'s widget to say the share ended`, async () => {
        const x = await partyState(c.frame);
        return /ended by the server/.test(x.status) && !x.stop ? x : null;
      }, 30000);
      stopped.push({ user: c.label, stream, ended_by_server: true, status: st.status });
      emit({ type: 'stopped', user: c.label, stream, ended_by_server: true, status: st.status });
      continue;
    }
    const t0 = Date.now();
    if (c.close_tab) {
      // The tab goes as a user closes it: pagehide, then the page is gone.
      await c.host.close({ runBeforeUnload: true });
      await waitFor(`${c.label}'s tab to close`, async () => c.host.isClosed(), 10000);
    } else {
      await c.frame.click('.w-share-stop');
    }
    const bound = c.close_tab ? 5000 : 2000;
    for (const o of clients.filter((x) => x !== c && !x.host.isClosed())) {
      await waitFor(`${c.label}'s tile to leave ${o.label}'s grid`, async () => !(await partyState(o.frame)).tiles.some((t) => t.stream === stream), 10000);
    }
    const ms = Date.now() - t0;
    stopped.push({ user: c.label, stream, tile_gone_ms: ms, closed_tab: !!c.close_tab });
    check(ms <= bound, `${c.label}'s tile took ${ms} ms to go (bound ${bound} ms)`);
    emit({ type: 'stopped', user: c.label, stream, tile_gone_ms: ms, closed_tab: !!c.close_tab });
  }
  await browser.close();
  await site.close();
  return { decoded, stopped };
}

const result = { type: 'result', ok: false };
main().then((r) => {
  Object.assign(result, r);
  result.ok = errors.length === 0;
  if (!result.ok) result.reason = `console errors: ${errors.join(' | ')}`;
}).catch((e) => {
  result.reason = String(e && e.stack ? e.stack : e);
}).finally(() => {
  result.console_errors = errors;
  emit(result);
  process.exit(result.ok ? 0 : 1);
});
