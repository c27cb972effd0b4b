//! Room upgrades: an `m.room.tombstone` in a room with streams moves them to
//! the replacement room. The bot joins it (through the server of whoever
//! upgraded), the mapping moves, the widgets, layout and stream state are
//! put there (the homeserver copies name, topic, join rule and power levels,
//! not these), and the chat history is read again. Titles, chat and the next
//! notices follow the new room.

use std::sync::Arc;

use ruma::api::client::membership::join_room_by_id_or_alias;
use ruma::{OwnedRoomOrAliasId, OwnedServerName};
use tracing::{info, warn};

use super::ids::room_id;
use super::{Ev, Matrix, MatrixError};

/// The server part of a user id (`@u:server` → `server`).
fn server_of(user: &str) -> Option<&str> {
    user.split_once(':').map(|(_, s)| s)
}

impl Matrix {
    pub(super) async fn on_tombstone(
        self: &Arc<Self>,
        old: &str,
        ev: &Ev,
    ) -> Result<(), MatrixError> {
        let Some(new) = ev.content["replacement_room"].as_str() else {
            return Ok(());
        };
        if new == old || self.streams_of_room(old).is_empty() {
            return Ok(());
        }
        let mut req =
            join_room_by_id_or_alias::v3::Request::new(OwnedRoomOrAliasId::from(room_id(new)?));
        req.via = server_of(&ev.sender)
            .and_then(|s| OwnedServerName::try_from(s).ok())
            .into_iter()
            .collect();
        match self.client.send(req, None).await {
            Ok(_) => {}
            Err(e) if !e.is_transient() => {
                warn!(old = %old, new = %new, "matrix: cannot join the room that replaces a stream's room: {e}");
                return Ok(());
            }
            Err(e) => return Err(e.into()),
        }
        self.store.move_room(old, new).await?;
        self.load_room_state(new).await?;
        let moved = self.rooms.move_room(old, new);
        // Titles from the new room's name, room info and access for the pages.
        if let Some(name) = self.room_row(new).and_then(|r| r.name) {
            self.set_room_name(new, &name).await?;
        } else {
            self.update_room(new, |_| {});
        }
        info!(old = %old, new = %new, streams = moved.len(), by = %ev.sender, "matrix: room upgraded; its streams moved to the new room");
        if let Err(e) = self.put_widgets(new).await {
            if e.is_transient() {
                return Err(e);
            }
            warn!(room = %new, "matrix: cannot put the widgets in the upgraded room: {e}");
            self.reply(
                new,
                "This room replaced the stream's old room. Give me power level 50 here and say \
                 `!live detach` then `!live attach <name>` if the player widget is missing.",
            )
            .await;
        }
        for m in &moved {
            let live = self.hub.get(&m.stream).is_some_and(|s| s.snapshot().live);
            self.enqueue_state(&m.stream, live).await?;
        }
        if let Err(e) = self.backfill(new).await {
            warn!(room = %new, "matrix: chat backfill failed: {e}");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_upgrader_s_server_is_asked() {
        assert_eq!(server_of("@alice:example.org"), Some("example.org"));
        assert_eq!(
            server_of("@alice:example.org:8448"),
            Some("example.org:8448")
        );
        assert_eq!(server_of("nobody"), None);
    }
}
