//! Server-Sent Events for pages. `GET /api/v1/streams/{name}/events`: one
//! stream (live, offline, title, viewers; description, room, chat and
//! redaction come from the Matrix relay); a new subscriber first gets the
//! current state, then the chat history, so pages need no extra fetch.
//! Control events come from the hub's lossless control path (hub/control.rs);
//! chat and viewers from its bounded channel, resynced from state on a lag. `GET /api/v1/events`: the
//! state events of many streams on one connection (the multi-view: a browser
//! opens at most six HTTP/1.1 connections to a server, one feed per stream
//! would use them up).

use std::collections::{HashMap, HashSet, VecDeque};
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::response::sse::{Event, KeepAlive, Sse};
use futures_util::Stream;
use serde_json::json;
use tokio::sync::broadcast;
use tokio::sync::broadcast::error::RecvError;
use tracing::info;

use super::{ApiError, PeerAddr};
use crate::admission::{Purpose, ViewerFacts, ViewerPass};
use crate::http::App;
use crate::hub::{ControlFeed, ControlState, HubEvent, RoomLost};
use crate::log_every::LogEvery;
use axum::extract::ConnectInfo;

fn event(name: &str, data: serde_json::Value) -> Event {
    Event::default().event(name).data(data.to_string())
}

fn live_or_offline(stream: &crate::hub::Stream) -> Event {
    let snap = stream.snapshot();
    if snap.live {
        event("live", serde_json::to_value(&snap).unwrap_or_default())
    } else {
        event("offline", json!({"name": snap.name}))
    }
}

fn viewers_event(stream: &crate::hub::Stream) -> Event {
    event(
        "viewers",
        json!({"name": stream.name, "viewers": stream.cluster_viewers()}),
    )
}

fn room_event(stream: &crate::hub::Stream, lost: &Option<RoomLost>) -> Event {
    event("room", json!({"name": stream.name, "room_lost": lost}))
}

/// The many-stream feed shows this stream no more: it left the registry, or
/// the feed's access no longer covers it.
fn removed_event(name: &str) -> Event {
    event("removed", json!({ "name": name }))
}

/// A stream's state as a new subscriber gets it: title, viewers, live/offline.
fn state_events(stream: &crate::hub::Stream) -> [Event; 3] {
    let name = &stream.name;
    [
        event("title", json!({"name": name, "title": stream.title()})),
        viewers_event(stream),
        live_or_offline(stream),
    ]
}

/// The events that take a page from control state `sent` to `now`.
/// `full`: also the description and the room (the one-stream feed).
fn control_diff(
    stream: &crate::hub::Stream,
    sent: &ControlState,
    now: &ControlState,
    full: bool,
    out: &mut VecDeque<Event>,
) {
    if sent.title != now.title {
        out.push_back(event(
            "title",
            json!({"name": stream.name, "title": now.title}),
        ));
    }
    if full && sent.description != now.description {
        out.push_back(event(
            "description",
            json!({"description": now.description.clone().unwrap_or_default()}),
        ));
    }
    if full && sent.room_lost != now.room_lost {
        out.push_back(room_event(stream, &now.room_lost));
    }
    // Live anywhere in the cluster (on one node: here).
    if sent.shown_live() != now.shown_live() || sent.restarted(now) {
        if sent.restarted(now) {
            // Offline and live again in between: say both.
            out.push_back(event("offline", json!({"name": stream.name})));
        }
        out.push_back(live_or_offline(stream));
    }
}

/// Page feeds that fell behind the chat and viewer channel (and resynced).
static FEED_LAGGED_LOG: LogEvery = LogEvery::new(Duration::from_secs(10));

fn note_lag(missed: u64) {
    if let Some(suppressed) = FEED_LAGGED_LOG.allow() {
        info!(
            missed,
            suppressed, "page feed fell behind the chat and viewer events; resynced from state"
        );
    }
}

/// The chat messages a feed sent last (as many as a room's history holds,
/// and some), by id with a hash of what was sent: a message sent already is
/// not repeated (the history and the live channel overlap), an edit (same
/// id, new text) is sent, and a resync sends only what the page lacks.
struct SentChat {
    order: VecDeque<String>,
    /// id → (hash of the event sent, the message's timestamp)
    sent: HashMap<String, (u64, u64)>,
}

const SENT_CHAT_KEPT: usize = 256;

impl SentChat {
    fn new() -> SentChat {
        SentChat {
            order: VecDeque::new(),
            sent: HashMap::new(),
        }
    }

