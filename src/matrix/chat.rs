//! Chat relay: the room timeline becomes the pages' chat (SSE `chat` and
//! `redaction` events, with a backfill of recent history): formatted messages
//! through an allow-list, replies with their context, edits, reactions,
//! stickers and images (through the media proxy), avatars, display names told
//! apart. Guests of the watch page post plain text through puppet users named
//! "<name> (guest)". What a message looks like is `chat_view` (sans-I/O).

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use ruma::api::client::account::register;
use ruma::api::client::membership::{join_room_by_id, joined_members};
use ruma::api::client::message::get_message_events;
use ruma::api::client::message::send_message_event;
use ruma::api::client::room::get_room_event;
use ruma::events::MessageLikeEventType;
use ruma::serde::Raw;
use ruma::{OwnedRoomId, OwnedUserId};
use serde_json::json;
use tracing::{info, warn};

use super::chat_view::{self, Relation, ReplyTo};
use super::media_proxy::{Image, MediaError, MediaProxy, Size};
use super::registration::PUPPET_PREFIX;
use super::{Ev, HsError, Matrix, MatrixError};
use crate::hub::{ChatMessage, HubEvent};

/// Messages kept per room for the pages' history.
pub(super) const HISTORY: usize = 100;
/// Longest guest message, in characters.
pub const MAX_GUEST_CHARS: usize = 1000;
/// Longest display name kept, in characters.
const MAX_NAME_CHARS: usize = 128;

/// A token bucket: `burst` tokens, refilled at `per_sec`.
#[derive(Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// Keys a [`Limiter`] tracks at most, and the one the rest share (guest
/// ids and addresses are never empty).
const MAX_BUCKETS: usize = 10_000;
const OVERFLOW_KEY: &str = "";

pub(super) struct Limiter {
    burst: f64,
    per_sec: f64,
    buckets: HashMap<String, Bucket>,
}

impl Limiter {
    pub(super) fn new(burst: f64, per_sec: f64) -> Self {
        Limiter {
            burst,
            per_sec,
            buckets: HashMap::new(),
        }
    }

    /// Takes a token, or says how long until one is there.
    pub(super) fn take(&mut self, key: &str) -> Result<(), Duration> {
        let now = Instant::now();
        let new_key = !self.buckets.contains_key(key);
        if new_key && self.buckets.len() >= MAX_BUCKETS {
            // Forget full buckets: they would allow the burst anyway.
            let (burst, rate) = (self.burst, self.per_sec);
            self.buckets
                .retain(|_, b| b.tokens + now.duration_since(b.at).as_secs_f64() * rate < burst);
        }
        // Still full of keys in use (many guests or addresses at once): new
        // keys share one bucket, so the map stays bounded and they are still
        // limited, together.
        let key = if new_key && self.buckets.len() >= MAX_BUCKETS {
            OVERFLOW_KEY
        } else {
            key
        };
        let b = self.buckets.entry(key.to_string()).or_insert(Bucket {
            tokens: self.burst,
            at: now,
        });
        b.tokens =
            (b.tokens + now.duration_since(b.at).as_secs_f64() * self.per_sec).min(self.burst);
        b.at = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - b.tokens) / self.per_sec))
        }
    }
}

/// The pages' chat of the mapped rooms: each room's recent messages as the
/// pages get them, the members' names and avatars, the reactions counted, the
/// media proxy for its images, and the guests' limits. The relay, backfill
/// and guest entry points are `Matrix` methods below (they need the client
/// and the hub).
pub struct Chat {
    /// Recent messages per room, oldest first ([`HISTORY`] at most).
    pub(super) history: Mutex<HashMap<String, VecDeque<Arc<ChatMessage>>>>,
    members: Mutex<Members>,
    reactions: Mutex<Reactions>,
    media: MediaProxy,
    limits: Limits,
}

impl Chat {
    pub fn new(homeserver_url: &str, as_token: &str) -> Chat {
        Chat {
            history: Mutex::new(HashMap::new()),
            members: Mutex::new(Members::default()),
            reactions: Mutex::new(Reactions::default()),
            media: MediaProxy::new(homeserver_url, as_token),
            limits: Limits::default(),
        }
    }

