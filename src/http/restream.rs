//! Restream health over HTTP: `GET /api/v1/streams/{name}/restream`.
//! Admitted like the stream itself; keys are always masked.

use std::sync::Arc;

use axum::extract::{ConnectInfo, Path, State};
use axum::http::{HeaderMap, Uri};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;

use super::{ApiError, PeerAddr};
use crate::admission::{Purpose, ViewerFacts};
use crate::http::App;

pub fn routes() -> Router<Arc<App>> {
    Router::new().route("/api/v1/streams/{name}/restream", get(restream_status))
}

async fn restream_status(
    State(app): State<Arc<App>>,
    Path(name): Path<String>,
    ConnectInfo(PeerAddr(peer)): ConnectInfo<PeerAddr>,
    headers: HeaderMap,
    uri: Uri,
) -> Result<impl IntoResponse, ApiError> {
    let facts = ViewerFacts {
        stream: name,
        client: super::client_addr(peer.ip(), &headers, &app.config.http.trusted_proxies),
        token: crate::http::extract::token_from(&headers, uri.query()),
        attempt: None,
        relay: false,
    };
    let pass = app.admission.admit_viewer(facts, Purpose::Look).await?;
    Ok(Json(json!({
        "stream": pass.stream.name,
        "destinations": app.restream.status(&pass.stream.name),
    })))
}
