//! Recordings over HTTP: the index API (`/api/v1/streams/{name}/recordings`,
//! `/api/v1/recordings/{id}`, `DELETE` with `recording.admin_token`) and the
//! files (`/recordings/{id}/index.m3u8`, the byte ranges it names, and the
//! progressive download `/recordings/{id}.mp4`, with `Range`). Who may see
//! them is `Admission::admit_recording`'s: a private stream's recordings
//! admit as its live stream does (the same token, `Authorization: Bearer`
//! or `?access=`), and one recorded while private stays so.

use std::path::PathBuf;
use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::body::Body;
use axum::extract::{ConnectInfo, Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::{Value, json};

use super::extract::token_from;
use super::{ApiError, App, PeerAddr};
use crate::admission::ViewerFacts;
use crate::admission::recording::RecordingPass;
use crate::recording::files::media_path;
use crate::recording::serve::{self, RecordingFile, Served};
use crate::recording::{self, Recorder, WriteStatus};
use crate::store::recordings::RecordingRow;

/// Recordings listed per stream (newest first).
const LIST_LIMIT: i64 = 100;

pub fn routes() -> Router<Arc<App>> {
    Router::new()
        .route("/api/v1/streams/{name}/recordings", get(list))
        .route("/api/v1/recordings/{id}", get(one).delete(delete))
        .route("/recordings/{file}", get(download))
        .route("/recordings/{id}/{file}", get(file))
}

/// The API's view of a recording (the contract the pages rely on).
pub fn recording_json(r: &RecordingRow, status: Option<WriteStatus>) -> Value {
    let mut v = json!({
        "id": r.id,
        "stream": r.stream,
        "session": r.session,
        "started_ms": r.started_ms,
        "ended_ms": r.ended_ms,
        "duration_s": r.duration_ms as f64 / 1000.0,
        "bytes": r.bytes,
        "video_codec": r.video_codec,
        "audio_codec": r.audio_codec,
        "peak_viewers": r.peak_viewers,
        "title_start": r.title_start,
        "title_end": r.title_end,
        "room_id": r.room_id,
        "state": r.state,
        "playlist": format!("/recordings/{}/index.m3u8", r.id),
        "download": format!("/recordings/{}.mp4", r.id),
    });
    // While it is being made: how writing goes ("ok", "paused", "failing").
    if let Some(s) = status {
        let (name, reason) = match s {
            WriteStatus::Ok => ("ok", None),
            WriteStatus::Paused(r) => ("paused", Some(r)),
            WriteStatus::Failing(r) => ("failing", Some(r)),
        };
        v["recording"] = json!({"status": name, "reason": reason});
    }
    v
}

fn json_of(rec: &Recorder, r: &RecordingRow) -> Value {
    recording_json(r, rec.status(&r.id))
}

/// The request's facts for `stream`'s admission.
fn facts(
    app: &App,
    stream: &str,
    peer: std::net::SocketAddr,
    headers: &HeaderMap,
    uri: &Uri,
) -> ViewerFacts {
    ViewerFacts {
        stream: stream.to_string(),
        client: super::client_addr(peer.ip(), headers, &app.config.http.trusted_proxies),
        token: token_from(headers, uri.query()),
        attempt: None,
        relay: false,
    }
}

fn no_recording(id: &str) -> ApiError {
    ApiError::not_found(format!("no recording '{id}'"))
}

fn db_error(e: crate::store::StoreError) -> ApiError {
    tracing::warn!("recordings: the index cannot be read: {e}");
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "storage_unavailable",
        "the recordings index cannot be read now; try again",
    )
    .retry_after(5)
}

/// A recording by id, with what `Admission::admit_recording` let the
/// request have of it.
pub(super) async fn admitted(
    app: &App,
    id: &str,
    peer: std::net::SocketAddr,
    headers: &HeaderMap,
    uri: &Uri,
) -> Result<(RecordingRow, RecordingPass), ApiError> {
    if !recording::valid_id(id) {
        return Err(no_recording(id));
    }
    let row = app
        .recorder
        .store()
        .recording(id)
        .await
        .map_err(db_error)?
        .ok_or_else(|| no_recording(id))?;
    let pass = app
        .admission
        .admit_recording(facts(app, &row.stream, peer, headers, uri), (&row).into())
        .await?;
    Ok((row, pass))
}

