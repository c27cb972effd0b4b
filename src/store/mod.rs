//! Persistence through sqlx: SQLite by default, PostgreSQL when `database_url`
//! says `postgres://`. One query text serves both (`$N` placeholders, times
//! bound from Rust rather than `unixepoch()`/`now()`, integers as i64), so the
//! backends cannot drift apart; each has its own migrations directory because
//! their DDL differs (`migrations/sqlite`, `migrations/postgres`).

pub mod cluster;
pub mod cluster_bus;
pub mod health;
pub mod matrix;
pub mod matrix_leases;
pub mod obs_links;
pub mod party;
pub mod recordings;
pub mod restream;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{AnyConnection, AnyPool, Connection, Executor, Row};
use tracing::info;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("storage.database_url '{0}': use sqlite://PATH or postgres://USER:PASSWORD@HOST/DB")]
    Unsupported(String),
    #[error("cannot open the database {url}: {source}")]
    Open { url: String, source: sqlx::Error },
    #[error("database migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("database: {0}")]
    Query(#[from] sqlx::Error),
}

/// Which database engine a `database_url` names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    pub fn of(url: &str) -> Option<Backend> {
        if url.starts_with("sqlite:") {
            Some(Backend::Sqlite)
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Some(Backend::Postgres)
        } else {
            None
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Backend::Sqlite => "sqlite",
            Backend::Postgres => "postgres",
        }
    }
}

/// The URL with its password replaced, for logs and error messages.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _password)) => format!("{scheme}://{user}:***@{host}{tail}"),
            None => url.to_string(),
        },
        None => url.to_string(),
    }
}

/// Seconds since the Unix epoch: every `*_at` column.
pub(crate) fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
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
    pool: AnyPool,
    backend: Backend,
    health: Arc<health::StorageHealth>,
    /// The SQLite file, whose filesystem the health probe watches.
    sqlite_file: Option<PathBuf>,
}

impl Store {
    /// Opens (creating an SQLite file if needed) and migrates the database.
    pub async fn open(url: &str) -> Result<Store, StoreError> {
        let backend = Backend::of(url).ok_or_else(|| StoreError::Unsupported(redact_url(url)))?;
        sqlx::any::install_default_drivers();
        let connect_url = match backend {
            // sqlx opens SQLite read-write without creating the file; a first
            // start on a fresh machine should just work.
            Backend::Sqlite if !url.contains("mode=") => {
                let sep = if url.contains('?') { '&' } else { '?' };
                format!("{url}{sep}mode=rwc")
            }
            _ => url.to_string(),
        };
        let open_err = |source| StoreError::Open {
            url: redact_url(url),
            source,
        };
        // One direct connection first: it fails fast with the real cause
        // (refused, password, no such database) where the pool would retry
        // for its whole acquire timeout and then only say that it timed out.
        let first = AnyConnection::connect(&connect_url)
            .await
            .map_err(open_err)?;
        first.close().await.ok();
        let pool = AnyPoolOptions::new()
            // While the database is away, a request fails within this (the
            // homeserver retries its transaction) instead of hanging.
            .acquire_timeout(Duration::from_secs(10))
            .max_connections(match backend {
                // One writer at a time anyway; a few readers beside it (WAL).
                Backend::Sqlite => 4,
                Backend::Postgres => 8,
            })
            .after_connect(move |conn, _meta| {
                Box::pin(async move {
                    if backend == Backend::Sqlite {
                        // Readers do not block the writer (the outbox and the
                        // appservice write while pages read).
                        conn.execute("PRAGMA journal_mode = WAL").await?;
                    }
                    Ok(())
                })
            })
            .connect(&connect_url)
            .await
            .map_err(open_err)?;
        match backend {
            Backend::Sqlite => sqlx::migrate!("./migrations/sqlite").run(&pool).await?,
            Backend::Postgres => sqlx::migrate!("./migrations/postgres").run(&pool).await?,
        }
        info!(backend = %backend.name(), url = %redact_url(url), "storage: database ready");
        Ok(Store {
            pool,
            backend,
            health: Arc::default(),
            sqlite_file: health::sqlite_path(url),
        })
    }