    /// A room's chat history, oldest first.
    pub fn history_of(&self, room: &str) -> Vec<Arc<ChatMessage>> {
        self.history
            .lock()
            .get(room)
            .map(|q| q.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// Forgets a room's history (the bot lost the room).
    pub fn clear_room(&self, room: &str) {
        self.history.lock().remove(room);
    }

    /// Who sent a message of the history (None when it is not there).
    pub fn sender_of(&self, room: &str, id: &str) -> Option<String> {
        self.history
            .lock()
            .get(room)?
            .iter()
            .find(|m| m.id == id)
            .map(|m| m.sender_id.clone())
    }
}

/// Per-guest and per-IP limits of the watch page's chat and guest creation.
pub struct Limits {
    guest_msgs: Mutex<Limiter>,
    ip_msgs: Mutex<Limiter>,
    ip_guests: Mutex<Limiter>,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            // A guest: 5 messages at once, then one every 2 s.
            guest_msgs: Mutex::new(Limiter::new(5.0, 0.5)),
            // One address (many guests behind a NAT): 20 at once, then 2 a second.
            ip_msgs: Mutex::new(Limiter::new(20.0, 2.0)),
            // New guests per address: 10 at once, then one a minute.
            ip_guests: Mutex::new(Limiter::new(10.0, 1.0 / 60.0)),
        }
    }
}

/// Why a guest could not post.
#[derive(Debug)]
pub enum GuestError {
    BadToken,
    NoChat,
    Banned,
    /// The room is not public: its puppet cannot join, nothing to do with bans.
    MembersOnly,
    RateLimited(Duration),
    Unavailable(String),
}

/// Display names cached (room, user) in all rooms; past this the cache starts
/// again (names are fetched again when needed).
const MAX_MEMBERS: usize = 20_000;
/// Reactions remembered (so their redaction uncounts them).
const MAX_REACTIONS: usize = 20_000;

/// A room member as the chat shows it.
#[derive(Debug, Clone, Default)]
struct Member {
    name: Option<String>,
    /// `server/media_id` of the avatar on the media proxy.
    avatar: Option<String>,
}

/// The members of the mapped rooms: display names (told apart when two are
/// the same) and avatars.
#[derive(Default)]
struct Members {
    rooms: HashMap<String, HashMap<String, Member>>,
    count: usize,
}

impl Members {
    fn set(&mut self, room: &str, user: &str, member: Member) {
        if self.count >= MAX_MEMBERS {
            self.rooms.clear();
            self.count = 0;
        }
        let old = self
            .rooms
            .entry(room.to_string())
            .or_default()
            .insert(user.to_string(), member);
        if old.is_none() {
            self.count += 1;
        }
    }

    fn remove(&mut self, room: &str, user: &str) {
        if let Some(r) = self.rooms.get_mut(room)
            && r.remove(user).is_some()
        {
            self.count -= 1;
        }
    }

    fn get(&self, room: &str, user: &str) -> Option<&Member> {
        self.rooms.get(room)?.get(user)
    }

    /// The name the chat shows for `user` (see [`chat_view::shown_name`]).
    fn shown(&self, room: &str, user: &str) -> String {
        let name = self.get(room, user).and_then(|m| m.name.as_deref());
        let others = self.rooms.get(room).into_iter().flat_map(|r| {
            r.iter()
                .filter_map(|(u, m)| Some((u.as_str(), m.name.as_deref()?)))
        });
        chat_view::shown_name(user, name, others)
    }

    fn has_avatar(&self, room: &str, path: &str) -> bool {
        self.rooms
            .get(room)
            .is_some_and(|r| r.values().any(|m| m.avatar.as_deref() == Some(path)))
    }
}

/// Reactions counted under messages, by the reaction's event id: a
/// redelivered reaction counts once, a redacted one is taken off again.
#[derive(Default)]
struct Reactions {
    by_id: HashMap<String, (String, String)>,
}

impl Reactions {
    /// Remembers a reaction; false when it was already counted.
    fn add(&mut self, id: &str, target: &str, key: &str) -> bool {
        if self.by_id.contains_key(id) {
            return false;
        }
        if self.by_id.len() >= MAX_REACTIONS {
            self.by_id.clear();
        }
        self.by_id
            .insert(id.to_string(), (target.to_string(), key.to_string()));
        true
    }
}

