//! Node-to-node requests: a relay pull carries the cluster token
//! ([`crate::cluster::auth`]); a bad one is refused, and without `[cluster]`
//! the header is refused too (no one may pose as a node).

use std::sync::Arc;

use axum::http::{HeaderMap, StatusCode, Uri};

use super::ApiError;
use crate::cluster::auth;
use crate::http::App;
use crate::log_every::LogEvery;

static BAD_TOKEN_LOG: LogEvery = LogEvery::new(std::time::Duration::from_secs(10));

/// Whether the POST of `body` to `uri` is another node's relay pull,
/// authenticated (its token then spent).
pub fn is_relay_request(
    app: &Arc<App>,
    uri: &Uri,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<bool, ApiError> {
    let Some(value) = headers.get(auth::HEADER) else {
        return Ok(false);
    };
    let refuse = |why: String| {
        if let Some(suppressed) = BAD_TOKEN_LOG.allow() {
            tracing::warn!(reason = %why, suppressed, "cluster request refused");
        }
        ApiError::new(StatusCode::UNAUTHORIZED, "cluster_auth", why)
    };
    let Some(cluster) = &app.cluster else {
        return Err(refuse("this node is not in a cluster".into()));
    };
    let value = value
        .to_str()
        .map_err(|_| refuse("malformed cluster token".into()))?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    cluster
        .auth
        .verify(
            value,
            auth::Request {
                method: "POST",
                path: uri.path(),
                body,
            },
            now,
        )
        .map_err(|e| refuse(e.to_string()))?;
    Ok(true)
}

/// Refuses another node's pull at a node with `cluster.upstream` that does
/// not publish the stream (see `cluster::tree`).
pub fn check_serves(cluster: &crate::cluster::Cluster, stream: &str) -> Result<(), ApiError> {
    if cluster.serves_relays_of(stream) {
        return Ok(());
    }
    if let Some(suppressed) = LEAF_PULL_LOG.allow() {
        tracing::warn!(%stream, suppressed, "cluster: another node's pull refused: this node has an upstream (is a node's cluster.upstream set to a node that has one itself?)");
    }
    Err(ApiError::new(
        StatusCode::CONFLICT,
        "cluster_leaf",
        "this node pulls its streams from another node (cluster.upstream) and serves no other node's pull",
    ))
}

static LEAF_PULL_LOG: LogEvery = LogEvery::new(std::time::Duration::from_secs(10));
