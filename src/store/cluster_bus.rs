//! The cluster bus's database side (src/cluster/bus.rs): NOTIFY, and the
//! payload table for messages too big for a notification
//! (migrations/postgres/0007_cluster_bus.sql).

use sqlx::Row;

use super::{Store, StoreError};

impl Store {
    /// `NOTIFY channel, payload` (payload under 8000 bytes).
    pub async fn bus_notify(&self, channel: &str, payload: &str) -> Result<(), StoreError> {
        sqlx::query("SELECT pg_notify($1, $2)")
            .bind(channel)
            .bind(payload)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Keeps a big message for the receivers; returns its row id.
    pub async fn bus_put_payload(&self, body: &str, now_ms: i64) -> Result<i64, StoreError> {
        let row = sqlx::query(
            "INSERT INTO cluster_bus_payloads (body, at_ms) VALUES ($1, $2) RETURNING id",
        )
        .bind(body)
        .bind(now_ms)
        .fetch_one(&self.pool)
        .await?;
        Ok(row.try_get("id")?)
    }

    /// A big message, unless gone or longer than `max_bytes`.
    pub async fn bus_payload(&self, id: i64, max_bytes: i64) -> Result<Option<String>, StoreError> {
        let row = sqlx::query(
            "SELECT body FROM cluster_bus_payloads WHERE id = $1 AND octet_length(body) <= $2",
        )
        .bind(id)
        .bind(max_bytes)
        .fetch_optional(&self.pool)
        .await?;
        Ok(match row {
            Some(r) => Some(r.try_get("body")?),
            None => None,
        })
    }

    /// Forgets big messages written before `before_ms`.
    pub async fn bus_prune_payloads(&self, before_ms: i64) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM cluster_bus_payloads WHERE at_ms < $1")
            .bind(before_ms)
            .execute(&self.pool)
            .await?;
        Ok(())
    }
}
