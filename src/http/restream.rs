//! Restream health over HTTP: `GET /api/v1/streams/{name}/restream`.
//! Admitted like the stream itself; keys are always masked.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{ConnectInfo, Path, State};
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::IntoResponse;
use axum::routing::{get, put};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;

use super::error::read_json;
use super::{ApiError, PeerAddr};
use crate::admission::{Purpose, ViewerFacts};
use crate::http::App;

pub fn routes() -> Router<Arc<App>> {
    Router::new()
        .route("/api/v1/streams/{name}/restream", get(restream_status))
        .route(
            "/api/v1/streams/{name}/restream/{label}",
            put(put_destination).delete(delete_destination),
        )
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DestinationBody {
    url: String,
    key: String,
    #[serde(default)]
    enabled: Option<bool>,
}

/// Changing destinations takes the stream's publishing key (`Authorization:
/// Bearer`), as publishing does; config-file streams are changed in the file.
fn authorize(app: &App, name: &str, headers: &HeaderMap) -> Result<(), ApiError> {
    let key = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default();
    if key.is_empty() || !app.keys.verify(name, key) {
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "bad_key",
            "send the stream's publishing key as Authorization: Bearer <key>",
        ));
    }
    if app.restream.is_config_stream(name) {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "config_stream",
            "this stream is declared in the config file: set its destinations there ([[streams.restream]])",
        ));
    }
    Ok(())
}

async fn put_destination(
    State(app): State<Arc<App>>,
    Path((name, label)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Result<impl IntoResponse, ApiError> {
    // The key first: an outsider's body is not read at all.
    authorize(&app, &name, &headers)?;
    let body: DestinationBody = read_json(body, app.config.http.max_body_bytes).await?;
    app.restream
        .add(&name, &label, &body.url, &body.key, Some("api"))
        .await
        .map_err(|r| ApiError::bad_request("bad_destination", r))?;
    if body.enabled == Some(false) {
        app.restream
            .set_enabled(&name, &label, false)
            .await
            .map_err(|r| ApiError::bad_request("bad_destination", r))?;
    }
    let status = app.restream.status(&name);
    Ok(Json(json!({"stream": name, "destinations": status})))
}

async fn delete_destination(
    State(app): State<Arc<App>>,
    Path((name, label)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<impl IntoResponse, ApiError> {
    authorize(&app, &name, &headers)?;
    app.restream
        .remove(&name, &label)
        .await
        .map_err(ApiError::not_found)?;
    Ok(StatusCode::NO_CONTENT)
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
