// Server-Sent Events (docs/api.md). The browser reconnects by itself after a
// drop; when it gives up (the server answered an error), we reconnect with
// backoff.
import { streamPath, withQuery } from './api.js';

const EVENTS = ['title', 'viewers', 'live', 'offline', 'chat', 'redaction', 'description', 'room', 'removed'];

/** One EventSource: handlers[eventName](parsed data), connection(bool). */
export class EventFeed {
  constructor(url, handlers) {
    this.url = url;
    this.handlers = handlers;
    this.backoff = 1000;
    this.timer = null;
    this.closed = false;
    this.open();
  }

  open() {
    const es = new EventSource(this.url);
    this.es = es;
    for (const name of EVENTS) {
      es.addEventListener(name, (ev) => {
        let data;
        try {
          data = JSON.parse(ev.data);
        } catch {
          return;
        }
        const f = this.handlers[name];
        if (f) f(data);
      });
    }
    es.onopen = () => {
      this.backoff = 1000;
      this.handlers.connection?.(true);
    };
    es.onerror = () => {
      this.handlers.connection?.(false);
      if (es.readyState === EventSource.CLOSED && !this.closed) {
        clearTimeout(this.timer);
        this.timer = setTimeout(() => this.open(), this.backoff);
        this.backoff = Math.min(this.backoff * 2, 30000);
      }
    };
  }

  close() {
    this.closed = true;
    clearTimeout(this.timer);
    this.es?.close();
  }
}

/** One stream's feed: title, viewers, live, offline, chat, redaction, description. */
export class StreamEvents extends EventFeed {
  /** handlers: {title(d), viewers(d), live(snapshot), offline(d), chat(m), redaction(d), description(d), connection(bool)} */
  constructor(name, handlers, { access = null } = {}) {
    super(withQuery(`${streamPath(name)}/events`, { access }), handlers);
  }
}
