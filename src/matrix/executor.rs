//! Runs the bot's commands: looks up the facts a decision needs (power
//! levels, the mapping, the store), asks `decisions` what to do, and performs
//! the effects against the homeserver and the store. A plan is recorded
//! under the command's event id before its first effect, and each effect
//! when done: the same event processed again (a crash, a failed homeserver
//! call, a redelivery) performs what is left of the first plan.

use std::sync::Arc;

use ruma::api::client::state::send_state_event;
use ruma::events::StateEventType;
use serde_json::json;
use tracing::{info, warn};

use super::commands::{self, Command, Parsed, Slots};
use super::decisions::{self, AttachFacts, Effect, NewFacts, StatusFacts, Target};
use super::ids::{raw, room_id};
use super::rooms::{LAYOUT_TYPE, WIDGET_TYPE, widget_id};
use super::{Ev, HsError, Matrix, MatrixError};
use crate::hub::Access;
use crate::store::matrix::{MappingRow, RoomFlag};

/// A refusal to answer, or a failure to retry.
type Outcome = Result<Result<(), String>, MatrixError>;

fn refuse(msg: impl Into<String>) -> Outcome {
    Ok(Err(msg.into()))
}

/// Where a plan is recorded among a command's steps.
const PLAN: &str = "plan";

impl Matrix {
    pub(super) async fn maybe_command(
        self: &Arc<Self>,
        room: &str,
        ev: &Ev,
    ) -> Result<(), MatrixError> {
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
        if let Some(msg) = decisions::permission_refusal(&cmd, self.perms.level_of(&ev.sender)) {
            self.reply(room, msg).await;
            return Ok(());
        }
        let event = ev.event_id.as_deref();
        // Processed before and planned then: carry on with that plan.
        if let Some(plan) = self.step_done(event, PLAN).await? {
            let plan: Vec<Effect> = serde_json::from_str(&plan)
                .map_err(|e| HsError::Protocol(format!("a recorded plan: {e}")))?;
            return self.finish(room, event, &plan).await;
        }
        let outcome = self.run_command(room, &ev.sender, in_dm, cmd, event).await;
        self.answer(room, outcome).await
    }

    /// Performs a plan; a refusal met on the way (the alias was taken after
    /// all) is answered, a failure handled as `maybe_command` does.
    async fn finish(
        self: &Arc<Self>,
        room: &str,
        event: Option<&str>,
        plan: &[Effect],
    ) -> Result<(), MatrixError> {
        let outcome = self.perform(event, plan).await;
        self.answer(room, outcome).await
    }

