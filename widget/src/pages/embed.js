// /embed/{stream}: the player alone on a transparent background, for iframes and
// OBS browser sources. Query: muted (default 1), controls (1), autoplay (1),
// volume (0..1), access (private streams).
import '../css/base.css';
import '../css/player.css';
import '../css/embed.css';
import { accessToken } from '../lib/api.js';
import { flag, params, pathParam } from '../lib/dom.js';
import { StreamEvents } from '../lib/events.js';
import { Player } from '../lib/player.js';

const stream = pathParam('/embed/');
const access = accessToken();
const controls = flag('controls', true);
const player = new Player(document.getElementById('player'), {
  stream,
  muted: flag('muted', true),
  controls,
  autoplay: flag('autoplay', true),
  volume: params.has('volume') ? Number(params.get('volume')) : 1,
  // Without controls (OBS) say nothing over the picture unless something is wrong.
  overlayText: controls,
  getToken: async () => access,
});
if (!stream) {
  player.fail('This address names no stream. Embed pages look like /embed/NAME.');
} else {
  new StreamEvents(stream, {
    live: () => player.setLive(true),
    offline: () => player.setLive(false),
  }, { access });
}
window.roomcast = { player };
