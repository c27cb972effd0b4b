//! `GET /api/v1/cluster`: the nodes of the cluster, their load, and where
//! each live stream is published (404 without `[cluster]`).

use std::sync::Arc;

use axum::extract::State;
use axum::http::{HeaderMap, Uri};
use axum::routing::get;
use axum::{Json, Router};

use super::ApiError;
use crate::http::App;

pub fn routes() -> Router<Arc<App>> {
    Router::new().route("/api/v1/cluster", get(cluster))
}

async fn cluster(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    uri: Uri,
) -> Result<Json<crate::cluster::ClusterSnapshot>, ApiError> {
    let Some(cluster) = &app.cluster else {
        return Err(ApiError::not_found(
            "this node is not in a cluster (no [cluster] section)",
        ));
    };
    let mut snap = cluster.snapshot();
    // Private streams are listed only to requests with access to them.
    let token = crate::http::extract::token_from(&headers, uri.query());
    snap.streams.retain(|s| {
        app.hub
            .get(&s.stream)
            .is_some_and(|st| app.admission.may_see(&st, token.as_deref()))
    });
    Ok(Json(snap))
}
