//! `GET /api/v1/streams/{name}/events`: Server-Sent Events for pages (live,
//! offline, title, viewers; description, chat and redaction come from the
//! Matrix relay). A new subscriber first gets the current state, then the chat
//! history, so pages need no extra fetch.

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

pub async fn stream_events(
    State(app): State<Arc<App>>,
    Path(name): Path<String>,
    headers: axum::http::HeaderMap,
    uri: axum::http::Uri,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let stream = app
        .hub
        .get(&name)
        .ok_or_else(|| ApiError::unknown_stream(&name))?;
    // Subscribe before reading the state so nothing falls between the two.
    let rx = app.hub.subscribe_events();
    let snap = stream.snapshot();
    let mut initial = vec![
        event("title", json!({"title": snap.title})),
        event("viewers", json!({"viewers": snap.viewers})),
    ];
    initial.push(if snap.live {
        event("live", serde_json::to_value(&snap).unwrap_or_default())
    } else {
        event("offline", json!({"name": snap.name}))
    });
    if let Some(d) = &snap.description {
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
        (rx, stream, seen),
        move |(mut rx, stream, mut seen)| async move {
            loop {
                let ev = match rx.recv().await {
                    Ok(ev) => ev,
                    // A slow reader missed events: resend the state instead.
                    Err(RecvError::Lagged(_)) => {
                        let snap = stream.snapshot();
                        let e = if snap.live {
                            event("live", serde_json::to_value(&snap).unwrap_or_default())
                        } else {
                            event("offline", json!({"name": snap.name}))
                        };
                        return Some((Ok(e), (rx, stream, seen)));
                    }
                    Err(RecvError::Closed) => return None,
                };
                if ev.stream() != stream.name {
                    continue;
                }
                let e = match ev {
                    HubEvent::Live { .. } => event(
                        "live",
                        serde_json::to_value(stream.snapshot()).unwrap_or_default(),
                    ),
                    HubEvent::Offline { stream: name } => event("offline", json!({"name": name})),
                    HubEvent::Viewers { count, .. } => event("viewers", json!({"viewers": count})),
                    HubEvent::Title { title, .. } => event("title", json!({"title": title})),
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
                };
                return Some((Ok(e), (rx, stream, seen)));
            }
        },
    );
    let all = futures_util::StreamExt::chain(
        futures_util::stream::iter(initial.into_iter().map(Ok)),
        live,
    );
    Ok(Sse::new(all).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}
