//! The chat of a past session, for a recording's replay: the room timeline
//! between the session's start and end, read from the homeserver
//! (`/timestamp_to_event` for a starting point, `/context` for a token there,
//! then `/messages` forwards) and drawn as the live chat draws it
//! (`chat::to_chat`, `chat_view`: sanitised HTML, replies, edits, reactions).
//!
//! Bounded: pages of the timeline read, messages and bytes kept, time spent,
//! homeserver reads at once, and a small cache so viewers opening the same
//! replay do not each walk the timeline again.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;
use ruma::api::Direction;
use ruma::api::client::context::get_context;
use ruma::api::client::filter::RoomEventFilter;
use ruma::api::client::message::get_message_events;
use ruma::api::client::room::get_event_by_timestamp;
use ruma::{MilliSecondsSinceUnixEpoch, OwnedRoomId, UInt};
use serde::Serialize;
use tokio::sync::Semaphore;
use tracing::info;

use super::chat_view::{self, Relation};
use super::{Ev, HsError, Matrix};
use crate::hub::ChatMessage;

/// Events asked for per `/messages` page.
const PAGE_EVENTS: u32 = 100;
/// Pages read per session at most (so 3000 events).
const MAX_PAGES: usize = 30;
/// Messages kept per session at most (the first ones).
const MAX_MESSAGES: usize = 1000;
/// Bytes of messages kept per session at most (estimated, see [`message_bytes`]).
const MAX_SESSION_BYTES: usize = 1 << 20;
/// Time spent reading one session; what was read by then is answered.
const READ_BUDGET: Duration = Duration::from_secs(20);
/// Past the budget, a read still waiting on the homeserver is given up.
const HARD_STOP: Duration = Duration::from_secs(10);
/// Sessions read from the homeserver at once; more wait for a turn.
const READS_AT_ONCE: usize = 2;
/// Longest wait for a turn before answering "busy".
const TURN_WAIT: Duration = Duration::from_secs(10);
/// Bytes of sessions cached, in all.
const CACHE_BYTES: usize = 4 << 20;
/// How long a finished session's chat is reused; an unfinished one's.
const CACHE_TTL: Duration = Duration::from_secs(60);
const CACHE_TTL_UNFINISHED: Duration = Duration::from_secs(5);
/// Messages a little outside the session still belong to it (clocks of the
/// homeserver and of roomcast differ a little).
const SLACK_MS: u64 = 2000;

/// The chat of one session, oldest first.
#[derive(Debug, Clone, Serialize)]
pub struct SessionChat {
    pub messages: Vec<ChatMessage>,
    /// False when a bound cut the reading short (more messages than kept).
    pub complete: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum ReplayChatError {
    /// The room cannot be read (encrypted, or the bot is not allowed to).
    #[error("the chat of this recording cannot be read: {0}")]
    NoChat(String),
    #[error("the homeserver could not be reached: {0}")]
    Unavailable(String),
    #[error("too many replays' chats are being read right now; try again in a moment")]
    Busy,
}

/// The window of time a session covers, ms since the Unix epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Window {
    pub start_ms: u64,
    /// None while the session is still going.
    pub end_ms: Option<u64>,
}

impl Window {
    fn end_or(&self, now_ms: u64) -> u64 {
        self.end_ms.unwrap_or(now_ms)
    }

    fn before(&self, ts: u64) -> bool {
        ts.saturating_add(SLACK_MS) < self.start_ms
    }

    fn after(&self, ts: u64, now_ms: u64) -> bool {
        ts > self.end_or(now_ms).saturating_add(SLACK_MS)
    }
}

/// Roughly what a message costs in memory and on the wire.
fn message_bytes(m: &ChatMessage) -> usize {
    let reply = m
        .rich
        .reply_to
        .as_ref()
        .map_or(0, |r| r.id.len() + r.body.as_ref().map_or(0, String::len));
    200 + m.id.len()
        + m.sender.len()
        + m.sender_id.len()
        + m.body.len()
        + m.rich.html.as_ref().map_or(0, String::len)
        + reply
        + m.rich
            .reactions
            .iter()
            .map(|r| r.key.len() + 16)
            .sum::<usize>()
}

