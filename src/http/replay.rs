//! What the watch page's replay needs beyond the recordings API
//! (`recordings.rs`), admitted exactly as the recording itself (and so as
//! its live stream):
//! - `GET /api/v1/recordings/{id}/chat`: the chat of the recording's session,
//!   read from the stream's Matrix room timeline (`matrix::replay_chat`);
//! - `GET /recordings/{id}/replay.webm`: a VP8 or VP9 recording as WebM, made
//!   from its fMP4 without re-encoding (`egress::webm`), for browsers that do
//!   not play those codecs in MP4 (Chromium plays VP8 only in WebM); in parts
//!   for Media Source Extensions, so a long recording seeks anywhere:
//!   `?part=index` (JSON: the segments' durations and the MIME type),
//!   `?part=init` (the header), `?part=N` (segment N's Clusters).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::body::Body;
use axum::extract::{ConnectInfo, Path, State};
use axum::http::{HeaderMap, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use super::{ApiError, App, PeerAddr};
use crate::admission::rate::RateLimiter;
use crate::egress::webm::{self, WebmError};
use crate::log_every::LogEvery;
use crate::matrix::replay_chat::{ReplayChatError, Window};
use crate::recording::files::media_path;
use crate::recording::serve::{self, Served, WebmPart, WebmReplay};

pub fn routes() -> Router<Arc<App>> {
    Router::new()
        .route("/api/v1/recordings/{id}/chat", get(chat))
        .route("/recordings/{id}/replay.webm", get(webm_file))
}

fn no_chat(why: &str) -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "no_chat", why.to_string())
}

/// Homeserver trouble is logged at most once a minute (many viewers may hit it).
static HS_TROUBLE: LogEvery = LogEvery::new(Duration::from_secs(60));
/// Recording files that cannot be read as WebM: once a minute.
static WEBM_TROUBLE: LogEvery = LogEvery::new(Duration::from_secs(60));
/// A replay chat can cost homeserver reads: per client address (IPv6 per
/// /64), 30 a minute after a burst of 10 (a page asks once per replay).
static CHAT_RATE: std::sync::LazyLock<RateLimiter> =
    std::sync::LazyLock::new(|| RateLimiter::new(30, 10));

async fn chat(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
    ConnectInfo(peer): ConnectInfo<PeerAddr>,
    headers: HeaderMap,
    uri: Uri,
) -> Result<Response, ApiError> {
    let client = super::client_addr(peer.0.ip(), &headers, &app.config.http.trusted_proxies);
    if let Err(wait) = CHAT_RATE.check(client, std::time::Instant::now()) {
        return Err(ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            "too many replay chat requests from this address; try again later",
        )
        .retry_after(wait));
    }
    let (row, pass) = super::recordings::admitted(&app, &id, peer.0, &headers, &uri).await?;
    let Some(matrix) = app.matrix.as_ref() else {
        return Err(no_chat("this server has no Matrix chat"));
    };
    let Some(room) = row.room_id.as_deref() else {
        return Err(no_chat("this recording's stream had no Matrix room"));
    };
    if !pass.chat {
        return Err(no_chat(
            "the stream no longer belongs to the room this recording's chat was in",
        ));
    }
    let window = Window {
        start_ms: row.started_ms.max(0) as u64,
        end_ms: row.ended_ms.map(|e| e.max(0) as u64),
    };
    let chat = matrix
        .session_chat(room, window)
        .await
        .map_err(|e| match e {
            ReplayChatError::NoChat(_) => no_chat(&e.to_string()),
            ReplayChatError::Busy => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "busy", e.to_string())
                    .retry_after(5)
            }
            ReplayChatError::Unavailable(_) => {
                if let Some(suppressed) = HS_TROUBLE.allow() {
                    tracing::warn!(recording = %id, suppressed, "recordings: the replay chat cannot be read: {e}");
                }
                ApiError::new(
                    StatusCode::BAD_GATEWAY,
                    "homeserver_unavailable",
                    e.to_string(),
                )
                .retry_after(10)
            }
        })?;
    // A private stream's chat must not land in shared caches.
    Ok(super::with_cache_control(
        Json(&*chat).into_response(),
        "private, no-store",
    ))
}