    /// The `chat` event for `m`, unless the page has it as it is.
    fn event_for(&mut self, m: &crate::hub::ChatMessage) -> Option<Event> {
        let data = serde_json::to_value(m).unwrap_or_default();
        let mut h = std::collections::hash_map::DefaultHasher::new();
        std::hash::Hash::hash(&data.to_string(), &mut h);
        let hash = std::hash::Hasher::finish(&h);
        match self.sent.insert(m.id.clone(), (hash, m.ts)) {
            Some((old, _)) if old == hash => return None,
            Some(_) => {}
            None => {
                self.order.push_back(m.id.clone());
                if self.order.len() > SENT_CHAT_KEPT
                    && let Some(old) = self.order.pop_front()
                {
                    self.sent.remove(&old);
                }
            }
        }
        Some(event("chat", data))
    }

    /// Brings the page to `history` after missed events: messages it lacks
    /// or has in an older text, and a `redaction` for each it has that is
    /// gone from the history although not older than its oldest message.
    fn resync(&mut self, history: &[Arc<crate::hub::ChatMessage>], out: &mut VecDeque<Event>) {
        let oldest = history.first().map_or(u64::MAX, |m| m.ts);
        let present: HashSet<&str> = history.iter().map(|m| m.id.as_str()).collect();
        let redacted: Vec<String> = self
            .sent
            .iter()
            .filter(|(id, (_, ts))| *ts >= oldest && !present.contains(id.as_str()))
            .map(|(id, _)| id.clone())
            .collect();
        for id in redacted {
            self.sent.remove(&id);
            self.order.retain(|o| *o != id);
            out.push_back(event("redaction", json!({"id": id})));
        }
        out.extend(history.iter().filter_map(|m| self.event_for(m)));
    }
}

/// Resolves when `pass` stops holding: at its expiry, or (checked each
/// second) when its stream's room stops being public.
async fn revoked(pass: &ViewerPass) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        if !pass.holds() {
            return;
        }
    }
}

