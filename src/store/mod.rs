//! Persistence: SQLite through sqlx, schema managed by embedded migrations.

pub mod matrix;

use std::str::FromStr;

use sqlx::Row;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database {url}: {source}")]
    Open { url: String, source: sqlx::Error },
    #[error("database migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("database: {0}")]
    Query(#[from] sqlx::Error),
}

#[derive(Debug, Clone)]
pub struct StreamRow {
    pub name: String,
    pub title: Option<String>,
    pub key_hash: String,
    pub origin: String,
}

#[derive(Clone)]
pub struct Store {
    pool: SqlitePool,
}

impl Store {
    pub async fn open(url: &str) -> Result<Store, StoreError> {
        let open_err = |source| StoreError::Open {
            url: url.to_string(),
            source,
        };
        let opts = SqliteConnectOptions::from_str(url)
            .map_err(open_err)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal);
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(opts)
            .await
            .map_err(open_err)?;
        sqlx::migrate!("./migrations").run(&pool).await?;
        Ok(Store { pool })
    }

    /// Inserts or updates a stream declared in the config file.
    pub async fn upsert_stream(
        &self,
        name: &str,
        title: Option<&str>,
        key_hash: &str,
        origin: &str,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO streams (name, title, key_hash, origin, created_at)
             VALUES (?1, ?2, ?3, ?4, unixepoch())
             ON CONFLICT(name) DO UPDATE SET title = excluded.title,
                 key_hash = excluded.key_hash, origin = excluded.origin",
        )
        .bind(name)
        .bind(title)
        .bind(key_hash)
        .bind(origin)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Creates the stream unless one of that name exists; returns whether it did.
    pub async fn create_stream_if_absent(
        &self,
        name: &str,
        key_hash: &str,
        origin: &str,
    ) -> Result<bool, StoreError> {
        let r = sqlx::query(
            "INSERT INTO streams (name, title, key_hash, origin, created_at)
             VALUES (?1, NULL, ?2, ?3, unixepoch()) ON CONFLICT(name) DO NOTHING",
        )
        .bind(name)
        .bind(key_hash)
        .bind(origin)
        .execute(&self.pool)
        .await?;
        Ok(r.rows_affected() == 1)
    }

    pub async fn set_key_hash(&self, name: &str, key_hash: &str) -> Result<bool, StoreError> {
        let r = sqlx::query("UPDATE streams SET key_hash = ?2 WHERE name = ?1")
            .bind(name)
            .bind(key_hash)
            .execute(&self.pool)
            .await?;
        Ok(r.rows_affected() == 1)
    }

    pub async fn streams(&self) -> Result<Vec<StreamRow>, StoreError> {
        let rows = sqlx::query("SELECT name, title, key_hash, origin FROM streams ORDER BY name")
            .fetch_all(&self.pool)
            .await?;
        rows.into_iter()
            .map(|r| {
                Ok(StreamRow {
                    name: r.try_get("name")?,
                    title: r.try_get("title")?,
                    key_hash: r.try_get("key_hash")?,
                    origin: r.try_get("origin")?,
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn streams_survive_reopen() {
        let dir = std::env::temp_dir().join(format!("roomcast-store-{}", rand::random::<u64>()));
        std::fs::create_dir_all(&dir).unwrap();
        let url = format!("sqlite://{}/t.db", dir.display());
        {
            let s = Store::open(&url).await.unwrap();
            assert!(
                s.create_stream_if_absent("demo", "h1", "demo")
                    .await
                    .unwrap()
            );
            assert!(
                !s.create_stream_if_absent("demo", "h2", "demo")
                    .await
                    .unwrap()
            );
            s.upsert_stream("cfg", Some("T"), "h3", "config")
                .await
                .unwrap();
        }
        let s = Store::open(&url).await.unwrap();
        let rows = s.streams().await.unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[1].name, "demo");
        assert_eq!(rows[1].key_hash, "h1");
        assert_eq!(rows[0].title.as_deref(), Some("T"));
        std::fs::remove_dir_all(&dir).ok();
    }
}
