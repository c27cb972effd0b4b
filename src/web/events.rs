//! Server-Sent Events for pages. `GET /api/v1/streams/{name}/events`: one
//! stream (live, offline, title, viewers; description, chat and redaction come
//! from the Matrix relay); a new subscriber first gets the current state, then
//! the chat history, so pages need no extra fetch. `GET /api/v1/events`: the
//! state events of many streams on one connection (the multi-view: a browser
//! opens at most six HTTP/1.1 connections to a server, one feed per stream
//! would use them up).

use std::collections::HashSet;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::response::sse::{Event, KeepAlive, Sse};
use futures_util::Stream;
use serde_json::json;
use tokio::sync::broadcast::error::RecvError;

use super::ApiError;
use crate::hub::HubEvent;
use crate::server::App;

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

pub async fn stream_events(
    State(app): State<Arc<App>>,
    Path(name): Path<String>,
    headers: axum::http::HeaderMap,
    uri: axum::http::Uri,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let stop = app.shutdown.wait_owned();
    let stream = app
        .hub
        .get(&name)
        .ok_or_else(|| ApiError::unknown_stream(&name))?;
    // Subscribe before reading the state so nothing falls between the two.
    let rx = app.hub.subscribe_events();
    let mut initial = Vec::from(state_events(&stream));
    if let Some(d) = stream.description() {
        initial.push(event("description", json!({"description": d})));
    }
    // A private room's chat is for viewers with access (`?access=` token).
    let chat_ok =
        crate::matrix::access::check_viewer(app.matrix.as_deref(), &stream, &headers, uri.query())
            .is_ok();
    // Chat history (oldest first); live messages already in it are not repeated.
    let history = match &app.matrix {
        Some(m) if chat_ok => m.chat_history(&name),
        _ => Vec::new(),
    };
    let mut seen: HashSet<String> = HashSet::new();
    for m in &history {
        seen.insert(m.id.clone());
        initial.push(event(
            "chat",
            serde_json::to_value(&**m).unwrap_or_default(),
        ));
    }

    let live = futures_util::stream::unfold(
        (rx, stream, seen, app),
        move |(mut rx, stream, mut seen, app)| async move {
            loop {
                let ev = match rx.recv().await {
                    Ok(ev) => ev,
                    // A slow reader missed events: resend the state instead.
                    Err(RecvError::Lagged(_)) => {
                        let e = live_or_offline(&stream);
                        return Some((Ok(e), (rx, stream, seen, app)));
                    }
                    Err(RecvError::Closed) => return None,
                };
                if ev.stream() != stream.name {
                    continue;
                }
                if let Some(e) = state_change(&app, &ev) {
                    return Some((Ok(e), (rx, stream, seen, app)));
                }
                let e = match ev {
                    HubEvent::Description { description, .. } => {
                        event("description", json!({"description": description}))
                    }
                    HubEvent::Chat { message, .. } => {
                        if !seen.is_empty() && seen.remove(&message.id) {
                            continue;
                        }
                        event("chat", serde_json::to_value(&*message).unwrap_or_default())
                    }
                    HubEvent::Redaction { id, .. } => event("redaction", json!({"id": id})),
                    _ => continue,
                };
                return Some((Ok(e), (rx, stream, seen, app)));
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
    let wanted = move |name: &str| watched.as_ref().is_none_or(|w| w.contains(name));
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
                        if wanted(ev.stream())
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