fn session_bytes(s: &SessionChat) -> usize {
    s.messages.iter().map(message_bytes).sum::<usize>() + 64
}

/// Sessions' chats recently read: bounded in bytes, oldest dropped first.
#[derive(Default)]
struct Cache {
    entries: HashMap<(String, Window), (Instant, Arc<SessionChat>, usize)>,
    bytes: usize,
}

impl Cache {
    fn get(&mut self, key: &(String, Window), now: Instant) -> Option<Arc<SessionChat>> {
        let ttl = if key.1.end_ms.is_some() {
            CACHE_TTL
        } else {
            CACHE_TTL_UNFINISHED
        };
        let (at, chat, size) = self.entries.get(key)?;
        if now.duration_since(*at) < ttl {
            return Some(chat.clone());
        }
        self.bytes -= size;
        self.entries.remove(key);
        None
    }

    fn put(&mut self, key: (String, Window), chat: Arc<SessionChat>, now: Instant) {
        let size = session_bytes(&chat);
        if size > CACHE_BYTES {
            return;
        }
        if let Some((_, _, old)) = self.entries.remove(&key) {
            self.bytes -= old;
        }
        while self.bytes + size > CACHE_BYTES {
            let Some(oldest) = self
                .entries
                .iter()
                .min_by_key(|(_, (at, _, _))| *at)
                .map(|(k, _)| k.clone())
            else {
                break;
            };
            if let Some((_, _, s)) = self.entries.remove(&oldest) {
                self.bytes -= s;
            }
        }
        self.bytes += size;
        self.entries.insert(key, (now, chat, size));
    }
}

/// The replays' chat reader: the cache and the turns at the homeserver.
/// A chat being read, waited on by the others who want it.
type InFlight = Arc<tokio::sync::Mutex<()>>;

pub struct ReplayChats {
    cache: Mutex<Cache>,
    turns: Semaphore,
    /// One read per (room, window) at a time: viewers of the same replay
    /// who ask together wait for the first read, then take it from the
    /// cache (bounded by the requests in progress).
    reading: Mutex<HashMap<(String, Window), InFlight>>,
}

impl Default for ReplayChats {
    fn default() -> Self {
        ReplayChats {
            cache: Mutex::new(Cache::default()),
            turns: Semaphore::new(READS_AT_ONCE),
            reading: Mutex::new(HashMap::new()),
        }
    }
}

impl ReplayChats {
    /// The lock of `key`'s read (made if none is in progress).
    fn in_flight(&self, key: &(String, Window)) -> InFlight {
        self.reading.lock().entry(key.clone()).or_default().clone()
    }

    /// `key`'s read is over: its lock goes unless others wait on it.
    fn done(&self, key: &(String, Window), lock: InFlight) {
        let mut map = self.reading.lock();
        // The map's and this one: nobody else holds it.
        if Arc::strong_count(&lock) <= 2 {
            map.remove(key);
        }
    }
}

/// What reading the timeline gathered so far.
struct Gathered {
    msgs: VecDeque<Arc<ChatMessage>>,
    reactions: HashSet<String>,
    bytes: usize,
    /// A bound was reached: stop reading.
    full: bool,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn not_found(e: &HsError) -> bool {
    matches!(e.errcode(), Some("M_NOT_FOUND"))
}

fn from_hs(e: HsError) -> ReplayChatError {
    match e.errcode() {
        Some("M_FORBIDDEN" | "M_NOT_FOUND") => ReplayChatError::NoChat(e.to_string()),
        _ => ReplayChatError::Unavailable(e.to_string()),
    }
}

impl Matrix {
    /// The chat of `room` during `window` (a recording's session), oldest first.
    pub async fn session_chat(
        &self,
        room: &str,
        window: Window,
    ) -> Result<Arc<SessionChat>, ReplayChatError> {
        if self.room_row(room).is_some_and(|r| r.encrypted) {
            return Err(ReplayChatError::NoChat(
                "the room is encrypted; roomcast cannot read it".into(),
            ));
        }
        let key = (room.to_string(), window);
        if let Some(hit) = self.replay_chats.cache.lock().get(&key, Instant::now()) {
            return Ok(hit);
        }
        let lock = self.replay_chats.in_flight(&key);
        let read = self.read_once(room, window, &key, &lock).await;
        self.replay_chats.done(&key, lock);
        read
    }

