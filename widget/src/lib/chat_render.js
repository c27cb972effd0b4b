// How one chat message looks: formatted HTML, reply context, emotes and
// notices, media through roomcast's media proxy, reactions, "(edited)".
//
// The server already ran `formatted_body` through an allow-list (docs: README,
// "Chat events"); the page does not trust that alone. The HTML is parsed by
// DOMParser into an inert document (no scripts run, nothing loads) and only
// the allowed elements and attributes are copied, node by node, into new DOM
// nodes. Nothing is ever assigned to innerHTML.
import { h } from './dom.js';

/** The spec's HTML subset (client-server API, m.room.message msgtypes), minus img. */
const TAGS = new Set(['font', 'del', 'h1', 'h2', 'h3', 'h4', 'h5', 'h6', 'blockquote', 'p', 'a', 'ul', 'ol',
  'sup', 'sub', 'li', 'b', 'i', 'u', 'strong', 'em', 's', 'code', 'hr', 'br', 'div', 'table', 'thead',
  'tbody', 'tr', 'th', 'td', 'caption', 'pre', 'span', 'details', 'summary']);
/** Dropped with everything inside them. */
const DROP = new Set(['script', 'style', 'mx-reply', 'template', 'iframe', 'object', 'embed', 'svg', 'math', 'noscript']);
const MAX_DEPTH = 24;
const HEX_COLOR = /^#[0-9a-fA-F]{6}$/;

function safeHref(v) {
  try {
    const u = new URL(v);
    return ['http:', 'https:', 'mailto:'].includes(u.protocol) ? u.href : null;
  } catch {
    return null;
  }
}

