//! Tables of the Matrix application service (migrations/*/0002_matrix.sql).

use sqlx::Row;
use sqlx::any::AnyRow;

use super::{Store, StoreError, unix_now};

#[derive(Debug, Clone)]
pub struct RoomRow {
    pub room_id: String,
    pub alias: Option<String>,
    pub name: Option<String>,
    pub topic: Option<String>,
    pub join_rule: String,
    pub encrypted: bool,
    pub notify: bool,
}

#[derive(Debug, Clone)]
pub struct MappingRow {
    pub stream: String,
    pub room_id: String,
    pub slot: Option<String>,
    pub owner: Option<String>,
}

#[derive(Debug, Clone)]
pub struct GuestRow {
    pub user_id: String,
    pub name: String,
}

/// One thing to tell the homeserver, as queued.
#[derive(Debug, Clone)]
pub struct NewOutbox<'a> {
    pub kind: &'a str,
    pub room_id: &'a str,
    pub stream: &'a str,
    pub session: &'a str,
    pub payload: String,
    pub txn_id: String,
}

#[derive(Debug, Clone)]
pub struct OutboxRow {
    pub id: i64,
    pub kind: String,
    pub room_id: String,
    pub stream: String,
    pub session: String,
    pub payload: String,
    pub txn_id: String,
    pub attempts: i64,
}

fn room_from(r: AnyRow) -> Result<RoomRow, sqlx::Error> {
    Ok(RoomRow {
        room_id: r.try_get("room_id")?,
        alias: r.try_get("alias")?,
        name: r.try_get("name")?,
        topic: r.try_get("topic")?,
        join_rule: r.try_get("join_rule")?,
        encrypted: r.try_get::<i64, _>("encrypted")? != 0,
        notify: r.try_get::<i64, _>("notify")? != 0,
    })
}

pub(super) fn mapping_from(r: AnyRow) -> Result<MappingRow, sqlx::Error> {
    Ok(MappingRow {
        stream: r.try_get("stream")?,
        room_id: r.try_get("room_id")?,
        slot: r.try_get("slot")?,
        owner: r.try_get("owner")?,
    })
}

impl Store {
    // --- rooms -------------------------------------------------------------

    /// Records a room (idempotent; keeps what is known about an existing one
    /// unless a new value is given).
    pub async fn upsert_room(
        &self,
        room_id: &str,
        alias: Option<&str>,
        name: Option<&str>,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO matrix_rooms (room_id, alias, name, created_at)
             VALUES ($1, $2, $3, $4)
             ON CONFLICT(room_id) DO UPDATE SET
                 alias = COALESCE(excluded.alias, matrix_rooms.alias),
                 name = COALESCE(excluded.name, matrix_rooms.name)",
        )
        .bind(room_id)
        .bind(alias)
        .bind(name)
        .bind(unix_now())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn room(&self, room_id: &str) -> Result<Option<RoomRow>, StoreError> {
        let r = sqlx::query("SELECT * FROM matrix_rooms WHERE room_id = $1")
            .bind(room_id)
            .fetch_optional(&self.pool)
            .await?;
        Ok(r.map(room_from).transpose()?)
    }

    pub async fn room_by_alias(&self, alias: &str) -> Result<Option<RoomRow>, StoreError> {
        let r = sqlx::query("SELECT * FROM matrix_rooms WHERE alias = $1")
            .bind(alias)
            .fetch_optional(&self.pool)
            .await?;
        Ok(r.map(room_from).transpose()?)
    }

    pub async fn rooms(&self) -> Result<Vec<RoomRow>, StoreError> {
        let rows = sqlx::query("SELECT * FROM matrix_rooms ORDER BY room_id")
            .fetch_all(&self.pool)
            .await?;
        Ok(rows.into_iter().map(room_from).collect::<Result<_, _>>()?)
    }

