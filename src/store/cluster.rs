//! Tables of cluster mode (migrations/postgres/0005_cluster.sql): the node
//! registry with heartbeats and the origin of each live stream.

use sqlx::Row;

use super::{Store, StoreError};

/// A node as the registry has it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct NodeRow {
    pub node_id: String,
    pub internal_url: String,
    pub started_ms: i64,
    pub heartbeat_ms: i64,
    pub viewers: i64,
    pub relays: i64,
    /// Where viewers reach it (`cluster.public_url`, else its internal URL).
    pub public_url: Option<String>,
    /// Its `[limits] max_viewers` (0: none).
    pub max_viewers: i64,
}

#[cfg(test)]
impl NodeRow {
    /// A node row for the cluster's unit tests: `id` at `http://{id}`,
    /// last heard of at `heartbeat_ms`, no load.
    pub fn for_test(id: &str, heartbeat_ms: i64) -> NodeRow {
        NodeRow {
            node_id: id.into(),
            internal_url: format!("http://{id}"),
            started_ms: 0,
            heartbeat_ms,
            viewers: 0,
            relays: 0,
            public_url: None,
            max_viewers: 0,
        }
    }
}

/// What a heartbeat writes besides the time.
#[derive(Debug, Clone, Copy)]
pub struct NodeLoadRow<'a> {
    pub viewers: i64,
    pub relays: i64,
    pub public_url: &'a str,
    pub max_viewers: i64,
}

/// Where a stream is published.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct OriginRow {
    pub stream: String,
    pub node_id: String,
    pub session: String,
    pub since_ms: i64,
}

impl Store {
    /// Registers this node or refreshes its heartbeat and load.
    pub async fn cluster_heartbeat(
        &self,
        node: &str,
        internal_url: &str,
        started_ms: i64,
        now_ms: i64,
        load: NodeLoadRow<'_>,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO cluster_nodes (node_id, internal_url, started_ms, heartbeat_ms, viewers, relays, public_url, max_viewers)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
             ON CONFLICT (node_id) DO UPDATE SET internal_url = excluded.internal_url,
               started_ms = excluded.started_ms, heartbeat_ms = excluded.heartbeat_ms,
               viewers = excluded.viewers, relays = excluded.relays,
               public_url = excluded.public_url, max_viewers = excluded.max_viewers",
        )
        .bind(node)
        .bind(internal_url)
        .bind(started_ms)
        .bind(now_ms)
        .bind(load.viewers)
        .bind(load.relays)
        .bind(load.public_url)
        .bind(load.max_viewers)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// A clean leave: the node and the origins it held are gone at once.
    pub async fn cluster_leave(&self, node: &str) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM cluster_origins WHERE node_id = $1")
            .bind(node)
            .execute(&self.pool)
            .await?;
        sqlx::query("DELETE FROM cluster_nodes WHERE node_id = $1")
            .bind(node)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Every registered node, live or not (the caller judges heartbeats).
    pub async fn cluster_nodes(&self) -> Result<Vec<NodeRow>, StoreError> {
        let rows = sqlx::query(
            "SELECT node_id, internal_url, started_ms, heartbeat_ms, viewers, relays, public_url, max_viewers
             FROM cluster_nodes ORDER BY node_id",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter()
            .map(|r| {
                Ok(NodeRow {
                    node_id: r.try_get("node_id")?,
                    internal_url: r.try_get("internal_url")?,
                    started_ms: r.try_get("started_ms")?,
                    heartbeat_ms: r.try_get("heartbeat_ms")?,
                    viewers: r.try_get("viewers")?,
                    relays: r.try_get("relays")?,
                    public_url: r.try_get("public_url")?,
                    max_viewers: r.try_get("max_viewers")?,
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(StoreError::from)
    }

    /// Makes `node` the stream's origin for publish `session` (a later
    /// session anywhere overwrites it: takeover across nodes).
    pub async fn cluster_claim_origin(
        &self,
        stream: &str,
        node: &str,
        session: &str,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO cluster_origins (stream, node_id, session, since_ms) VALUES ($1, $2, $3, $4)
             ON CONFLICT (stream) DO UPDATE SET node_id = excluded.node_id,
               session = excluded.session, since_ms = excluded.since_ms",
        )
        .bind(stream)
        .bind(node)
        .bind(session)
        .bind(now_ms)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Ends publish `session` of `stream`, unless another took over since.
    pub async fn cluster_release_origin(
        &self,
        stream: &str,
        session: &str,
    ) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM cluster_origins WHERE stream = $1 AND session = $2")
            .bind(stream)
            .bind(session)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Every stream's origin.
    pub async fn cluster_origins(&self) -> Result<Vec<OriginRow>, StoreError> {
        let rows = sqlx::query(
            "SELECT stream, node_id, session, since_ms FROM cluster_origins ORDER BY stream",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter()
            .map(|r| {
                Ok(OriginRow {
                    stream: r.try_get("stream")?,
                    node_id: r.try_get("node_id")?,
                    session: r.try_get("session")?,
                    since_ms: r.try_get("since_ms")?,
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(StoreError::from)
    }
}
