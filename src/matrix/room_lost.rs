//! A stream's room lost: the bot was kicked or banned, or the room is gone
//! (the bot's membership turned to leave without anyone kicking it, as when
//! an admin deletes the room). The stream keeps working, but pages show that
//! its room is lost (API `room_lost`, SSE `room`), its chat history is
//! cleared, and each owner gets a DM saying what happened and what to do.
//! When the bot joins the room again (invited back), all that is undone.
//! A room that was only following streams (`!live follow`) stops following.

use std::collections::BTreeSet;
use std::sync::Arc;

use serde_json::json;
use tracing::{info, warn};

use super::ids::new_txn_id;
use super::{Ev, Matrix, MatrixError};
use crate::hub::RoomLost;
use crate::store::matrix::NewOutbox;

/// "kicked", "banned" or "gone", from the bot's new membership and who set it.
pub fn lost_reason(membership: &str, sender: &str, bot: &str) -> Option<&'static str> {
    match membership {
        "ban" => Some("banned"),
        "leave" if sender != bot => Some("kicked"),
        "leave" => Some("gone"),
        _ => None,
    }
}

/// The DM to a stream's owner when its room is lost.
pub fn lost_dm(stream: &str, room: &str, lost: &RoomLost, bot: &str) -> String {
    let what = match (lost.reason.as_str(), lost.by.as_deref()) {
        ("banned", Some(by)) => format!("{by} banned me from its room {room}"),
        ("kicked", Some(by)) => format!("{by} removed me from its room {room}"),
        _ => format!("its room {room} is gone (I am no longer in it)"),
    };
    let fix = if lost.reason == "banned" {
        format!(
            "To stream into that room again, unban {bot} there and invite it back; or say \
             `!live detach {stream}` here and `!live attach {stream}` in another room."
        )
    } else {
        format!(
            "To stream into that room again, invite {bot} back; or say `!live detach {stream}` \
             here and `!live attach {stream}` in another room."
        )
    };
    format!(
        "Stream '{stream}' lost its Matrix room: {what}. The stream still works, but its page \
         has no chat and the room gets no go-live notices. {fix}"
    )
}

impl Matrix {
    /// The bot's own membership in `room` changed (hook from `on_member`).
    pub(super) async fn bot_membership(
        self: &Arc<Self>,
        room: &str,
        ev: &Ev,
        membership: &str,
    ) -> Result<(), MatrixError> {
        let streams = self.streams_of_room(room);
        if membership == "join" {
            if streams.iter().any(|m| {
                self.hub
                    .get(&m.stream)
                    .is_some_and(|s| s.room_lost().is_some())
            }) {
                self.store.set_room_lost(room, None).await?;
                for m in &streams {
                    if let Some(s) = self.hub.get(&m.stream) {
                        s.set_room_lost(None);
                    }
                }
                info!(room = %room, "matrix: the bot is back in a stream's room");
                self.backfill_quietly(room).await;
            }
            return Ok(());
        }
        let Some(reason) = lost_reason(membership, &ev.sender, self.bot.as_str()) else {
            return Ok(());
        };
        if streams.is_empty() {
            let gone = self.store.unfollow(room, None).await?;
            if !gone.is_empty() {
                info!(room = %room, streams = gone.len(), "matrix: a room the bot left no longer follows streams");
            }
            return Ok(());
        }
        let by = (reason != "gone").then(|| ev.sender.clone());
        let lost = RoomLost {
            reason: reason.to_string(),
            by: by.clone(),
            at: super::unix_now(),
        };
        // The DMs are queued with the mark, in the outbox: delivered once,
        // even if the homeserver is away now.
        let owners: BTreeSet<(String, String)> = streams
            .iter()
            .filter_map(|m| Some((m.owner.clone()?, m.stream.clone())))
            .collect();
        let dms: Vec<(String, String, String)> = owners
            .iter()
            .map(|(owner, stream)| {
                let text = lost_dm(stream, room, &lost, self.bot.as_str());
                let payload = json!({"user": owner, "body": text}).to_string();
                (owner.clone(), stream.clone(), payload)
            })
            .collect();
        let items: Vec<NewOutbox> = dms
            .iter()
            .map(|(owner, stream, payload)| NewOutbox {
                kind: "dm",
                room_id: owner,
                stream,
                session: "room-lost",
                payload: payload.clone(),
                txn_id: new_txn_id(),
            })
            .collect();
        self.store
            .set_room_lost(room, Some((reason, by.as_deref())))
            .await?;
        self.store.enqueue_outbox(&items).await?;
        self.notices.wake();
        for m in &streams {
            if let Some(s) = self.hub.get(&m.stream) {
                s.set_room_lost(Some(lost.clone()));
            }
        }
        self.chat.clear_room(room);
        warn!(room = %room, by = %ev.sender, reason, streams = streams.len(), "matrix: the bot lost a stream's room; its owners are told");
        Ok(())
    }

    /// Puts the lost rooms (from before a restart) into the hub.
    pub(super) async fn restore_lost_rooms(&self) -> Result<(), MatrixError> {
        for r in self.store.rooms_lost().await? {
            let lost = RoomLost {
                reason: r.reason,
                by: r.by_user,
                at: r.at as u64,
            };
            for m in self.streams_of_room(&r.room_id) {
                if let Some(s) = self.hub.get(&m.stream) {
                    s.set_room_lost(Some(lost.clone()));
                }
            }
        }
        Ok(())
    }

    /// The room's chat again, once the bot is back (best effort).
    async fn backfill_quietly(&self, room: &str) {
        if let Err(e) = self.backfill(room).await {
            warn!(room = %room, "matrix: chat backfill failed: {e}");
        }
    }

    /// Whether `stream`'s room is lost (its notices go to followers only).
    pub(super) fn room_is_lost(&self, stream: &str) -> bool {
        self.hub
            .get(stream)
            .is_some_and(|s| s.room_lost().is_some())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons() {
        let bot = "@roomcast:hs";
        assert_eq!(lost_reason("ban", "@mod:hs", bot), Some("banned"));
        assert_eq!(lost_reason("leave", "@mod:hs", bot), Some("kicked"));
        assert_eq!(lost_reason("leave", bot, bot), Some("gone"));
        assert_eq!(lost_reason("join", "@mod:hs", bot), None);
        assert_eq!(lost_reason("invite", "@mod:hs", bot), None);
    }

    #[test]
    fn the_dm_says_what_happened_and_what_to_do() {
        let lost = RoomLost {
            reason: "kicked".into(),
            by: Some("@mod:hs".into()),
            at: 0,
        };
        let text = lost_dm("show", "!r:hs", &lost, "@roomcast:hs");
        assert!(
            text.contains("@mod:hs removed me from its room !r:hs"),
            "{text}"
        );
        assert!(text.contains("invite @roomcast:hs back"), "{text}");
        let banned = RoomLost {
            reason: "banned".into(),
            ..lost
        };
        assert!(lost_dm("show", "!r:hs", &banned, "@b:hs").contains("unban @b:hs"));
    }
}
