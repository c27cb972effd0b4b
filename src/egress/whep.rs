//! WHEP (WebRTC-HTTP Egress Protocol): `POST /whep/{stream}` with an SDP offer →
//! `201` + `Location` + answer; `DELETE`/`PATCH` on the resource; `OPTIONS`.

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{ConnectInfo, Path, State};
use axum::http::{HeaderMap, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{patch, post};
use tracing::info;

use crate::ingest::whip::{HttpRequest, Tls, refusal_error};
use crate::rtc::{SessionOpts, ViewerError};
use crate::server::App;
use crate::web::error::read_body;
use crate::web::session::{self, content_type_is};
use crate::web::{ApiError, PeerAddr};

pub fn routes() -> Router<Arc<App>> {
    Router::new()
        .route("/whep/{stream}", post(create).options(options))
        .route(
            "/whep/{stream}/{id}",
            patch(trickle).delete(delete).options(options),
        )
}

#[allow(clippy::too_many_arguments)]
async fn create(
    State(app): State<Arc<App>>,
    Path(name): Path<String>,
    ConnectInfo(PeerAddr(peer)): ConnectInfo<PeerAddr>,
    tls: Option<axum::Extension<Tls>>,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    if !content_type_is(&headers, "application/sdp") {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "send the SDP offer with Content-Type: application/sdp",
        ));
    }
    let body = read_body(body, app.config.http.max_body_bytes).await?;
    // SignedPolicy and the admission webhook, when they cover playback.
    let req = HttpRequest {
        uri: &uri,
        headers: &headers,
        peer,
        tls: tls.is_some_and(|t| t.0.0),
    };
    let pass = app
        .gate
        .admit_play(req.attempt(&name, false, ["http", "https"]))
        .await
        .map_err(|r| refusal_error(&r))?;
    let name = pass.stream;
    let stream = app
        .hub
        .get(&name)
        .ok_or_else(|| ApiError::unknown_stream(&name))?;
    // Streams of private Matrix rooms need a viewer token.
    crate::matrix::access::check_viewer(app.matrix.as_deref(), &stream, &headers, uri.query())?;
    if !stream.is_live() {
        return Err(ApiError::offline(&name));
    }
    let offer = std::str::from_utf8(&body)
        .map_err(|_| ApiError::bad_request("bad_offer", "the SDP offer is not UTF-8 text"))?;
    // Check the caps and add the viewer as one step, so concurrent joins cannot
    // all slip under a cap.
    let _admission = app.admission.lock().await;
    check_caps(&app, &stream)?;
    let opts = SessionOpts {
        expires_at: pass.expires_at,
        guard: pass.ticket.map(|t| Box::new(t) as Box<dyn Send>),
        ..SessionOpts::default()
    };
    let answer = app
        .engine
        .add_viewer_with(&stream, offer, opts)
        .map_err(viewer_error)?;
    info!(stream = %name, viewer = answer.id, "whep viewer negotiated");
    Ok((
        StatusCode::CREATED,
        [
            (header::CONTENT_TYPE, "application/sdp".to_string()),
            (header::LOCATION, format!("/whep/{name}/{}", answer.id)),
            (header::ETAG, format!("\"{}\"", answer.id)),
            (
                header::HeaderName::from_static("accept-patch"),
                "application/trickle-ice-sdpfrag".to_string(),
            ),
        ],
        answer.sdp,
    )
        .into_response())
}

/// A negotiation failure as the JSON error the client gets.
pub fn viewer_error(e: ViewerError) -> ApiError {
    match e {
        ViewerError::BadOffer(_)
        | ViewerError::NothingToReceive
        | ViewerError::BadAnswer(_)
        | ViewerError::NoPendingOffer(_) => ApiError::bad_request("bad_offer", e.to_string()),
        ViewerError::NoCodec { .. } => ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "no_common_codec",
            e.to_string(),
        ),
        ViewerError::Negotiation(_) => ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "negotiation_failed",
            e.to_string(),
        ),
    }
}

/// Egress caps (`[limits]`): a viewer over one gets 503 with Retry-After.
pub fn check_caps(app: &App, stream: &crate::hub::Stream) -> Result<(), ApiError> {
    let limits = &app.config.limits;
    let (total, of_stream) = app.engine.viewer_counts(&stream.name);
    let busy = |message: String| {
        Err(ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "viewer_limit", message).retry_after(30))
    };
    if limits.max_viewers_per_stream > 0 && of_stream >= limits.max_viewers_per_stream {
        return busy(format!(
            "stream '{}' has reached its limit of {} viewers; try again later",
            stream.name, limits.max_viewers_per_stream
        ));
    }
    if limits.max_viewers > 0 && total >= limits.max_viewers {
        return busy(format!(
            "this server has reached its limit of {} viewers; try again later",
            limits.max_viewers
        ));
    }
    check_egress_cap(app, stream)
}

/// `[limits] max_egress_mbps`: would one more viewer of `stream` (WebRTC or
/// HLS) take the server's egress over the cap?
pub fn check_egress_cap(app: &App, stream: &crate::hub::Stream) -> Result<(), ApiError> {
    let cap = app.config.limits.max_egress_mbps;
    if cap > 0.0 {
        let now = app.egress_mbps();
        let this = stream.bitrate_kbps() as f64 / 1000.0;
        if now + this > cap {
            return Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "viewer_limit",
                format!(
                    "this server's egress would exceed its cap of {cap} Mbit/s ({now:.1} Mbit/s in use, this stream needs {this:.1}); try again later"
                ),
            )
            .retry_after(30));
        }
    }
    Ok(())
}

/// Trickle ICE fragments need no action (see `web::session::trickle`).
async fn trickle(
    State(app): State<Arc<App>>,
    Path((name, id)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let exists = |n| app.engine.has_viewer(&name, n);
    session::trickle(
        "WHEP",
        &name,
        &id,
        exists,
        &headers,
        body,
        app.config.http.max_body_bytes,
    )
    .await
}

async fn delete(
    State(app): State<Arc<App>>,
    Path((name, id)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    session::delete("WHEP", &name, &id, |n| app.engine.remove_viewer(&name, n))
}

async fn options() -> Response {
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
