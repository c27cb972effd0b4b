// The opening every Chromium scenario script shares (pages.mjs, replay.mjs):
// its arguments, the JSON lines it prints, the page console it watches,
// waits with deadlines (never sleeps), screenshots, and main().
//
//   node SCRIPT.mjs SCENARIO --base http://127.0.0.1:PORT [--artifacts DIR] [--timeout S] [options]
//
// Every stdout line is one JSON object with a "type": step lines the Rust
// test reacts to, "shot" lines naming saved screenshots, "console" lines, and
// last a "result" {ok, reason, console_errors, elapsed_ms, ...}. The page's
// console errors fail a scenario.

import { chromium } from 'playwright-core';
import { mkdirSync } from 'node:fs';
import { basename, dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

export const here = dirname(fileURLToPath(import.meta.url));
export const DESKTOP = { width: 1280, height: 800 };
export const PHONE = { width: 390, height: 844 };
export const CHROMIUM_ARGS = [
  '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
  '--disable-background-networking', '--disable-component-update', '--disable-sync',
  '--autoplay-policy=no-user-gesture-required',
  '--allow-loopback-in-peer-connection', '--disable-features=WebRtcHideLocalIpsWithMdns',
];

// --- arguments and output -------------------------------------------------------
const script = basename(process.argv[1] || 'scenario.mjs', '.mjs');
export const argv = process.argv.slice(2);
export const scenario = argv[0];
export const opt = (name, dflt = null) => {
  const i = argv.indexOf(`--${name}`);
  return i >= 0 && i + 1 < argv.length ? argv[i + 1] : dflt;
};
export const has = (name) => argv.includes(`--${name}`);
export const BASE = (opt('base') || '').replace(/\/+$/, '');
/** Screenshots: --artifacts, else tests/artifacts/<script name>. */
export const ARTIFACTS = opt('artifacts', join(here, '..', 'artifacts', script));
export const TIMEOUT = Number(opt('timeout', '60')) * 1000;

export function emit(o) {
  process.stdout.write(`${JSON.stringify(o)}\n`);
}

export const consoleErrors = [];
/** Console errors that a scenario expects (e.g. the 404 of an API that is not built yet). */
export const allowedErrors = [];

export function watchConsole(page, label) {
  page.on('console', (msg) => {
    if (msg.type() !== 'error' && msg.type() !== 'warning') return;
    const text = msg.text();
    const url = msg.location()?.url || '';
    emit({ type: 'console', page: label, level: msg.type(), text, url });
    if (msg.type() !== 'error') return;
    if (/favicon/i.test(text + url)) return;
    if (allowedErrors.some((re) => re.test(`${text} ${url}`))) return;
    consoleErrors.push(`${label}: ${text} (${url})`);
  });
  page.on('pageerror', (err) => {
    emit({ type: 'console', page: label, level: 'pageerror', text: String(err) });
    consoleErrors.push(`${label}: ${err}`);
  });
}

/** Polls `fn` every 100 ms until it returns something truthy; an error thrown
 *  with `fatal` set ends the wait at once. */
export async function waitFor(what, fn, timeoutMs = TIMEOUT) {
  const deadline = Date.now() + timeoutMs;
  let last;
  for (;;) {
    try {
      last = await fn();
      if (last) return last;
    } catch (e) {
      if (e && e.fatal) throw e;
      last = `error: ${e.message || e}`;
    }
    if (Date.now() > deadline) {
      throw new Error(`timed out after ${timeoutMs / 1000} s waiting for ${what} (last: ${JSON.stringify(last)})`);
    }
    await new Promise((r) => setTimeout(r, 100));
  }
}

export function check(cond, message) {
  if (!cond) throw new Error(message);
}

export async function shot(page, name, opts = {}) {
  mkdirSync(ARTIFACTS, { recursive: true });
  const vp = page.viewportSize();
  const path = join(ARTIFACTS, `${name}-${vp.width}x${vp.height}.png`);
  await page.screenshot({ path, ...opts });
  emit({ type: 'shot', name, path });
  return path;
}

/** Desktop and phone screenshots of the page as it is now (restores the viewport). */
export async function shots(page, name, ready = async () => true) {
  const vp = page.viewportSize();
  for (const size of [DESKTOP, PHONE]) {
    await page.setViewportSize(size);
    await waitFor(`${name} to settle at ${size.width}px`, ready, 10000);
    await page.evaluate(() => new Promise((r) => requestAnimationFrame(() => requestAnimationFrame(r))));
    await shot(page, name);
  }
  await page.setViewportSize(vp);
}

/** Runs `scenarios[scenario]` in a fresh Chromium (`extraArgs`: more of its
 *  flags for this scenario), prints the result line and exits 0 only when the
 *  scenario passed without console errors. */
export async function main(scenarios, extraArgs = () => []) {
  const result = { type: 'result', scenario, ok: false };
  let browser = null;
  const started = Date.now();
  try {
    if (!scenarios[scenario] || !BASE) throw new Error(`usage: node ${script}.mjs {${Object.keys(scenarios).join('|')}} --base URL`);
    browser = await chromium.launch({
      executablePath: process.env.ROOMCAST_TEST_CHROMIUM || '/usr/bin/chromium',
      headless: true,
      args: [...CHROMIUM_ARGS, ...extraArgs(scenario)],
      timeout: 60000,
    });
    emit({ type: 'start', scenario, browser_version: browser.version() });
    Object.assign(result, await scenarios[scenario](browser));
    result.ok = consoleErrors.length === 0;
    if (!result.ok) result.reason = `console errors: ${consoleErrors.join(' | ')}`;
  } catch (e) {
    result.reason = String(e && e.stack ? e.stack : e);
  } finally {
    result.console_errors = consoleErrors;
    result.elapsed_ms = Date.now() - started;
    emit(result);
    if (browser) await browser.close().catch(() => {});
    process.exit(result.ok ? 0 : 1);
  }
}