    /// A command's outcome told in the room: a refusal as it is, a lasting
    /// failure in a sentence; a transient failure goes back to the room's
    /// worker, which retries the event.
    async fn answer(&self, room: &str, outcome: Outcome) -> Result<(), MatrixError> {
        match outcome {
            Ok(Ok(())) => Ok(()),
            Ok(Err(msg)) => {
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

    /// Records the plan, then performs it.
    async fn plan(self: &Arc<Self>, event: Option<&str>, plan: Vec<Effect>) -> Outcome {
        let json = serde_json::to_string(&plan)
            .map_err(|e| HsError::Protocol(format!("recording a plan: {e}")))?;
        self.record_step(event, PLAN, &json).await?;
        self.perform(event, &plan).await
    }

    /// Performs each effect not done yet, in order, recording each.
    async fn perform(self: &Arc<Self>, event: Option<&str>, plan: &[Effect]) -> Outcome {
        let mut created: Option<String> = None;
        for (i, effect) in plan.iter().enumerate() {
            let step = decisions::step_name(i, effect);
            if let Some(value) = self.step_done(event, &step).await? {
                if matches!(effect, Effect::CreateRoom { .. }) {
                    created = Some(value);
                }
                continue;
            }
            let value = match self
                .perform_one(effect, created.as_deref(), event, &step)
                .await?
            {
                Ok(v) => v,
                Err(refusal) => return refuse(refusal),
            };
            if matches!(effect, Effect::CreateRoom { .. }) {
                created = Some(value.clone());
            }
            // A key records its step with its hash, in one transaction.
            if !matches!(effect, Effect::DeliverKey { .. } | Effect::ObsLink { .. }) {
                self.record_step(event, &step, &value).await?;
            }
        }
        Ok(Ok(()))
    }

    /// One effect; its value (the room `CreateRoom` made) is recorded.
    async fn perform_one(
        self: &Arc<Self>,
        effect: &Effect,
        created: Option<&str>,
        event: Option<&str>,
        step: &str,
    ) -> Result<Result<String, String>, MatrixError> {
        let target = |t: &Target| -> Result<String, MatrixError> {
            match t {
                Target::Room(r) => Ok(r.clone()),
                Target::Created => created
                    .map(str::to_string)
                    .ok_or_else(|| HsError::Protocol("a plan without its room".into()).into()),
            }
        };
        match effect {
            Effect::CreateRoom { name, owner } => {
                let room = match self.create_stream_room(owner, name).await? {
                    Ok(r) => r,
                    Err(refusal) => return Ok(Err(refusal)),
                };
                self.store
                    .upsert_room(&room, Some(&self.alias_for(name)), Some(name))
                    .await?;
                info!(room = %room, stream = %name, owner = %owner, "matrix: stream room created");
                return Ok(Ok(room));
            }
            Effect::AdoptRoom { room } => {
                let room = target(room)?;
                self.store.upsert_room(&room, None, None).await?;
                self.load_room_state(&room).await?;
            }
            Effect::CreateStream {
                room,
                name,
                slot,
                owner,
            } => {
                let room = target(room)?;
                self.create_stream(&room, name, slot.as_deref(), Some(owner))
                    .await?;
                info!(room = %room, stream = %name, slot = ?slot, "matrix: stream attached");
            }
            Effect::PutWidgets { room } => self.put_widgets(&target(room)?).await?,
            Effect::QueueStreamState { stream } => self.enqueue_state(stream, false).await?,
            Effect::Backfill { room } => {
                let room = target(room)?;
                if let Err(e) = self.backfill(&room).await {
                    warn!(room = %room, "matrix: chat backfill failed: {e}");
                }
            }
            Effect::DeliverKey { user, stream } => {
                self.deliver_key(user, stream, event, step).await?;
                info!(stream = %stream, to = %user, "matrix: stream key sent");
            }
            Effect::ObsLink { user, stream } => {
                self.deliver_obs_link(user, stream, event, step).await?;
                info!(stream = %stream, to = %user, "matrix: OBS profile link sent");
            }
            Effect::Detach { stream, room } => self.detach(stream, room).await?,
            Effect::Reply { room, text } => self.reply(room, text).await,
        }
        Ok(Ok(String::new()))
    }

    async fn run_command(
        self: &Arc<Self>,
        room: &str,
        sender: &str,
        in_dm: bool,
        cmd: Command,
        event: Option<&str>,
    ) -> Outcome {
        if commands::needs_admin(&cmd)
            && !matches!(
                cmd,
                Command::Key { .. }
                    | Command::Rotate { .. }
                    | Command::Obs { .. }
                    | Command::Detach { .. }
                    | Command::Link { .. }
                    | Command::Record { .. }
                    | Command::Attach { room: Some(_), .. }
                    | Command::Restream { .. }
            )
        {
            // Room-level admin commands: the power is checked in this room.
            if in_dm {
                return refuse("Say that in the room it is about, not in our direct chat.");
            }
            if !self.is_admin(room, sender).await? {
                return refuse(decisions::NOT_ADMIN);
            }
        }
        match cmd {
            Command::Restream { action, name } => {
                self.restream_command(room, sender, in_dm, action, name, event)
                    .await
            }
            c @ (Command::Follow { .. } | Command::Unfollow { .. }) => {
                self.follow_command(room, sender, in_dm, c).await.map(Ok)
            }
            c @ (Command::Record { .. }
            | Command::Recordings { .. }
            | Command::DeleteRecording { .. }) => {
                self.recording_command(room, sender, in_dm, c).await
            }
            Command::Help => {
                self.reply(room, commands::HELP).await;
                Ok(Ok(()))
            }
            Command::New { name } => {
                let level = self.perms.level_of(sender);
                let plan = decisions::decide_new(&NewFacts {
                    room,
                    sender,
                    name: &name,
                    level,
                    owned: self.owned_by(sender),
                    max_streams: self.cfg.max_streams_per_user,
                    name_taken: self.store.stream_exists(&name).await?,
                    alias: &self.alias_for(&name),
                });
                match plan {
                    Ok(plan) => self.plan(event, plan).await,
                    Err(refusal) => refuse(refusal),
                }
            }
            Command::Attach { name, room: None } => {
                self.attach(room, sender, &name, None, event).await
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
                    return refuse(decisions::NOT_ADMIN);
                }
                let r = self.attach(&target_id, sender, &name, None, event).await?;
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
                self.attach(room, sender, &name, Some(&name), event).await
            }
            Command::Slots(Slots::Remove { name }) => {
                match self.store.mapping(&name).await? {
                    Some(m) if m.room_id == room && m.slot.is_some() => {}
                    _ => return refuse(format!("'{name}' is not an extra slot of this room.")),
                }
                self.cmd_detach(room, sender, in_dm, Some(name), event)
                    .await
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
            Command::Slots(Slots::Obs) => {
                // Room admins only (checked above).
                let here = self.streams_of_room(room);
                match decisions::decide_obs(&here, sender, room, in_dm, true) {
                    Ok(plan) => self.plan(event, plan).await,
                    Err(refusal) => refuse(refusal),
                }
            }
            Command::Obs { name } => {
                let m = match self.resolve(room, in_dm, name) {
                    Ok(m) => m,
                    Err(r) => return refuse(r),
                };
                let may = self.may_manage(&m, sender).await?;
                match decisions::decide_obs(&[m], sender, room, in_dm, may) {
                    Ok(plan) => self.plan(event, plan).await,
                    Err(refusal) => refuse(refusal),
                }
            }
            Command::Detach { name } => self.cmd_detach(room, sender, in_dm, name, event).await,
            Command::Key { name } | Command::Rotate { name } => {
                let m = match self.resolve(room, in_dm, name) {
                    Ok(m) => m,
                    Err(r) => return refuse(r),
                };
                let may = self.may_manage(&m, sender).await?;
                match decisions::decide_key(&m, sender, room, in_dm, may) {
                    Ok(plan) => self.plan(event, plan).await,
                    Err(refusal) => refuse(refusal),
                }
            }
            Command::Status { name } => {
                let m = match self.resolve(room, in_dm, name) {
                    Ok(m) => m,
                    Err(r) => return refuse(r),
                };
                let Some(s) = self.hub.get(&m.stream) else {
                    return refuse(format!("Stream '{}' is not loaded.", m.stream));
                };
                let snap = s.snapshot();
                // Who manages it matters only for a private stream asked about in a DM.
                let may_manage = if in_dm && snap.access == Access::Private {
                    self.may_manage(&m, sender).await?
                } else {
                    false
                };
                let answer = decisions::decide_status(&StatusFacts {
                    stream: &m.stream,
                    title: &snap.title,
                    live: snap.live,
                    viewers: snap.viewers,
                    access: snap.access,
                    in_dm,
                    may_manage,
                    watch_url: &self.watch_url(&m.stream),
                });
                match answer {
                    Ok(text) => {
                        self.reply(room, &text).await;
                        Ok(Ok(()))
                    }
                    Err(refusal) => refuse(refusal),
                }
            }
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
            Command::Party { on, notices } => self.cmd_party(room, on, notices).await,
            Command::Link { secs, name } => {
                let m = match self.resolve(room, in_dm, name) {
                    Ok(m) => m,
                    Err(r) => return refuse(r),
                };
                if !self.may_manage(&m, sender).await? {
                    return refuse(decisions::NOT_ADMIN);
                }
                let exp = super::unix_now() + secs;
                let token = self.tokens.sign(&m.stream, exp);
                let url = format!("{}?access={token}", self.watch_url(&m.stream));
                self.reply(
                    room,
                    &format!(
                        "Viewer link for '{}', valid for {}: {url}",
                        m.stream,
                        super::text::format_duration(secs)
                    ),
                )
                .await;
                Ok(Ok(()))
            }
        }
    }

    /// Attaches a new stream to `room` (main stream, or a slot).
    async fn attach(
        self: &Arc<Self>,
        room: &str,
        sender: &str,
        name: &str,
        slot: Option<&str>,
        event: Option<&str>,
    ) -> Outcome {
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
        let known = self.room_row(room);
        let encrypted = match &known {
            Some(r) => r.encrypted,
            None => self
                .state_event(room, "m.room.encryption", "")
                .await?
                .is_some(),
        };
        let plan = decisions::decide_attach(&AttachFacts {
            room,
            sender,
            name,
            slot,
            level: self.perms.level_of(sender),
            owned: self.owned_by(sender),
            max_streams: self.cfg.max_streams_per_user,
            name_taken: self.store.stream_exists(name).await?,
            room_streams: &self.streams_of_room(room),
            room_known: known.is_some(),
            encrypted,
            bot_level,
            needed,
            watch_url: &self.watch_url(name),
        });
        match plan {
            Ok(plan) => self.plan(event, plan).await,
            Err(refusal) => refuse(refusal),
        }
    }

    async fn cmd_detach(
        self: &Arc<Self>,
        room: &str,
        sender: &str,
        in_dm: bool,
        name: Option<String>,
        event: Option<&str>,
    ) -> Outcome {
        let m = match self.resolve(room, in_dm, name) {
            Ok(m) => m,
            Err(r) => return refuse(r),
        };
        let admin = self.is_admin(&m.room_id, sender).await?;
        match decisions::decide_detach(&m, room, admin) {
            Ok(plan) => self.plan(event, plan).await,
            Err(refusal) => refuse(refusal),
        }
    }

    /// Unmaps a stream, removes its widget and re-pins the others.
    async fn detach(&self, stream: &str, room: &str) -> Result<(), MatrixError> {
        self.store.unmap_stream(stream).await?;
        self.rooms.remove_stream(stream);
        if let Some(s) = self.hub.get(stream) {
            s.set_room(None);
            s.set_access(Access::Public);
            s.set_description(None);
        }
        // Remove the widget (empty content) and re-pin the remaining ones.
        let req = send_state_event::v3::Request::new_raw(
            room_id(room)?,
            StateEventType::from(WIDGET_TYPE),
            widget_id(stream),
            raw(&json!({}))?,
        );
        self.client.send(req, None).await?;
        self.put_layout(room).await?;
        info!(room = %room, stream = %stream, "matrix: stream detached");
        Ok(())
    }

    /// The stream a command is about: named, or this room's main stream.
    pub(super) fn resolve(
        &self,
        room: &str,
        in_dm: bool,
        name: Option<String>,
    ) -> Result<MappingRow, String> {
        self.rooms.resolve(room, in_dm, name.as_deref())
    }

    /// Streams `user` owns.
    fn owned_by(&self, user: &str) -> usize {
        self.rooms.owned_by(user)
    }

    /// Owners of a stream and admins of its room may manage it.
    pub(super) async fn may_manage(
        &self,
        m: &MappingRow,
        sender: &str,
    ) -> Result<bool, MatrixError> {
        if m.owner.as_deref() == Some(sender) {
            return Ok(true);
        }
        self.is_admin(&m.room_id, sender).await
    }

    /// The room of a new stream (public, the alias from the name, the owner
    /// invited with power 100); a refusal when the alias is taken.
    async fn create_stream_room(
        &self,
        owner: &str,
        name: &str,
    ) -> Result<Result<String, String>, MatrixError> {
        use ruma::api::client::room::create_room;
        let version = self.default_room_version().await?;
        let mut users = serde_json::Map::new();
        users.insert(owner.to_string(), json!(100));
        if !super::power::creators_privileged(&version) {
            users.insert(self.bot.to_string(), json!(100));
        }
        let mut req = create_room::v3::Request::new();
        req.preset = Some(create_room::v3::RoomPreset::PublicChat);
        req.name = Some(name.to_string());
        req.room_alias_name = Some(format!("{}{name}", self.cfg.alias_prefix));
        req.invite = vec![super::ids::user_id(owner)?];
        req.power_level_content_override = Some(raw(&json!({ "users": users }))?);
        match self.client.send(req, None).await {
            Ok(r) => Ok(Ok(r.room_id.to_string())),
            Err(e) if e.errcode() == Some("M_ROOM_IN_USE") => Ok(Err(format!(
                "The alias {} is taken; pick another name.",
                self.alias_for(name)
            ))),
            Err(e) => Err(e.into()),
        }
    }
}

fn command_name(c: &Command) -> &'static str {
    match c {
        Command::Help => "help",
        Command::New { .. } => "new",
        Command::Attach { .. } => "attach",
        Command::Detach { .. } => "detach",
        Command::Key { .. } => "key",
        Command::Rotate { .. } => "rotate",
        Command::Obs { .. } => "obs",
        Command::Status { .. } => "status",
        Command::Notify { .. } => "notify",
        Command::Slots(_) => "slots",
        Command::Link { .. } => "link",
        Command::Follow { .. } => "follow",
        Command::Unfollow { .. } => "unfollow",
        Command::Record { .. } => "record",
        Command::Recordings { .. } => "recordings",
        Command::DeleteRecording { .. } => "delete-recording",
        Command::Restream { .. } => "restream",
        Command::Party { .. } => "party",
    }
}
