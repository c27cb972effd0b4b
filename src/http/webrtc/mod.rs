//! WHIP and WHEP, together: publishing and playing over WebRTC with one SDP
//! offer each. What they share: the session resources
//! (`/whip|whep/{stream}/{secret}`, see `resources`), reading the offer,
//! `PATCH` (trickle ICE and ICE restarts, see `patch`), `DELETE` and `OPTIONS`.

mod patch;
pub mod resources;
pub mod whep;
pub mod whip;

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, patch};

use super::error::read_body;
use super::extract::content_type_is;
use super::{ApiError, App};
use resources::Kind;

/// "WHIP" or "WHEP", for messages.
pub type Protocol = &'static str;

/// Wrong or missing proof looks the same as no session: 404, which says
/// nothing about whether the session exists.
pub fn no_session(protocol: Protocol, stream: &str) -> ApiError {
    ApiError::not_found(format!(
        "no such {protocol} session on stream '{stream}' (use the Location URL the POST returned)"
    ))
}

/// `PATCH`, `DELETE` and `OPTIONS` on `/whip|whep/{stream}/{secret}`, a
/// session resource of `kind`. The secret in the URL is the proof of
/// ownership (OBS and the publish page also send the key on WHIP; the secret
/// alone is enough, as for WHEP).
pub fn resource(kind: Kind) -> MethodRouter<Arc<App>> {
    patch(
        move |State(app): State<Arc<App>>,
              Path((name, secret)): Path<(String, String)>,
              headers: HeaderMap,
              body: Body| async move {
            patch::handle(&app, kind, &name, &secret, &headers, body).await
        },
    )
    .delete(
        move |State(app): State<Arc<App>>, Path((name, secret)): Path<(String, String)>| async move {
            delete(&app, kind, &name, &secret)
        },
    )
    .options(options)
}

fn protocol(kind: Kind) -> Protocol {
    match kind {
        Kind::Viewer => "WHEP",
        Kind::Publisher => "WHIP",
    }
}

/// `DELETE` on a session: ends the session the URL's secret names.
fn delete(app: &App, kind: Kind, stream: &str, secret: &str) -> Result<Response, ApiError> {
    let found = app.resources.take(kind, stream, secret);
    let ended = found.is_some_and(|n| match kind {
        Kind::Viewer => app.engine.remove_viewer(stream, n),
        Kind::Publisher => app.engine.remove_publisher(stream, n),
    });
    match found {
        Some(n) if ended => {
            tracing::info!(
                stream,
                session = n,
                "{} session ended by DELETE",
                protocol(kind)
            );
            Ok(StatusCode::OK.into_response())
        }
        _ => Err(no_session(protocol(kind), stream)),
    }
}

/// The body of a `POST` that carries an SDP offer: it must say
/// `Content-Type: application/sdp` and hold at most `limit` bytes.
pub async fn read_offer(
    headers: &HeaderMap,
    body: Body,
    limit: usize,
) -> Result<bytes::Bytes, ApiError> {
    if !content_type_is(headers, "application/sdp") {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "send the SDP offer with Content-Type: application/sdp",
        ));
    }
    read_body(body, limit).await
}

/// The offer [`read_offer`] read, as text.
pub fn offer_text(body: &[u8]) -> Result<&str, ApiError> {
    std::str::from_utf8(body)
        .map_err(|_| ApiError::bad_request("bad_offer", "the SDP offer is not UTF-8 text"))
}

/// `OPTIONS` on a WHIP or WHEP endpoint or session.
pub async fn options() -> Response {
    (
        StatusCode::NO_CONTENT,
        [
            (
                header::HeaderName::from_static("accept-post"),
                "application/sdp",
            ),
            (header::ALLOW, "OPTIONS, POST, PATCH, DELETE"),
        ],
    )
        .into_response()
}

/// The headers of a `201 Created` session resource.
/// `307 Temporary Redirect` to another node (RFC 9725 §4.1: the client
/// sends the same offer there).
pub fn redirected(location: &str) -> Response {
    (
        StatusCode::TEMPORARY_REDIRECT,
        [(header::LOCATION, location.to_string())],
    )
        .into_response()
}

pub fn created(protocol_path: &str, stream: &str, secret: &str, sdp: String) -> Response {
    let etag = resources::first_etag(secret);
    (
        StatusCode::CREATED,
        [
            (header::CONTENT_TYPE, "application/sdp".to_string()),
            (
                header::LOCATION,
                format!("/{protocol_path}/{stream}/{secret}"),
            ),
            (header::ETAG, format!("\"{etag}\"")),
            (
                header::HeaderName::from_static("accept-patch"),
                "application/trickle-ice-sdpfrag".to_string(),
            ),
        ],
        sdp,
    )
        .into_response()
}