function copyElement(src) {
  const tag = src.localName;
  const el = document.createElement(tag);
  const attr = (name) => src.getAttribute(name);
  if (tag === 'a') {
    const href = safeHref(attr('href') || '');
    if (href) el.href = href;
    el.rel = 'noopener noreferrer';
    el.target = '_blank';
  } else if (tag === 'ol') {
    const start = Number(attr('start'));
    if (Number.isInteger(start) && start >= 0 && start <= 100000) el.start = start;
  } else if (tag === 'code') {
    const cls = attr('class') || '';
    if (/^language-[A-Za-z0-9+#_-]{1,32}$/.test(cls)) el.className = cls;
  } else if (tag === 'font' || tag === 'span') {
    const color = attr('data-mx-color') || (tag === 'font' ? attr('color') : null);
    const bg = attr('data-mx-bg-color');
    // CSSOM, not a style attribute: the page's CSP stays as it is.
    if (color && HEX_COLOR.test(color)) el.style.color = color;
    if (bg && HEX_COLOR.test(bg)) el.style.backgroundColor = bg;
    if (tag === 'span' && src.hasAttribute('data-mx-spoiler')) {
      el.className = 'chat-spoiler';
      el.tabIndex = 0;
      el.title = 'Spoiler: click to show';
      el.addEventListener('click', () => el.classList.add('is-shown'));
    }
  }
  return el;
}

function copyChildren(from, to, depth) {
  for (const n of from.childNodes) {
    if (n.nodeType === Node.TEXT_NODE) {
      to.append(document.createTextNode(n.data));
    } else if (n.nodeType === Node.ELEMENT_NODE) {
      const tag = n.localName;
      if (DROP.has(tag)) continue;
      if (depth >= MAX_DEPTH) {
        to.append(document.createTextNode(n.textContent));
      } else if (TAGS.has(tag)) {
        const el = copyElement(n);
        copyChildren(n, el, depth + 1);
        to.append(el);
      } else {
        copyChildren(n, to, depth + 1); // unknown element: its text stays
      }
    }
  }
}

/** A DocumentFragment of the allowed part of `html`, built from new nodes. */
export function safeHtml(html) {
  const doc = new DOMParser().parseFromString(String(html), 'text/html');
  const frag = document.createDocumentFragment();
  copyChildren(doc.body, frag, 0);
  return frag;
}

/**
 * The URL of a chat image on roomcast's media proxy: `path` is
 * `server/media_id` from the message, `size` full, thumb or avatar.
 */
export function mediaUrl(stream, path, size, access) {
  const [server, id] = String(path).split('/');
  const q = new URLSearchParams({ size });
  if (access) q.set('access', access);
  return `/api/v1/streams/${encodeURIComponent(stream)}/media/${encodeURIComponent(server)}/${encodeURIComponent(id)}?${q}`;
}

const LABELS = { 'm.image': 'image', 'm.video': 'video', 'm.audio': 'audio', 'm.file': 'file', 'm.sticker': 'sticker' };

function timeOf(ts) {
  const d = new Date(ts);
  return Number.isFinite(d.getTime()) ? d.toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' }) : '';
}

function media(m, opts) {
  const md = m.media;
  if (!md || typeof md.path !== 'string' || !opts.stream) return null;
  const sticker = m.msgtype === 'm.sticker';
  const img = h('img', {
    class: `chat-media${sticker ? ' is-sticker' : ''}`,
    src: mediaUrl(opts.stream, md.path, md.thumbnail ? 'thumb' : 'full', opts.access),
    alt: String(m.body || LABELS[m.msgtype] || 'image'),
    title: String(m.body || ''),
    loading: 'lazy',
  });
  if (Number.isFinite(md.w) && Number.isFinite(md.h) && md.w > 0 && md.h > 0) {
    // Reserve the box the image will take (fits 260×200, stickers 128).
    const max = sticker ? { w: 128, h: 128 } : { w: 260, h: 200 };
    const scale = Math.min(1, max.w / md.w, max.h / md.h);
    img.width = Math.round(md.w * scale);
    img.height = Math.round(md.h * scale);
  }
  return img;
}

/**
 * The `li` of one chat message (a `chat` event of the SSE feed). `opts`:
 * {stream, access} for media URLs. Text goes in as text; HTML only through
 * safeHtml.
 */
export function renderMessage(m, opts = {}) {
  const type = typeof m.msgtype === 'string' ? m.msgtype : 'm.text';
  const classes = ['chat-msg'];
  if (m.guest) classes.push('is-guest');
  if (type === 'm.emote') classes.push('is-emote');
  if (type === 'm.notice') classes.push('is-notice');
  const senderName = String(m.sender || m.sender_id || 'someone');
  const avatar = typeof m.avatar === 'string' && opts.stream
    ? h('img', { class: 'chat-avatar', src: mediaUrl(opts.stream, m.avatar, 'avatar', opts.access), alt: '', width: 24, height: 24 })
    : h('span', { class: 'chat-avatar is-initial', 'aria-hidden': 'true', text: senderName.replace(/^@/, '').slice(0, 1).toUpperCase() });
  const li = h('li', { class: classes.join(' '), 'data-id': m.id },
    avatar,
    h('span', { class: 'chat-meta' },
      h('span', { class: 'chat-sender', text: senderName, title: m.sender_id || null }),
      h('time', { class: 'chat-time', text: timeOf(m.ts), datetime: Number.isFinite(m.ts) ? new Date(m.ts).toISOString() : null })));
  const r = m.reply_to;
  if (r && typeof r.id === 'string') {
    li.append(h('blockquote', { class: 'chat-reply', 'data-reply-to': r.id },
      r.sender ? h('span', { class: 'chat-reply-sender', text: String(r.sender) }) : null,
      h('span', { class: 'chat-reply-body', text: r.body != null ? String(r.body) : 'In reply to an earlier message' })));
  }
  const body = h('span', { class: 'chat-body' });
  const pic = media(m, opts);
  if (typeof m.html === 'string' && m.html) {
    body.classList.add('is-html');
    body.append(safeHtml(m.html));
  } else if (!pic) {
    const label = LABELS[type];
    body.textContent = label ? `[${label}] ${m.body ?? ''}` : String(m.body ?? '');
  }
  li.append(body);
  if (pic) li.append(h('span', { class: 'chat-media-box' }, pic));
  if (m.edited) li.append(h('span', { class: 'chat-edited', text: '(edited)' }));
  if (Array.isArray(m.reactions) && m.reactions.length) {
    li.append(h('ul', { class: 'chat-reactions', 'aria-label': 'Reactions' },
      m.reactions.filter((x) => x && typeof x.key === 'string' && Number.isFinite(x.count)).map((x) =>
        h('li', { class: 'chat-reaction', 'data-key': x.key, title: `${x.count} × ${x.key}` },
          h('span', { class: 'chat-reaction-key', text: x.key }),
          h('span', { class: 'chat-reaction-count', text: String(x.count) })))));
  }
  return li;
}
