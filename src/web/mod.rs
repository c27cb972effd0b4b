//! HTTP: the axum router for the API, SSE, metrics, WHIP, WHEP and the web pages.

mod api;
mod client_addr;
pub mod error;
mod events;
mod pages;
pub mod session;

use std::sync::Arc;

use axum::Router;
use axum::http::{HeaderName, Method, header};
use tower_http::cors::{Any, CorsLayer};

use crate::server::App;
pub use client_addr::client_addr;
pub use error::ApiError;

/// The HTTP service: API, pages, WHIP, WHEP, the Matrix appservice. `tls`:
/// whether this listener is HTTPS.
pub fn router(app: Arc<App>, tls: bool) -> Router {
    let mut router = Router::new()
        .merge(api::routes())
        .merge(pages::routes())
        .merge(crate::egress::whep::routes())
        .merge(crate::egress::hls::routes())
        .merge(crate::ingest::whip::routes())
        .merge(crate::matrix::api::routes());
    if app.matrix.is_some() {
        router = router.merge(crate::matrix::appservice::routes());
    }
    router
        .fallback(|| async { ApiError::not_found("no such endpoint") })
        .layer(cors())
        .layer(axum::middleware::from_fn(socket_addr_info))
        .layer(axum::Extension(crate::ingest::whip::Tls(tls)))
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
}
