//! HTTP: the axum router for the API, SSE, metrics, WHEP and the web pages.

mod api;
pub mod error;
mod events;
mod pages;

use std::sync::Arc;

use axum::Router;
use axum::http::{HeaderName, Method, header};
use tower_http::cors::{Any, CorsLayer};

use crate::server::App;
pub use error::ApiError;

pub fn router(app: Arc<App>) -> Router {
    let cors = CorsLayer::new()
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
        ]);
    let mut router = Router::new()
        .merge(api::routes())
        .merge(pages::routes())
        .merge(crate::egress::whep::routes())
        .merge(crate::matrix::api::routes());
    if app.matrix.is_some() {
        router = router.merge(crate::matrix::appservice::routes());
    }
    router
        .fallback(|| async { ApiError::not_found("no such endpoint") })
        .layer(cors)
        .with_state(app)
}
