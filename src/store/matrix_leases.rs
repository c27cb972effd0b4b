//! Leases for several roomcast processes on one PostgreSQL database
//! (migrations/*/0006_matrix_cluster.sql): who processes a room's inbox,
//! who delivers the outbox, which nodes are alive, and which node owns a
//! stream's go-live session. On SQLite (one process) nothing here is called.

use sqlx::Row;

use super::matrix::{GoliveRow, MappingRow};
use super::{Store, StoreError};

/// ms since the Unix epoch: lease expiries.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

impl Store {
    /// Takes `key` for `node` until `ttl_ms` from now, or renews it when
    /// `node` holds it; true when `node` holds it afterwards. One statement:
    /// two nodes claiming at once serialise on the row, and the loser's
    /// update is skipped by its WHERE (the lease is someone else's and not
    /// expired).
    pub async fn claim_lease(
        &self,
        key: &str,
        node: &str,
        ttl_ms: i64,
    ) -> Result<bool, StoreError> {
        let now = now_ms();
        let r = sqlx::query(
            "INSERT INTO matrix_leases (key, node, expires_ms) VALUES ($1, $2, $3)
             ON CONFLICT(key) DO UPDATE SET node = excluded.node, expires_ms = excluded.expires_ms
             WHERE matrix_leases.node = excluded.node OR matrix_leases.expires_ms < $4
             RETURNING node",
        )
        .bind(key)
        .bind(node)
        .bind(now + ttl_ms)
        .bind(now)
        .fetch_optional(&self.pool)
        .await?;
        Ok(r.is_some())
    }