fn member_of(content: &serde_json::Value) -> Member {
    Member {
        name: content["displayname"]
            .as_str()
            .map(|n| n.chars().take(MAX_NAME_CHARS).collect()),
        avatar: content["avatar_url"].as_str().and_then(chat_view::mxc_path),
    }
}

impl Matrix {
    /// The name the chat shows for `user` in `room` (the member event is
    /// fetched the first time).
    async fn display_name(&self, room: &str, user: &str) -> String {
        if self.chat.members.lock().get(room, user).is_none() {
            let member = match self.state_event(room, "m.room.member", user).await {
                Ok(Some(ev)) => member_of(&ev["content"]),
                _ => Member::default(),
            };
            self.chat.members.lock().set(room, user, member);
        }
        self.chat.members.lock().shown(room, user)
    }

    /// Caches a member's display name (kept to [`MAX_NAME_CHARS`]). The
    /// room code now hands over whole member events ([`Self::remember_member`]);
    /// this stays for callers that know only the name.
    #[allow(dead_code)]
    pub(super) fn remember_name(&self, room: &str, user: &str, name: &str) {
        let mut members = self.chat.members.lock();
        let avatar = members.get(room, user).and_then(|m| m.avatar.clone());
        let name = Some(name.chars().take(MAX_NAME_CHARS).collect());
        members.set(room, user, Member { name, avatar });
    }

    /// `server/media_id` of a member's avatar as the chat knows it (the
    /// media proxy serves it for the room's streams).
    pub(super) fn member_avatar(&self, room: &str, user: &str) -> Option<String> {
        self.chat.members.lock().get(room, user)?.avatar.clone()
    }

    /// A member event's content (`m.room.member`): a joined member's name
    /// and avatar are kept, one who left or was banned is forgotten.
    pub(super) fn remember_member(&self, room: &str, user: &str, content: &serde_json::Value) {
        let mut members = self.chat.members.lock();
        match content["membership"].as_str() {
            Some("join") => members.set(room, user, member_of(content)),
            Some("leave" | "ban") => members.remove(room, user),
            _ => {}
        }
    }

    /// A chat message for the pages, or None for what is not chat (commands,
    /// the bot's own notices, edits, reactions, thread replies, empty bodies).
    /// A reply's quoted context is looked up in `earlier`, the history, or
    /// the homeserver.
    pub(super) async fn to_chat(
        &self,
        room: &str,
        ev: &Ev,
        earlier: &VecDeque<Arc<ChatMessage>>,
    ) -> Option<ChatMessage> {
        let id = ev.event_id.clone()?;
        if ev.sender == self.bot.as_str() {
            return None;
        }
        let reply = match chat_view::relation(&ev.content) {
            Relation::None => None,
            Relation::Reply(to) => Some(to),
            Relation::Thread | Relation::Replace(_) | Relation::Annotation { .. } => return None,
        };
        let raw = ev.content["body"].as_str().unwrap_or("");
        if ev.kind == "m.room.message" && raw.trim_start().starts_with(super::commands::PREFIX) {
            return None;
        }
        let (body, mut rich) = chat_view::render(&ev.kind, &ev.content)?;
        if let Some(to) = reply {
            rich.reply_to = Some(self.reply_context(room, &to, earlier).await);
        }
        let sender = self.display_name(room, &ev.sender).await;
        rich.avatar = self
            .chat
            .members
            .lock()
            .get(room, &ev.sender)
            .and_then(|m| m.avatar.clone());
        Some(ChatMessage {
            id,
            sender,
            sender_id: ev.sender.clone(),
            body,
            ts: ev.origin_server_ts,
            guest: self.is_puppet(&ev.sender),
            rich,
        })
    }