    /// Sets one of the room's text columns (`name`, `topic`, `join_rule`).
    pub async fn set_room_text(
        &self,
        room_id: &str,
        column: RoomText,
        value: Option<&str>,
    ) -> Result<(), StoreError> {
        let sql = match column {
            RoomText::Name => "UPDATE matrix_rooms SET name = $2 WHERE room_id = $1",
            RoomText::Topic => "UPDATE matrix_rooms SET topic = $2 WHERE room_id = $1",
            RoomText::JoinRule => {
                "UPDATE matrix_rooms SET join_rule = COALESCE($2, 'public') WHERE room_id = $1"
            }
        };
        sqlx::query(sql)
            .bind(room_id)
            .bind(value)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    pub async fn set_room_flag(
        &self,
        room_id: &str,
        flag: RoomFlag,
        value: bool,
    ) -> Result<(), StoreError> {
        let sql = match flag {
            RoomFlag::Encrypted => "UPDATE matrix_rooms SET encrypted = $2 WHERE room_id = $1",
            RoomFlag::Notify => "UPDATE matrix_rooms SET notify = $2 WHERE room_id = $1",
        };
        sqlx::query(sql)
            .bind(room_id)
            .bind(i64::from(value))
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    // --- room ↔ stream -------------------------------------------------------

    pub async fn map_stream(
        &self,
        stream: &str,
        room_id: &str,
        slot: Option<&str>,
        owner: Option<&str>,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO matrix_streams (stream, room_id, slot, owner, created_at)
             VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT(stream) DO UPDATE SET room_id = excluded.room_id,
                 slot = excluded.slot, owner = COALESCE(excluded.owner, matrix_streams.owner)",
        )
        .bind(stream)
        .bind(room_id)
        .bind(slot)
        .bind(owner)
        .bind(unix_now())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn unmap_stream(&self, stream: &str) -> Result<bool, StoreError> {
        let r = sqlx::query("DELETE FROM matrix_streams WHERE stream = $1")
            .bind(stream)
            .execute(&self.pool)
            .await?;
        Ok(r.rows_affected() == 1)
    }

    pub async fn mappings(&self) -> Result<Vec<MappingRow>, StoreError> {
        let rows = sqlx::query(
            "SELECT * FROM matrix_streams
             ORDER BY room_id, slot IS NOT NULL, slot, stream",
        )
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(mapping_from)
            .collect::<Result<_, _>>()?)
    }

    pub async fn mapping(&self, stream: &str) -> Result<Option<MappingRow>, StoreError> {
        let r = sqlx::query("SELECT * FROM matrix_streams WHERE stream = $1")
            .bind(stream)
            .fetch_optional(&self.pool)
            .await?;
        Ok(r.map(mapping_from).transpose()?)
    }

    pub async fn stream_exists(&self, name: &str) -> Result<bool, StoreError> {
        let r = sqlx::query("SELECT 1 FROM streams WHERE name = $1")
            .bind(name)
            .fetch_optional(&self.pool)
            .await?;
        Ok(r.is_some())
    }

    pub async fn set_stream_title(&self, name: &str, title: &str) -> Result<(), StoreError> {
        sqlx::query("UPDATE streams SET title = $2 WHERE name = $1")
            .bind(name)
            .bind(title)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    // --- transactions --------------------------------------------------------

    pub async fn txn_done(&self, txn_id: &str) -> Result<bool, StoreError> {
        let r = sqlx::query("SELECT 1 FROM matrix_txns WHERE txn_id = $1")
            .bind(txn_id)
            .fetch_optional(&self.pool)
            .await?;
        Ok(r.is_some())
    }

    pub async fn mark_txn_done(&self, txn_id: &str) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO matrix_txns (txn_id, done_at) VALUES ($1, $2)
             ON CONFLICT(txn_id) DO NOTHING",
        )
        .bind(txn_id)
        .bind(unix_now())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn event_done(&self, event_id: &str) -> Result<bool, StoreError> {
        let r = sqlx::query("SELECT 1 FROM matrix_events_done WHERE event_id = $1")
            .bind(event_id)
            .fetch_optional(&self.pool)
            .await?;
        Ok(r.is_some())
    }

    pub async fn mark_event_done(&self, event_id: &str) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO matrix_events_done (event_id, done_at) VALUES ($1, $2)
             ON CONFLICT(event_id) DO NOTHING",
        )
        .bind(event_id)
        .bind(unix_now())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Forgets transaction and event ids older than `days` (the homeserver
    /// retries for minutes, not weeks).
    pub async fn prune_processed(&self, days: i64) -> Result<(), StoreError> {
        let cutoff = unix_now() - days * 86_400;
        sqlx::query("DELETE FROM matrix_txns WHERE done_at < $1")
            .bind(cutoff)
            .execute(&self.pool)
            .await?;
        sqlx::query("DELETE FROM matrix_events_done WHERE done_at < $1")
            .bind(cutoff)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    // --- direct messages -------------------------------------------------------

    pub async fn dm_room(&self, user_id: &str) -> Result<Option<String>, StoreError> {
        let r = sqlx::query("SELECT room_id FROM matrix_dms WHERE user_id = $1")
            .bind(user_id)
            .fetch_optional(&self.pool)
            .await?;
        Ok(r.map(|r| r.try_get("room_id")).transpose()?)
    }

    pub async fn set_dm_room(&self, user_id: &str, room_id: &str) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO matrix_dms (user_id, room_id) VALUES ($1, $2)
             ON CONFLICT(user_id) DO UPDATE SET room_id = excluded.room_id",
        )
        .bind(user_id)
        .bind(room_id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn is_dm_room(&self, room_id: &str) -> Result<bool, StoreError> {
        let r = sqlx::query("SELECT 1 FROM matrix_dms WHERE room_id = $1")
            .bind(room_id)
            .fetch_optional(&self.pool)
            .await?;
        Ok(r.is_some())
    }

    // --- guests ----------------------------------------------------------------

    pub async fn create_guest(
        &self,
        token_hash: &str,
        user_id: &str,
        name: &str,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO matrix_guests (token_hash, user_id, name, created_at)
             VALUES ($1, $2, $3, $4)",
        )
        .bind(token_hash)
        .bind(user_id)
        .bind(name)
        .bind(unix_now())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Forgets guests older than `days` that never joined a room (their token
    /// stops working; the page asks for a name again). Guests that posted
    /// stay: their room rows remember bans.
    pub async fn prune_idle_guests(&self, days: i64) -> Result<u64, StoreError> {
        let cutoff = unix_now() - days * 86_400;
        let r = sqlx::query(
            "DELETE FROM matrix_guests WHERE created_at < $1
             AND user_id NOT IN (SELECT user_id FROM matrix_guest_rooms)",
        )
        .bind(cutoff)
        .execute(&self.pool)
        .await?;
        Ok(r.rows_affected())
    }

    pub async fn guest_by_token_hash(
        &self,
        token_hash: &str,
    ) -> Result<Option<GuestRow>, StoreError> {
        let r = sqlx::query("SELECT user_id, name FROM matrix_guests WHERE token_hash = $1")
            .bind(token_hash)
            .fetch_optional(&self.pool)
            .await?;
        Ok(r.map(|r| -> Result<GuestRow, sqlx::Error> {
            Ok(GuestRow {
                user_id: r.try_get("user_id")?,
                name: r.try_get("name")?,
            })
        })
        .transpose()?)
    }

    /// `None`: the puppet never joined; `Some(true)`: a moderator removed it.
    pub async fn guest_room_state(
        &self,
        user_id: &str,
        room_id: &str,
    ) -> Result<Option<bool>, StoreError> {
        let r = sqlx::query(
            "SELECT removed FROM matrix_guest_rooms WHERE user_id = $1 AND room_id = $2",
        )
        .bind(user_id)
        .bind(room_id)
        .fetch_optional(&self.pool)
        .await?;
        Ok(r.map(|r| r.try_get::<i64, _>("removed").map(|v| v != 0))
            .transpose()?)
    }

    pub async fn set_guest_room_state(
        &self,
        user_id: &str,
        room_id: &str,
        removed: bool,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO matrix_guest_rooms (user_id, room_id, removed) VALUES ($1, $2, $3)
             ON CONFLICT(user_id, room_id) DO UPDATE SET removed = excluded.removed",
        )
        .bind(user_id)
        .bind(room_id)
        .bind(i64::from(removed))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    // --- outbox ------------------------------------------------------------------

    /// Queues items in one transaction: a notice and its state event are
    /// queued together or not at all, so retrying a failed call cannot queue
    /// a notice twice. Returns their ids, in order.
    pub async fn enqueue_outbox(&self, items: &[NewOutbox<'_>]) -> Result<Vec<i64>, StoreError> {
        let mut tx = self.pool.begin().await?;
        let mut ids = Vec::with_capacity(items.len());
        for item in items {
            let r = sqlx::query(
                "INSERT INTO matrix_outbox
                     (kind, room_id, stream, session, payload, txn_id, created_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING id",
            )
            .bind(item.kind)
            .bind(item.room_id)
            .bind(item.stream)
            .bind(item.session)
            .bind(item.payload.as_str())
            .bind(item.txn_id.as_str())
            .bind(unix_now())
            .fetch_one(&mut *tx)
            .await?;
            ids.push(r.try_get("id")?);
        }
        tx.commit().await?;
        Ok(ids)
    }

    pub async fn pending_outbox(&self) -> Result<Vec<OutboxRow>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, kind, room_id, stream, session, payload, txn_id, attempts
             FROM matrix_outbox WHERE done_at IS NULL ORDER BY id",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter()
            .map(|r| {
                Ok(OutboxRow {
                    id: r.try_get("id")?,
                    kind: r.try_get("kind")?,
                    room_id: r.try_get("room_id")?,
                    stream: r.try_get("stream")?,
                    session: r.try_get("session")?,
                    payload: r.try_get("payload")?,
                    txn_id: r.try_get("txn_id")?,
                    attempts: r.try_get("attempts")?,
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(StoreError::from)
    }

    pub async fn outbox_done(&self, id: i64, event_id: Option<&str>) -> Result<(), StoreError> {
        sqlx::query("UPDATE matrix_outbox SET done_at = $3, event_id = $2 WHERE id = $1")
            .bind(id)
            .bind(event_id)
            .bind(unix_now())
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    pub async fn outbox_attempted(&self, id: i64) -> Result<(), StoreError> {
        sqlx::query("UPDATE matrix_outbox SET attempts = attempts + 1 WHERE id = $1")
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// The event id of the delivered item `kind` of a stream's live session.
    pub async fn outbox_event(
        &self,
        stream: &str,
        session: &str,
        kind: &str,
    ) -> Result<Option<String>, StoreError> {
        let r = sqlx::query(
            "SELECT event_id FROM matrix_outbox
             WHERE stream = $1 AND session = $2 AND kind = $3 AND event_id IS NOT NULL",
        )
        .bind(stream)
        .bind(session)
        .bind(kind)
        .fetch_optional(&self.pool)
        .await?;
        Ok(r.map(|r| r.try_get("event_id")).transpose()?)
    }

    // --- settings ------------------------------------------------------------------

    pub async fn setting(&self, key: &str) -> Result<Option<String>, StoreError> {
        let r = sqlx::query("SELECT value FROM settings WHERE key = $1")
            .bind(key)
            .fetch_optional(&self.pool)
            .await?;
        Ok(r.map(|r| r.try_get("value")).transpose()?)
    }

    /// Sets `key` unless it is set; returns the value in force.
    pub async fn setting_or_insert(&self, key: &str, value: &str) -> Result<String, StoreError> {
        sqlx::query(
            "INSERT INTO settings (key, value) VALUES ($1, $2) ON CONFLICT(key) DO NOTHING",
        )
        .bind(key)
        .bind(value)
        .execute(&self.pool)
        .await?;
        Ok(self
            .setting(key)
            .await?
            .unwrap_or_else(|| value.to_string()))
    }
}

#[derive(Debug, Clone, Copy)]
pub enum RoomText {
    Name,
    Topic,
    JoinRule,
}

#[derive(Debug, Clone, Copy)]
pub enum RoomFlag {
    Encrypted,
    Notify,
}

/// One event of a transaction, as the inbox keeps it.
#[derive(Debug, Clone)]
pub struct InboxEvent {
    pub event_id: String,
    pub room_id: String,
    /// The event as JSON.
    pub json: String,
    /// Chat (a message, sticker or reaction that is not a command): dropped
    /// first when the room's inbox is full, so a flood of chat cannot push
    /// out a rename, a membership change or a command.
    pub chat: bool,
}

/// What accepting a transaction did.
#[derive(Debug, Default)]
pub struct Accepted {
    /// The transaction id was known already.
    pub replayed: bool,
    /// Events newly queued (not processed or queued before).
    pub queued: usize,
    /// Rooms with newly queued events, in order of first appearance.
    pub rooms: Vec<String>,
    /// Rooms whose events were dropped: their queue is full.
    pub full: Vec<String>,
}

/// Pending events one room may have in the inbox before its new chat is
/// dropped (a room flooding roomcast while its processing is stuck must not
/// fill the disk).
pub const INBOX_ROOM_MAX_EVENTS: i64 = 2_000;
/// The same bound in bytes of JSON.
pub const INBOX_ROOM_MAX_BYTES: i64 = 16 * 1024 * 1024;
/// Other events (state, memberships, redactions, commands) are still taken
/// up to this many times those bounds: they need power or are rare, and
/// losing one leaves the stream wrong.
const INBOX_ROOM_CONTROL_FACTOR: i64 = 4;

impl Store {
    // --- inbox (migrations/*/0003_matrix_inbox.sql) ---------------------------------

    /// Writes a transaction's new events to the inbox and marks the
    /// transaction seen, in one database transaction: once this returns Ok,
    /// the homeserver may forget it. Events processed or queued before (by
    /// any transaction id, in any process on this database) are skipped, so
    /// a replay queues nothing: on PostgreSQL `matrix_events_done` holds
    /// every event accepted, queued or processed.
    pub async fn accept_transaction(
        &self,
        txn_id: &str,
        events: &[InboxEvent],
    ) -> Result<Accepted, StoreError> {
        let mut tx = self.pool.begin().await?;
        // A write first: SQLite then takes the write lock at once (a read
        // first would have to upgrade, and fails "database is locked" when
        // another writer got in between).
        let seen = sqlx::query(
            "INSERT INTO matrix_txns (txn_id, done_at) VALUES ($1, $2)
             ON CONFLICT(txn_id) DO NOTHING",
        )
        .bind(txn_id)
        .bind(unix_now())
        .execute(&mut *tx)
        .await?;
        let mut out = Accepted {
            replayed: seen.rows_affected() == 0,
            ..Accepted::default()
        };
        // Pending (events, bytes) per room, read once per room of the transaction.
        let mut pending: std::collections::HashMap<&str, (i64, i64)> =
            std::collections::HashMap::new();
        for ev in events {
            let done = sqlx::query("SELECT 1 FROM matrix_events_done WHERE event_id = $1")
                .bind(ev.event_id.as_str())
                .fetch_optional(&mut *tx)
                .await?;
            if done.is_some() {
                continue;
            }
            if !pending.contains_key(ev.room_id.as_str()) {
                let r = sqlx::query(
                    "SELECT count(*) AS n, coalesce(sum(length(event)), 0) AS bytes
                     FROM matrix_inbox WHERE room_id = $1",
                )
                .bind(ev.room_id.as_str())
                .fetch_one(&mut *tx)
                .await?;
                pending.insert(&ev.room_id, (r.try_get("n")?, r.try_get("bytes")?));
            }
            let p = pending
                .get_mut(ev.room_id.as_str())
                .expect("inserted above");
            let factor = if ev.chat {
                1
            } else {
                INBOX_ROOM_CONTROL_FACTOR
            };
            if p.0 >= factor * INBOX_ROOM_MAX_EVENTS
                || p.1 + ev.json.len() as i64 > factor * INBOX_ROOM_MAX_BYTES
            {
                if !out.full.contains(&ev.room_id) {
                    out.full.push(ev.room_id.clone());
                }
                continue;
            }
            // On PostgreSQL the event is marked seen as it is queued: the
            // unique insert is the claim. Another process accepting the
            // same event at once (a retry through a load balancer to
            // another node) waits on this row and then inserts nothing, so
            // it queues nothing. SQLite has one process, whose accepts its
            // write lock serialises: the read above is enough, and a
            // second write per event would slow the room's worker down.
            if self.backend == super::Backend::Postgres {
                let claimed = sqlx::query(
                    "INSERT INTO matrix_events_done (event_id, done_at) VALUES ($1, $2)
                     ON CONFLICT(event_id) DO NOTHING",
                )
                .bind(ev.event_id.as_str())
                .bind(unix_now())
                .execute(&mut *tx)
                .await?;
                if claimed.rows_affected() == 0 {
                    continue;
                }
            }
            let r = sqlx::query(
                "INSERT INTO matrix_inbox (event_id, room_id, event, received_at)
                 VALUES ($1, $2, $3, $4) ON CONFLICT(event_id) DO NOTHING",
            )
            .bind(ev.event_id.as_str())
            .bind(ev.room_id.as_str())
            .bind(ev.json.as_str())
            .bind(unix_now())
            .execute(&mut *tx)
            .await?;
            if r.rows_affected() == 1 {
                p.0 += 1;
                p.1 += ev.json.len() as i64;
                out.queued += 1;
                if !out.rooms.contains(&ev.room_id) {
                    out.rooms.push(ev.room_id.clone());
                }
            }
        }
        tx.commit().await?;
        Ok(out)
    }

    /// Rooms with events waiting in the inbox (at start-up: what a crash left).
    pub async fn inbox_rooms(&self) -> Result<Vec<String>, StoreError> {
        let rows = sqlx::query(
            "SELECT room_id, min(seq) AS first FROM matrix_inbox GROUP BY room_id ORDER BY first",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| r.try_get("room_id"))
            .collect::<Result<_, sqlx::Error>>()
            .map_err(Into::into)
    }

    /// The oldest `limit` waiting events of a room: (seq, event JSON).
    pub async fn inbox_batch(
        &self,
        room_id: &str,
        limit: i64,
    ) -> Result<Vec<(i64, String)>, StoreError> {
        let rows = sqlx::query(
            "SELECT seq, event FROM matrix_inbox WHERE room_id = $1 ORDER BY seq LIMIT $2",
        )
        .bind(room_id)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| Ok((r.try_get("seq")?, r.try_get("event")?)))
            .collect::<Result<_, sqlx::Error>>()
            .map_err(Into::into)
    }

    /// An inbox event is processed: it leaves the inbox and is remembered as
    /// done (a later transaction bringing it again queues nothing).
    pub async fn inbox_done(&self, seq: i64, event_id: &str) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "INSERT INTO matrix_events_done (event_id, done_at) VALUES ($1, $2)
             ON CONFLICT(event_id) DO NOTHING",
        )
        .bind(event_id)
        .bind(unix_now())
        .execute(&mut *tx)
        .await?;
        sqlx::query("DELETE FROM matrix_inbox WHERE seq = $1")
            .bind(seq)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// What a command step recorded (None: not done yet).
    pub async fn command_step(
        &self,
        event_id: &str,
        step: &str,
    ) -> Result<Option<String>, StoreError> {
        let r =
            sqlx::query("SELECT value FROM matrix_command_steps WHERE event_id = $1 AND step = $2")
                .bind(event_id)
                .bind(step)
                .fetch_optional(&self.pool)
                .await?;
        Ok(r.map(|r| r.try_get("value")).transpose()?)
    }

    pub async fn set_command_step(
        &self,
        event_id: &str,
        step: &str,
        value: &str,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO matrix_command_steps (event_id, step, value, done_at)
             VALUES ($1, $2, $3, $4) ON CONFLICT(event_id, step) DO NOTHING",
        )
        .bind(event_id)
        .bind(step)
        .bind(value)
        .bind(unix_now())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// A stream's new key hash and the command step that delivered it, in
    /// one transaction: the key was sent, so it becomes the valid one, and a
    /// retry of the command does not send another.
    pub async fn commit_key_step(
        &self,
        stream: &str,
        key_hash: &str,
        event_id: Option<&str>,
        step: &str,
    ) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("UPDATE streams SET key_hash = $2 WHERE name = $1")
            .bind(stream)
            .bind(key_hash)
            .execute(&mut *tx)
            .await?;
        if let Some(id) = event_id {
            sqlx::query(
                "INSERT INTO matrix_command_steps (event_id, step, value, done_at)
                 VALUES ($1, $2, $3, $4) ON CONFLICT(event_id, step) DO NOTHING",
            )
            .bind(id)
            .bind(step)
            .bind(stream)
            .bind(unix_now())
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Forgets command steps older than `days` (with the processed events).
    pub async fn prune_command_steps(&self, days: i64) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM matrix_command_steps WHERE done_at < $1")
            .bind(unix_now() - days * 86_400)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Forgets a user's DM room (the user left it; a new one is made).
    pub async fn forget_dm_room(&self, user_id: &str, room_id: &str) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM matrix_dms WHERE user_id = $1 AND room_id = $2")
            .bind(user_id)
            .bind(room_id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }
}

impl Store {
    /// A room upgrade: the streams of `old` move to `new` (which gets the
    /// old room's row: alias, notify), and the old row goes, in one
    /// transaction. Idempotent: done again, it finds nothing left to move.
    pub async fn move_room(&self, old: &str, new: &str) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "INSERT INTO matrix_rooms (room_id, alias, name, topic, join_rule, encrypted, notify, created_at)
             SELECT $2, alias, name, topic, join_rule, encrypted, notify, created_at
             FROM matrix_rooms WHERE room_id = $1
             ON CONFLICT(room_id) DO NOTHING",
        )
        .bind(old)
        .bind(new)
        .execute(&mut *tx)
        .await?;
        sqlx::query("UPDATE matrix_streams SET room_id = $2 WHERE room_id = $1")
            .bind(old)
            .bind(new)
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM matrix_rooms WHERE room_id = $1")
            .bind(old)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }
}

// --- go-live sessions, lost rooms, follows (migrations/*/0004_matrix_state.sql) ---

/// A stream's open go-live session, as persisted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GoliveRow {
    pub stream: String,
    pub session: String,
    pub started_ms: i64,
    pub peak: i64,
    pub announced: bool,
    pub offline_since_ms: Option<i64>,
}

#[derive(Debug, Clone)]
pub struct LostRoomRow {
    pub room_id: String,
    pub reason: String,
    pub by_user: Option<String>,
    pub at: i64,
}

/// What `!live follow` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Followed {
    Now,
    Already,
    /// The room follows `max` streams already.
    Full,
}

impl Store {
    pub async fn golive_sessions(&self) -> Result<Vec<GoliveRow>, StoreError> {
        let rows = sqlx::query("SELECT * FROM matrix_golive_sessions")
            .fetch_all(&self.pool)
            .await?;
        rows.into_iter()
            .map(|r| {
                Ok(GoliveRow {
                    stream: r.try_get("stream")?,
                    session: r.try_get("session")?,
                    started_ms: r.try_get("started_ms")?,
                    peak: r.try_get("peak")?,
                    announced: r.try_get::<i64, _>("announced")? != 0,
                    offline_since_ms: r.try_get("offline_since_ms")?,
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(StoreError::from)
    }

    pub async fn save_golive_session(&self, s: &GoliveRow) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO matrix_golive_sessions
                 (stream, session, started_ms, peak, announced, offline_since_ms)
             VALUES ($1, $2, $3, $4, $5, $6)
             ON CONFLICT(stream) DO UPDATE SET
                 session = excluded.session, started_ms = excluded.started_ms,
                 peak = excluded.peak, announced = excluded.announced,
                 offline_since_ms = excluded.offline_since_ms",
        )
        .bind(s.stream.as_str())
        .bind(s.session.as_str())
        .bind(s.started_ms)
        .bind(s.peak)
        .bind(i64::from(s.announced))
        .bind(s.offline_since_ms)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn delete_golive_session(&self, stream: &str) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM matrix_golive_sessions WHERE stream = $1")
            .bind(stream)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// The rooms of the notices queued for a live session (its own room and
    /// the rooms following it), for its "ended" edits.
    pub async fn outbox_rooms(
        &self,
        stream: &str,
        session: &str,
        kind: &str,
    ) -> Result<Vec<String>, StoreError> {
        let rows = sqlx::query(
            "SELECT DISTINCT room_id FROM matrix_outbox
             WHERE stream = $1 AND session = $2 AND kind = $3",
        )
        .bind(stream)
        .bind(session)
        .bind(kind)
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter()
            .map(|r| r.try_get("room_id"))
            .collect::<Result<_, sqlx::Error>>()
            .map_err(StoreError::from)
    }

    /// The event id of the delivered item `kind` of a live session in `room_id`.
    pub async fn outbox_event_in(
        &self,
        stream: &str,
        session: &str,
        kind: &str,
        room_id: &str,
    ) -> Result<Option<String>, StoreError> {
        let r = sqlx::query(
            "SELECT event_id FROM matrix_outbox
             WHERE stream = $1 AND session = $2 AND kind = $3 AND room_id = $4
               AND event_id IS NOT NULL",
        )
        .bind(stream)
        .bind(session)
        .bind(kind)
        .bind(room_id)
        .fetch_optional(&self.pool)
        .await?;
        Ok(r.map(|r| r.try_get("event_id")).transpose()?)
    }

    /// Marks a room lost (`Some((reason, by))`) or found again (`None`).
    pub async fn set_room_lost(
        &self,
        room_id: &str,
        lost: Option<(&str, Option<&str>)>,
    ) -> Result<(), StoreError> {
        match lost {
            Some((reason, by)) => {
                sqlx::query(
                    "INSERT INTO matrix_rooms_lost (room_id, reason, by_user, at)
                     VALUES ($1, $2, $3, $4)
                     ON CONFLICT(room_id) DO UPDATE SET
                         reason = excluded.reason, by_user = excluded.by_user, at = excluded.at",
                )
                .bind(room_id)
                .bind(reason)
                .bind(by)
                .bind(unix_now())
                .execute(&self.pool)
                .await?;
            }
            None => {
                sqlx::query("DELETE FROM matrix_rooms_lost WHERE room_id = $1")
                    .bind(room_id)
                    .execute(&self.pool)
                    .await?;
            }
        }
        Ok(())
    }

    pub async fn rooms_lost(&self) -> Result<Vec<LostRoomRow>, StoreError> {
        let rows = sqlx::query("SELECT * FROM matrix_rooms_lost")
            .fetch_all(&self.pool)
            .await?;
        rows.into_iter()
            .map(|r| {
                Ok(LostRoomRow {
                    room_id: r.try_get("room_id")?,
                    reason: r.try_get("reason")?,
                    by_user: r.try_get("by_user")?,
                    at: r.try_get("at")?,
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(StoreError::from)
    }

    /// `room_id` follows `stream`, unless it follows `max` streams already.
    pub async fn follow(
        &self,
        room_id: &str,
        stream: &str,
        by: &str,
        max: usize,
    ) -> Result<Followed, StoreError> {
        let mut tx = self.pool.begin().await?;
        let rows = sqlx::query("SELECT stream FROM matrix_follows WHERE room_id = $1")
            .bind(room_id)
            .fetch_all(&mut *tx)
            .await?;
        let mut followed = Vec::with_capacity(rows.len());
        for r in rows {
            followed.push(r.try_get::<String, _>("stream")?);
        }
        if followed.iter().any(|s| s == stream) {
            return Ok(Followed::Already);
        }
        if followed.len() >= max {
            return Ok(Followed::Full);
        }
        sqlx::query(
            "INSERT INTO matrix_follows (room_id, stream, by_user, created_at)
             VALUES ($1, $2, $3, $4)",
        )
        .bind(room_id)
        .bind(stream)
        .bind(by)
        .bind(unix_now())
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(Followed::Now)
    }

    /// Stops `room_id` following `stream` (every stream when `None`);
    /// returns the streams it no longer follows.
    pub async fn unfollow(
        &self,
        room_id: &str,
        stream: Option<&str>,
    ) -> Result<Vec<String>, StoreError> {
        let mut tx = self.pool.begin().await?;
        let rows = sqlx::query("SELECT stream FROM matrix_follows WHERE room_id = $1")
            .bind(room_id)
            .fetch_all(&mut *tx)
            .await?;
        let mut gone = Vec::new();
        for r in rows {
            let s: String = r.try_get("stream")?;
            if stream.is_none_or(|x| x == s) {
                gone.push(s);
            }
        }
        for s in &gone {
            sqlx::query("DELETE FROM matrix_follows WHERE room_id = $1 AND stream = $2")
                .bind(room_id)
                .bind(s.as_str())
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(gone)
    }

    /// The rooms following `stream`.
    pub async fn followers(&self, stream: &str) -> Result<Vec<String>, StoreError> {
        let rows =
            sqlx::query("SELECT room_id FROM matrix_follows WHERE stream = $1 ORDER BY room_id")
                .bind(stream)
                .fetch_all(&self.pool)
                .await?;
        rows.into_iter()
            .map(|r| r.try_get("room_id"))
            .collect::<Result<_, sqlx::Error>>()
            .map_err(StoreError::from)
    }
}
