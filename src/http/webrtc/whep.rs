//! WHEP (WebRTC-HTTP Egress Protocol): `POST /whep/{stream}` with an SDP offer →
//! `201` + `Location` + answer; `DELETE`/`PATCH` on the resource; `OPTIONS`.

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{ConnectInfo, Path, State};
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::Response;
use axum::routing::post;
use tracing::info;

use crate::admission::{Purpose, ViewerFacts};
use crate::http::App;
use crate::http::extract::token_from;
use crate::http::extract::{HttpRequest, Tls};
use crate::http::webrtc as session;
use crate::http::webrtc::resources::Kind;
use crate::http::{ApiError, PeerAddr};
use crate::rtc::{SessionOpts, ViewerError, sdpfrag};

pub fn routes() -> Router<Arc<App>> {
    Router::new()
        .route("/whep/{stream}", post(create).options(session::options))
        .route("/whep/{stream}/{id}", session::resource(Kind::Viewer))
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
    let body = session::read_offer(&headers, body, app.config.http.max_body_bytes).await?;
    // The offer is checked before anything shared is touched.
    let offer = session::offer_text(&body)?;
    // Another node's relay pull is never relayed further (no loops); a
    // viewer at a node without the publisher makes the node pull the stream.
    let relay = crate::http::cluster_relay::is_relay_request(&app, &uri, &headers, &body)?;
    if let Some(cluster) = &app.cluster {
        if relay {
            // Another node's pull: served by a node that pulls from the
            // origin itself (trees of two levels at most, no loops).
            crate::http::cluster_relay::check_serves(cluster, &name)?;
        } else {
            // A viewer without access makes no pull.
            let token = token_from(&headers, uri.query());
            app.admission.check_access(&name, token.as_deref())?;
            // `cluster.redirect_viewers`: a roomier node takes this viewer.
            if let Some(stream) = app.hub.get(&name)
                && let Some(to) = cluster.redirect_for(&stream, uri.path(), uri.query())
            {
                return Ok(session::redirected(&to));
            }
        }
        cluster.prepare_viewer(&name).await;
    }
    let req = HttpRequest::new(&app, &uri, &headers, peer, tls.is_some_and(|t| t.0.0));
    let facts = ViewerFacts {
        stream: name.clone(),
        client: req.client(),
        token: token_from(&headers, uri.query()),
        attempt: Some(req.attempt(&name, false, ["http", "https"])),
        relay,
    };
    let mut pass = app.admission.admit_viewer(facts, Purpose::WebRtc).await?;
    let name = pass.stream.name.clone();
    let opts = SessionOpts {
        expires_at: pass.expires_at,
        guard: pass.ticket.take().map(|t| Box::new(t) as Box<dyn Send>),
        ..SessionOpts::default()
    };
    // Negotiation holds only this viewer's place under the caps (the
    // pass's reservation), no lock.
    let answer = app
        .engine
        .add_viewer_with(&pass.stream, offer, opts)
        .map_err(viewer_error)?;
    app.admission.track(answer.id, &pass);
    let grounds = pass.grounds;
    drop(pass);
    let secret = app.resources.add_with_ufrag(
        Kind::Viewer,
        &name,
        answer.id,
        sdpfrag::ice_ufrag_of(offer).map(str::to_string),
    );
    info!(stream = %name, viewer = answer.id, ?grounds, "whep viewer negotiated");
    Ok(session::created("whep", &name, &secret, answer.sdp))
}

/// A negotiation failure as the JSON error the client gets.
pub fn viewer_error(e: ViewerError) -> ApiError {
    match e {
        ViewerError::BadOffer(_)
        | ViewerError::NothingToReceive
        | ViewerError::BadAnswer(_)
        | ViewerError::NoPendingOffer(_) => ApiError::bad_request("bad_offer", e.to_string()),
        ViewerError::NoCodec { .. } | ViewerError::H264Profile { .. } => ApiError::new(
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