/// A recording's files are on the node that made it (cluster mode):
/// `Ok(None)` here; `Ok(Some(307))` to that node's public URL, same path
/// and query (a private stream's `?access=` goes along); 404 when that
/// node is not alive or has no usable URL.
pub(super) fn files_here(
    app: &App,
    row: &RecordingRow,
    uri: &Uri,
) -> Result<Option<Response>, ApiError> {
    if row.node == app.recorder.node() {
        return Ok(None);
    }
    let base = app
        .cluster
        .as_ref()
        .and_then(|c| c.public_url_of(&row.node));
    let location = base.and_then(|b| {
        let pq = uri.path_and_query().map_or(uri.path(), |p| p.as_str());
        HeaderValue::from_str(&format!("{b}{pq}")).ok()
    });
    match location {
        Some(to) => {
            let mut r = StatusCode::TEMPORARY_REDIRECT.into_response();
            r.headers_mut().insert(header::LOCATION, to);
            Ok(Some(no_store(r)))
        }
        None => Err(ApiError::not_found(format!(
            "recording '{}' is stored on cluster node '{}', which is not reachable now",
            row.id, row.node
        ))),
    }
}

async fn list(
    State(app): State<Arc<App>>,
    Path(name): Path<String>,
    ConnectInfo(PeerAddr(peer)): ConnectInfo<PeerAddr>,
    headers: HeaderMap,
    uri: Uri,
) -> Result<Response, ApiError> {
    let pass = app
        .admission
        .admit_recordings_of(facts(&app, &name, peer, &headers, &uri))
        .await?;
    let rows = app
        .recorder
        .store()
        .recordings_of(&pass.stream.name, LIST_LIMIT)
        .await
        .map_err(db_error)?;
    let list: Vec<Value> = rows
        .iter()
        .filter(|r| pass.shows((*r).into()))
        .map(|r| json_of(&app.recorder, r))
        .collect();
    Ok(no_store(
        Json(json!({ "recordings": list })).into_response(),
    ))
}

async fn one(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
    ConnectInfo(PeerAddr(peer)): ConnectInfo<PeerAddr>,
    headers: HeaderMap,
    uri: Uri,
) -> Result<Response, ApiError> {
    let (row, _) = admitted(&app, &id, peer, &headers, &uri).await?;
    Ok(no_store(Json(json_of(&app.recorder, &row)).into_response()))
}

async fn delete(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let Some(admin) = app.recorder.cfg.admin_token.as_deref() else {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "no_admin_token",
            "deleting over the API needs recording.admin_token in the config; a stream's owner can use `!live delete-recording <id>` in its room",
        ));
    };
    let given = super::extract::bearer(&headers).unwrap_or_default();
    if !bool::from(subtle::ConstantTimeEq::ct_eq(
        given.as_bytes(),
        admin.as_bytes(),
    )) {
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "bad_admin_token",
            "DELETE needs Authorization: Bearer <recording.admin_token>",
        ));
    }
    match app.recorder.delete(&id).await {
        Ok(true) => Ok(StatusCode::NO_CONTENT.into_response()),
        Ok(false) => Err(no_recording(&id)),
        Err(e @ recording::DeleteError::Active) => Err(ApiError::new(
            StatusCode::CONFLICT,
            "recording_active",
            e.to_string(),
        )),
        // Its node deletes it (the cluster bus).
        Err(recording::DeleteError::Forwarded(_)) => Ok(StatusCode::ACCEPTED.into_response()),
        Err(e @ recording::DeleteError::OtherNode(_)) => Err(ApiError::new(
            StatusCode::CONFLICT,
            "recording_on_other_node",
            e.to_string(),
        )),
        Err(e) => Err(ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "delete_failed",
            e.to_string(),
        )),
    }
}

fn no_store(r: Response) -> Response {
    super::with_cache_control(r, "no-store")
}

/// `/recordings/{id}.mp4`: the progressive download.
async fn download(
    State(app): State<Arc<App>>,
    Path(file): Path<String>,
    ConnectInfo(PeerAddr(peer)): ConnectInfo<PeerAddr>,
    headers: HeaderMap,
    uri: Uri,
) -> Result<Response, ApiError> {
    let Some(id) = file.strip_suffix(".mp4") else {
        return Err(ApiError::not_found(format!(
            "no such recording file '{file}': the download is /recordings/{{id}}.mp4"
        )));
    };
    let (row, pass) = admitted(&app, id, peer, &headers, &uri).await?;
    if let Some(there) = files_here(&app, &row, &uri)? {
        return Ok(there);
    }
    let index = read(&app, &row).await?;
    let d = serve::download(&index, &row.stream, &row.id)
        .ok_or_else(|| ApiError::not_found("the recording has no media yet"))?;
    let mut r = serve_range(
        media_path(&app.recorder.dir_of(&row.id), d.file),
        d.len,
        &headers,
        cache(&row, &pass, Served::Media),
    )
    .await?;
    if let Ok(v) = HeaderValue::from_str(&format!("attachment; filename=\"{}\"", d.name)) {
        r.headers_mut().insert(header::CONTENT_DISPOSITION, v);
    }
    Ok(r)
}

