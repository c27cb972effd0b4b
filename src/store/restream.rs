//! Restream destinations set from Matrix or the API (keys sealed: see
//! `restream::secret`).

use sqlx::Row;

use super::{Store, StoreError};

#[derive(Debug, Clone)]
pub struct DestinationRow {
    pub stream: String,
    pub label: String,
    pub url: String,
    pub key_sealed: String,
    pub enabled: bool,
}

impl Store {
    pub async fn restream_destinations(&self) -> Result<Vec<DestinationRow>, StoreError> {
        let rows = sqlx::query(
            "SELECT stream, label, url, key_sealed, enabled FROM restream_destinations
             ORDER BY stream, label",
        )
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .iter()
            .map(|r| DestinationRow {
                stream: r.get(0),
                label: r.get(1),
                url: r.get(2),
                key_sealed: r.get(3),
                enabled: r.get::<i64, _>(4) != 0,
            })
            .collect())
    }

    pub async fn upsert_restream_destination(
        &self,
        d: &DestinationRow,
        added_by: Option<&str>,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO restream_destinations (stream, label, url, key_sealed, enabled, added_by)
             VALUES ($1, $2, $3, $4, $5, $6)
             ON CONFLICT(stream, label) DO UPDATE SET url = excluded.url,
               key_sealed = excluded.key_sealed, enabled = excluded.enabled,
               added_by = excluded.added_by",
        )
        .bind(&d.stream)
        .bind(&d.label)
        .bind(&d.url)
        .bind(&d.key_sealed)
        .bind(i64::from(d.enabled))
        .bind(added_by)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Returns whether a row was there.
    pub async fn remove_restream_destination(
        &self,
        stream: &str,
        label: &str,
    ) -> Result<bool, StoreError> {
        let r = sqlx::query("DELETE FROM restream_destinations WHERE stream = $1 AND label = $2")
            .bind(stream)
            .bind(label)
            .execute(&self.pool)
            .await?;
        Ok(r.rows_affected() > 0)
    }

    pub async fn set_restream_enabled(
        &self,
        stream: &str,
        label: &str,
        enabled: bool,
    ) -> Result<bool, StoreError> {
        let r = sqlx::query(
            "UPDATE restream_destinations SET enabled = $3 WHERE stream = $1 AND label = $2",
        )
        .bind(stream)
        .bind(label)
        .bind(i64::from(enabled))
        .execute(&self.pool)
        .await?;
        Ok(r.rows_affected() > 0)
    }
}