    /// What a reply quotes: the original from `earlier`, the history, or the
    /// homeserver; only its id when none has it (too old, redacted).
    async fn reply_context(
        &self,
        room: &str,
        to: &str,
        earlier: &VecDeque<Arc<ChatMessage>>,
    ) -> ReplyTo {
        let known = earlier.iter().find(|m| m.id == to).cloned().or_else(|| {
            self.chat
                .history
                .lock()
                .get(room)
                .and_then(|q| q.iter().find(|m| m.id == to).cloned())
        });
        if let Some(m) = known {
            return chat_view::quote(&m);
        }
        let unknown = ReplyTo {
            id: to.to_string(),
            ..ReplyTo::default()
        };
        let (Ok(rid), Ok(eid)) = (
            OwnedRoomId::try_from(room),
            ruma::OwnedEventId::try_from(to),
        ) else {
            return unknown;
        };
        let req = get_room_event::v3::Request::new(rid, eid);
        let Ok(r) = self.client.send(req, None).await else {
            return unknown;
        };
        let Ok(ev) = r.event.deserialize_as_unchecked::<Ev>() else {
            return unknown;
        };
        match chat_view::render(&ev.kind, &ev.content) {
            Some((body, _)) => ReplyTo {
                id: to.to_string(),
                sender: Some(self.display_name(room, &ev.sender).await),
                body: Some(body.chars().take(200).collect()),
            },
            None => unknown,
        }
    }

    /// Sends a new or changed message to the pages of the room's streams.
    fn publish(&self, room: &str, msg: &Arc<ChatMessage>) {
        self.chat_to_cluster(room, msg);
        self.publish_here(room, msg);
    }

    /// Sends a message to this node's pages of the room's streams.
    pub(super) fn publish_here(&self, room: &str, msg: &Arc<ChatMessage>) {
        for m in self.streams_of_room(room) {
            self.hub.send_event(HubEvent::Chat {
                stream: m.stream,
                message: msg.clone(),
            });
        }
    }

    /// An edit or a reaction applied to `history`: the changed message.
    fn apply_relation(
        &self,
        history: &mut VecDeque<Arc<ChatMessage>>,
        ev: &Ev,
    ) -> Option<Arc<ChatMessage>> {
        match chat_view::relation(&ev.content) {
            Relation::Replace(target) if ev.kind == "m.room.message" => chat_view::apply_edit(
                history,
                &ev.sender,
                &target,
                &ev.kind,
                &ev.content["m.new_content"],
            ),
            Relation::Annotation { target, key } if ev.kind == "m.reaction" => {
                let id = ev.event_id.as_deref()?;
                if !history.iter().any(|m| m.id == target)
                    || !self.chat.reactions.lock().add(id, &target, &key)
                {
                    return None;
                }
                chat_view::apply_reaction(history, &target, &key, 1)
            }
            _ => None,
        }
    }

    /// A message, sticker, edit or reaction from a transaction: into the
    /// history and onto the SSE feeds.
    pub(super) async fn relay_message(&self, room: &str, ev: &Ev) {
        if self.room_row(room).is_some_and(|r| r.encrypted) {
            return;
        }
        if matches!(
            chat_view::relation(&ev.content),
            Relation::Replace(_) | Relation::Annotation { .. }
        ) {
            let changed = {
                let mut chat = self.chat.history.lock();
                chat.get_mut(room).and_then(|q| self.apply_relation(q, ev))
            };
            if let Some(msg) = changed {
                self.publish(room, &msg);
            }
            return;
        }
        let Some(msg) = self.to_chat(room, ev, &VecDeque::new()).await else {
            return;
        };
        let msg = Arc::new(msg);
        {
            let mut chat = self.chat.history.lock();
            let q = chat.entry(room.to_string()).or_default();
            if q.iter().any(|m| m.id == msg.id) {
                return;
            }
            q.push_back(msg.clone());
            while q.len() > HISTORY {
                q.pop_front();
            }
        }
        self.publish(room, &msg);
    }

    pub(super) fn relay_redaction(&self, room: &str, target: &str) {
        // A redacted reaction is taken off its message's count.
        let reaction = self.chat.reactions.lock().by_id.remove(target);
        if let Some((message, key)) = reaction {
            let changed = {
                let mut chat = self.chat.history.lock();
                chat.get_mut(room)
                    .and_then(|q| chat_view::apply_reaction(q, &message, &key, -1))
            };
            if let Some(msg) = changed {
                self.publish(room, &msg);
            }
            return;
        }
        let removed = {
            let mut chat = self.chat.history.lock();
            chat.get_mut(room).is_some_and(|q| {
                let before = q.len();
                q.retain(|m| m.id != target);
                q.len() != before
            })
        };
        self.redaction_to_cluster(room, target);
        self.redaction_here(room, target);
        info!(room = %room, removed, "matrix: chat message redacted");
    }

