//! Room state re-read from the homeserver at start-up and after the
//! homeserver was unreachable: renames, topics, join rules and power changes
//! made meanwhile reach the pages at once, without waiting for the
//! homeserver's retries.

use std::sync::Arc;
use std::time::Duration;

use ruma::api::client::state::get_state_events;
use tracing::{info, warn};

use super::ids::room_id;
use super::{Ev, Matrix, MatrixError};
use crate::store::matrix::RoomRow;

/// Whether a current state event says something the room row does not.
fn differs(row: &RoomRow, ev: &Ev) -> bool {
    let c = &ev.content;
    match ev.kind.as_str() {
        "m.room.name" => row.name.as_deref() != Some(c["name"].as_str().unwrap_or("")),
        "m.room.topic" => row.topic.as_deref() != c["topic"].as_str(),
        "m.room.join_rules" => row.join_rule != c["join_rule"].as_str().unwrap_or("public"),
        "m.room.encryption" => !row.encrypted,
        "m.room.canonical_alias" => {
            c["alias"].as_str().is_some() && row.alias.as_deref() != c["alias"].as_str()
        }
        // Kept in the power cache only: always refreshed.
        "m.room.power_levels" | "m.room.create" => true,
        _ => false,
    }
}

/// How often the homeserver is asked whether it answers (after start-up).
const PROBE_EVERY: Duration = Duration::from_secs(10);

impl Matrix {
    /// Notices when the homeserver stops answering and, when it answers
    /// again, re-reads the rooms' state.
    pub(super) async fn watch_outages(self: Arc<Self>) {
        let mut down = false;
        loop {
            tokio::time::sleep(PROBE_EVERY).await;
            if !self.is_connected() {
                continue;
            }
            match self.client.get_json("/_matrix/client/versions", &[]).await {
                Ok(_) if down => {
                    down = false;
                    info!("matrix: the homeserver answers again; re-reading the rooms' state");
                    self.resync_rooms().await;
                }
                Ok(_) => {}
                Err(e) if e.is_transient() => {
                    if !down {
                        warn!("matrix: the homeserver does not answer: {e}");
                    }
                    down = true;
                }
                Err(_) => {}
            }
        }
    }

    /// Re-reads the state of every room with a stream and applies what
    /// changed, as the events themselves would have been applied.
    pub(super) async fn resync_rooms(self: &Arc<Self>) {
        let rooms = self.rooms.room_ids();
        let mut changed = 0;
        for room in &rooms {
            match self.resync_room(room).await {
                Ok(n) => changed += n,
                Err(e) => warn!(room = %room, "matrix: re-reading the room's state failed: {e}"),
            }
        }
        info!(
            rooms = rooms.len(),
            changed, "matrix: room state re-read from the homeserver"
        );
    }

    /// The number of state events that changed something.
    async fn resync_room(self: &Arc<Self>, room: &str) -> Result<usize, MatrixError> {
        let Some(before) = self.room_row(room) else {
            return Ok(0);
        };
        let state = match self
            .client
            .send(get_state_events::v3::Request::new(room_id(room)?), None)
            .await
        {
            Ok(r) => r.room_state,
            Err(e) if !e.is_transient() => {
                warn!(room = %room, "matrix: the bot cannot read the room's state (no longer in it?): {e}");
                return Ok(0);
            }
            Err(e) => return Err(e.into()),
        };
        let mut changed = 0;
        for raw in state {
            let Ok(mut ev) = raw.deserialize_as_unchecked::<Ev>() else {
                continue;
            };
            ev.room_id = Some(room.to_string());
            match (ev.kind.as_str(), ev.state_key.as_deref()) {
                ("m.room.member", Some(user)) if user == self.bot.as_str() => {
                    // Kicked, banned or back while roomcast was away: the
                    // stream shows it as the live event would have.
                    let membership = ev.content["membership"].as_str().unwrap_or("").to_string();
                    if membership != "join" {
                        warn!(room = %room, membership, "matrix: the bot is no longer joined to a room with a stream");
                    }
                    self.bot_membership(room, &ev, &membership).await?;
                }
                ("m.room.member", Some(user)) => self.remember_member(room, user, &ev.content),
                (_, Some("")) if differs(&before, &ev) => {
                    self.handle_event(&ev).await?;
                    if !matches!(ev.kind.as_str(), "m.room.power_levels" | "m.room.create") {
                        info!(room = %room, kind = %ev.kind, "matrix: room state changed while roomcast was away");
                        changed += 1;
                    }
                }
                _ => {}
            }
        }
        Ok(changed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row() -> RoomRow {
        RoomRow {
            room_id: "!r".into(),
            alias: None,
            name: Some("Show".into()),
            topic: None,
            join_rule: "public".into(),
            encrypted: false,
            notify: false,
        }
    }

    fn state(kind: &str, content: serde_json::Value) -> Ev {
        Ev {
            event_id: None,
            room_id: None,
            sender: "@a:x".into(),
            kind: kind.into(),
            state_key: Some(String::new()),
            content,
            origin_server_ts: 0,
            redacts: None,
        }
    }

    #[test]
    fn only_changes_are_applied() {
        let r = row();
        assert!(!differs(
            &r,
            &state("m.room.name", serde_json::json!({"name": "Show"}))
        ));
        assert!(differs(
            &r,
            &state("m.room.name", serde_json::json!({"name": "Renamed"}))
        ));
        assert!(!differs(
            &r,
            &state(
                "m.room.join_rules",
                serde_json::json!({"join_rule": "public"})
            )
        ));
        assert!(differs(
            &r,
            &state(
                "m.room.join_rules",
                serde_json::json!({"join_rule": "invite"})
            )
        ));
        assert!(differs(
            &r,
            &state("m.room.topic", serde_json::json!({"topic": "new"}))
        ));
        assert!(!differs(&r, &state("m.room.topic", serde_json::json!({}))));
        assert!(differs(
            &r,
            &state("m.room.encryption", serde_json::json!({}))
        ));
        assert!(!differs(
            &r,
            &state("m.room.canonical_alias", serde_json::json!({}))
        ));
    }
}
