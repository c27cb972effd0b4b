//! WHIP ingest (WebRTC-HTTP Ingestion Protocol) for OBS and browsers:
//! `POST /whip/{stream}` with `Authorization: Bearer KEY` and an SDP offer →
//! `201` + `Location` (OBS fails without it) + `ETag` + the answer with the
//! server's host candidates; `PATCH` (trickle ICE) and `DELETE` on the
//! Location. The WebRTC session runs in the engine's shards, on the same UDP
//! and TCP ports as viewers. OME's `POST /{app}/{stream}?direction=whip`
//! lands in [`publish`] too.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{ConnectInfo, Path, State};
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::Response;
use axum::routing::post;
use tracing::{info, warn};

use crate::auth::gate::Refusal;
use crate::http::App;
use crate::http::extract::{HttpRequest, Tls, bearer, refusal_error};
use crate::http::webrtc as session;
use crate::http::webrtc::resources::Kind;
use crate::http::{ApiError, PeerAddr};
use crate::hub::IngestProtocol;
use crate::log_every::LogEvery;
use crate::rtc::{PublishError, SessionOpts};

static KEY_REJECTED_LOG: LogEvery = LogEvery::new(std::time::Duration::from_secs(10));

pub fn routes() -> Router<Arc<App>> {
    Router::new()
        .route("/whip/{stream}", post(create).options(session::options))
        .route("/whip/{stream}/{id}", session::resource(Kind::Publisher))
}

async fn create(
    State(app): State<Arc<App>>,
    Path(name): Path<String>,
    ConnectInfo(PeerAddr(peer)): ConnectInfo<PeerAddr>,
    tls: Option<axum::Extension<Tls>>,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let req = HttpRequest::new(&app, &uri, &headers, peer, tls.is_some_and(|t| t.0.0));
    publish(&app, &name, &req, body).await
}

/// Authorizes and negotiates a WHIP publisher for `name`.
pub async fn publish(
    app: &Arc<App>,
    name: &str,
    req: &HttpRequest<'_>,
    body: Body,
) -> Result<Response, ApiError> {
    let body = session::read_offer(req.headers, body, app.config.http.max_body_bytes).await?;
    // A party member's publish grant stands for the key (admission/publish_grant.rs).
    let key = bearer(req.headers);
    let key_ok = key.is_some_and(|k| app.keys.verify(name, k));
    let granted_to = key
        .filter(|_| !key_ok)
        .and_then(|g| app.admission.publish_grant(name, g));
    let keyed = match key {
        Some(_) if key_ok || granted_to.is_some() => true,
        Some(_) => {
            // Anyone can try keys: logged at most once per interval.
            if let Some(suppressed) = KEY_REJECTED_LOG.allow() {
                warn!(peer = %req.peer, stream = %name, suppressed, "whip: stream key rejected");
            }
            return Err(refusal_error(&Refusal::KeyRejected));
        }
        None => false,
    };
    let pass = app
        .admission
        .admit_publisher(req.attempt(name, keyed, ["http", "https"]))
        .await
        .map_err(|r| {
            info!(peer = %req.peer, stream = %name, reason = %r, "whip publish refused");
            ApiError::from(r)
        })?;
    let offer = session::offer_text(&body)?;
    // A standalone party share's stream stays ephemeral (hub/tenure.rs); it
    // is made again if it left the registry since the share (a republish
    // on the same grant after the share ended).
    let stream = if granted_to.is_some() && app.parties.is_share_stream(&pass.stream) {
        let title = app.parties.sharer_name(&pass.stream);
        app.hub
            .ensure_ephemeral(&pass.stream, title.as_deref(), Duration::ZERO)
    } else {
        app.hub.ensure_stream(&pass.stream, None)
    };
    let opts = SessionOpts {
        expires_at: pass.expires_at,
        guard: pass.ticket.map(|t| Box::new(t) as Box<dyn Send>),
        ..SessionOpts::default()
    };
    let answer = app
        .engine
        .add_publisher(&app.hub, &stream, IngestProtocol::Whip, offer, opts)
        .map_err(|e| {
            info!(peer = %req.peer, stream = %stream.name, error = %e, "whip offer refused");
            match e {
                PublishError::BadOffer(_) | PublishError::NothingToSend => {
                    ApiError::bad_request("bad_offer", e.to_string())
                }
                PublishError::NoCodec { .. } => ApiError::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "no_usable_codec",
                    e.to_string(),
                ),
                PublishError::Negotiation(_) => ApiError::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "negotiation_failed",
                    e.to_string(),
                ),
            }
        })?;
    if let Some(user) = &granted_to {
        app.admission.track_publisher(&stream.name, user, answer.id);
    }
    let secret = app.resources.add(Kind::Publisher, &stream.name, answer.id);
    info!(peer = %req.peer, stream = %stream.name, publisher = answer.id, "whip publisher negotiated");
    Ok(session::created("whip", &stream.name, &secret, answer.sdp))
}
