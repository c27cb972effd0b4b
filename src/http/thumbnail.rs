//! `GET /api/v1/streams/{name}/thumbnail.jpg`: the stream's latest thumbnail
//! (`crate::thumbnail`), admitted like the stream itself.

use std::sync::Arc;

use axum::Router;
use axum::extract::{ConnectInfo, Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use super::{ApiError, PeerAddr};
use crate::admission::{Purpose, ViewerFacts};
use crate::http::App;
use crate::thumbnail::Missing;

/// A stream's API snapshot, with `thumbnail`: the path of its thumbnail when
/// it has one or gets one when asked (live H.264 or VP8). Listing is not an
/// ask (a monitor polling the list costs no decode): the GET of the JPEG is.
pub fn with_thumbnail(app: &App, s: &crate::hub::Stream) -> serde_json::Value {
    let mut v = serde_json::to_value(s.snapshot()).unwrap_or_default();
    if app.thumbnails.offered(&s.name)
        && let Some(o) = v.as_object_mut()
    {
        o.insert(
            "thumbnail".into(),
            format!("/api/v1/streams/{}/thumbnail.jpg", s.name).into(),
        );
    }
    v
}

pub fn routes() -> Router<Arc<App>> {
    Router::new().route("/api/v1/streams/{name}/thumbnail.jpg", get(thumbnail))
}

async fn thumbnail(
    State(app): State<Arc<App>>,
    Path(name): Path<String>,
    ConnectInfo(PeerAddr(peer)): ConnectInfo<PeerAddr>,
    headers: HeaderMap,
    uri: Uri,
) -> Result<Response, ApiError> {
    let facts = ViewerFacts {
        stream: name.clone(),
        client: super::client_addr(peer.ip(), &headers, &app.config.http.trusted_proxies),
        token: crate::http::extract::token_from(&headers, uri.query()),
        attempt: None,
        relay: false,
    };
    let pass = app.admission.admit_viewer(facts, Purpose::Look).await?;
    let public = pass.stream.access() == crate::hub::Access::Public;
    // An ask: the stream's thumbnail is renewed while asked for; the first
    // ask waits (bounded) for the first picture, so a card or a link
    // preview gets one on its first request.
    let t = app
        .thumbnails
        .want_within(&name, crate::thumbnail::FIRST_WAIT)
        .await;
    let t = t.map_err(|m| {
        let (code, message) = match m {
            Missing::Disabled => (
                "thumbnails_disabled",
                "thumbnails are off ([thumbnails] enabled = false)".to_string(),
            ),
            Missing::Offline => ("offline", format!("'{name}' is not live")),
            Missing::Codec(c) => (
                "codec_unsupported",
                format!("{c} streams get no thumbnail (H.264 and VP8 only)"),
            ),
            Missing::NotYet => (
                "not_yet",
                format!("'{name}' has no thumbnail yet (it needs a keyframe)"),
            ),
        };
        ApiError::new(StatusCode::NOT_FOUND, code, message)
    })?;
    let mut resp = (StatusCode::OK, t.jpeg.clone()).into_response();
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("image/jpeg"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    // A public thumbnail may be cached (by a chat's link preview, a CDN)
    // for one interval; a private one by the viewer's browser only.
    let cache = if public {
        format!("public, max-age={}", app.thumbnails.interval().as_secs())
    } else {
        "private, no-store".to_string()
    };
    if let Ok(v) = HeaderValue::from_str(&cache) {
        h.insert(header::CACHE_CONTROL, v);
    }
    if let Ok(v) = HeaderValue::from_str(&format!("\"t{}\"", t.seq)) {
        h.insert(header::ETAG, v);
    }
    Ok(resp)
}
