//! Rooms with screen-share parties (migrations/*/0011_party.sql).

use sqlx::Row;

use super::{Store, StoreError};

/// A room's party setting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartyRoom {
    /// Each share gets a compact notice (else only its state event).
    pub notices: bool,
}

impl Store {
    /// The room's party, `None` when parties are off there.
    pub async fn party_room(&self, room_id: &str) -> Result<Option<PartyRoom>, StoreError> {
        let row = sqlx::query("SELECT notices FROM party_rooms WHERE room_id = $1")
            .bind(room_id)
            .fetch_optional(&self.pool)
            .await?;
        Ok(match row {
            Some(r) => Some(PartyRoom {
                notices: r.try_get::<i64, _>("notices")? != 0,
            }),
            None => None,
        })
    }

    /// Turns the room's party on (with or without notices) or off (`None`).
    pub async fn set_party_room(
        &self,
        room_id: &str,
        party: Option<PartyRoom>,
    ) -> Result<(), StoreError> {
        match party {
            Some(p) => {
                sqlx::query(
                    "INSERT INTO party_rooms (room_id, notices) VALUES ($1, $2)
                     ON CONFLICT (room_id) DO UPDATE SET notices = excluded.notices",
                )
                .bind(room_id)
                .bind(i64::from(p.notices))
                .execute(&self.pool)
                .await?;
            }
            None => {
                sqlx::query("DELETE FROM party_rooms WHERE room_id = $1")
                    .bind(room_id)
                    .execute(&self.pool)
                    .await?;
            }
        }
        Ok(())
    }
}
