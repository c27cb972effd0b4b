// Live state of several streams on one SSE connection (GET /api/v1/events):
// browsers open at most six HTTP/1.1 connections per server, so one feed per
// stream would leave none for the players' WHEP requests.
import { withQuery } from './api.js';
import { EventFeed } from './events.js';

export class LiveWatcher {
  /** on(name, {live?, title?, snapshot?}) */
  constructor(names, on, { access = null } = {}) {
    this.feed = new EventFeed(withQuery('/api/v1/events', { streams: names.join(','), access }), {
      live: (snap) => on(snap.name, { live: true, snapshot: snap, title: snap.title }),
      offline: (d) => on(d.name, { live: false }),
      title: (d) => on(d.name, { title: d.title }),
      // Gone from the feed (left the registry, or turned private): offline
      // here; the page shows it again if the feed does.
      removed: (d) => on(d.name, { live: false }),
    });
  }

  close() {
    this.feed.close();
  }
}
