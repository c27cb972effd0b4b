//! `GET /api/v1/streams/{name}/media/{server}/{media_id}[?size=full|thumb|avatar]`:
//! the chat's images (pictures, stickers, video thumbnails, avatars) through
//! roomcast's media proxy (`crate::matrix::media_proxy`). A private stream's
//! images need the same access as its chat (`?access=` or a bearer token,
//! through the one admission path); only media the stream's chat shows are served.

use std::sync::Arc;

use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use crate::admission::{Purpose, ViewerFacts};
use crate::http::{ApiError, App, PeerAddr};
use crate::matrix::media_proxy::{MediaError, Size};

#[derive(Deserialize)]
pub struct MediaQuery {
    size: Option<String>,
}

pub async fn chat_media(
    State(app): State<Arc<App>>,
    Path((name, server, media_id)): Path<(String, String, String)>,
    Query(q): Query<MediaQuery>,
    ConnectInfo(PeerAddr(peer)): ConnectInfo<PeerAddr>,
    headers: HeaderMap,
    uri: Uri,
) -> Result<Response, ApiError> {
    let Some(matrix) = app.matrix.as_ref() else {
        return Err(ApiError::not_found("this server has no Matrix chat"));
    };
    let size = Size::parse(q.size.as_deref())
        .ok_or_else(|| ApiError::bad_request("bad_size", MediaError::BadSize.to_string()))?;
    let facts = ViewerFacts {
        stream: name.clone(),
        client: crate::http::client_addr(peer.ip(), &headers, &app.config.http.trusted_proxies),
        token: crate::http::extract::token_from(&headers, uri.query()),
        attempt: None,
        relay: false,
    };
    app.admission.admit_viewer(facts, Purpose::Look).await?;
    let img = matrix
        .chat_media(&name, &server, &media_id, size)
        .await
        .map_err(|e| {
            let (status, code) = match e {
                MediaError::NotReferenced | MediaError::NotFound => {
                    (StatusCode::NOT_FOUND, "unknown_media")
                }
                MediaError::BadSize => (StatusCode::BAD_REQUEST, "bad_size"),
                MediaError::TooLarge => (StatusCode::PAYLOAD_TOO_LARGE, "media_too_large"),
                MediaError::NotAnImage => (StatusCode::UNSUPPORTED_MEDIA_TYPE, "not_an_image"),
                MediaError::Upstream(_) => (StatusCode::BAD_GATEWAY, "homeserver_unavailable"),
            };
            ApiError::new(status, code, e.to_string())
        })?;
    let mut resp = img.bytes.into_response();
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(img.content_type),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::CONTENT_DISPOSITION,
        HeaderValue::from_static("inline"),
    );
    // Opened on its own, the image can do nothing.
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("default-src 'none'; sandbox"),
    );
    // Private streams' images must not land in shared caches.
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("private, max-age=3600"),
    );
    Ok(resp)
}
