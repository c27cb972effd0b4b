#!/usr/bin/env node
// Bundles roomcast's pages with esbuild. build.rs runs it with --outdir $OUT_DIR/web
// and embeds every file it writes; `npm run build` writes to dist/ for a look.
//
// Output: one HTML file per page (src/pages/*.html) with the hashed script and
// style names filled in, and assets/ with ES modules (code-split: hls.js is a
// chunk loaded only when the WebRTC player falls back to HLS) and CSS.
import * as esbuild from 'esbuild';
import { mkdirSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { basename, dirname, join, relative } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
const args = process.argv.slice(2);
const i = args.indexOf('--outdir');
const outdir = i >= 0 && args[i + 1] ? args[i + 1] : join(here, 'dist');
const pagesDir = join(here, 'src', 'pages');
const pages = readdirSync(pagesDir).filter((f) => f.endsWith('.html')).map((f) => basename(f, '.html'));

rmSync(outdir, { recursive: true, force: true });
mkdirSync(join(outdir, 'assets'), { recursive: true });

const result = await esbuild.build({
  entryPoints: Object.fromEntries(pages.map((p) => [p, join(pagesDir, `${p}.js`)])),
  bundle: true,
  splitting: true,
  format: 'esm',
  target: ['chrome100', 'firefox100', 'safari15'],
  minify: true,
  sourcemap: false,
  legalComments: 'none',
  outdir: join(outdir, 'assets'),
  entryNames: '[name]-[hash]',
  chunkNames: 'chunk-[hash]',
  assetNames: '[name]-[hash]',
  metafile: true,
  logLevel: 'warning',
  // matrix-widget-api's CommonJS build uses Node's `events`; the npm package stands in.
  define: { 'process.env.NODE_ENV': '"production"' },
});

// Entry point → its JS and CSS output names.
const byEntry = {};
for (const [out, meta] of Object.entries(result.metafile.outputs)) {
  if (!meta.entryPoint) continue;
  const page = basename(meta.entryPoint, '.js');
  byEntry[page] = { js: relative(outdir, out), css: meta.cssBundle ? relative(outdir, meta.cssBundle) : null };
}

for (const page of pages) {
  const o = byEntry[page];
  if (!o) throw new Error(`no bundle for page ${page}`);
  let html = readFileSync(join(pagesDir, `${page}.html`), 'utf8');
  const tags =
    (o.css ? `<link rel="stylesheet" href="/${o.css}">\n` : '') +
    `<script type="module" src="/${o.js}"></script>`;
  if (!html.includes('<!--assets-->')) throw new Error(`${page}.html has no <!--assets--> marker`);
  html = html.replace('<!--assets-->', tags);
  writeFileSync(join(outdir, `${page}.html`), html);
}

let total = 0;
for (const [out, meta] of Object.entries(result.metafile.outputs)) total += meta.bytes;
console.log(`roomcast widget: ${pages.length} pages, ${Object.keys(result.metafile.outputs).length} assets, ${(total / 1024).toFixed(0)} KiB → ${outdir}`);