    /// Pushes back the expiry of every lease `node` holds (its heartbeat).
    pub async fn renew_leases(&self, node: &str, ttl_ms: i64) -> Result<(), StoreError> {
        sqlx::query("UPDATE matrix_leases SET expires_ms = $2 WHERE node = $1")
            .bind(node)
            .bind(now_ms() + ttl_ms)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    pub async fn release_lease(&self, key: &str, node: &str) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM matrix_leases WHERE key = $1 AND node = $2")
            .bind(key)
            .bind(node)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// At a clean stop: every lease of `node` goes at once, so the others
    /// need not wait for them to lapse.
    pub async fn release_leases(&self, node: &str) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM matrix_leases WHERE node = $1")
            .bind(node)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Whether a room has events waiting in the inbox.
    pub async fn inbox_has(&self, room_id: &str) -> Result<bool, StoreError> {
        let r = sqlx::query("SELECT 1 FROM matrix_inbox WHERE room_id = $1 LIMIT 1")
            .bind(room_id)
            .fetch_optional(&self.pool)
            .await?;
        Ok(r.is_some())
    }

    /// The mappings of one room (another node may have changed them).
    pub async fn mappings_of_room(&self, room_id: &str) -> Result<Vec<MappingRow>, StoreError> {
        let rows = sqlx::query("SELECT * FROM matrix_streams WHERE room_id = $1")
            .bind(room_id)
            .fetch_all(&self.pool)
            .await?;
        rows.into_iter()
            .map(super::matrix::mapping_from)
            .collect::<Result<_, sqlx::Error>>()
            .map_err(StoreError::from)
    }

    /// Writes a go-live session as `node`'s, unless another node owns that
    /// stream's session and is alive (its `node:` lease has not lapsed);
    /// true when written. The session row is where nodes agree who
    /// announces a stream and who ends it: the node with the publisher.
    pub async fn claim_golive_session(
        &self,
        s: &GoliveRow,
        node: &str,
    ) -> Result<bool, StoreError> {
        let r = sqlx::query(
            "INSERT INTO matrix_golive_sessions
                 (stream, session, started_ms, peak, announced, offline_since_ms, node)
             VALUES ($1, $2, $3, $4, $5, $6, $7)
             ON CONFLICT(stream) DO UPDATE SET
                 session = excluded.session, started_ms = excluded.started_ms,
                 peak = excluded.peak, announced = excluded.announced,
                 offline_since_ms = excluded.offline_since_ms, node = excluded.node
             WHERE matrix_golive_sessions.node IS NULL
                OR matrix_golive_sessions.node = excluded.node
                OR NOT EXISTS (SELECT 1 FROM matrix_leases
                               WHERE key = 'node:' || matrix_golive_sessions.node
                                 AND expires_ms >= $8)
             RETURNING stream",
        )
        .bind(s.stream.as_str())
        .bind(s.session.as_str())
        .bind(s.started_ms)
        .bind(s.peak)
        .bind(i64::from(s.announced))
        .bind(s.offline_since_ms)
        .bind(node)
        .bind(now_ms())
        .fetch_optional(&self.pool)
        .await?;
        Ok(r.is_some())
    }

    /// Deletes a stream's go-live session if `node` owns it.
    pub async fn delete_own_golive_session(
        &self,
        stream: &str,
        node: &str,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "DELETE FROM matrix_golive_sessions WHERE stream = $1 AND (node = $2 OR node IS NULL)",
        )
        .bind(stream)
        .bind(node)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Go-live sessions whose node is not alive (its `node:` lease lapsed or
    /// is gone), other than `node`'s, with when the owner's lease lapsed.
    pub async fn orphan_golive_sessions(
        &self,
        node: &str,
    ) -> Result<Vec<(GoliveRow, Option<i64>)>, StoreError> {
        let rows = sqlx::query(
            "SELECT s.*, l.expires_ms AS owner_expires_ms FROM matrix_golive_sessions s
             LEFT JOIN matrix_leases l ON l.key = 'node:' || s.node
             WHERE s.node IS NULL
                OR (s.node <> $1 AND (l.expires_ms IS NULL OR l.expires_ms < $2))",
        )
        .bind(node)
        .bind(now_ms())
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter()
            .map(|r| {
                Ok((
                    GoliveRow {
                        stream: r.try_get("stream")?,
                        session: r.try_get("session")?,
                        started_ms: r.try_get("started_ms")?,
                        peak: r.try_get("peak")?,
                        announced: r.try_get::<i64, _>("announced")? != 0,
                        offline_since_ms: r.try_get("offline_since_ms")?,
                    },
                    r.try_get("owner_expires_ms")?,
                ))
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(StoreError::from)
    }

    /// The go-live sessions `node` owns (it restarted under the same name).
    pub async fn node_golive_sessions(&self, node: &str) -> Result<Vec<GoliveRow>, StoreError> {
        let all = self.golive_sessions().await?;
        let rows = sqlx::query("SELECT stream FROM matrix_golive_sessions WHERE node = $1")
            .bind(node)
            .fetch_all(&self.pool)
            .await?;
        let mut streams = Vec::with_capacity(rows.len());
        for r in rows {
            streams.push(r.try_get::<String, _>("stream")?);
        }
        Ok(all
            .into_iter()
            .filter(|s| streams.contains(&s.stream))
            .collect())
    }

    /// Forgets leases that lapsed long ago (each process has its own node id).
    pub async fn prune_leases(&self, older_than_ms: i64) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM matrix_leases WHERE expires_ms < $1")
            .bind(now_ms() - older_than_ms)
            .execute(&self.pool)
            .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The lease statements are plain SQL both engines run; SQLite (a temp
    /// file) checks their logic here, tests/matrix_cluster.rs on PostgreSQL.
    async fn temp_store() -> (Store, std::path::PathBuf) {
        let path = std::env::temp_dir().join(format!(
            "roomcast-leases-{}.db",
            hex::encode(rand::random::<[u8; 8]>())
        ));
        let store = Store::open(&format!("sqlite://{}", path.display()))
            .await
            .expect("open");
        (store, path)
    }

    fn remove(db: &std::path::Path) {
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", db.display()));
        }
    }

    fn session(stream: &str, id: &str) -> GoliveRow {
        GoliveRow {
            stream: stream.into(),
            session: id.into(),
            started_ms: 1,
            peak: 0,
            announced: true,
            offline_since_ms: None,
        }
    }

    #[tokio::test]
    async fn a_lease_is_one_nodes_until_it_lapses() {
        let (s, path) = temp_store().await;
        assert!(s.claim_lease("room:!r", "a", 60_000).await.unwrap());
        assert!(
            !s.claim_lease("room:!r", "b", 60_000).await.unwrap(),
            "a holds it"
        );
        assert!(
            s.claim_lease("room:!r", "a", 60_000).await.unwrap(),
            "renewed"
        );
        s.release_lease("room:!r", "b").await.unwrap();
        assert!(
            !s.claim_lease("room:!r", "b", 60_000).await.unwrap(),
            "only a gives it back"
        );
        s.release_lease("room:!r", "a").await.unwrap();
        assert!(
            s.claim_lease("room:!r", "b", 60_000).await.unwrap(),
            "given back"
        );
        // b stops renewing: its lease lapses and a takes over.
        assert!(s.claim_lease("outbox", "b", -1).await.unwrap());
        assert!(
            s.claim_lease("outbox", "a", 60_000).await.unwrap(),
            "lapsed"
        );
        s.close().await;
        remove(&path);
    }

    #[tokio::test]
    async fn a_golive_session_stays_with_its_live_node() {
        let (s, path) = temp_store().await;
        s.claim_lease("node:a", "a", 60_000).await.unwrap();
        s.claim_lease("node:b", "b", 60_000).await.unwrap();
        assert!(
            s.claim_golive_session(&session("x", "1"), "a")
                .await
                .unwrap()
        );
        assert!(
            !s.claim_golive_session(&session("x", "2"), "b")
                .await
                .unwrap(),
            "a is alive: its session"
        );
        assert!(s.orphan_golive_sessions("b").await.unwrap().is_empty());
        s.delete_own_golive_session("x", "b").await.unwrap();
        assert_eq!(
            s.golive_sessions().await.unwrap()[0].session,
            "1",
            "not b's to delete"
        );
        // a dies: its node lease lapses, b finds the session and takes it.
        s.claim_lease("node:a", "a", -1).await.unwrap();
        let orphans = s.orphan_golive_sessions("b").await.unwrap();
        assert_eq!(orphans.len(), 1);
        assert!(orphans[0].1.is_some(), "when a's lease lapsed");
        assert!(s.claim_golive_session(&orphans[0].0, "b").await.unwrap());
        assert!(
            s.orphan_golive_sessions("b").await.unwrap().is_empty(),
            "b's now"
        );
        s.delete_own_golive_session("x", "b").await.unwrap();
        assert!(s.golive_sessions().await.unwrap().is_empty());
        s.close().await;
        remove(&path);
    }
}