/// `/recordings/{id}/index.m3u8` and the files it names (`0.mp4`…).
async fn file(
    State(app): State<Arc<App>>,
    Path((id, file)): Path<(String, String)>,
    ConnectInfo(PeerAddr(peer)): ConnectInfo<PeerAddr>,
    headers: HeaderMap,
    uri: Uri,
) -> Result<Response, ApiError> {
    let file = serve::parse_file(&file).ok_or_else(|| {
        ApiError::not_found(format!(
            "no such recording file '{file}': the playlist is /recordings/{id}/index.m3u8"
        ))
    })?;
    let (row, pass) = admitted(&app, &id, peer, &headers, &uri).await?;
    if let Some(there) = files_here(&app, &row, &uri)? {
        return Ok(there);
    }
    let index = read(&app, &row).await?;
    match file {
        RecordingFile::Playlist => {
            let query = super::hls::parse_query(uri.query())?;
            let suffix = super::hls::uri_suffix(&query);
            let text = index.render_playlist(finished(&row), &suffix);
            Ok((
                [
                    (header::CONTENT_TYPE, crate::egress::hls::PLAYLIST_TYPE),
                    (header::CACHE_CONTROL, cache(&row, &pass, Served::Playlist)),
                ],
                text,
            )
                .into_response())
        }
        RecordingFile::Media(n) => {
            let len = index.file_end(n).ok_or_else(|| {
                ApiError::not_found(format!("recording '{id}' has no file {n}.mp4"))
            })?;
            serve_range(
                media_path(&app.recorder.dir_of(&row.id), n),
                len,
                &headers,
                cache(&row, &pass, Served::Media),
            )
            .await
        }
    }
}

/// Whether the recording's row says it ended (its files no longer grow).
pub(super) fn finished(row: &RecordingRow) -> bool {
    row.state != "recording"
}

/// `serve::cache_control` of what is served of `row`.
pub(super) fn cache(row: &RecordingRow, pass: &RecordingPass, served: Served) -> &'static str {
    serve::cache_control(served, pass.shared_cache, finished(row))
}

/// The recording's index (parsed once, `Recorder::index_of`).
pub(super) async fn read(
    app: &App,
    row: &RecordingRow,
) -> Result<Arc<crate::recording::index::Index>, ApiError> {
    match app.recorder.index_of(&row.id, finished(row)).await {
        Ok(Some(i)) => Ok(i),
        Ok(None) => Err(ApiError::not_found("the recording has no media yet")),
        Err(e) => {
            tracing::warn!(recording = %row.id, "recordings: cannot read a recording's index: {e}");
            Err(ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "recording_unreadable",
                "the recording's files cannot be read (the server log says why)",
            ))
        }
    }
}

async fn serve_range(
    path: PathBuf,
    len: u64,
    headers: &HeaderMap,
    cache_control: &'static str,
) -> Result<Response, ApiError> {
    let range = headers.get(header::RANGE).and_then(|v| v.to_str().ok());
    let (status, start, end) = match serve::parse_range(range, len) {
        Ok(None) => (StatusCode::OK, 0, len.saturating_sub(1)),
        Ok(Some((s, e))) => (StatusCode::PARTIAL_CONTENT, s, e),
        Err(serve::Unsatisfiable) => {
            let mut r = ApiError::new(
                StatusCode::RANGE_NOT_SATISFIABLE,
                "bad_range",
                format!("the range is outside the file ({len} bytes)"),
            )
            .into_response();
            if let Ok(v) = HeaderValue::from_str(&format!("bytes */{len}")) {
                r.headers_mut().insert(header::CONTENT_RANGE, v);
            }
            return Ok(r);
        }
    };
    let count = if len == 0 { 0 } else { end - start + 1 };
    let body = Body::from_stream(recording::reads::chunks(path, start, count));
    let mut r = Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, crate::egress::hls::MEDIA_TYPE)
        .header(header::ACCEPT_RANGES, "bytes")
        .header(header::CACHE_CONTROL, cache_control)
        .header(header::CONTENT_LENGTH, count);
    if status == StatusCode::PARTIAL_CONTENT {
        r = r.header(header::CONTENT_RANGE, format!("bytes {start}-{end}/{len}"));
    }
    r.body(body)
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))
}