    /// At shutdown: SQLite folds its WAL into the database file (a copy of
    /// the .db alone is then complete), then every connection is closed.
    pub async fn close(&self) {
        if self.backend == Backend::Sqlite
            && let Err(e) = sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
                .execute(&self.pool)
                .await
        {
            tracing::warn!("storage: WAL checkpoint at shutdown failed: {e}");
        }
        self.pool.close().await;
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Whether the database takes writes, as the last probe found.
    pub fn health(&self) -> &health::StorageHealth {
        &self.health
    }

    /// One health probe: a settings row written, and for SQLite the free
    /// space of its filesystem. Run every [`health::PROBE_INTERVAL`].
    pub async fn probe_health(&self) {
        if self.pool.is_closed() {
            return;
        }
        let write = sqlx::query(
            "INSERT INTO settings (key, value) VALUES ('storage_probe', $1)
             ON CONFLICT(key) DO UPDATE SET value = excluded.value",
        )
        .bind(unix_now().to_string())
        .execute(&self.pool)
        .await;
        let outcome = match write {
            Err(e) => Err(format!("a write failed: {e}")),
            Ok(_) => health::full_disk(self.sqlite_file.as_deref().and_then(health::free_bytes)),
        };
        self.health.record(outcome);
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
             VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT(name) DO UPDATE SET title = excluded.title,
                 key_hash = excluded.key_hash, origin = excluded.origin",
        )
        .bind(name)
        .bind(title)
        .bind(key_hash)
        .bind(origin)
        .bind(unix_now())
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
             VALUES ($1, NULL, $2, $3, $4) ON CONFLICT(name) DO NOTHING",
        )
        .bind(name)
        .bind(key_hash)
        .bind(origin)
        .bind(unix_now())
        .execute(&self.pool)
        .await?;
        Ok(r.rows_affected() == 1)
    }

    pub async fn set_key_hash(&self, name: &str, key_hash: &str) -> Result<bool, StoreError> {
        let r = sqlx::query("UPDATE streams SET key_hash = $2 WHERE name = $1")
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
        rows.iter().map(stream_row).collect()
    }

    /// One stream's row (the cluster bus re-reads one per message).
    pub async fn stream(&self, name: &str) -> Result<Option<StreamRow>, StoreError> {
        let row = sqlx::query("SELECT name, title, key_hash, origin FROM streams WHERE name = $1")
            .bind(name)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(stream_row).transpose()
    }
}

fn stream_row(r: &AnyRow) -> Result<StreamRow, StoreError> {
    Ok(StreamRow {
        name: r.try_get("name")?,
        title: r.try_get("title")?,
        key_hash: r.try_get("key_hash")?,
        origin: r.try_get("origin")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backends_by_url() {
        assert_eq!(Backend::of("sqlite://roomcast.db"), Some(Backend::Sqlite));
        assert_eq!(Backend::of("sqlite::memory:"), Some(Backend::Sqlite));
        assert_eq!(Backend::of("postgres://u:p@h/db"), Some(Backend::Postgres));
        assert_eq!(Backend::of("postgresql://h/db"), Some(Backend::Postgres));
        assert_eq!(Backend::of("mysql://h/db"), None);
        assert_eq!(Backend::of("roomcast.db"), None);
    }

    #[test]
    fn passwords_never_shown() {
        assert_eq!(
            redact_url("postgres://rc:s3cret@db.example:5432/roomcast?sslmode=require"),
            "postgres://rc:***@db.example:5432/roomcast?sslmode=require"
        );
        assert_eq!(
            redact_url("postgres://rc@db/roomcast"),
            "postgres://rc@db/roomcast"
        );
        assert_eq!(redact_url("postgres://db/x@y"), "postgres://db/x@y");
        assert_eq!(redact_url("sqlite://roomcast.db"), "sqlite://roomcast.db");
        assert_eq!(redact_url("postgres://a:b:c@h/db"), "postgres://a:***@h/db");
    }

    #[tokio::test]
    async fn unsupported_url_is_refused_by_name() {
        let e = Store::open("mysql://root:pw@localhost/rc")
            .await
            .err()
            .unwrap();
        let text = e.to_string();
        assert!(text.contains("mysql://root:***@localhost/rc"), "{text}");
        assert!(!text.contains("pw@"), "{text}");
    }
}