/// `/recordings/{id}/replay.webm`: the main file's segments (the one the
/// `.mp4` download serves), each read, turned into Clusters and sent, one at
/// a time (a recording can be gigabytes). No `Range`: the browser plays it
/// as it comes and seeks within what it has.
async fn webm_file(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
    ConnectInfo(peer): ConnectInfo<PeerAddr>,
    headers: HeaderMap,
    uri: Uri,
) -> Result<Response, ApiError> {
    let (row, pass) = super::recordings::admitted(&app, &id, peer.0, &headers, &uri).await?;
    // The files are on the node that made it.
    if let Some(there) = super::recordings::files_here(&app, &row, &uri)? {
        return Ok(there);
    }
    let index = super::recordings::read(&app, &row).await?;
    let Some(replay) = WebmReplay::of(&index) else {
        return Err(ApiError::not_found("the recording has no media yet"));
    };
    let path = media_path(&app.recorder.dir_of(&row.id), replay.file);
    let (init, _permit) = app
        .recorder
        .read_segment(path.clone(), 0, replay.init_len)
        .await
        .map_err(|e| read_error(&id, e))?;
    let tracks = webm::tracks_of_init(&init).map_err(|e| match e {
        WebmError::Codec(_) => ApiError::new(
            StatusCode::NOT_FOUND,
            "not_webm",
            format!("{e}: /recordings/{id}/index.m3u8"),
        ),
        WebmError::Mp4(m) => unreadable(&id, &m),
    })?;
    let head = webm::header(&tracks, replay.duration_ms());
    let cache = super::recordings::cache(&row, &pass, Served::Webm);
    if let Some(part) = serve::webm_part(uri.query()) {
        let part = part.map_err(|()| {
            ApiError::bad_request("bad_part", "part is index, init or a segment number")
        })?;
        return webm_part(&app, part, &id, path, &tracks, &replay, head, cache).await;
    }
    let state = (app.clone(), path, replay, 0, tracks, id.clone());
    let body = futures_util::stream::unfold(
        state,
        |(app, path, replay, n, tracks, id)| async move {
            let (seg, start_ms) = replay.segment(n)?;
            let chunk = app
                .recorder
                .read_segment(path.clone(), seg.offset, seg.len)
                .await
                .map_err(|e| e.to_string())
                .and_then(|(data, _permit)| {
                    let samples = webm::samples_of(&data, &tracks).map_err(|e| e.to_string())?;
                    Ok(webm::clusters(start_ms, &samples, &data))
                });
            match chunk {
                Ok(c) => Some((
                    Ok::<_, std::io::Error>(bytes::Bytes::from(c)),
                    (app, path, replay, n + 1, tracks, id),
                )),
                Err(e) => {
                    if let Some(suppressed) = WEBM_TROUBLE.allow() {
                        tracing::warn!(recording = %id, suppressed, "recordings: a segment cannot be sent as WebM: {e}");
                    }
                    // The connection ends short: the player has what came before.
                    Some((
                        Err(std::io::Error::other(e)),
                        (app, path, replay, usize::MAX, tracks, id),
                    ))
                }
            }
        },
    );
    let body = futures_util::StreamExt::chain(
        futures_util::stream::once(async move { Ok(bytes::Bytes::from(head)) }),
        body,
    );
    webm_response(Body::from_stream(body), cache)
}

/// One part of the WebM for Media Source Extensions (see the module docs).
#[allow(clippy::too_many_arguments)]
async fn webm_part(
    app: &App,
    part: WebmPart,
    id: &str,
    path: PathBuf,
    tracks: &[webm::Track],
    replay: &WebmReplay,
    head: Vec<u8>,
    cache: &'static str,
) -> Result<Response, ApiError> {
    let body = match part {
        WebmPart::Index => {
            let index = replay.parts_index(tracks.iter().map(|t| &t.kind));
            return Ok(super::with_cache_control(
                Json(index).into_response(),
                cache,
            ));
        }
        WebmPart::Init => head,
        WebmPart::Segment(n) => {
            let (seg, start_ms) = replay.segment(n).ok_or_else(|| {
                ApiError::not_found(format!("recording '{id}' has no segment {n}"))
            })?;
            let (data, _permit) = app
                .recorder
                .read_segment(path, seg.offset, seg.len)
                .await
                .map_err(|e| read_error(id, e))?;
            let samples =
                webm::samples_of(&data, tracks).map_err(|e| unreadable(id, &e.to_string()))?;
            webm::clusters(start_ms, &samples, &data)
        }
    };
    webm_response(Body::from(body), cache)
}

fn webm_response(body: Body, cache: &'static str) -> Result<Response, ApiError> {
    Response::builder()
        .header(header::CONTENT_TYPE, "video/webm")
        .header(header::CACHE_CONTROL, cache)
        .header(header::X_CONTENT_TYPE_OPTIONS, "nosniff")
        .body(body)
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))
}

fn unreadable(id: &str, why: &str) -> ApiError {
    if let Some(suppressed) = WEBM_TROUBLE.allow() {
        tracing::warn!(recording = %id, suppressed, "recordings: the recording cannot be read as WebM: {why}");
    }
    ApiError::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        "recording_unreadable",
        "the recording's files cannot be read (the server log says why)",
    )
}

/// A segment could not be read, or the server's memory for reads stayed
/// taken (many WebM replays at once).
fn read_error(id: &str, e: std::io::Error) -> ApiError {
    if e.kind() == std::io::ErrorKind::WouldBlock {
        return ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "busy",
            "too many replays are being read now; try again",
        )
        .retry_after(2);
    }
    unreadable(id, &e.to_string())
}
