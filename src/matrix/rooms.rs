//! Rooms and streams: applying the homeserver's events (room name → title,
//! topic → description, join rule → access, encryption, invites, membership of
//! puppets), the bot's commands, widgets, and direct messages.

use std::sync::Arc;

use ruma::api::client::membership::{join_room_by_id, leave_room};
use ruma::api::client::room::{create_room, get_room_event};
use ruma::api::client::state::{get_state_event_for_key, get_state_events, send_state_event};
use ruma::events::StateEventType;
use ruma::serde::Raw;
use ruma::{OwnedRoomId, OwnedUserId};
use serde_json::{Value, json};
use tracing::{info, warn};

use super::commands::{self, Command, Parsed, Slots};
use super::notices::{html_escape, new_txn_id};
use super::permissions::Level;
use super::{Ev, HsError, Matrix, MatrixError, stream_title};
use crate::auth::keys::{generate_key, hash_key_hex};
use crate::hub::Access;
use crate::store::matrix::{MappingRow, RoomFlag, RoomRow, RoomText};

pub const WIDGET_TYPE: &str = "im.vector.modular.widgets";
pub const LAYOUT_TYPE: &str = "io.element.widgets.layout";

/// Room versions where creators have unlimited power and must not be listed
/// in the power levels (MSC4289, room version 12 on).
pub fn creators_privileged(version: &str) -> bool {
    version.parse::<u32>().is_ok_and(|v| v >= 12) || version.starts_with("org.matrix.hydra")
}

fn room_id(s: &str) -> Result<OwnedRoomId, MatrixError> {
    OwnedRoomId::try_from(s).map_err(|e| HsError::Protocol(format!("bad room id {s}: {e}")).into())
}

fn user_id(s: &str) -> Result<OwnedUserId, MatrixError> {
    OwnedUserId::try_from(s).map_err(|e| HsError::Protocol(format!("bad user id {s}: {e}")).into())
}

fn raw<T>(v: &Value) -> Result<Raw<T>, MatrixError> {
    let r = serde_json::value::to_raw_value(v).map_err(|e| HsError::Protocol(e.to_string()))?;
    Ok(Raw::from_json(r))
}

/// What decides power in a room: its power levels and its creators (who
/// have unlimited power from room version 12 on).
#[derive(Debug, Clone, Default)]
pub(super) struct RoomPower {
    /// `m.room.power_levels` content (`{}` when the room has none).
    pl: Option<Value>,
    /// From `m.room.create`: the room version and the creators.
    create: Option<(String, Vec<String>)>,
}

/// Rooms whose power is remembered; past this the cache starts again.
const MAX_POWER_CACHE: usize = 10_000;

/// A power level: an integer, or a string of one (old rooms).
fn pl_int(v: &Value) -> Option<i64> {
    v.as_i64()
        .or_else(|| v.as_str().and_then(|s| s.trim().parse().ok()))
}

fn create_info(sender: &str, content: &Value) -> (String, Vec<String>) {
    let version = content["room_version"].as_str().unwrap_or("1").to_string();
    let mut creators = vec![sender.to_string()];
    if let Some(more) = content["additional_creators"].as_array() {
        creators.extend(more.iter().filter_map(|u| u.as_str().map(str::to_string)));
    }
    (version, creators)
}