    /// Reads `key` unless the viewer who read it meanwhile put it in the
    /// cache (holding `lock`, `key`'s single flight, while it does).
    async fn read_once(
        &self,
        room: &str,
        window: Window,
        key: &(String, Window),
        lock: &InFlight,
    ) -> Result<Arc<SessionChat>, ReplayChatError> {
        let _flight = tokio::time::timeout(TURN_WAIT, lock.lock())
            .await
            .map_err(|_| ReplayChatError::Busy)?;
        if let Some(hit) = self.replay_chats.cache.lock().get(key, Instant::now()) {
            return Ok(hit);
        }
        let _turn = tokio::time::timeout(TURN_WAIT, self.replay_chats.turns.acquire())
            .await
            .map_err(|_| ReplayChatError::Busy)?
            .map_err(|_| ReplayChatError::Busy)?;
        let started = Instant::now();
        // One homeserver call may take its own timeouts and retries; the
        // whole read may not take much longer than its budget.
        let read = tokio::time::timeout(READ_BUDGET + HARD_STOP, self.read_session(room, window))
            .await
            .map_err(|_| {
                ReplayChatError::Unavailable(format!(
                    "reading the timeline took more than {} s",
                    (READ_BUDGET + HARD_STOP).as_secs()
                ))
            })?;
        let chat = Arc::new(read?);
        info!(
            room = %room,
            messages = chat.messages.len(),
            complete = chat.complete,
            took_ms = started.elapsed().as_millis() as u64,
            "matrix: replay chat read"
        );
        self.replay_chats
            .cache
            .lock()
            .put(key.clone(), chat.clone(), Instant::now());
        Ok(chat)
    }

    async fn read_session(
        &self,
        room: &str,
        window: Window,
    ) -> Result<SessionChat, ReplayChatError> {
        let deadline = Instant::now() + READ_BUDGET;
        let rid = OwnedRoomId::try_from(room)
            .map_err(|e| ReplayChatError::NoChat(format!("bad room id: {e}")))?;
        // The last event before the start (so nothing at the start is
        // missed), or the first after it in a room younger than the session.
        let ts = |ms: u64| MilliSecondsSinceUnixEpoch(UInt::new_saturating(ms));
        let start = window.start_ms.saturating_sub(SLACK_MS);
        let before =
            get_event_by_timestamp::v1::Request::new(rid.clone(), ts(start), Direction::Backward);
        let anchor = match self.client.send(before, None).await {
            Ok(r) => r.event_id,
            Err(e) if not_found(&e) => {
                let after = get_event_by_timestamp::v1::Request::new(
                    rid.clone(),
                    ts(start),
                    Direction::Forward,
                );
                match self.client.send(after, None).await {
                    Ok(r) => r.event_id,
                    Err(e) if not_found(&e) => {
                        return Ok(SessionChat {
                            messages: Vec::new(),
                            complete: true,
                        });
                    }
                    Err(e) => return Err(from_hs(e)),
                }
            }
            Err(e) => return Err(from_hs(e)),
        };
        let mut ctx = get_context::v3::Request::new(rid.clone(), anchor);
        ctx.limit = UInt::from(0u32);
        let ctx = self.client.send(ctx, None).await.map_err(from_hs)?;
        let mut got = Gathered {
            msgs: VecDeque::new(),
            reactions: HashSet::new(),
            bytes: 0,
            full: false,
        };
        let now = now_ms();
        if let Some(raw) = &ctx.event
            && let Ok(full) = raw.deserialize_as_unchecked::<serde_json::Value>()
        {
            self.take_event(room, &full, window, now, &mut got).await;
        }
        let mut from = ctx.end;
        let mut done = from.is_none();
        let mut pages = 0;
        while !done && !got.full {
            if pages >= MAX_PAGES || Instant::now() >= deadline {
                got.full = true;
                break;
            }
            pages += 1;
            let mut req = get_message_events::v3::Request::new(rid.clone(), Direction::Forward);
            req.from = from.clone();
            req.limit = PAGE_EVENTS.into();
            let mut filter = RoomEventFilter::default();
            filter.types = Some(vec![
                "m.room.message".into(),
                "m.sticker".into(),
                "m.reaction".into(),
            ]);
            req.filter = filter;
            let r = self.client.send(req, None).await.map_err(from_hs)?;
            for raw in &r.chunk {
                let Ok(full) = raw.deserialize_as_unchecked::<serde_json::Value>() else {
                    continue;
                };
                let ts = full["origin_server_ts"].as_u64().unwrap_or(0);
                if window.after(ts, now) {
                    done = true;
                    break;
                }
                self.take_event(room, &full, window, now, &mut got).await;
                if got.full || Instant::now() >= deadline {
                    got.full = true;
                    break;
                }
            }
            done = done || r.chunk.is_empty() || r.end.is_none() || r.end == from;
            from = r.end;
        }
        Ok(SessionChat {
            messages: got.msgs.iter().map(|m| without_media(m)).collect(),
            complete: !got.full,
        })
    }

