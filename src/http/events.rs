//! Server-Sent Events for pages. `GET /api/v1/streams/{name}/events`: one
//! stream (live, offline, title, viewers; description, chat and redaction come
//! from the Matrix relay); a new subscriber first gets the current state, then
//! the chat history, so pages need no extra fetch. `GET /api/v1/events`: the
//! state events of many streams on one connection (the multi-view: a browser
//! opens at most six HTTP/1.1 connections to a server, one feed per stream
//! would use them up).

use std::collections::{HashMap, HashSet};
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::response::sse::{Event, KeepAlive, Sse};
use futures_util::Stream;
use serde_json::json;
use tokio::sync::broadcast::error::RecvError;

use super::{ApiError, PeerAddr};
use crate::admission::{Purpose, ViewerFacts, ViewerPass};
use crate::http::App;
use crate::hub::{ChatMessage, HubEvent};
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

/// A stream's state as a new subscriber gets it: title, viewers, live/offline.
fn state_events(stream: &crate::hub::Stream) -> [Event; 3] {
    let name = &stream.name;
    [
        event("title", json!({"name": name, "title": stream.title()})),
        event(
            "viewers",
            json!({"name": name, "viewers": stream.viewers()}),
        ),
        live_or_offline(stream),
    ]
}

/// The event for a change of a stream's state; `None` for the other kinds.
fn state_change(app: &App, ev: &HubEvent) -> Option<Event> {
    Some(match ev {
        HubEvent::Live { stream } => live_or_offline(&*app.hub.get(stream)?),
        HubEvent::Offline { stream } => event("offline", json!({"name": stream})),
        HubEvent::Viewers { stream, count } => {
            event("viewers", json!({"name": stream, "viewers": count}))
        }
        HubEvent::Title { stream, title } => {
            event("title", json!({"name": stream, "title": title}))
        }
        _ => return None,
    })
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
    };
    let pass = app.admission.admit_viewer(facts, Purpose::Look).await?;
    let stream = pass.stream.clone();
    // Subscribe before reading the state so nothing falls between the two.
    let rx = app.hub.subscribe_events();
    let mut initial = Vec::from(state_events(&stream));
    if let Some(d) = stream.description() {
        initial.push(event("description", json!({"description": d})));
    }
    // Chat history (oldest first); live messages already in it are not repeated.
    let history = match &app.matrix {
        Some(m) => m.chat_history(&name),
        None => Vec::new(),
    };
    // By id, the message as sent: a later copy (edited, new reactions) is a new Arc.
    let mut seen: HashMap<String, Arc<ChatMessage>> = HashMap::new();
    for m in &history {
        seen.insert(m.id.clone(), m.clone());
        initial.push(event(
            "chat",
            serde_json::to_value(&**m).unwrap_or_default(),
        ));
    }

    let live = futures_util::stream::unfold(
        (rx, stream, seen, app, pass),
        move |(mut rx, stream, mut seen, app, pass)| async move {
            loop {
                let ev = tokio::select! {
                    ev = rx.recv() => ev,
                    // The grant expired or the room turned private: the feed
                    // ends (a reconnect is admitted again, or refused).
                    _ = revoked(&pass) => return None,
                };
                if !pass.holds() {
                    return None;
                }
                let ev = match ev {
                    Ok(ev) => ev,
                    // A slow reader missed events: resend the state instead.
                    Err(RecvError::Lagged(_)) => {
                        let e = live_or_offline(&stream);
                        return Some((Ok(e), (rx, stream, seen, app, pass)));
                    }
                    Err(RecvError::Closed) => return None,
                };
                if ev.stream() != stream.name {
                    continue;
                }
                if let Some(e) = state_change(&app, &ev) {
                    return Some((Ok(e), (rx, stream, seen, app, pass)));
                }
                let e = match ev {
                    HubEvent::Description { description, .. } => {
                        event("description", json!({"description": description}))
                    }
                    HubEvent::Chat { message, .. } => {
                        if let Some(sent) = seen.remove(&message.id)
                            && Arc::ptr_eq(&sent, &message)
                        {
                            continue;
                        }
                        event("chat", serde_json::to_value(&*message).unwrap_or_default())
                    }
                    HubEvent::Redaction { id, .. } => event("redaction", json!({"id": id})),
                    _ => continue,
                };
                return Some((Ok(e), (rx, stream, seen, app, pass)));
            }
        },
    );
    let all = futures_util::StreamExt::chain(
        futures_util::stream::iter(initial.into_iter().map(Ok)),
        live,
    );
    // Ends with the server, so a stop does not wait out the grace.
    let all = futures_util::StreamExt::take_until(all, stop);
    Ok(Sse::new(all).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
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
/// current state of each (known) stream, then changes. Streams named before
/// they exist are reported once they do. No chat: that is per stream.
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
    let initial: Vec<Event> = app
        .hub
        .streams()
        .iter()
        .filter(|s| wanted(&s.name))
        .flat_map(|s| state_events(s))
        .collect();
    let live = futures_util::stream::unfold(
        (rx, app, wanted, std::collections::VecDeque::new()),
        |(mut rx, app, wanted, mut pending)| async move {
            loop {
                if let Some(e) = pending.pop_front() {
                    return Some((Ok(e), (rx, app, wanted, pending)));
                }
                match rx.recv().await {
                    Ok(ev) => {
                        if !matches!(
                            ev,
                            HubEvent::Chat { .. }
                                | HubEvent::Redaction { .. }
                                | HubEvent::Description { .. }
                        ) && wanted(ev.stream())
                            && let Some(e) = state_change(&app, &ev)
                        {
                            return Some((Ok(e), (rx, app, wanted, pending)));
                        }
                    }
                    // Missed events: resend whether each stream is live.
                    Err(RecvError::Lagged(_)) => pending.extend(
                        app.hub
                            .streams()
                            .iter()
                            .filter(|s| wanted(&s.name))
                            .map(|s| live_or_offline(s)),
                    ),
                    Err(RecvError::Closed) => return None,
                }
            }
        },
    );
    let all = futures_util::StreamExt::chain(
        futures_util::stream::iter(initial.into_iter().map(Ok)),
        live,
    );
    // Ends with the server, so a stop does not wait out the grace.
    let all = futures_util::StreamExt::take_until(all, stop);
    Ok(Sse::new(all).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}
