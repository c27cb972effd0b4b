// /multiview: several streams on one page, for a producer's OBS browser source.
//   ?streams=a,b,c          these streams in an automatic grid (fixed slots)
//   ?room=!id:server        every live stream of a Matrix room, in an automatic grid
//   ?layout=NAME            slots at the pixel rectangles of config/layouts/NAME.json
//                           (streams= then replaces the layout's streams, in slot order)
//   ?volume=1,0.5,0,0       per-slot volume in slot order (0 = muted); default 1
//   ?labels=0|1             stream titles over the slots (default: 1 in a grid, 0 with a layout)
// Transparent background; each slot starts by itself when its stream goes live
// and recovers when it drops.
import '../css/base.css';
import '../css/player.css';
import '../css/multiview.css';
import { accessToken, api } from '../lib/api.js';
import { flag, h, params } from '../lib/dom.js';
import { LiveWatcher } from '../lib/watcher.js';
import { Player } from '../lib/player.js';

const canvas = document.getElementById('canvas');
const message = document.getElementById('message');
const access = accessToken();
const list = (v) => (v || '').split(',').map((s) => s.trim()).filter(Boolean);
const volumes = list(params.get('volume')).map(Number);
const layout = readLayout();
const labels = flag('labels', !layout);
const slots = [];

function readLayout() {
  const el = document.getElementById('layout');
  if (!el) return null;
  try {
    return JSON.parse(el.textContent);
  } catch {
    return null;
  }
}

function say(text) {
  message.textContent = text || '';
  message.hidden = !text;
}

function makeSlot(stream, i, rect) {
  const el = h('div', { class: 'mv-slot', 'data-stream': stream, 'data-slot': rect?.id || String(i + 1), 'data-live': 'false' });
  if (rect) Object.assign(el.style, { left: `${rect.x}px`, top: `${rect.y}px`, width: `${rect.width}px`, height: `${rect.height}px` });
  const v = Number.isFinite(volumes[i]) ? Math.min(1, Math.max(0, volumes[i])) : 1;
  const player = new Player(el, {
    stream, controls: false, overlayText: false, muted: v === 0, volume: v, autoplay: true,
    getToken: async () => access,
  });
  const label = h('span', { class: 'mv-label', text: stream, hidden: !labels });
  el.append(label);
  const slot = { stream, el, player, label, live: false, volume: v };
  player.video.addEventListener('volumechange', soundHint);
  slots.push(slot);
  return slot;
}

// Autoplay with sound can be refused outside OBS: one click anywhere restores it.
const soundBtn = h('button', { class: 'mv-sound', type: 'button', hidden: true, text: 'Click to enable sound' });
document.body.append(soundBtn);
function soundHint() {
  soundBtn.hidden = !slots.some((s) => s.volume > 0 && s.player.video.muted);
}
document.addEventListener('click', () => {
  for (const s of slots) if (s.volume > 0 && s.player.video.muted) s.player.setMuted(false);
  soundHint();
});

function update(slot, ev) {
  if (ev.title) slot.label.textContent = ev.title;
  if (ev.live === undefined) return;
  slot.live = ev.live;
  slot.el.dataset.live = String(ev.live);
  slot.player.setLive(ev.live);
  if (mode === 'room') arrangeGrid();
}

/** The grid's column count that gives the largest 16:9 pictures. */
function arrangeGrid() {
  const visible = slots.filter((s) => mode !== 'room' || s.live);
  for (const s of slots) s.el.hidden = !visible.includes(s);
  const n = Math.max(visible.length, 1);
  const W = window.innerWidth;
  const H = window.innerHeight;
  let best = { cols: 1, size: 0 };
  for (let cols = 1; cols <= n; cols++) {
    const rows = Math.ceil(n / cols);
    const w = W / cols;
    const hgt = H / rows;
    const size = Math.min(w, (hgt * 16) / 9);
    if (size > best.size) best = { cols, size, rows };
  }
  canvas.style.gridTemplateColumns = `repeat(${best.cols}, minmax(0, 1fr))`;
  canvas.style.gridTemplateRows = `repeat(${best.rows || 1}, minmax(0, 1fr))`;
  if (mode === 'room') say(visible.length ? '' : labels ? 'No stream of this room is live right now.' : '');
}

let mode = 'streams';
async function main() {
  if (layout) {
    mode = 'layout';
    canvas.className = 'mv-canvas layout';
    Object.assign(canvas.style, { width: `${layout.width}px`, height: `${layout.height}px` });
    const override = list(params.get('streams'));
    layout.slots.forEach((r, i) => makeSlot(override[i] || r.stream, i, r));
    for (const s of slots) canvas.append(s.el);
  } else {
    canvas.className = 'mv-canvas grid';
    let names = list(params.get('streams'));
    if (params.get('room')) {
      mode = 'room';
      try {
        const streams = await api(`/api/v1/rooms/${encodeURIComponent(params.get('room'))}/streams`);
        names = streams.map((s) => s.name);
      } catch (e) {
        return say(e.status === 404 && e.code !== 'unknown_room'
          ? 'This server has no Matrix integration, so it cannot list a room’s streams. Use ?streams=a,b,c instead.'
          : e.message);
      }
      if (!names.length) return say('No stream is attached to this room.');
    }
    if (!names.length) {
      return say('Nothing to show. Add ?streams=a,b,c, ?room=!room:server or ?layout=NAME to the address.');
    }
    names.forEach((n, i) => makeSlot(n, i, null));
    for (const s of slots) canvas.append(s.el);
    arrangeGrid();
    window.addEventListener('resize', arrangeGrid);
  }
  const byName = new Map();
  for (const s of slots) byName.set(s.stream, [...(byName.get(s.stream) || []), s]);
  new LiveWatcher([...byName.keys()], (name, ev) => {
    for (const s of byName.get(name) || []) update(s, ev);
  }, { access });
}

main();
window.roomcast = { slots };
