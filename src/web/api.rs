//! REST API: streams, health, metrics.

use std::fmt::Write;
use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;

use super::ApiError;
use crate::server::App;

pub fn routes() -> Router<Arc<App>> {
    Router::new()
        .route("/api/v1/streams", get(list_streams))
        .route("/api/v1/streams/{name}", get(get_stream))
        .route(
            "/api/v1/streams/{name}/events",
            get(super::events::stream_events),
        )
        .route("/api/v1/events", get(super::events::all_events))
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
}

async fn list_streams(State(app): State<Arc<App>>) -> impl IntoResponse {
    let streams: Vec<_> = app.hub.streams().iter().map(|s| s.snapshot()).collect();
    Json(streams)
}

async fn get_stream(
    State(app): State<Arc<App>>,
    Path(name): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    let stream = app
        .hub
        .get(&name)
        .ok_or_else(|| ApiError::unknown_stream(&name))?;
    Ok(Json(stream.snapshot()))
}

async fn healthz(State(app): State<Arc<App>>) -> impl IntoResponse {
    let streams = app.hub.streams();
    let live = streams.iter().filter(|s| s.is_live()).count();
    Json(json!({"status": "ok", "streams": streams.len(), "live": live}))
}

async fn metrics(State(app): State<Arc<App>>) -> impl IntoResponse {
    let mut out = String::new();
    let streams = app.hub.streams();
    out.push_str("# HELP roomcast_stream_live Whether the stream has a publisher.\n# TYPE roomcast_stream_live gauge\n");
    for s in &streams {
        let _ = writeln!(
            out,
            "roomcast_stream_live{{stream=\"{}\"}} {}",
            s.name,
            u8::from(s.is_live())
        );
    }
    out.push_str("# HELP roomcast_stream_viewers WebRTC viewers of the stream.\n# TYPE roomcast_stream_viewers gauge\n");
    for s in &streams {
        let _ = writeln!(
            out,
            "roomcast_stream_viewers{{stream=\"{}\"}} {}",
            s.name,
            s.viewers()
        );
    }
    app.engine.metrics.render(&mut out);
    app.hls.render_metrics(&mut out);
    crate::listener::render_metrics(&mut out);
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out)
}
