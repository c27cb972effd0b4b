//! The party grid's feed: `GET /api/v1/rooms/{room}/party/events` and
//! `GET /api/v1/parties/{name}/events`, Server-Sent Events beside each party
//! view. A `view` event carries the party view (as its `GET` answers) at
//! once and again whenever it changes: woken by the hub's control path when
//! a stream of the party goes live or offline, and every
//! [`RECHECK`](crate::party::feed::RECHECK) for what the hub does not see
//! (membership, power, the party switch). The party token comes as
//! `Authorization: Bearer` or, since EventSource cannot set headers,
//! `?access=` (never logged). Each feed is one HTTP connection, so the
//! listener's caps bound them; they end with the server like the other feeds.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::Stream;
use serde_json::Value;

use crate::http::extract::token_from;
use crate::http::{ApiError, App};
use crate::hub::ControlFeed;
use crate::party::feed::{KEEP_ALIVE, RECHECK, Recheck, SentView};

type ViewFuture = Pin<Box<dyn Future<Output = Recheck> + Send>>;

/// What a feed recomputes, and which streams' changes concern it.
struct Source {
    view: Box<dyn Fn() -> ViewFuture + Send>,
    concerns: Box<dyn Fn(&str) -> bool + Send>,
}

fn view_event(v: &Value) -> Event {
    Event::default().event("view").data(v.to_string())
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// `GET /api/v1/parties/{name}/events`: a standalone party's view.
pub async fn standalone(
    State(app): State<Arc<App>>,
    Path(name): Path<String>,
    headers: HeaderMap,
    uri: axum::http::Uri,
) -> Response {
    let Some(token) = token_from(&headers, uri.query()) else {
        return ApiError::from(if app.parties.exists(&name) {
            crate::party::PartyError::BadToken
        } else {
            crate::party::PartyError::UnknownParty
        })
        .into_response();
    };
    // Subscribed before the first view, so no change falls between the two.
    let control = app.hub.control_feed();
    let compute = {
        let (app, name, token) = (app.clone(), name.clone(), token.clone());
        move || {
            let hub = app.hub.clone();
            let caps = |e: &mut _| app.admission.check_party_share(e);
            app.parties.view(
                &name,
                &token,
                now(),
                |s| hub.get(s).map(|s| s.is_live()),
                caps,
            )
        }
    };
    // Refused here, before the feed starts, with the view's own answer.
    let first = match compute() {
        Ok(v) => serde_json::to_value(v).unwrap_or_default(),
        Err(e) => return ApiError::from(e).into_response(),
    };
    let prefix = format!("{name}-");
    let source = Source {
        view: Box::new(move || {
            let r = match compute() {
                Ok(v) => Recheck::View(serde_json::to_value(v).unwrap_or_default()),
                Err(_) => Recheck::Ended,
            };
            Box::pin(std::future::ready(r))
        }),
        concerns: Box::new(move |stream| stream.starts_with(&prefix)),
    };
    feed(app, control, first, source).into_response()
}

/// `GET /api/v1/rooms/{room}/party/events`: a room party's view.
pub async fn room(
    State(app): State<Arc<App>>,
    Path(room): Path<String>,
    headers: HeaderMap,
    uri: axum::http::Uri,
) -> Response {
    use crate::matrix::party::PartyError;
    let Some(m) = app.matrix.clone() else {
        return ApiError::from(PartyError::NoRoom).into_response();
    };
    let Some(token) = token_from(&headers, uri.query()) else {
        return ApiError::party_token_required().into_response();
    };
    let control = app.hub.control_feed();
    let compute = {
        let (app, m, room) = (app.clone(), m.clone(), room.clone());
        move || {
            let (app, m, room, token) = (app.clone(), m.clone(), room.clone(), token.clone());
            async move {
                let caps = |e: &mut _| app.admission.check_party_share(e);
                m.party_view(&room, Some(&token), caps).await
            }
        }
    };
    let first = match compute().await {
        Ok(v) => serde_json::to_value(v).unwrap_or_default(),
        Err(e) => return ApiError::from(e).into_response(),
    };
    let source = Source {
        view: Box::new(move || {
            let view = compute();
            Box::pin(async move {
                match view.await {
                    Ok(v) => Recheck::View(serde_json::to_value(v).unwrap_or_default()),
                    Err(PartyError::Unavailable(_)) => Recheck::Unavailable,
                    Err(_) => Recheck::Ended,
                }
            })
        }),
        concerns: Box::new(move |stream| {
            m.room_of_stream(stream)
                .is_some_and(|(_, r)| r.room_id == room)
        }),
    };
    feed(app, control, first, source).into_response()
}

/// The feed after its first view: a new view when it changed.
struct Feed {
    app: Arc<App>,
    control: ControlFeed,
    recheck: tokio::time::Interval,
    sent: SentView,
    source: Source,
}

impl Feed {
    /// The next view to send; `None` ends the feed.
    async fn next(&mut self) -> Option<Value> {
        loop {
            tokio::select! {
                biased;
                changed = self.control.changed(&self.app.hub) => {
                    if !changed?.iter().any(|s| (self.source.concerns)(&s.name)) {
                        continue;
                    }
                }
                _ = self.recheck.tick() => {}
            }
            match (self.source.view)().await {
                Recheck::View(v) if self.sent.fresh(&v) => return Some(v),
                Recheck::View(_) | Recheck::Unavailable => {}
                Recheck::Ended => return None,
            }
        }
    }
}

fn feed(
    app: Arc<App>,
    control: ControlFeed,
    first: Value,
    source: Source,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let stop = app.shutdown.wait_owned();
    let mut sent = SentView::default();
    sent.fresh(&first);
    let mut recheck = tokio::time::interval(RECHECK);
    recheck.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The first tick is now: the first view is that.
    recheck.reset();
    let feed = Feed {
        control,
        app,
        recheck,
        sent,
        source,
    };
    let live = futures_util::stream::unfold(feed, |mut feed| async move {
        let v = feed.next().await?;
        Some((Ok(view_event(&v)), feed))
    });
    let all = futures_util::StreamExt::chain(
        futures_util::stream::once(std::future::ready(Ok(view_event(&first)))),
        live,
    );
    // Ends with the server, so a stop does not wait out the grace.
    let all = futures_util::StreamExt::take_until(all, stop);
    Sse::new(all).keep_alive(KeepAlive::new().interval(KEEP_ALIVE))
}
