//! REST API: streams, health, metrics.

use std::fmt::Write;
use std::sync::Arc;

use axum::extract::{ConnectInfo, Path, State};
use axum::http::{HeaderMap, Uri, header};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;

use super::{ApiError, PeerAddr};
use crate::admission::{Purpose, ViewerFacts};
use crate::http::App;

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

/// The viewer token a request carries (`Authorization: Bearer` or `?access=`).
fn token(headers: &HeaderMap, uri: &Uri) -> Option<String> {
    crate::http::extract::token_from(headers, uri.query())
}

/// Private streams are listed only to requests with access to them.
async fn list_streams(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    uri: Uri,
) -> impl IntoResponse {
    let token = token(&headers, &uri);
    let streams: Vec<_> = app
        .hub
        .streams()
        .iter()
        .filter(|s| app.admission.may_see(s, token.as_deref()))
        .map(|s| super::thumbnail::with_thumbnail(&app, s))
        .collect();
    Json(streams)
}

/// A private stream without access is refused as WHEP would refuse it.
async fn get_stream(
    State(app): State<Arc<App>>,
    Path(name): Path<String>,
    ConnectInfo(PeerAddr(peer)): ConnectInfo<PeerAddr>,
    headers: HeaderMap,
    uri: Uri,
) -> Result<impl IntoResponse, ApiError> {
    let facts = ViewerFacts {
        stream: name,
        client: super::client_addr(peer.ip(), &headers, &app.config.http.trusted_proxies),
        token: token(&headers, &uri),
        attempt: None,
        relay: false,
    };
    let pass = app.admission.admit_viewer(facts, Purpose::Look).await?;
    Ok(Json(super::thumbnail::with_thumbnail(&app, &pass.stream)))
}

async fn healthz(State(app): State<Arc<App>>) -> impl IntoResponse {
    let streams = app.hub.streams();
    let live = streams.iter().filter(|s| s.is_live()).count();
    // Still 200 when storage fails: the process serves its streams, and a
    // liveness check must not restart it for a full disk.
    let storage = app.store.health();
    let (status, storage_state) = match storage.is_ok() {
        true => ("ok", "ok"),
        false => ("degraded", "failing"),
    };
    Json(json!({
        "status": status,
        "streams": streams.len(),
        "live": live,
        "storage": storage_state,
        // /healthz is public: the database's own error text (paths, hosts)
        // stays in the server log; callers learn only that writes fail.
        "storage_error": (!storage.is_ok())
            .then_some("the database cannot take writes (the server log says why)"),
    }))
}

async fn metrics(State(app): State<Arc<App>>) -> impl IntoResponse {
    let mut out = String::new();
    // Private streams are not named: they are summed under `private="true"`.
    let all = app.hub.streams();
    let (streams, private): (Vec<_>, Vec<_>) = all
        .iter()
        .partition(|s| s.access() == crate::hub::Access::Public);
    out.push_str("# HELP roomcast_stream_live Whether the stream has a publisher.\n# TYPE roomcast_stream_live gauge\n");
    for s in &streams {
        let _ = writeln!(
            out,
            "roomcast_stream_live{{stream=\"{}\"}} {}",
            s.name,
            u8::from(s.is_live())
        );
    }
    out.push_str("# HELP roomcast_private_streams_live Streams of private rooms that have a publisher.\n# TYPE roomcast_private_streams_live gauge\n");
    let _ = writeln!(
        out,
        "roomcast_private_streams_live {}",
        private.iter().filter(|s| s.is_live()).count()
    );
    out.push_str("# HELP roomcast_private_streams_viewers WebRTC viewers of streams of private rooms.\n# TYPE roomcast_private_streams_viewers gauge\n");
    let _ = writeln!(
        out,
        "roomcast_private_streams_viewers {}",
        private.iter().map(|s| s.viewers()).sum::<usize>()
    );
    out.push_str("# HELP roomcast_stream_viewers WebRTC viewers of the stream.\n# TYPE roomcast_stream_viewers gauge\n");
    for s in &streams {
        let _ = writeln!(
            out,
            "roomcast_stream_viewers{{stream=\"{}\"}} {}",
            s.name,
            s.viewers()
        );
    }
    // Counts only: names are above (public streams) or summed (private).
    let (declared, ephemeral) = app.hub.stream_counts();
    let _ = writeln!(
        out,
        "# HELP roomcast_hub_streams Streams in the hub's registry, live or not.\n# TYPE roomcast_hub_streams gauge\nroomcast_hub_streams {}",
        declared + ephemeral
    );
    let _ = writeln!(
        out,
        "# HELP roomcast_hub_streams_ephemeral Of those, party shares' streams: they leave the registry once idle.\n# TYPE roomcast_hub_streams_ephemeral gauge\nroomcast_hub_streams_ephemeral {ephemeral}"
    );
    let _ = writeln!(
        out,
        "# HELP roomcast_hub_streams_removed_total Idle party shares' streams removed from the registry.\n# TYPE roomcast_hub_streams_removed_total counter\nroomcast_hub_streams_removed_total {}",
        app.hub.removed_streams()
    );
    out.push_str("# HELP roomcast_storage_ok Whether the database took the last probe write (0: disk full, read-only or away).\n# TYPE roomcast_storage_ok gauge\n");
    let _ = writeln!(
        out,
        "roomcast_storage_ok {}",
        u8::from(app.store.health().is_ok())
    );
    app.engine.metrics.render(&mut out);
    if let Some(c) = &app.cluster {
        c.render_metrics(&mut out);
    }
    app.hls.render_metrics(&mut out);
    app.recorder.render_metrics(&mut out);
    out.push_str(&app.thumbnails.metrics());
    app.restream.render_metrics(&mut out);
    crate::listener::render_metrics(&mut out);
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out)
}
