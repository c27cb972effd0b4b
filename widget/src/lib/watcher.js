// Live state of several streams. Up to MAX_SSE streams get their own SSE feed;
// beyond that one GET /api/v1/streams every POLL_MS, because browsers open at
// most six HTTP/1.1 connections per server and each feed holds one.
import { api } from './api.js';
import { StreamEvents } from './events.js';

export const MAX_SSE = 4;
const POLL_MS = 3000;

export class LiveWatcher {
  /** on(name, {live?, title?, snapshot?}) */
  constructor(names, on, { access = null } = {}) {
    this.feeds = [];
    if (names.length <= MAX_SSE) {
      for (const name of names) {
        this.feeds.push(new StreamEvents(name, {
          live: (snap) => on(name, { live: true, snapshot: snap, title: snap.title }),
          offline: () => on(name, { live: false }),
          title: (d) => on(name, { title: d.title }),
        }, { access }));
      }
    } else {
      const want = new Set(names);
      const poll = async () => {
        try {
          const all = await api('/api/v1/streams');
          for (const s of all) if (want.has(s.name)) on(s.name, { live: s.live, title: s.title, snapshot: s });
        } catch {
          // Try again at the next tick.
        }
        this.timer = setTimeout(poll, POLL_MS);
      };
      poll();
    }
  }

  close() {
    for (const f of this.feeds) f.close();
    clearTimeout(this.timer);
  }
}