    /// One event of the timeline: a message in the window joins the chat, an
    /// edit or a reaction changes the message it points at.
    async fn take_event(
        &self,
        room: &str,
        full: &serde_json::Value,
        window: Window,
        now: u64,
        got: &mut Gathered,
    ) {
        let Ok(ev) = serde_json::from_value::<Ev>(full.clone()) else {
            return;
        };
        if !matches!(
            ev.kind.as_str(),
            "m.room.message" | "m.sticker" | "m.reaction"
        ) || window.before(ev.origin_server_ts)
            || window.after(ev.origin_server_ts, now)
        {
            return;
        }
        if apply_relation(&mut got.msgs, &mut got.reactions, &ev) {
            return;
        }
        let Some(m) = self.to_chat(room, &ev, &got.msgs).await else {
            return;
        };
        let size = message_bytes(&m);
        if got.msgs.len() >= MAX_MESSAGES || got.bytes + size > MAX_SESSION_BYTES {
            got.full = true;
            return;
        }
        got.bytes += size;
        got.msgs.push_back(Arc::new(m));
        // An edit made after the page of events read comes bundled with its
        // message (`unsigned.m.relations.m.replace`).
        if let Ok(edit) =
            serde_json::from_value::<Ev>(full["unsigned"]["m.relations"]["m.replace"].clone())
        {
            apply_relation(&mut got.msgs, &mut got.reactions, &edit);
        }
    }
}

/// The media proxy serves only what the live chat shows (`chat_media`), so
/// a replay names images in words, as it does files.
fn without_media(m: &ChatMessage) -> ChatMessage {
    let mut m = m.clone();
    m.rich.media = None;
    m.rich.avatar = None;
    m
}

/// An edit or a reaction applied to the messages read so far; false when
/// `ev` is neither (a message of its own).
fn apply_relation(
    msgs: &mut VecDeque<Arc<ChatMessage>>,
    reactions: &mut HashSet<String>,
    ev: &Ev,
) -> bool {
    match chat_view::relation(&ev.content) {
        Relation::Replace(target) => {
            if ev.kind == "m.room.message" {
                chat_view::apply_edit(
                    msgs,
                    &ev.sender,
                    &target,
                    &ev.kind,
                    &ev.content["m.new_content"],
                );
            }
            true
        }
        Relation::Annotation { target, key } => {
            if ev.kind == "m.reaction"
                && let Some(id) = &ev.event_id
                && reactions.len() < MAX_MESSAGES * 20
                && reactions.insert(id.clone())
            {
                chat_view::apply_reaction(msgs, &target, &key, 1);
            }
            true
        }
        _ => ev.kind == "m.reaction",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ev(v: serde_json::Value) -> Ev {
        serde_json::from_value(v).unwrap()
    }

    fn msg(id: &str, body: &str) -> Arc<ChatMessage> {
        Arc::new(ChatMessage {
            id: id.into(),
            sender: "Alice".into(),
            sender_id: "@alice:x".into(),
            body: body.into(),
            ts: 1,
            guest: false,
            rich: chat_view::Rich {
                msgtype: "m.text".into(),
                ..Default::default()
            },
        })
    }

    #[test]
    fn window_bounds_with_slack() {
        let w = Window {
            start_ms: 10_000,
            end_ms: Some(20_000),
        };
        assert!(w.before(7_000));
        assert!(!w.before(8_500));
        assert!(!w.after(21_000, 99_999));
        assert!(w.after(22_500, 99_999));
        let open = Window {
            start_ms: 10_000,
            end_ms: None,
        };
        assert!(!open.after(50_000, 50_000));
        assert!(open.after(60_000, 50_000));
    }

    #[test]
    fn reactions_count_once_and_edits_apply() {
        let mut msgs: VecDeque<_> = [msg("$a", "hi")].into_iter().collect();
        let mut seen = HashSet::new();
        let react = ev(
            json!({"event_id": "$r1", "type": "m.reaction", "sender": "@b:x",
            "content": {"m.relates_to": {"rel_type": "m.annotation", "event_id": "$a", "key": "👍"}}}),
        );
        assert!(apply_relation(&mut msgs, &mut seen, &react));
        assert!(apply_relation(&mut msgs, &mut seen, &react));
        assert_eq!(msgs[0].rich.reactions.len(), 1);
        assert_eq!(msgs[0].rich.reactions[0].count, 1);
        let edit = ev(
            json!({"event_id": "$e", "type": "m.room.message", "sender": "@alice:x",
            "content": {"msgtype": "m.text", "body": "* hello",
                "m.new_content": {"msgtype": "m.text", "body": "hello"},
                "m.relates_to": {"rel_type": "m.replace", "event_id": "$a"}}}),
        );
        assert!(apply_relation(&mut msgs, &mut seen, &edit));
        assert_eq!(msgs[0].body, "hello");
        assert!(msgs[0].rich.edited);
        // A plain message is not a relation; a reaction without a target is dropped.
        let plain = ev(
            json!({"event_id": "$p", "type": "m.room.message", "sender": "@b:x", "content": {"msgtype": "m.text", "body": "x"}}),
        );
        assert!(!apply_relation(&mut msgs, &mut seen, &plain));
        let bad =
            ev(json!({"event_id": "$r2", "type": "m.reaction", "sender": "@b:x", "content": {}}));
        assert!(apply_relation(&mut msgs, &mut seen, &bad));
    }

    #[test]
    fn cache_is_bounded_in_bytes_and_expires() {
        let mut c = Cache::default();
        let t0 = Instant::now();
        let big = Arc::new(SessionChat {
            messages: vec![(*msg("$a", &"x".repeat(1 << 20))).clone()],
            complete: true,
        });
        let w = |s| Window {
            start_ms: s,
            end_ms: Some(s + 1),
        };
        for i in 0..8 {
            c.put(
                ("!r:x".into(), w(i)),
                big.clone(),
                t0 + Duration::from_millis(i),
            );
            assert!(c.bytes <= CACHE_BYTES);
        }
        assert!(c.entries.len() < 8);
        // The newest is kept, the oldest went first.
        assert!(c.get(&("!r:x".into(), w(7)), t0).is_some());
        assert!(c.get(&("!r:x".into(), w(0)), t0).is_none());
        assert!(
            c.get(
                &("!r:x".into(), w(7)),
                t0 + CACHE_TTL + Duration::from_secs(1)
            )
            .is_none()
        );
        assert_eq!(c.bytes, c.entries.values().map(|e| e.2).sum::<usize>());
    }
}
