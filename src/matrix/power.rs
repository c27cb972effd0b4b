//! Power in rooms: power levels and creators (unlimited from room version
//! 12 on), kept from the state events the appservice sees and fetched when
//! missing; who may redact, who is a room admin.

use ruma::api::client::room::get_room_event;
use ruma::api::client::state::get_state_event_for_key;
use ruma::events::StateEventType;
use serde_json::{Value, json};

use super::ids::room_id;
use super::permissions::Level;
use super::{Matrix, MatrixError};

/// Room versions where creators have unlimited power and must not be listed
/// in the power levels (MSC4289, room version 12 on).
pub fn creators_privileged(version: &str) -> bool {
    version.parse::<u32>().is_ok_and(|v| v >= 12) || version.starts_with("org.matrix.hydra")
}

/// What decides power in a room: its power levels and its creators (who
/// have unlimited power from room version 12 on).
#[derive(Debug, Clone, Default)]
pub(super) struct RoomPower {
    /// `m.room.power_levels` content (`{}` when the room has none).
    pub(super) pl: Option<Value>,
    /// From `m.room.create`: the room version and the creators.
    pub(super) create: Option<(String, Vec<String>)>,
}

/// A power level: an integer, or a string of one (old rooms).
fn pl_int(v: &Value) -> Option<i64> {
    v.as_i64()
        .or_else(|| v.as_str().and_then(|s| s.trim().parse().ok()))
}

pub(super) fn create_info(sender: &str, content: &Value) -> (String, Vec<String>) {
    let version = content["room_version"].as_str().unwrap_or("1").to_string();
    let mut creators = vec![sender.to_string()];
    if let Some(more) = content["additional_creators"].as_array() {
        creators.extend(more.iter().filter_map(|u| u.as_str().map(str::to_string)));
    }
    (version, creators)
}

impl RoomPower {
    pub(super) fn complete(&self) -> bool {
        self.pl.is_some() && self.create.is_some()
    }

    fn pl(&self) -> Value {
        self.pl.clone().unwrap_or_else(|| json!({}))
    }

    /// The power `key` of the power levels asks for (e.g. `redact`), or `default`.
    fn needed(&self, key: &str, default: i64) -> i64 {
        self.pl
            .as_ref()
            .and_then(|pl| pl_int(&pl[key]))
            .unwrap_or(default)
    }

    fn level(&self, user: &str) -> i64 {
        let (version, creators) = match &self.create {
            Some((v, c)) => (v.as_str(), c.as_slice()),
            None => ("1", &[][..]),
        };
        let creator = creators.iter().any(|c| c == user);
        if creator && creators_privileged(version) {
            return i64::MAX;
        }
        let pl = self
            .pl
            .as_ref()
            .filter(|p| p.as_object().is_some_and(|o| !o.is_empty()));
        match pl {
            Some(pl) => pl_int(&pl["users"][user])
                .or_else(|| pl_int(&pl["users_default"]))
                .unwrap_or(0),
            // No power levels: the creator has 100, everyone else 0.
            None if creator => 100,
            None => 0,
        }
    }
}

impl Matrix {
    // --- power levels ----------------------------------------------------------------------

    /// A state event as the full event (None when the room has none).
    pub(super) async fn state_event(
        &self,
        room: &str,
        kind: &str,
        key: &str,
    ) -> Result<Option<Value>, MatrixError> {
        let mut req = get_state_event_for_key::v3::Request::new(
            room_id(room)?,
            StateEventType::from(kind),
            key.to_string(),
        );
        req.format = get_state_event_for_key::v3::StateEventFormat::Event;
        match self.client.send(req, None).await {
            Ok(r) => Ok(serde_json::from_str(r.event_or_content.get()).ok()),
            Err(e) if e.errcode() == Some("M_NOT_FOUND") => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// A user's power level in a room (creators of v12 rooms: unlimited) and
    /// the power levels content, read from the homeserver now (commands
    /// decide on the current state; the answer refreshes the cache).
    pub(super) async fn power_of(
        &self,
        room: &str,
        user: &str,
    ) -> Result<(i64, Value), MatrixError> {
        let p = self.fetch_power(room).await?;
        Ok((p.level(user), p.pl()))
    }

    pub(super) async fn fetch_power(&self, room: &str) -> Result<RoomPower, MatrixError> {
        let pl = self
            .state_event(room, "m.room.power_levels", "")
            .await?
            .map(|e| e["content"].clone())
            .unwrap_or_else(|| json!({}));
        let create = self
            .state_event(room, "m.room.create", "")
            .await?
            .map(|e| create_info(e["sender"].as_str().unwrap_or(""), &e["content"]))
            .unwrap_or_else(|| ("1".to_string(), Vec::new()));
        let p = RoomPower {
            pl: Some(pl),
            create: Some(create),
        };
        self.rooms.cache_power(room, p.clone());
        Ok(p)
    }

    /// The room's power from the cache, fetched when not (fully) known.
    pub(super) async fn power_cached(&self, room: &str) -> Result<RoomPower, MatrixError> {
        if let Some(p) = self.rooms.power(room) {
            return Ok(p);
        }
        self.fetch_power(room).await
    }

    /// A redaction applies to the pages when its sender sent the message or
    /// has the room's `redact` power (50 unless the power levels say otherwise).
    pub(super) async fn may_redact(
        &self,
        room: &str,
        sender: &str,
        target: &str,
    ) -> Result<bool, MatrixError> {
        let known = self.chat.sender_of(room, target);
        let original = match known {
            Some(s) => Some(s),
            None => self.event_sender(room, target).await?,
        };
        if original.as_deref() == Some(sender) {
            return Ok(true);
        }
        let p = self.power_cached(room).await?;
        Ok(p.level(sender) >= p.needed("redact", 50))
    }

    /// The sender of an event (None when the homeserver does not show it).
    pub(super) async fn event_sender(
        &self,
        room: &str,
        event: &str,
    ) -> Result<Option<String>, MatrixError> {
        let Ok(eid) = ruma::OwnedEventId::try_from(event) else {
            return Ok(None);
        };
        let req = get_room_event::v3::Request::new(room_id(room)?, eid);
        match self.client.send(req, None).await {
            Ok(r) => Ok(r.event.get_field::<String>("sender").ok().flatten()),
            Err(e) if e.is_transient() => Err(e.into()),
            Err(_) => Ok(None),
        }
    }

    /// Admins may change room state: at least `state_default` (50 by default).
    /// The bot's admins (`[matrix.permissions]`) are admins of every room.
    pub(super) async fn is_admin(&self, room: &str, user: &str) -> Result<bool, MatrixError> {
        if self.perms.level_of(user) == Level::Admin {
            return Ok(true);
        }
        let (level, pl) = self.power_of(room, user).await?;
        let needed = pl["state_default"].as_i64().unwrap_or(50).max(50);
        Ok(level >= needed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v12_creators() {
        assert!(creators_privileged("12"));
        assert!(creators_privileged("13"));
        assert!(!creators_privileged("11"));
        assert!(!creators_privileged("1"));
        assert!(creators_privileged("org.matrix.hydra.11"));
    }
}