    /// Tells this node's pages of the room's streams that `target` is gone.
    pub(super) fn redaction_here(&self, room: &str, target: &str) {
        // Tell pages even when the message is older than the kept history.
        for m in self.streams_of_room(room) {
            self.hub.send_event(HubEvent::Redaction {
                stream: m.stream,
                id: target.to_string(),
            });
        }
    }

    /// Loads the room's members (names and avatars) and recent events (newest
    /// 50) as the chat history, with their edits and reactions applied.
    pub(super) async fn backfill(&self, room: &str) -> Result<(), MatrixError> {
        let rid = OwnedRoomId::try_from(room).map_err(|e| HsError::Protocol(e.to_string()))?;
        let members = self
            .client
            .send(joined_members::v3::Request::new(rid.clone()), None)
            .await?;
        {
            let mut known = self.chat.members.lock();
            for (user, m) in &members.joined {
                let member = Member {
                    name: m
                        .display_name
                        .as_deref()
                        .map(|n| n.chars().take(MAX_NAME_CHARS).collect()),
                    avatar: m
                        .avatar_url
                        .as_ref()
                        .and_then(|u| chat_view::mxc_path(u.as_str())),
                };
                known.set(room, user.as_str(), member);
            }
        }
        let mut req = get_message_events::v3::Request::new(rid, ruma::api::Direction::Backward);
        req.limit = 50u32.into();
        let r = self.client.send(req, None).await?;
        let mut msgs = VecDeque::new();
        for raw in r.chunk.iter().rev() {
            let Ok(ev) = raw.deserialize_as_unchecked::<Ev>() else {
                continue;
            };
            if !matches!(
                ev.kind.as_str(),
                "m.room.message" | "m.sticker" | "m.reaction"
            ) {
                continue;
            }
            if self.apply_relation(&mut msgs, &ev).is_some() {
                continue;
            }
            if let Some(m) = self.to_chat(room, &ev, &msgs).await {
                msgs.push_back(Arc::new(m));
                // An edit older than the page of events read comes bundled
                // with its message (`unsigned.m.relations.m.replace`).
                if let Ok(full) = raw.deserialize_as_unchecked::<serde_json::Value>()
                    && let Ok(edit) = serde_json::from_value::<Ev>(
                        full["unsigned"]["m.relations"]["m.replace"].clone(),
                    )
                {
                    self.apply_relation(&mut msgs, &edit);
                }
            }
        }
        let n = msgs.len();
        let new: Vec<Arc<ChatMessage>> = {
            let mut chat = self.chat.history.lock();
            let q = chat.entry(room.to_string()).or_default();
            let new = msgs
                .iter()
                .filter(|m| !q.iter().any(|x| x.id == m.id))
                .cloned()
                .collect();
            // Keep live messages that arrived meanwhile.
            for m in q.drain(..) {
                if !msgs.iter().any(|x| x.id == m.id) {
                    msgs.push_back(m);
                }
            }
            while msgs.len() > HISTORY {
                msgs.pop_front();
            }
            *q = msgs;
            new
        };
        // Pages that subscribed before the history was loaded get it now.
        for msg in new {
            self.publish(room, &msg);
        }
        info!(room = %room, messages = n, "matrix: chat history loaded");
        Ok(())
    }

