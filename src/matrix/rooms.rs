//! Rooms and streams: applying the homeserver's events (room name → title,
//! topic → description, join rule → access, encryption, invites, membership of
//! puppets), the bot's commands, widgets, and direct messages.

use std::sync::Arc;

use ruma::api::client::membership::{join_room_by_id, leave_room};
use ruma::api::client::room::create_room;
use ruma::api::client::state::{get_state_events, send_state_event};
use ruma::events::StateEventType;
use serde_json::{Value, json};
use tracing::{info, warn};

use super::ids::{new_txn_id, raw, room_id};
use super::permissions::Level;
use super::power::{create_info, creators_privileged};
use super::{Ev, Matrix, MatrixError, stream_title};
use crate::auth::keys::{generate_key, hash_key_hex};
use crate::store::matrix::{MappingRow, RoomFlag, RoomRow, RoomText};

pub const WIDGET_TYPE: &str = "im.vector.modular.widgets";
pub const LAYOUT_TYPE: &str = "io.element.widgets.layout";

impl Matrix {
    // --- events from transactions --------------------------------------------------

    /// Applies one event. Errors are transient failures (the transaction is
    /// answered non-2xx and the homeserver retries); refusals are answered to
    /// the user and count as applied.
    pub(super) async fn handle_event(self: &Arc<Self>, ev: &Ev) -> Result<(), MatrixError> {
        let Some(room) = ev.room_id.as_deref() else {
            return Ok(());
        };
        let mapped = self.room_row(room).is_some();
        match (ev.kind.as_str(), ev.state_key.as_deref()) {
            ("m.room.power_levels", Some("")) => {
                self.rooms
                    .note_power(room, mapped, |p| p.pl = Some(ev.content.clone()));
                if mapped {
                    self.party_power_changed(room).await?;
                }
            }
            ("m.room.create", Some("")) => {
                self.rooms.note_power(room, mapped, |p| {
                    p.create = Some(create_info(&ev.sender, &ev.content));
                });
            }
            ("m.room.member", Some(target)) => self.on_member(room, ev, target).await?,
            ("m.room.name", Some("")) if mapped => {
                let name = ev.content["name"].as_str().unwrap_or("");
                self.set_room_name(room, name).await?;
            }
            ("m.room.topic", Some("")) if mapped => {
                let topic = ev.content["topic"].as_str();
                self.store
                    .set_room_text(room, RoomText::Topic, topic)
                    .await?;
                self.update_room(room, |r| r.topic = topic.map(str::to_string));
            }
            ("m.room.join_rules", Some("")) if mapped => {
                let rule = ev.content["join_rule"].as_str().unwrap_or("public");
                self.store
                    .set_room_text(room, RoomText::JoinRule, Some(rule))
                    .await?;
                self.update_room(room, |r| r.join_rule = rule.to_string());
            }
            ("m.room.tombstone", Some("")) if mapped => self.on_tombstone(room, ev).await?,
            ("m.room.encryption", Some("")) if mapped => {
                self.store
                    .set_room_flag(room, RoomFlag::Encrypted, true)
                    .await?;
                self.update_room(room, |r| r.encrypted = true);
            }
            ("m.room.canonical_alias", Some("")) if mapped => {
                if let Some(a) = ev.content["alias"].as_str() {
                    self.store.upsert_room(room, Some(a), None).await?;
                    self.update_room(room, |r| r.alias = Some(a.to_string()));
                }
            }
            ("m.room.message", None) => {
                if mapped {
                    self.relay_message(room, ev).await;
                }
                self.maybe_command(room, ev).await?;
            }
            ("m.sticker" | "m.reaction", None) if mapped => self.relay_message(room, ev).await,
            ("m.room.redaction", _) if mapped => {
                let target = ev
                    .redacts
                    .as_deref()
                    .or_else(|| ev.content["redacts"].as_str());
                if let Some(t) = target {
                    // From room version 3 on, a redaction enters the room
                    // whoever sends it (a remote server's is not refused);
                    // homeservers apply it only for the message's sender or
                    // a user with the `redact` power, and so do the pages.
                    if self.may_redact(room, &ev.sender, t).await? {
                        self.relay_redaction(room, t);
                    } else {
                        tracing::debug!(room = %room, by = %ev.sender, "matrix: a redaction without the power to redact is not applied to the pages");
                    }
                }
            }
            ("m.room.encrypted", None) if !mapped && ev.sender != self.bot.as_str() => {
                let first = self.told_encrypted.lock().insert(room.to_string());
                if first && self.store.is_dm_room(room).await? {
                    self.reply(
                        room,
                        "I can't read encrypted messages. Create a room with encryption turned off, \
                         invite me, and say `!live help` there.",
                    )
                    .await;
                } else if first {
                    self.reply(
                        room,
                        "This room is encrypted: I can't read its messages, so commands here don't reach me. \
                         To stream into it, say `!live attach <name> <this room's #alias or !id>` in a direct \
                         chat with me. The stream will work; the room's chat stays in Matrix only.",
                    )
                    .await;
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// Changes a cached room row and pushes it to its streams in the hub.
    pub(super) fn update_room(&self, room: &str, f: impl FnOnce(&mut RoomRow)) {
        let Some((row, maps)) = self.rooms.update(room, f) else {
            return;
        };
        for m in maps {
            self.apply_room_to_stream(&row, &m);
        }
    }

    pub(super) async fn set_room_name(&self, room: &str, name: &str) -> Result<(), MatrixError> {
        // Every row first, then what pages see: if a write fails, the
        // homeserver retries the transaction, and the API never shows a title
        // the database does not have.
        self.store
            .set_room_text(room, RoomText::Name, Some(name))
            .await?;
        for m in self.streams_of_room(room) {
            if m.slot.as_deref() == Some(super::party::PARTY_SLOT) {
                continue; // a member's screen share keeps their name
            }
            let title = stream_title(name, m.slot.as_deref());
            self.store.set_stream_title(&m.stream, &title).await?;
        }
        self.update_room(room, |r| r.name = Some(name.to_string()));
        info!(room = %room, "matrix: room renamed; stream title updated");
        Ok(())
    }

    async fn on_member(
        self: &Arc<Self>,
        room: &str,
        ev: &Ev,
        target: &str,
    ) -> Result<(), MatrixError> {
        let membership = ev.content["membership"].as_str().unwrap_or("");
        self.remember_member(room, target, &ev.content);
        if target == self.bot.as_str() {
            self.bot_membership(room, ev, membership).await?;
            if membership == "invite" {
                if self.perms.level_of(&ev.sender) == Level::None {
                    return self.decline_invite(room, ev).await;
                }
                return self.accept_invite(room, ev).await;
            }
            if matches!(membership, "leave" | "ban") && ev.sender != self.bot.as_str() {
                warn!(room = %room, by = %ev.sender, "matrix: the bot was removed from a room");
            }
            return Ok(());
        }
        // Ends (or allows again) what the user's viewer token admitted.
        if matches!(membership, "join" | "leave" | "ban") {
            self.membership_changed(room, target, membership == "join");
        }
        if self.is_puppet(target) && ev.sender != target {
            match membership {
                "leave" | "ban" => {
                    self.store.set_guest_room_state(target, room, true).await?;
                    info!(room = %room, guest = %target, "matrix: a moderator removed a guest");
                }
                "join" | "invite" => {}
                _ => {}
            }
        }
        Ok(())
    }

    /// Rejects the invite of a user without permission (leaving an invited
    /// room rejects the invite); nothing of the room is kept.
    async fn decline_invite(&self, room: &str, ev: &Ev) -> Result<(), MatrixError> {
        let mut req = leave_room::v3::Request::new(room_id(room)?);
        req.reason = Some(super::decisions::NO_PERMISSION.to_string());
        match self.client.send(req, None).await {
            Ok(_) => {
                info!(room = %room, inviter = %ev.sender, "matrix: declined the invite of a user without permission");
                Ok(())
            }
            Err(e) if !e.is_transient() => {
                warn!(room = %room, "matrix: cannot decline an invite: {e}");
                Ok(())
            }
            Err(e) => Err(e.into()),
        }
    }

    async fn accept_invite(&self, room: &str, ev: &Ev) -> Result<(), MatrixError> {
        let req = join_room_by_id::v3::Request::new(room_id(room)?);
        match self.client.send(req, None).await {
            Ok(_) => {}
            Err(e) if !e.is_transient() => {
                warn!(room = %room, "matrix: cannot join the room the bot was invited to: {e}");
                return Ok(());
            }
            Err(e) => return Err(e.into()),
        }
        let direct = ev.content["is_direct"].as_bool().unwrap_or(false);
        info!(room = %room, inviter = %ev.sender, direct, "matrix: joined a room on invite");
        if direct {
            self.store.set_dm_room(&ev.sender, room).await?;
            self.reply(
                room,
                "Hi! I'm roomcast. Say `!live new <name>` to create a stream with its own room, or `!live help`.",
            )
            .await;
        } else {
            self.reply(
                room,
                "Hi! I'm roomcast. A room admin can say `!live attach <name>` to stream into this room; `!live help` lists everything.",
            )
            .await;
        }
        Ok(())
    }

    // --- rooms, streams, widgets -----------------------------------------------------

    /// Creates a stream in the store, the key ring and the hub, and maps it
    /// to `room` (idempotent: an existing stream keeps its key). A new
    /// stream's key is one nobody knows; `deliver_key` sends the real one.
    pub(super) async fn create_stream(
        &self,
        room: &str,
        name: &str,
        slot: Option<&str>,
        owner: Option<&str>,
    ) -> Result<(), MatrixError> {
        let hash = hash_key_hex(&generate_key());
        if self
            .store
            .create_stream_if_absent(name, &hash, "matrix")
            .await?
        {
            self.keys.set(name, &hash);
        }
        self.store.map_stream(name, room, slot, owner).await?;
        let row = self.store.room(room).await?;
        let mapping = MappingRow {
            stream: name.to_string(),
            room_id: room.to_string(),
            slot: slot.map(str::to_string),
            owner: owner.map(str::to_string),
        };
        let title = row
            .as_ref()
            .and_then(|r| r.name.as_deref())
            .map(|n| stream_title(n, slot))
            .unwrap_or_else(|| name.to_string());
        self.store.set_stream_title(name, &title).await?;
        self.hub.ensure_stream(name, Some(&title));
        if let Some(r) = &row {
            self.rooms.put_room(r.clone());
        }
        self.rooms.put_stream(mapping.clone());
        if let Some(r) = &row {
            self.apply_room_to_stream(r, &mapping);
        }
        Ok(())
    }

    /// Reads a room's current state (name, topic, join rule, encryption, alias).
    pub(super) async fn load_room_state(&self, room: &str) -> Result<(), MatrixError> {
        let r = self
            .client
            .send(get_state_events::v3::Request::new(room_id(room)?), None)
            .await?;
        for raw in r.room_state {
            let Ok(ev) = raw.deserialize_as_unchecked::<Ev>() else {
                continue;
            };
            let c = &ev.content;
            match (ev.kind.as_str(), ev.state_key.as_deref()) {
                ("m.room.name", Some("")) => {
                    self.store
                        .set_room_text(room, RoomText::Name, c["name"].as_str())
                        .await?;
                }
                ("m.room.topic", Some("")) => {
                    self.store
                        .set_room_text(room, RoomText::Topic, c["topic"].as_str())
                        .await?;
                }
                ("m.room.join_rules", Some("")) => {
                    self.store
                        .set_room_text(room, RoomText::JoinRule, c["join_rule"].as_str())
                        .await?;
                }
                ("m.room.encryption", Some("")) => {
                    self.store
                        .set_room_flag(room, RoomFlag::Encrypted, true)
                        .await?;
                }
                ("m.room.canonical_alias", Some("")) => {
                    if let Some(a) = c["alias"].as_str() {
                        self.store.upsert_room(room, Some(a), None).await?;
                    }
                }
                ("m.room.member", Some(user)) => self.remember_member(room, user, c),
                _ => {}
            }
        }
        if let Some(row) = self.store.room(room).await? {
            self.rooms.put_room(row);
        }
        Ok(())
    }

    pub(super) fn widget_url(&self, stream: &str) -> String {
        format!(
            "{}/widget?widgetId=$matrix_widget_id&roomId=$matrix_room_id&theme=$org.matrix.msc2873.client_theme&userId=$matrix_user_id&stream={stream}",
            self.urls.public_base
        )
    }

    /// Widget state events for every stream of the room, and the layout pinning them on top.
    pub(super) async fn put_widgets(&self, room: &str) -> Result<(), MatrixError> {
        for m in self.streams_of_room(room) {
            let title = self
                .hub
                .get(&m.stream)
                .map(|s| s.title())
                .unwrap_or_default();
            let content = json!({
                "id": widget_id(&m.stream),
                "type": "m.custom",
                "name": format!("Live: {}", m.stream),
                "creatorUserId": self.bot.as_str(),
                "url": self.widget_url(&m.stream),
                "data": {"title": title, "stream": m.stream},
                "waitForIframeLoad": true,
            });
            let req = send_state_event::v3::Request::new_raw(
                room_id(room)?,
                StateEventType::from(WIDGET_TYPE),
                widget_id(&m.stream),
                raw(&content)?,
            );
            self.client.send(req, None).await?;
        }
        self.put_bridge_info(room).await;
        self.put_layout(room).await
    }

    pub(super) async fn put_layout(&self, room: &str) -> Result<(), MatrixError> {
        let mut widgets = serde_json::Map::new();
        // Element pins at most three widgets on top.
        for (i, m) in self.streams_of_room(room).iter().take(3).enumerate() {
            widgets.insert(
                widget_id(&m.stream),
                json!({"container": "top", "index": i, "width": 100 / 1.max(self.streams_of_room(room).len().min(3)), "height": 40}),
            );
        }
        let req = send_state_event::v3::Request::new_raw(
            room_id(room)?,
            StateEventType::from(LAYOUT_TYPE),
            String::new(),
            raw(&json!({ "widgets": widgets }))?,
        );
        self.client.send(req, None).await?;
        Ok(())
    }

    // --- alias queries: rooms on demand ----------------------------------------------------

    /// `GET /_matrix/app/v1/rooms/{alias}`: true when the alias is one of
    /// roomcast's rooms. With `matrix.rooms_on_demand`, an unknown alias in
    /// the namespace gets a new room and a new stream (as Cactus does), a few
    /// a minute for the whole server; the bot's admins get power in it. A
    /// name that is already a stream (e.g. from the config file) is never
    /// attached this way: that would publish it in a public room.
    pub async fn query_alias(self: &Arc<Self>, alias: &str) -> Result<bool, MatrixError> {
        if self.store.room_by_alias(alias).await?.is_some() {
            return Ok(true);
        }
        if !self.cfg.rooms_on_demand {
            return Ok(false);
        }
        let Some(name) = alias
            .strip_prefix('#')
            .and_then(|a| a.strip_suffix(&format!(":{}", self.cfg.server_name)))
            .and_then(|local| local.strip_prefix(&self.cfg.alias_prefix))
        else {
            return Ok(false);
        };
        if crate::config::validate_stream_name(name).is_err() {
            return Ok(false);
        }
        if self.store.mapping(name).await?.is_some() || self.store.stream_exists(name).await? {
            return Ok(false);
        }
        if self.on_demand.lock().take("").is_err() {
            let mut last = self.on_demand_warned.lock();
            if last.is_none_or(|t| t.elapsed() >= std::time::Duration::from_secs(60)) {
                *last = Some(std::time::Instant::now());
                warn!(alias = %alias, "matrix: too many rooms on demand; alias lookups are refused for now (logged once a minute)");
            }
            return Ok(false);
        }
        let version = self.default_room_version().await?;
        let mut users = serde_json::Map::new();
        for admin in self.perms.admins() {
            users.insert(admin, json!(100));
        }
        if !creators_privileged(&version) {
            users.insert(self.bot.to_string(), json!(100));
        }
        let mut req = create_room::v3::Request::new();
        req.preset = Some(create_room::v3::RoomPreset::PublicChat);
        req.name = Some(name.to_string());
        req.room_alias_name = Some(format!("{}{name}", self.cfg.alias_prefix));
        if !users.is_empty() {
            req.power_level_content_override = Some(raw(&json!({ "users": users }))?);
        }
        let new_room = match self.client.send(req, None).await {
            Ok(r) => r.room_id.to_string(),
            Err(e) if e.errcode() == Some("M_ROOM_IN_USE") => return Ok(true),
            Err(e) => return Err(e.into()),
        };
        self.store
            .upsert_room(&new_room, Some(alias), Some(name))
            .await?;
        self.create_stream(&new_room, name, None, None).await?;
        self.put_widgets(&new_room).await?;
        self.enqueue_state(name, false).await?;
        info!(room = %new_room, alias = %alias, "matrix: room created on demand for an alias");
        Ok(true)
    }

    // --- talking to users ---------------------------------------------------------------

    /// Posts a notice as the bot. Best effort: a reply that cannot be sent is
    /// logged, the command it answers stays applied.
    pub(super) async fn reply(&self, room: &str, text: &str) {
        let content = json!({"msgtype": "m.notice", "body": text, "m.mentions": {}});
        if let Err(e) = self.notice_to(room, &content).await {
            warn!(room = %room, "matrix: cannot post the bot's reply: {e}");
        }
    }

    pub(super) async fn notice_to(
        &self,
        room: &str,
        content: &Value,
    ) -> Result<String, MatrixError> {
        self.send_message(room_id(room)?, new_txn_id().as_str().into(), content)
            .await
    }
}

pub fn widget_id(stream: &str) -> String {
    format!("roomcast_{stream}")
}

#[cfg(test)]
mod tests {
    use crate::hub::RoomInfo;

    #[test]
    fn room_info_for_hub() {
        // RoomInfo is what the API shows as `room`.
        let r = RoomInfo {
            room_id: "!a".into(),
            alias: None,
            chat: true,
        };
        assert_eq!(serde_json::to_value(&r).unwrap()["chat"], true);
    }
}
