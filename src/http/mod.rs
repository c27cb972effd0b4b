//! The HTTP shell: the only code that speaks HTTP (axum). Request
//! extractors (`extract`), one error type (`ApiError`, with a `From` for
//! every domain refusal), and the handlers per protocol: WHIP and WHEP
//! (`webrtc`), OvenPlayer's WebSocket signalling (`ome`), LL-HLS (`hls`), the
//! API and its event feeds (`api`, `events`), the pages (`pages`) and the
//! Matrix endpoints (`matrix`). Handlers turn requests into facts, ask the
//! services (admission, engine, hub, Matrix), and turn answers into responses.

mod api;
pub mod body_deadline;
mod cluster;
pub mod cluster_relay;
pub mod error;
mod events;
pub mod extract;
// Public for the fuzz targets (fuzz/): the query parser.
#[doc(hidden)]
pub mod hls;
pub mod matrix;
mod obs_profile;
pub mod ome;
mod open_graph;
// Public for the fuzz targets (fuzz/): `Layout::parse`.
#[doc(hidden)]
pub mod pages;
mod party;
mod party_events;
mod recordings;
mod replay;
mod restream;
pub mod serve;
mod thumbnail;
pub mod webrtc;

use std::sync::Arc;

use axum::Router;
use axum::http::{HeaderName, Method, header};
use tower_http::cors::{Any, CorsLayer};

use crate::auth::gate::Gate;
use crate::auth::keys::KeyRing;
use crate::config::Config;
use crate::hub::Hub;
use crate::rtc::Engine;
use crate::store::Store;
pub use error::ApiError;
pub use extract::client_addr;

/// What the HTTP handlers use: the services, the config, the base URL.
pub struct App {
    pub config: Config,
    pub hub: Arc<Hub>,
    pub engine: Arc<Engine>,
    pub keys: Arc<KeyRing>,
    /// Stream keys, SignedPolicy and the admission webhook, for every protocol.
    pub gate: Arc<Gate>,
    pub store: Store,
    pub public_base: String,
    /// Who may watch: one sequence for every surface (and the viewer caps).
    pub admission: Arc<crate::admission::Admission>,
    /// The Matrix application service (None: standalone).
    pub matrix: Option<Arc<crate::matrix::Matrix>>,
    /// LL-HLS egress.
    pub hls: Arc<crate::egress::hls::Hls>,
    /// WHIP/WHEP resource secrets (the `Location` ids) → engine sessions.
    pub resources: webrtc::resources::Resources,
    /// Triggered on SIGTERM/SIGINT: long-lived responses (SSE) end on it.
    pub shutdown: crate::listener::Shutdown,
    /// Cluster mode (`[cluster]`): node registry, origins, edge relays.
    pub cluster: Option<Arc<crate::cluster::Cluster>>,
    /// Recording (`[recording]`): the index, the files, the recorder.
    pub recorder: Arc<crate::recording::Recorder>,
    /// Each live stream's latest thumbnail (API, pages, go-live notice).
    pub thumbnails: Arc<crate::thumbnail::Thumbnails>,
    /// Pushes to RTMP(S) destinations (`src/restream`).
    pub restream: Arc<crate::restream::Restreamer>,
    /// `rtmp://host:port/app` for OBS profiles (None when RTMP is off).
    pub rtmp_url: Option<String>,
    /// Standalone screen-share parties (`[[parties]]`).
    pub parties: Arc<crate::party::Parties>,
}

/// The HTTP service: API, pages, WHIP, WHEP, the Matrix appservice. `tls`:
/// whether this listener is HTTPS.
pub fn router(app: Arc<App>, tls: bool) -> Router {
    let mut router = Router::new()
        .merge(api::routes())
        .merge(pages::routes())
        .merge(webrtc::whep::routes())
        .merge(hls::routes())
        .merge(webrtc::whip::routes())
        .merge(matrix::api::routes())
        .merge(cluster::routes())
        .merge(recordings::routes())
        .merge(replay::routes())
        .merge(thumbnail::routes())
        .merge(restream::routes())
        .merge(obs_profile::routes())
        .merge(matrix::party::routes())
        .merge(party::routes());
    if app.matrix.is_some() {
        router = router.merge(matrix::appservice::routes());
    }
    router
        .fallback(|| async { ApiError::not_found("no such endpoint") })
        .layer(cors())
        .layer(axum::middleware::from_fn(socket_addr_info))
        .layer(axum::Extension(extract::Tls(tls)))
        .with_state(app)
}

/// Also offers the peer address as `ConnectInfo<SocketAddr>`, which handlers
/// written for a plain `TcpListener` read.
pub async fn socket_addr_info(
    mut req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::extract::ConnectInfo;
    if let Some(ConnectInfo(PeerAddr(a))) = req.extensions().get::<ConnectInfo<PeerAddr>>().copied()
    {
        req.extensions_mut().insert(ConnectInfo(a));
    }
    next.run(req).await
}

/// The client's address, for `ConnectInfo` on plain and TLS listeners alike.
#[derive(Debug, Clone, Copy)]
pub struct PeerAddr(pub std::net::SocketAddr);

impl
    axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, tokio::net::TcpListener>>
    for PeerAddr
{
    fn connect_info(s: axum::serve::IncomingStream<'_, tokio::net::TcpListener>) -> Self {
        PeerAddr(*s.remote_addr())
    }
}

/// Any origin may call the API, WHIP and WHEP (players and OBS live elsewhere).
pub fn cors() -> CorsLayer {
    CorsLayer::new()
        .allow_origin(Any)
        .allow_methods([
            Method::GET,
            Method::POST,
            Method::PATCH,
            Method::DELETE,
            Method::OPTIONS,
        ])
        .allow_headers([
            header::CONTENT_TYPE,
            header::AUTHORIZATION,
            header::IF_MATCH,
        ])
        .expose_headers([
            header::LOCATION,
            header::ETAG,
            header::LINK,
            HeaderName::from_static("accept-patch"),
        ])
        // Every answer is the same for every origin (`*`, fixed lists), so
        // none varies with the request's CORS headers: a `Vary: origin`
        // would split a CDN's cache of LL-HLS between browsers and others.
        .vary(Vec::<HeaderName>::new())
}

/// `r` with `Cache-Control: value` (replacing any).
pub fn with_cache_control(
    mut r: axum::response::Response,
    value: &'static str,
) -> axum::response::Response {
    r.headers_mut().insert(
        header::CACHE_CONTROL,
        axum::http::HeaderValue::from_static(value),
    );
    r
}