    /// An image of a stream's chat (a picture, sticker, video thumbnail or
    /// avatar of its room's messages or members) through the media proxy.
    /// The caller has admitted the viewer to the stream; only media the chat
    /// shows are fetched, so the proxy cannot be used to read any other.
    pub async fn chat_media(
        &self,
        stream: &str,
        server: &str,
        media_id: &str,
        size: Size,
    ) -> Result<Image, MediaError> {
        if !chat_view::valid_media_ref(server, media_id) {
            return Err(MediaError::NotReferenced);
        }
        let path = format!("{server}/{media_id}");
        let Some((m, room)) = self.room_of_stream(stream) else {
            return Err(MediaError::NotReferenced);
        };
        if room.encrypted {
            return Err(MediaError::NotReferenced);
        }
        let shown = self.chat.history.lock().get(&m.room_id).is_some_and(|q| {
            q.iter().any(|msg| {
                msg.rich.media.as_ref().is_some_and(|x| x.path == path)
                    || msg.rich.avatar.as_deref() == Some(&path)
            })
        }) || self.chat.members.lock().has_avatar(&m.room_id, &path);
        if !shown {
            return Err(MediaError::NotReferenced);
        }
        self.chat.media.get(&path, size).await
    }

    // --- guests ----------------------------------------------------------------------

    /// Creates a guest: a puppet user with the display name "<name> (guest)".
    /// Returns the guest's token and display name.
    pub async fn create_guest(
        &self,
        name: &str,
        ip: IpAddr,
    ) -> Result<(String, String), GuestError> {
        if let Err(wait) = self.chat.limits.ip_guests.lock().take(&ip_key(ip)) {
            return Err(GuestError::RateLimited(wait));
        }
        let localpart = format!("{PUPPET_PREFIX}g{}", hex::encode(rand::random::<[u8; 8]>()));
        let mut req = register::v3::Request::new();
        req.username = Some(localpart.clone());
        req.login_type = Some(register::LoginType::ApplicationService);
        req.inhibit_login = true;
        let user = self
            .client
            .send(req, None)
            .await
            .map_err(|e| GuestError::Unavailable(e.to_string()))?
            .user_id;
        let display = format!("{name} (guest)");
        #[allow(deprecated)]
        let req = ruma::api::client::profile::set_display_name::v3::Request::new(
            user.clone(),
            Some(display.clone()),
        );
        self.client
            .send(req, Some(&user))
            .await
            .map_err(|e| GuestError::Unavailable(e.to_string()))?;
        let token = format!("g_{}", hex::encode(rand::random::<[u8; 24]>()));
        self.store
            .create_guest(
                &crate::auth::keys::hash_key_hex(&token),
                user.as_str(),
                name,
            )
            .await
            .map_err(|e| GuestError::Unavailable(e.to_string()))?;
        info!(guest = %user, "matrix: guest created");
        Ok((token, display))
    }