impl RoomPower {
    fn complete(&self) -> bool {
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

/// A command refused or failed in a way the user should read.
struct Refusal(String);

type CmdResult = Result<Result<(), Refusal>, MatrixError>;

fn refuse(msg: impl Into<String>) -> CmdResult {
    Ok(Err(Refusal(msg.into())))
}

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
                self.note_power(room, mapped, |p| p.pl = Some(ev.content.clone()));
            }
            ("m.room.create", Some("")) => {
                self.note_power(room, mapped, |p| {
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
    fn update_room(&self, room: &str, f: impl FnOnce(&mut RoomRow)) {
        let (row, maps) = {
            let mut map = self.map.lock();
            let Some(r) = map.rooms.get_mut(room) else {
                return;
            };
            f(r);
            let row = r.clone();
            (row, map.streams_of(room))
        };
        for m in maps {
            self.apply_room_to_stream(&row, &m);
        }
    }

    async fn set_room_name(&self, room: &str, name: &str) -> Result<(), MatrixError> {
        // Every row first, then what pages see: if a write fails, the
        // homeserver retries the transaction, and the API never shows a title
        // the database does not have.
        self.store
            .set_room_text(room, RoomText::Name, Some(name))
            .await?;
        for m in self.streams_of_room(room) {
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
        if membership == "join"
            && let Some(name) = ev.content["displayname"].as_str()
        {
            self.remember_name(room, target, name);
        }
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
        req.reason = Some(NO_PERMISSION.to_string());
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

    // --- commands --------------------------------------------------------------------

    async fn maybe_command(self: &Arc<Self>, room: &str, ev: &Ev) -> Result<(), MatrixError> {
        if ev.sender == self.bot.as_str() || self.is_puppet(&ev.sender) {
            return Ok(());
        }
        if ev.content["msgtype"].as_str() != Some("m.text") {
            return Ok(());
        }
        let Some(body) = ev.content["body"].as_str() else {
            return Ok(());
        };
        let cmd = match commands::parse(body) {
            Parsed::NotACommand => return Ok(()),
            Parsed::Error(e) => {
                self.reply(room, &e).await;
                return Ok(());
            }
            Parsed::Command(c) => c,
        };
        let in_dm = self.store.is_dm_room(room).await?;
        info!(room = %room, sender = %ev.sender, command = ?command_name(&cmd), "matrix: command");
        // Help and status read what a room member sees anyway; the rest acts
        // for the sender and needs at least `user`.
        if self.perms.level_of(&ev.sender) == Level::None
            && !matches!(cmd, Command::Help | Command::Status { .. })
        {
            let msg = match cmd {
                Command::New { .. } => "Sorry, you can't create streams on this server.",
                _ => NO_PERMISSION,
            };
            self.reply(room, msg).await;
            return Ok(());
        }
        match self.run_command(room, &ev.sender, in_dm, cmd).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(Refusal(msg))) => {
                self.reply(room, &msg).await;
                Ok(())
            }
            Err(e) if e.is_transient() => Err(e),
            Err(e) => {
                warn!(room = %room, "matrix: command failed: {e}");
                self.reply(room, &format!("That did not work: {e}")).await;
                Ok(())
            }
        }
    }

    async fn run_command(
        self: &Arc<Self>,
        room: &str,
        sender: &str,
        in_dm: bool,
        cmd: Command,
    ) -> CmdResult {
        if commands::needs_admin(&cmd)
            && !matches!(
                cmd,
                Command::Key { .. }
                    | Command::Rotate { .. }
                    | Command::Detach { .. }
                    | Command::Link { .. }
                    | Command::Attach { room: Some(_), .. }
            )
        {
            // Room-level admin commands: the power is checked in this room.
            if in_dm {
                return refuse("Say that in the room it is about, not in our direct chat.");
            }
            if !self.is_admin(room, sender).await? {
                return refuse(not_admin());
            }
        }
        match cmd {
            c @ (Command::Follow { .. } | Command::Unfollow { .. }) => {
                self.follow_command(room, sender, in_dm, c).await.map(Ok)
            }
            Command::Help => {
                self.reply(room, commands::HELP).await;
                Ok(Ok(()))
            }
            Command::New { name } => self.cmd_new(room, sender, &name).await,
            Command::Attach { name, room: None } => {
                self.cmd_attach(room, sender, &name, None).await
            }
            Command::Attach {
                name,
                room: Some(target),
            } => {
                let target_id = if target.starts_with('#') {
                    let Ok(alias) = ruma::OwnedRoomAliasId::try_from(target.as_str()) else {
                        return refuse(format!("'{target}' is not a room alias"));
                    };
                    let req = ruma::api::client::alias::get_alias::v3::Request::new(alias);
                    match self.client.send(req, None).await {
                        Ok(r) => r.room_id.to_string(),
                        Err(e) if !e.is_transient() => {
                            return refuse(format!("I cannot find the room {target}."));
                        }
                        Err(e) => return Err(e.into()),
                    }
                } else {
                    target.clone()
                };
                let bot_in = match self
                    .state_event(&target_id, "m.room.member", self.bot.as_str())
                    .await
                {
                    Ok(ev) => ev.is_some_and(|e| e["content"]["membership"] == "join"),
                    Err(e) if e.is_transient() => return Err(e),
                    Err(_) => false,
                };
                if !bot_in {
                    return refuse(format!("Invite me to {target} first, then say this again."));
                }
                if !self.is_admin(&target_id, sender).await? {
                    return refuse(not_admin());
                }
                let r = self.cmd_attach(&target_id, sender, &name, None).await?;
                if r.is_ok() && room != target_id {
                    self.reply(room, &format!("Stream '{name}' is attached to {target}."))
                        .await;
                }
                Ok(r)
            }
            Command::Slots(Slots::Add { name }) => {
                if self.streams_of_room(room).is_empty() {
                    return refuse("This room has no stream yet: `!live attach <name>` first.");
                }
                self.cmd_attach(room, sender, &name, Some(name.clone()))
                    .await
            }
            Command::Slots(Slots::Remove { name }) => {
                match self.store.mapping(&name).await? {
                    Some(m) if m.room_id == room && m.slot.is_some() => {}
                    _ => return refuse(format!("'{name}' is not an extra slot of this room.")),
                }
                self.cmd_detach(room, sender, in_dm, Some(name)).await
            }
            Command::Slots(Slots::List) => {
                let list: Vec<String> = self
                    .streams_of_room(room)
                    .iter()
                    .map(|m| match &m.slot {
                        Some(_) => format!("{} (slot)", m.stream),
                        None => format!("{} (main)", m.stream),
                    })
                    .collect();
                if list.is_empty() {
                    return refuse("This room has no stream: `!live attach <name>`.");
                }
                self.reply(room, &format!("Streams of this room: {}", list.join(", ")))
                    .await;
                Ok(Ok(()))
            }
            Command::Detach { name } => self.cmd_detach(room, sender, in_dm, name).await,
            Command::Key { name } | Command::Rotate { name } => {
                self.cmd_key(room, sender, in_dm, name).await
            }
            Command::Status { name } => self.cmd_status(room, sender, in_dm, name).await,
            Command::Notify { on } => {
                if self.room_row(room).is_none() {
                    return refuse("This room has no stream: `!live attach <name>` first.");
                }
                self.store.set_room_flag(room, RoomFlag::Notify, on).await?;
                self.update_room(room, |r| r.notify = on);
                self.reply(
                    room,
                    if on {
                        "Go-live notices will mention @room (if I have the power to)."
                    } else {
                        "Go-live notices will not mention @room."
                    },
                )
                .await;
                Ok(Ok(()))
            }
            Command::Link { secs, name } => {
                let m = match self.resolve_stream(room, in_dm, name) {
                    Ok(m) => m,
                    Err(r) => return Ok(Err(r)),
                };
                if !self.may_manage(&m, sender).await? {
                    return refuse(not_admin());
                }
                let exp = super::unix_now() + secs;
                let token = self.tokens.sign(&m.stream, exp);
                let url = format!("{}?access={token}", self.watch_url(&m.stream));
                self.reply(
                    room,
                    &format!(
                        "Viewer link for '{}', valid for {}: {url}",
                        m.stream,
                        super::notices::format_duration(secs)
                    ),
                )
                .await;
                Ok(Ok(()))
            }
        }
    }

    /// The stream a command is about: named, or this room's main stream.
    fn resolve_stream(
        &self,
        room: &str,
        in_dm: bool,
        name: Option<String>,
    ) -> Result<MappingRow, Refusal> {
        let map = self.map.lock();
        match name {
            Some(n) => match map.streams.get(&n) {
                Some(m) if in_dm || m.room_id == room => Ok(m.clone()),
                Some(_) => Err(Refusal(format!("Stream '{n}' belongs to another room."))),
                None => Err(Refusal(format!(
                    "There is no stream '{n}' in a Matrix room."
                ))),
            },
            None if in_dm => Err(Refusal("Say which stream, e.g. `!live key <name>`.".into())),
            None => {
                map.streams_of(room).into_iter().next().ok_or_else(|| {
                    Refusal("This room has no stream: `!live attach <name>`.".into())
                })
            }
        }
    }

    /// The refusal for a user who owns as many streams as allowed (admins: no limit).
    fn over_quota(&self, user: &str) -> Option<String> {
        if self.perms.level_of(user) == Level::Admin {
            return None;
        }
        let max = self.cfg.max_streams_per_user;
        let owned = self
            .map
            .lock()
            .streams
            .values()
            .filter(|m| m.owner.as_deref() == Some(user))
            .count();
        if owned < max {
            return None;
        }
        Some(if max == 0 {
            "Sorry, you can't create streams on this server.".to_string()
        } else {
            format!(
                "Sorry, the limit is {max} stream(s) per user and you already own {owned}; \
                 `!live detach <name>` one first."
            )
        })
    }

    /// Owners of a stream and admins of its room may manage it.
    async fn may_manage(&self, m: &MappingRow, sender: &str) -> Result<bool, MatrixError> {
        if m.owner.as_deref() == Some(sender) {
            return Ok(true);
        }
        self.is_admin(&m.room_id, sender).await
    }

    async fn cmd_new(self: &Arc<Self>, room: &str, sender: &str, name: &str) -> CmdResult {
        if let Some(msg) = self.over_quota(sender) {
            return refuse(msg);
        }
        if self.store.stream_exists(name).await? {
            return refuse(format!("The name '{name}' is taken; pick another."));
        }
        let version = self.room_version.lock().clone().unwrap_or_default();
        let mut users = serde_json::Map::new();
        users.insert(sender.to_string(), json!(100));
        if !creators_privileged(&version) {
            users.insert(self.bot.to_string(), json!(100));
        }
        let mut req = create_room::v3::Request::new();
        req.preset = Some(create_room::v3::RoomPreset::PublicChat);
        req.name = Some(name.to_string());
        req.room_alias_name = Some(format!("{}{name}", self.cfg.alias_prefix));
        req.invite = vec![user_id(sender)?];
        req.power_level_content_override = Some(raw(&json!({ "users": users }))?);
        let new_room = match self.client.send(req, None).await {
            Ok(r) => r.room_id.to_string(),
            Err(e) if e.errcode() == Some("M_ROOM_IN_USE") => {
                return refuse(format!(
                    "The alias {} is taken; pick another name.",
                    self.alias_for(name)
                ));
            }
            Err(e) => return Err(e.into()),
        };
        let alias = self.alias_for(name);
        self.store
            .upsert_room(&new_room, Some(&alias), Some(name))
            .await?;
        let key = self
            .create_stream(&new_room, name, None, Some(sender))
            .await?;
        self.put_widgets(&new_room).await?;
        self.enqueue_state(name, false).await?;
        self.send_settings(sender, name, &key).await?;
        info!(room = %new_room, stream = %name, owner = %sender, "matrix: stream room created");
        if room != new_room {
            self.reply(
                room,
                &format!("Created {alias} for stream '{name}' and invited you. I sent the publishing settings by direct message."),
            )
            .await;
        }
        Ok(Ok(()))
    }

    /// Attaches a new stream to an existing room (main stream, or a slot).
    async fn cmd_attach(
        self: &Arc<Self>,
        room: &str,
        sender: &str,
        name: &str,
        slot: Option<String>,
    ) -> CmdResult {
        if let Some(msg) = self.over_quota(sender) {
            return refuse(msg);
        }
        if slot.is_none() && !self.streams_of_room(room).is_empty() {
            let main = self.streams_of_room(room)[0].stream.clone();
            return refuse(format!(
                "This room already streams '{main}'. Add more cameras with `!live slots add <name>`."
            ));
        }
        if self.store.stream_exists(name).await? {
            return refuse(format!("The name '{name}' is taken; pick another."));
        }
        // The widget and the stream state event are room state: the bot needs
        // the power to send them.
        let (bot_level, pl) = self.power_of(room, self.bot.as_str()).await?;
        let needed = [WIDGET_TYPE, LAYOUT_TYPE, super::notices::STREAM_STATE_TYPE]
            .iter()
            .map(|t| {
                pl["events"][*t]
                    .as_i64()
                    .unwrap_or_else(|| pl["state_default"].as_i64().unwrap_or(50))
            })
            .max()
            .unwrap_or(50);
        if bot_level < needed {
            return refuse(format!(
                "I need power level {needed} in this room to add the player widget and the stream state; \
                 make me a moderator, then say this again."
            ));
        }
        if self.room_row(room).is_none() {
            self.store.upsert_room(room, None, None).await?;
            self.load_room_state(room).await?;
        }
        let key = self
            .create_stream(room, name, slot.as_deref(), Some(sender))
            .await?;
        self.put_widgets(room).await?;
        self.enqueue_state(name, false).await?;
        if let Err(e) = self.backfill(room).await {
            warn!(room = %room, "matrix: chat backfill failed: {e}");
        }
        self.send_settings(sender, name, &key).await?;
        let mut msg = format!(
            "Stream '{name}' is attached to this room. Watch: {}. I sent the publishing settings to {sender} by direct message.",
            self.watch_url(name)
        );
        if self.room_row(room).is_some_and(|r| r.encrypted) {
            msg.push_str(
                " This room is encrypted: roomcast cannot read its messages, so the watch page shows no chat \
                 and guests cannot post. The stream itself works.",
            );
        }
        self.reply(room, &msg).await;
        info!(room = %room, stream = %name, slot = ?slot, "matrix: stream attached");
        Ok(Ok(()))
    }

    async fn cmd_detach(
        &self,
        room: &str,
        sender: &str,
        in_dm: bool,
        name: Option<String>,
    ) -> CmdResult {
        let m = match self.resolve_stream(room, in_dm, name) {
            Ok(m) => m,
            Err(r) => return Ok(Err(r)),
        };
        if !self.is_admin(&m.room_id, sender).await? {
            return refuse(not_admin());
        }
        self.store.unmap_stream(&m.stream).await?;
        self.map.lock().streams.remove(&m.stream);
        if let Some(s) = self.hub.get(&m.stream) {
            s.set_room(None);
            s.set_access(Access::Public);
            s.set_description(None);
        }
        // Remove the widget (empty content) and re-pin the remaining ones.
        let req = send_state_event::v3::Request::new_raw(
            room_id(&m.room_id)?,
            StateEventType::from(WIDGET_TYPE),
            widget_id(&m.stream),
            raw(&json!({}))?,
        );
        self.client.send(req, None).await?;
        self.put_layout(&m.room_id).await?;
        self.reply(
            room,
            &format!(
                "Stream '{}' is detached from this room (its widget is removed; the stream and its key remain).",
                m.stream
            ),
        )
        .await;
        info!(room = %m.room_id, stream = %m.stream, "matrix: stream detached");
        Ok(Ok(()))
    }

    async fn cmd_key(
        &self,
        room: &str,
        sender: &str,
        in_dm: bool,
        name: Option<String>,
    ) -> CmdResult {
        let m = match self.resolve_stream(room, in_dm, name) {
            Ok(m) => m,
            Err(r) => return Ok(Err(r)),
        };
        if !self.may_manage(&m, sender).await? {
            return refuse(not_admin());
        }
        // Only hashes are kept, so the settings always come with a new key.
        let key = generate_key();
        self.store
            .set_key_hash(&m.stream, &hash_key_hex(&key))
            .await?;
        self.keys.set(&m.stream, &hash_key_hex(&key));
        self.send_settings(sender, &m.stream, &key).await?;
        info!(stream = %m.stream, by = %sender, "matrix: stream key replaced");
        if !in_dm {
            self.reply(
                room,
                &format!("I sent {sender} a new key for '{}' by direct message; the old key no longer works.", m.stream),
            )
            .await;
        }
        Ok(Ok(()))
    }

    async fn cmd_status(
        &self,
        room: &str,
        sender: &str,
        in_dm: bool,
        name: Option<String>,
    ) -> CmdResult {
        let m = match self.resolve_stream(room, in_dm, name) {
            Ok(m) => m,
            Err(r) => return Ok(Err(r)),
        };
        let Some(s) = self.hub.get(&m.stream) else {
            return refuse(format!("Stream '{}' is not loaded.", m.stream));
        };
        let snap = s.snapshot();
        // In a DM any stream can be named: a private one only by who manages it
        // (and answered as if it did not exist).
        if in_dm && snap.access == Access::Private && !self.may_manage(&m, sender).await? {
            return refuse(format!(
                "There is no stream '{}' in a Matrix room.",
                m.stream
            ));
        }
        let state = if snap.live {
            format!("🔴 live, {} viewer(s)", snap.viewers)
        } else {
            "offline".to_string()
        };
        let access = match snap.access {
            Access::Public => "public",
            Access::Private => "private (viewers need the widget or a `!live link`)",
        };
        self.reply(
            room,
            &format!(
                "'{}' — {}: {state}; {access}. Watch: {}",
                m.stream,
                snap.title,
                self.watch_url(&m.stream)
            ),
        )
        .await;
        Ok(Ok(()))
    }

    // --- rooms, streams, widgets -----------------------------------------------------

    /// Creates a stream with a fresh key in the store, the key ring and the hub,
    /// and maps it to `room`. Returns the key (only its hash is kept).
    async fn create_stream(
        &self,
        room: &str,
        name: &str,
        slot: Option<&str>,
        owner: Option<&str>,
    ) -> Result<String, MatrixError> {
        let key = generate_key();
        let hash = hash_key_hex(&key);
        self.store
            .create_stream_if_absent(name, &hash, "matrix")
            .await?;
        self.store.set_key_hash(name, &hash).await?;
        self.store.map_stream(name, room, slot, owner).await?;
        self.keys.set(name, &hash);
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
        {
            let mut map = self.map.lock();
            if let Some(r) = &row {
                map.rooms.insert(room.to_string(), r.clone());
            }
            map.streams.insert(name.to_string(), mapping.clone());
        }
        if let Some(r) = &row {
            self.apply_room_to_stream(r, &mapping);
        }
        Ok(key)
    }

    /// Reads a room's current state (name, topic, join rule, encryption, alias).
    async fn load_room_state(&self, room: &str) -> Result<(), MatrixError> {
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
                ("m.room.member", Some(user)) => {
                    if let Some(n) = c["displayname"].as_str() {
                        self.remember_name(room, user, n);
                    }
                }
                _ => {}
            }
        }
        if let Some(row) = self.store.room(room).await? {
            self.map.lock().rooms.insert(room.to_string(), row);
        }
        Ok(())
    }

    fn widget_url(&self, stream: &str) -> String {
        format!(
            "{}/widget?widgetId=$matrix_widget_id&roomId=$matrix_room_id&theme=$org.matrix.msc2873.client_theme&stream={stream}",
            self.urls.public_base
        )
    }

    /// Widget state events for every stream of the room, and the layout pinning them on top.
    async fn put_widgets(&self, room: &str) -> Result<(), MatrixError> {
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
        self.put_layout(room).await
    }

    async fn put_layout(&self, room: &str) -> Result<(), MatrixError> {
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
        let version = self.room_version.lock().clone().unwrap_or_default();
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

    async fn fetch_power(&self, room: &str) -> Result<RoomPower, MatrixError> {
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
        let mut cache = self.power.lock();
        if cache.len() >= MAX_POWER_CACHE {
            cache.clear();
        }
        cache.insert(room.to_string(), p.clone());
        Ok(p)
    }

    /// The room's power from the cache, fetched when not (fully) known.
    async fn power_cached(&self, room: &str) -> Result<RoomPower, MatrixError> {
        if let Some(p) = self.power.lock().get(room).filter(|p| p.complete()) {
            return Ok(p.clone());
        }
        self.fetch_power(room).await
    }

    /// A power levels or create event from a transaction: kept for rooms
    /// with streams and rooms already cached (others are fetched when needed).
    fn note_power(&self, room: &str, mapped: bool, f: impl FnOnce(&mut RoomPower)) {
        let mut cache = self.power.lock();
        if let Some(p) = cache.get_mut(room) {
            f(p);
        } else if mapped {
            if cache.len() >= MAX_POWER_CACHE {
                cache.clear();
            }
            f(cache.entry(room.to_string()).or_default());
        }
    }

    /// A redaction applies to the pages when its sender sent the message or
    /// has the room's `redact` power (50 unless the power levels say otherwise).
    async fn may_redact(
        &self,
        room: &str,
        sender: &str,
        target: &str,
    ) -> Result<bool, MatrixError> {
        let known = self.chat.lock().get(room).and_then(|q| {
            q.iter()
                .find(|m| m.id == target)
                .map(|m| m.sender_id.clone())
        });
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
    async fn event_sender(&self, room: &str, event: &str) -> Result<Option<String>, MatrixError> {
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
    async fn is_admin(&self, room: &str, user: &str) -> Result<bool, MatrixError> {
        if self.perms.level_of(user) == Level::Admin {
            return Ok(true);
        }
        let (level, pl) = self.power_of(room, user).await?;
        let needed = pl["state_default"].as_i64().unwrap_or(50).max(50);
        Ok(level >= needed)
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

    async fn notice_to(&self, room: &str, content: &Value) -> Result<String, MatrixError> {
        self.send_message(room_id(room)?, new_txn_id().as_str().into(), content)
            .await
    }

    /// The bot's direct chat with `user` (created when there is none).
    pub(super) async fn dm_room(&self, user: &str) -> Result<String, MatrixError> {
        if let Some(r) = self.store.dm_room(user).await? {
            return Ok(r);
        }
        let mut req = create_room::v3::Request::new();
        req.preset = Some(create_room::v3::RoomPreset::TrustedPrivateChat);
        req.is_direct = true;
        req.invite = vec![user_id(user)?];
        let room = self.client.send(req, None).await?.room_id.to_string();
        self.store.set_dm_room(user, &room).await?;
        Ok(room)
    }

    /// DMs the publishing settings with the key. The key exists only in this message.
    async fn send_settings(&self, user: &str, stream: &str, key: &str) -> Result<(), MatrixError> {
        let base = &self.urls.public_base;
        let rtmp = self
            .urls
            .rtmp
            .as_deref()
            .map(|u| format!("RTMP (OBS → Settings → Stream → Service: Custom…)\n  Server: {u}\n  Stream Key: {key}\n"))
            .unwrap_or_default();
        let text = format!(
            "Stream '{stream}' — publishing settings\n{rtmp}\
             WHIP (OBS → Service: WHIP)\n  Server: {base}/whip/{stream}\n  Bearer Token: {key}\n\
             OBS → Settings → Output (Advanced): Keyframe Interval 1 s, x264 options bframes=0, Rate Control CBR, Tune zerolatency.\n\
             Watch: {base}/watch/{stream}\n\
             roomcast keeps only a hash of the key: this message is its only copy. `!live rotate {stream}` replaces it."
        );
        let html = format!(
            "<p>Stream <b>{s}</b> — publishing settings</p>{rtmp_html}\
             <p>WHIP (OBS → Service: WHIP)<br>Server: <code>{b}/whip/{s}</code><br>Bearer Token: <code>{k}</code></p>\
             <p>OBS → Settings → Output (Advanced): Keyframe Interval <b>1 s</b>, x264 options <b>bframes=0</b>, Rate Control <b>CBR</b>, Tune <b>zerolatency</b>.</p>\
             <p>Watch: <a href=\"{b}/watch/{s}\">{b}/watch/{s}</a></p>\
             <p>roomcast keeps only a hash of the key: this message is its only copy. <code>!live rotate {s}</code> replaces it.</p>",
            s = html_escape(stream),
            b = html_escape(base),
            k = html_escape(key),
            rtmp_html = self
                .urls
                .rtmp
                .as_deref()
                .map(|u| format!(
                    "<p>RTMP (OBS → Settings → Stream → Service: Custom…)<br>Server: <code>{}</code><br>Stream Key: <code>{}</code></p>",
                    html_escape(u),
                    html_escape(key)
                ))
                .unwrap_or_default(),
        );
        let room = self.dm_room(user).await?;
        let content = json!({
            "msgtype": "m.notice",
            "body": text,
            "format": "org.matrix.custom.html",
            "formatted_body": html,
            "m.mentions": {},
        });
        self.notice_to(&room, &content).await?;
        Ok(())
    }
}

pub fn widget_id(stream: &str) -> String {
    format!("roomcast_{stream}")
}

/// The refusal for users `[matrix.permissions]` gives `none`.
const NO_PERMISSION: &str = "Sorry, you can't use this bot on this server.";

fn not_admin() -> &'static str {
    "Only room admins (power level 50 or more) can do that."
}

fn command_name(c: &Command) -> &'static str {
    match c {
        Command::Help => "help",
        Command::New { .. } => "new",
        Command::Attach { .. } => "attach",
        Command::Detach { .. } => "detach",
        Command::Key { .. } => "key",
        Command::Rotate { .. } => "rotate",
        Command::Status { .. } => "status",
        Command::Notify { .. } => "notify",
        Command::Slots(_) => "slots",
        Command::Link { .. } => "link",
        Command::Follow { .. } => "follow",
        Command::Unfollow { .. } => "unfollow",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hub::RoomInfo;

    #[test]
    fn v12_creators() {
        assert!(creators_privileged("12"));
        assert!(creators_privileged("13"));
        assert!(!creators_privileged("11"));
        assert!(!creators_privileged("1"));
        assert!(creators_privileged("org.matrix.hydra.11"));
    }

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
