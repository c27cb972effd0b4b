//! The recordings index (`recordings`) and streams' own recording choices
//! (`recording_choices`), migration 0008.

use sqlx::Row;
use sqlx::any::AnyRow;

use super::{Store, StoreError, unix_now};

/// One recording as indexed.
#[derive(Debug, Clone, PartialEq)]
pub struct RecordingRow {
    pub id: String,
    pub stream: String,
    pub session: String,
    pub node: String,
    pub started_ms: i64,
    pub ended_ms: Option<i64>,
    pub duration_ms: i64,
    pub bytes: i64,
    pub video_codec: Option<String>,
    pub audio_codec: Option<String>,
    pub peak_viewers: i64,
    pub title_start: String,
    pub title_end: String,
    pub room_id: Option<String>,
    pub state: String,
    /// The stream was private at some time while recorded (migration 0012).
    pub private: bool,
}

/// The columns every read selects (a macro: sqlx takes only static SQL).
macro_rules! columns {
    () => {
        "id, stream, session, node, started_ms, ended_ms, duration_ms, bytes, \
         video_codec, audio_codec, peak_viewers, title_start, title_end, room_id, state, private"
    };
}

fn row(r: &AnyRow) -> Result<RecordingRow, sqlx::Error> {
    Ok(RecordingRow {
        id: r.try_get("id")?,
        stream: r.try_get("stream")?,
        session: r.try_get("session")?,
        node: r.try_get("node")?,
        started_ms: r.try_get("started_ms")?,
        ended_ms: r.try_get("ended_ms")?,
        duration_ms: r.try_get("duration_ms")?,
        bytes: r.try_get("bytes")?,
        video_codec: r.try_get("video_codec")?,
        audio_codec: r.try_get("audio_codec")?,
        peak_viewers: r.try_get("peak_viewers")?,
        title_start: r.try_get("title_start")?,
        title_end: r.try_get("title_end")?,
        room_id: r.try_get("room_id")?,
        state: r.try_get("state")?,
        private: r.try_get::<i64, _>("private")? != 0,
    })
}

impl Store {
    pub async fn insert_recording(&self, r: &RecordingRow) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO recordings (id, stream, session, node, started_ms, ended_ms, duration_ms,
                 bytes, video_codec, audio_codec, peak_viewers, title_start, title_end, room_id, state, private)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16)",
        )
        .bind(&r.id)
        .bind(&r.stream)
        .bind(&r.session)
        .bind(&r.node)
        .bind(r.started_ms)
        .bind(r.ended_ms)
        .bind(r.duration_ms)
        .bind(r.bytes)
        .bind(&r.video_codec)
        .bind(&r.audio_codec)
        .bind(r.peak_viewers)
        .bind(&r.title_start)
        .bind(&r.title_end)
        .bind(&r.room_id)
        .bind(&r.state)
        .bind(i64::from(r.private))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Writes what changes while a recording grows, and at its end.
    pub async fn update_recording(&self, r: &RecordingRow) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE recordings SET ended_ms = $2, duration_ms = $3, bytes = $4, video_codec = $5,
                 audio_codec = $6, peak_viewers = $7, title_end = $8, room_id = $9, state = $10,
                 private = $11
             WHERE id = $1",
        )
        .bind(&r.id)
        .bind(r.ended_ms)
        .bind(r.duration_ms)
        .bind(r.bytes)
        .bind(&r.video_codec)
        .bind(&r.audio_codec)
        .bind(r.peak_viewers)
        .bind(&r.title_end)
        .bind(&r.room_id)
        .bind(&r.state)
        .bind(i64::from(r.private))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn recording(&self, id: &str) -> Result<Option<RecordingRow>, StoreError> {
        let q = concat!("SELECT ", columns!(), " FROM recordings WHERE id = $1");
        let r = sqlx::query(q).bind(id).fetch_optional(&self.pool).await?;
        Ok(r.as_ref().map(row).transpose()?)
    }

    /// A stream's recordings, newest first, at most `limit`.
    pub async fn recordings_of(
        &self,
        stream: &str,
        limit: i64,
    ) -> Result<Vec<RecordingRow>, StoreError> {
        let q = concat!(
            "SELECT ",
            columns!(),
            " FROM recordings WHERE stream = $1 ORDER BY started_ms DESC, id LIMIT $2"
        );
        let rows = sqlx::query(q)
            .bind(stream)
            .bind(limit)
            .fetch_all(&self.pool)
            .await?;
        Ok(rows.iter().map(row).collect::<Result<_, _>>()?)
    }

    /// Every recording, oldest first (retention, start-up).
    pub async fn all_recordings(&self) -> Result<Vec<RecordingRow>, StoreError> {
        let q = concat!(
            "SELECT ",
            columns!(),
            " FROM recordings ORDER BY started_ms, id"
        );
        let rows = sqlx::query(q).fetch_all(&self.pool).await?;
        Ok(rows.iter().map(row).collect::<Result<_, _>>()?)
    }

    pub async fn delete_recording(&self, id: &str) -> Result<bool, StoreError> {
        let r = sqlx::query("DELETE FROM recordings WHERE id = $1")
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(r.rows_affected() == 1)
    }

    /// Streams' own choices (`!live record on|off`).
    pub async fn recording_choices(&self) -> Result<Vec<(String, bool)>, StoreError> {
        let rows = sqlx::query("SELECT stream, record FROM recording_choices")
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| Ok((r.try_get("stream")?, r.try_get::<i64, _>("record")? != 0)))
            .collect()
    }

    pub async fn set_recording_choice(
        &self,
        stream: &str,
        record: bool,
        by_user: &str,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO recording_choices (stream, record, by_user, at) VALUES ($1, $2, $3, $4)
             ON CONFLICT(stream) DO UPDATE SET record = excluded.record,
                 by_user = excluded.by_user, at = excluded.at",
        )
        .bind(stream)
        .bind(i64::from(record))
        .bind(by_user)
        .bind(unix_now())
        .execute(&self.pool)
        .await?;
        Ok(())
    }
}