pub async fn stream_events(
    State(app): State<Arc<App>>,
    Path(name): Path<String>,
    ConnectInfo(PeerAddr(peer)): ConnectInfo<PeerAddr>,
    headers: axum::http::HeaderMap,
    uri: axum::http::Uri,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let stop = app.shutdown.wait_owned();
    // A private room's stream (state and chat) is for viewers with access
    // (`?access=` token): the same admission as for its video.
    let facts = ViewerFacts {
        stream: name.clone(),
        client: super::client_addr(peer.ip(), &headers, &app.config.http.trusted_proxies),
        token: crate::http::extract::token_from(&headers, uri.query()),
        attempt: None,
        relay: false,
    };
    let pass = app.admission.admit_viewer(facts, Purpose::Look).await?;
    let stream = pass.stream.clone();
    // Subscribe before reading the state so nothing falls between the two.
    let rx = app.hub.subscribe_events();
    let control = app.hub.control_feed();
    let sent_state = stream.control_state();
    let mut initial = Vec::from(state_events(&stream));
    if let Some(d) = &sent_state.description {
        initial.push(event("description", json!({"description": d})));
    }
    if sent_state.room_lost.is_some() {
        initial.push(room_event(&stream, &sent_state.room_lost));
    }
    // Chat history (oldest first); live messages already in it are not
    // repeated. None while the room is lost: its chat is not the stream's.
    let history = match &app.matrix {
        Some(m) if sent_state.room_lost.is_none() => m.chat_history(&name),
        _ => Vec::new(),
    };
    let mut sent_chat = SentChat::new();
    initial.extend(history.iter().filter_map(|m| sent_chat.event_for(m)));

    let feed = StreamFeed {
        rx,
        control,
        sent_state,
        sent_chat,
        pending: VecDeque::new(),
        stream,
        app,
        pass,
    };
    let live = futures_util::stream::unfold(feed, |mut feed| async move {
        let e = feed.next().await?;
        Some((Ok(e), feed))
    });
    let all = futures_util::StreamExt::chain(
        futures_util::stream::iter(initial.into_iter().map(Ok)),
        live,
    );
    // Ends with the server, so a stop does not wait out the grace.
    let all = futures_util::StreamExt::take_until(all, stop);
    Ok(Sse::new(all).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}

/// One stream's feed after its first events: control changes from the
/// lossless control path, chat and viewers from the hub's channel (resynced
/// from state when the feed falls behind it).
struct StreamFeed {
    rx: broadcast::Receiver<HubEvent>,
    control: ControlFeed,
    sent_state: ControlState,
    sent_chat: SentChat,
    pending: VecDeque<Event>,
    stream: Arc<crate::hub::Stream>,
    app: Arc<App>,
    pass: ViewerPass,
}

impl StreamFeed {
    /// The next event for the page; `None` ends the feed.
    async fn next(&mut self) -> Option<Event> {
        loop {
            if let Some(e) = self.pending.pop_front() {
                return Some(e);
            }
            tokio::select! {
                // Control first: a busy chat cannot hold a title back.
                biased;
                // The grant expired or the room turned private: the feed
                // ends (a reconnect is admitted again, or refused).
                _ = revoked(&self.pass) => return None,
                alive = self.control.stream_changed(&self.stream) => {
                    if !alive {
                        return None;
                    }
                    let now = self.stream.control_state();
                    control_diff(&self.stream, &self.sent_state, &now, true, &mut self.pending);
                    let found = self.sent_state.room_lost.is_some() && now.room_lost.is_none();
                    self.sent_state = now;
                    if found {
                        // The room is back: its chat as it is now.
                        self.resync();
                    }
                }
                ev = self.rx.recv() => match ev {
                    Ok(ev) if ev.stream() == self.stream.name => self.on_event(ev),
                    Ok(_) => {}
                    Err(RecvError::Lagged(missed)) => {
                        note_lag(missed);
                        self.resync();
                    }
                    Err(RecvError::Closed) => return None,
                },
            }
            if !self.pass.holds() {
                return None;
            }
        }
    }

    fn on_event(&mut self, ev: HubEvent) {
        let lost = self.sent_state.room_lost.is_some();
        let e = match ev {
            HubEvent::Chat { .. } | HubEvent::Redaction { .. } if lost => return,
            HubEvent::Viewers { stream, count } => {
                event("viewers", json!({"name": stream, "viewers": count}))
            }
            HubEvent::Chat { message, .. } => match self.sent_chat.event_for(&message) {
                Some(e) => e,
                None => return,
            },
            HubEvent::Redaction { id, .. } => event("redaction", json!({"id": id})),
            // Live, offline, title, description: from the control path.
            _ => return,
        };
        self.pending.push_back(e);
    }

    /// After missed chat and viewer events: the viewer count, and the
    /// history messages the page has not had.
    fn resync(&mut self) {
        self.pending.push_back(viewers_event(&self.stream));
        if let Some(m) = &self.app.matrix
            && self.sent_state.room_lost.is_none()
        {
            let history = m.chat_history(&self.stream.name);
            self.sent_chat.resync(&history, &mut self.pending);
        }
    }
}

/// Most names one `GET /api/v1/events?streams=` may list.
const MAX_WATCHED: usize = 256;

#[derive(serde::Deserialize)]
pub struct AllEventsQuery {
    /// Comma-separated stream names; absent: every stream.
    streams: Option<String>,
    /// A viewer token, for a private stream among them.
    access: Option<String>,
}

/// `GET /api/v1/events[?streams=a,b]`: `title`, `viewers`, `live` and
/// `offline` of many streams, each with the stream's `name`; first the
/// current state of each (known) stream, then changes, and `removed` when a
/// stream shown leaves the feed (gone from the registry, or turned private
/// without the feed's access). Streams named before they exist are reported
/// once they do. No chat: that is per stream.
pub async fn all_events(
    State(app): State<Arc<App>>,
    axum::extract::Query(q): axum::extract::Query<AllEventsQuery>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let stop = app.shutdown.wait_owned();
    // Private streams appear only with a token for them (`?access=`), and
    // only while it holds.
    let token = q.access.clone();
    let watched: Option<HashSet<String>> = match &q.streams {
        None => None,
        Some(list) => {
            let names: HashSet<String> = list
                .split(',')
                .map(str::trim)
                .filter(|n| !n.is_empty())
                .map(str::to_string)
                .collect();
            if names.len() > MAX_WATCHED {
                return Err(ApiError::bad_request(
                    "too_many_streams",
                    format!("name at most {MAX_WATCHED} streams in ?streams="),
                ));
            }
            if let Some(bad) = names
                .iter()
                .find(|n| crate::config::validate_stream_name(n).is_err())
            {
                return Err(ApiError::bad_request(
                    "bad_stream_name",
                    format!("'{bad}' in ?streams= is not a stream name"),
                ));
            }
            Some(names)
        }
    };
    let admission = app.admission.clone();
    let hub = app.hub.clone();
    let wanted = move |name: &str| {
        watched.as_ref().is_none_or(|w| w.contains(name))
            && hub
                .get(name)
                .is_some_and(|s| admission.may_see(&s, token.as_deref()))
    };
    let rx = app.hub.subscribe_events();
    let control = app.hub.control_feed();
    let mut sent: HashMap<String, ControlState> = HashMap::new();
    let mut initial: Vec<Event> = Vec::new();
    for s in app.hub.streams().iter().filter(|s| wanted(&s.name)) {
        sent.insert(s.name.clone(), s.control_state());
        initial.extend(state_events(s));
    }
    let feed = AllFeed {
        rx,
        control,
        sent,
        pending: VecDeque::new(),
        app,
        wanted,
    };
    let live = futures_util::stream::unfold(feed, |mut feed| async move {
        let e = feed.next().await?;
        Some((Ok(e), feed))
    });
    let all = futures_util::StreamExt::chain(
        futures_util::stream::iter(initial.into_iter().map(Ok)),
        live,
    );
    // Ends with the server, so a stop does not wait out the grace.
    let all = futures_util::StreamExt::take_until(all, stop);
    Ok(Sse::new(all).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}

/// The many-stream feed after its first events. `sent` holds the control
/// state last sent of each stream shown (bounded by the streams there are:
/// those that leave the registry leave it too).
struct AllFeed<W> {
    rx: broadcast::Receiver<HubEvent>,
    control: ControlFeed,
    sent: HashMap<String, ControlState>,
    pending: VecDeque<Event>,
    app: Arc<App>,
    wanted: W,
}

impl<W: Fn(&str) -> bool> AllFeed<W> {
    async fn next(&mut self) -> Option<Event> {
        loop {
            if let Some(e) = self.pending.pop_front() {
                return Some(e);
            }
            tokio::select! {
                biased;
                changed = self.control.changed(&self.app.hub) => {
                    for s in changed? {
                        self.control_changed(&s);
                    }
                    if self.control.take_removed() {
                        // Streams left the registry (idle party shares,
                        // offline already): the page is told and they are
                        // forgotten; one made again under the name is shown
                        // in full.
                        let hub = &self.app.hub;
                        let pending = &mut self.pending;
                        self.sent.retain(|name, _| {
                            let kept = hub.get(name).is_some();
                            if !kept {
                                pending.push_back(removed_event(name));
                            }
                            kept
                        });
                    }
                }
                ev = self.rx.recv() => match ev {
                    Ok(HubEvent::Viewers { stream, count }) if (self.wanted)(&stream) => {
                        return Some(event("viewers", json!({"name": stream, "viewers": count})));
                    }
                    Ok(_) => {}
                    // Missed viewer counts: resend them.
                    Err(RecvError::Lagged(missed)) => {
                        note_lag(missed);
                        for s in self.app.hub.streams() {
                            if self.sent.contains_key(&s.name) && (self.wanted)(&s.name) {
                                self.pending.push_back(viewers_event(&s));
                            }
                        }
                    }
                    Err(RecvError::Closed) => return None,
                },
            }
        }
    }

    fn control_changed(&mut self, s: &crate::hub::Stream) {
        if !(self.wanted)(&s.name) {
            // Hidden (e.g. turned private): the page drops it; shown in full
            // if it comes back.
            if self.sent.remove(&s.name).is_some() {
                self.pending.push_back(removed_event(&s.name));
            }
            return;
        }
        let now = s.control_state();
        match self.sent.get(&s.name) {
            Some(sent) => control_diff(s, sent, &now, false, &mut self.pending),
            None => self.pending.extend(state_events(s)),
        }
        self.sent.insert(s.name.clone(), now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hub::ChatMessage;

    fn msg(id: &str, body: &str, ts: u64) -> Arc<ChatMessage> {
        Arc::new(ChatMessage {
            id: id.into(),
            sender: "a".into(),
            sender_id: "@a:hs".into(),
            body: body.into(),
            ts,
            guest: false,
            rich: Default::default(),
        })
    }

    #[test]
    fn chat_is_sent_once_edits_again_and_a_resync_fills_the_gaps() {
        let mut sent = SentChat::new();
        assert!(sent.event_for(&msg("$1", "hi", 10)).is_some());
        assert!(sent.event_for(&msg("$1", "hi", 10)).is_none(), "a repeat");
        assert!(sent.event_for(&msg("$1", "hi!", 10)).is_some(), "an edit");
        assert!(sent.event_for(&msg("$2", "two", 20)).is_some());
        // Missed: $2 redacted, $3 posted.
        let mut out = VecDeque::new();
        sent.resync(&[msg("$1", "hi!", 10), msg("$3", "three", 30)], &mut out);
        assert_eq!(out.len(), 2, "a redaction of $2 and the new $3");
        // Far more messages than kept: the memory stays bounded.
        for i in 0..10_000 {
            sent.event_for(&msg(&format!("$x{i}"), "x", 40 + i));
        }
        assert!(sent.sent.len() <= SENT_CHAT_KEPT && sent.order.len() <= SENT_CHAT_KEPT);
    }
}
