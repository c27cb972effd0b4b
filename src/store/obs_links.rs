//! One-time OBS profile links (migration 0010): hashed ids, consumed by a
//! delete so two downloads racing on two nodes cannot both win.

use sqlx::Row;

use super::{Store, StoreError, unix_now};

impl Store {
    /// Records a link; prunes expired ones on the way.
    pub async fn insert_obs_link(
        &self,
        id: &str,
        stream: &str,
        ttl_secs: u64,
    ) -> Result<(), StoreError> {
        let now = unix_now();
        sqlx::query("DELETE FROM obs_links WHERE expires_at <= $1")
            .bind(now)
            .execute(&self.pool)
            .await?;
        sqlx::query("INSERT INTO obs_links (id, stream, expires_at) VALUES ($1, $2, $3)")
            .bind(id)
            .bind(stream)
            .bind(now.saturating_add(ttl_secs as i64))
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// The stream of an unexpired link, without using it up.
    pub async fn obs_link_stream(&self, id: &str) -> Result<Option<String>, StoreError> {
        let row = sqlx::query("SELECT stream FROM obs_links WHERE id = $1 AND expires_at > $2")
            .bind(id)
            .bind(unix_now())
            .fetch_optional(&self.pool)
            .await?;
        Ok(match row {
            Some(r) => Some(r.try_get("stream")?),
            None => None,
        })
    }

    /// Uses a link up: true for the one caller that deleted it.
    pub async fn consume_obs_link(&self, id: &str) -> Result<bool, StoreError> {
        let r = sqlx::query("DELETE FROM obs_links WHERE id = $1 AND expires_at > $2")
            .bind(id)
            .bind(unix_now())
            .execute(&self.pool)
            .await?;
        Ok(r.rows_affected() == 1)
    }

    /// The stream's current key hash (the database's: another node may have
    /// rotated it).
    pub async fn key_hash_of(&self, stream: &str) -> Result<Option<String>, StoreError> {
        let row = sqlx::query("SELECT key_hash FROM streams WHERE name = $1")
            .bind(stream)
            .fetch_optional(&self.pool)
            .await?;
        Ok(match row {
            Some(r) => Some(r.try_get("key_hash")?),
            None => None,
        })
    }
}