    /// Posts a guest's message to a stream's room as the guest's puppet.
    pub async fn post_guest_message(
        &self,
        stream: &str,
        token: &str,
        body: &str,
        ip: IpAddr,
    ) -> Result<String, GuestError> {
        let guest = self
            .store
            .guest_by_token_hash(&crate::auth::keys::hash_key_hex(token))
            .await
            .map_err(|e| GuestError::Unavailable(e.to_string()))?
            .ok_or(GuestError::BadToken)?;
        let Some((m, room)) = self.room_of_stream(stream) else {
            return Err(GuestError::NoChat);
        };
        // Encrypted rooms cannot be read; a lost room has no chat to post to.
        if room.encrypted
            || self
                .hub
                .get(stream)
                .is_some_and(|s| s.room_lost().is_some())
        {
            return Err(GuestError::NoChat);
        }
        let state = self
            .store
            .guest_room_state(&guest.user_id, &m.room_id)
            .await
            .map_err(|e| GuestError::Unavailable(e.to_string()))?;
        if state == Some(true) {
            return Err(GuestError::Banned);
        }
        if let Err(wait) = self.chat.limits.guest_msgs.lock().take(&guest.user_id) {
            return Err(GuestError::RateLimited(wait));
        }
        if let Err(wait) = self.chat.limits.ip_msgs.lock().take(&ip_key(ip)) {
            return Err(GuestError::RateLimited(wait));
        }
        let user = OwnedUserId::try_from(guest.user_id.as_str())
            .map_err(|e| GuestError::Unavailable(e.to_string()))?;
        let rid = OwnedRoomId::try_from(m.room_id.as_str())
            .map_err(|e| GuestError::Unavailable(e.to_string()))?;
        let forbidden = |e: &HsError| matches!(e.errcode(), Some("M_FORBIDDEN"));
        if state.is_none() {
            match self
                .client
                .send(join_room_by_id::v3::Request::new(rid.clone()), Some(&user))
                .await
            {
                Ok(_) => {
                    let _ = self
                        .store
                        .set_guest_room_state(&guest.user_id, &m.room_id, false)
                        .await;
                }
                Err(e) if forbidden(&e) && room.join_rule != "public" => {
                    return Err(GuestError::MembersOnly);
                }
                Err(e) if forbidden(&e) => {
                    let _ = self
                        .store
                        .set_guest_room_state(&guest.user_id, &m.room_id, true)
                        .await;
                    return Err(GuestError::Banned);
                }
                Err(e) => return Err(GuestError::Unavailable(e.to_string())),
            }
        }
        let content = json!({"msgtype": "m.text", "body": body, "m.mentions": {}});
        let raw = serde_json::value::to_raw_value(&content)
            .map_err(|e| GuestError::Unavailable(e.to_string()))?;
        let req = send_message_event::v3::Request::new_raw(
            rid,
            super::ids::new_txn_id().as_str().into(),
            MessageLikeEventType::RoomMessage,
            Raw::from_json(raw),
        );
        match self.client.send(req, Some(&user)).await {
            Ok(r) => Ok(r.event_id.to_string()),
            Err(e) if forbidden(&e) => {
                let _ = self
                    .store
                    .set_guest_room_state(&guest.user_id, &m.room_id, true)
                    .await;
                warn!(guest = %guest.user_id, room = %m.room_id, "matrix: guest refused by the homeserver");
                Err(GuestError::Banned)
            }
            Err(e) => Err(GuestError::Unavailable(e.to_string())),
        }
    }
}

/// The key of an address's limits: IPv4 addresses one by one, IPv6 by /64
/// (one subscriber gets a whole /64 and can rotate through it freely).
fn ip_key(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => v4.to_string(),
            None => {
                let s = v6.segments();
                format!("{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3])
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_limits_then_refills() {
        let mut l = Limiter::new(2.0, 10.0);
        assert!(l.take("a").is_ok());
        assert!(l.take("a").is_ok());
        let wait = l.take("a").unwrap_err();
        assert!(wait <= Duration::from_millis(100));
        assert!(l.take("b").is_ok(), "buckets are per key");
    }

    /// More keys in use than it tracks: the map stops growing and the new
    /// keys share one bucket (so they are limited together, not let through).
    #[test]
    fn a_limiter_full_of_keys_in_use_stays_bounded() {
        let mut l = Limiter::new(2.0, 0.001);
        for i in 0..MAX_BUCKETS {
            assert!(l.take(&format!("k{i}")).is_ok());
        }
        assert_eq!(l.buckets.len(), MAX_BUCKETS);
        // Each new key now draws on the shared bucket: two go through (its
        // burst), the third waits.
        assert!(l.take("new-1").is_ok());
        assert!(l.take("new-2").is_ok());
        assert!(l.take("new-3").is_err());
        assert_eq!(l.buckets.len(), MAX_BUCKETS + 1);
        // Keys already tracked keep their own bucket.
        assert!(l.take("k0").is_ok());
    }

    #[test]
    fn ipv6_limits_are_per_64() {
        let a: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:ffff:ffff:ffff:fffe".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(ip_key(a), ip_key(b));
        assert_ne!(ip_key(a), ip_key(c));
        assert_eq!(ip_key("::ffff:192.0.2.7".parse().unwrap()), "192.0.2.7");
        assert_ne!(
            ip_key("192.0.2.7".parse().unwrap()),
            ip_key("192.0.2.8".parse().unwrap())
        );
        // A guest rotating addresses inside its /64 shares one allowance.
        let mut l = Limiter::new(2.0, 0.001);
        assert!(l.take(&ip_key(a)).is_ok());
        assert!(l.take(&ip_key(b)).is_ok());
        assert!(
            l.take(&ip_key("2001:db8:1:2::99".parse().unwrap()))
                .is_err()
        );
        assert!(l.take(&ip_key(c)).is_ok());
    }
}
