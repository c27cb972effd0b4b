//! Chat relay: the room timeline becomes the pages' chat (SSE `chat` and
//! `redaction` events, with a backfill of recent history), and guests of the
//! watch page post through puppet users named "<name> (guest)".

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use ruma::api::client::account::register;
use ruma::api::client::membership::join_room_by_id;
use ruma::api::client::message::get_message_events;
use ruma::api::client::message::send_message_event;
use ruma::events::MessageLikeEventType;
use ruma::serde::Raw;
use ruma::{OwnedRoomId, OwnedUserId};
use serde_json::json;
use tracing::{info, warn};

use super::registration::PUPPET_PREFIX;
use super::{Ev, HsError, Matrix, MatrixError};
use crate::hub::{ChatMessage, HubEvent};

/// Messages kept per room for the pages' history.
const HISTORY: usize = 100;
/// Longest guest message, in characters.
pub const MAX_GUEST_CHARS: usize = 1000;
/// Longest relayed message body, in characters (Matrix allows ~64 KB events).
const MAX_RELAY_CHARS: usize = 4000;
/// Display names cached (room, user); a join in any room adds one.
const MAX_NAMES: usize = 20_000;
/// Longest display name kept, in characters.
const MAX_NAME_CHARS: usize = 128;

/// A token bucket: `burst` tokens, refilled at `per_sec`.
#[derive(Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

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
        if self.buckets.len() > 10_000 {
            // Forget full buckets so the map stays bounded.
            let (burst, rate) = (self.burst, self.per_sec);
            self.buckets
                .retain(|_, b| b.tokens + now.duration_since(b.at).as_secs_f64() * rate < burst);
        }
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

impl Matrix {
    fn display_name_cached(&self, room: &str, user: &str) -> Option<String> {
        self.names
            .lock()
            .get(&(room.to_string(), user.to_string()))
            .cloned()
    }

    async fn display_name(&self, room: &str, user: &str) -> String {
        if let Some(n) = self.display_name_cached(room, user) {
            return n;
        }
        let name = match self.state_event(room, "m.room.member", user).await {
            Ok(Some(ev)) => ev["content"]["displayname"].as_str().map(str::to_string),
            _ => None,
        }
        .unwrap_or_else(|| localpart(user).to_string());
        self.remember_name(room, user, &name);
        name
    }

    /// Caches a member's display name. The cache is bounded: past
    /// [`MAX_NAMES`] it starts again (names are fetched again when needed),
    /// and a name is kept to [`MAX_NAME_CHARS`].
    pub(super) fn remember_name(&self, room: &str, user: &str, name: &str) {
        let name: String = name.chars().take(MAX_NAME_CHARS).collect();
        let mut names = self.names.lock();
        if names.len() >= MAX_NAMES {
            names.clear();
        }
        names.insert((room.to_string(), user.to_string()), name);
    }

    /// A chat message for the pages, or None for what is not chat (commands,
    /// the bot's own notices, edits, empty bodies).
    async fn to_chat(&self, room: &str, ev: &Ev) -> Option<ChatMessage> {
        let id = ev.event_id.clone()?;
        if ev.sender == self.bot.as_str() {
            return None;
        }
        if ev.content["m.relates_to"]["rel_type"].as_str() == Some("m.replace") {
            return None;
        }
        let msgtype = ev.content["msgtype"].as_str().unwrap_or("");
        let body = ev.content["body"].as_str()?;
        if body.trim().is_empty() || body.trim_start().starts_with(super::commands::PREFIX) {
            return None;
        }
        let body = match msgtype {
            "m.text" | "m.notice" => body.to_string(),
            "m.emote" => format!("* {body}"),
            "m.image" | "m.video" | "m.audio" | "m.file" => format!("[{}] {body}", &msgtype[2..]),
            _ => return None,
        };
        let body: String = body.chars().take(MAX_RELAY_CHARS).collect();
        let sender = self.display_name(room, &ev.sender).await;
        Some(ChatMessage {
            id,
            sender,
            sender_id: ev.sender.clone(),
            body,
            ts: ev.origin_server_ts,
            guest: self.is_puppet(&ev.sender),
        })
    }

    /// An edit (`m.replace`) of a message in the history, by its own sender:
    /// the message with its new text, under the original id (pages replace it).
    fn edited(&self, room: &str, ev: &Ev) -> Option<Arc<ChatMessage>> {
        let rel = &ev.content["m.relates_to"];
        if rel["rel_type"].as_str() != Some("m.replace") {
            return None;
        }
        let target = rel["event_id"].as_str()?;
        let body = ev.content["m.new_content"]["body"].as_str()?;
        if body.trim().is_empty() {
            return None;
        }
        let mut chat = self.chat.lock();
        let q = chat.get_mut(room)?;
        let slot = q
            .iter_mut()
            .find(|m| m.id == target && m.sender_id == ev.sender)?;
        let mut msg = (**slot).clone();
        msg.body = body.chars().take(MAX_RELAY_CHARS).collect();
        *slot = Arc::new(msg);
        Some(slot.clone())
    }

    /// A message from a transaction: into the history and onto the SSE feeds.
    pub(super) async fn relay_message(&self, room: &str, ev: &Ev) {
        if self.room_row(room).is_some_and(|r| r.encrypted) {
            return;
        }
        if let Some(msg) = self.edited(room, ev) {
            for m in self.streams_of_room(room) {
                self.hub.send_event(HubEvent::Chat {
                    stream: m.stream,
                    message: msg.clone(),
                });
            }
            return;
        }
        let Some(msg) = self.to_chat(room, ev).await else {
            return;
        };
        let msg = Arc::new(msg);
        {
            let mut chat = self.chat.lock();
            let q = chat.entry(room.to_string()).or_default();
            if q.iter().any(|m| m.id == msg.id) {
                return;
            }
            q.push_back(msg.clone());
            while q.len() > HISTORY {
                q.pop_front();
            }
        }
        for m in self.streams_of_room(room) {
            self.hub.send_event(HubEvent::Chat {
                stream: m.stream,
                message: msg.clone(),
            });
        }
    }

    pub(super) fn relay_redaction(&self, room: &str, target: &str) {
        let removed = {
            let mut chat = self.chat.lock();
            chat.get_mut(room).is_some_and(|q| {
                let before = q.len();
                q.retain(|m| m.id != target);
                q.len() != before
            })
        };
        // Tell pages even when the message is older than the kept history.
        for m in self.streams_of_room(room) {
            self.hub.send_event(HubEvent::Redaction {
                stream: m.stream,
                id: target.to_string(),
            });
        }
        info!(room = %room, removed, "matrix: chat message redacted");
    }

    /// Loads the room's recent messages (newest 50) as the chat history.
    pub(super) async fn backfill(&self, room: &str) -> Result<(), MatrixError> {
        let rid = OwnedRoomId::try_from(room).map_err(|e| HsError::Protocol(e.to_string()))?;
        let mut req = get_message_events::v3::Request::new(rid, ruma::api::Direction::Backward);
        req.limit = 50u32.into();
        let r = self.client.send(req, None).await?;
        for raw in &r.state {
            if let Ok(ev) = raw.deserialize_as_unchecked::<Ev>()
                && ev.kind == "m.room.member"
                && let (Some(user), Some(name)) =
                    (ev.state_key.as_deref(), ev.content["displayname"].as_str())
            {
                self.remember_name(room, user, name);
            }
        }
        let mut msgs = VecDeque::new();
        for raw in r.chunk.iter().rev() {
            let Ok(ev) = raw.deserialize_as_unchecked::<Ev>() else {
                continue;
            };
            if ev.kind == "m.room.message"
                && let Some(m) = self.to_chat(room, &ev).await
            {
                msgs.push_back(Arc::new(m));
            }
        }
        let n = msgs.len();
        let new: Vec<Arc<ChatMessage>> = {
            let mut chat = self.chat.lock();
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
            for m in self.streams_of_room(room) {
                self.hub.send_event(HubEvent::Chat {
                    stream: m.stream,
                    message: msg.clone(),
                });
            }
        }
        info!(room = %room, messages = n, "matrix: chat history loaded");
        Ok(())
    }

    // --- guests ----------------------------------------------------------------------

    /// Creates a guest: a puppet user with the display name "<name> (guest)".
    /// Returns the guest's token and display name.
    pub async fn create_guest(
        &self,
        name: &str,
        ip: IpAddr,
    ) -> Result<(String, String), GuestError> {
        if let Err(wait) = self.limits.ip_guests.lock().take(&ip_key(ip)) {
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
        if room.encrypted {
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
        if let Err(wait) = self.limits.guest_msgs.lock().take(&guest.user_id) {
            return Err(GuestError::RateLimited(wait));
        }
        if let Err(wait) = self.limits.ip_msgs.lock().take(&ip_key(ip)) {
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
            super::notices::new_txn_id().as_str().into(),
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

fn localpart(user: &str) -> &str {
    user.strip_prefix('@')
        .and_then(|u| u.split(':').next())
        .unwrap_or(user)
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

    #[test]
    fn localparts() {
        assert_eq!(localpart("@alice:example.org"), "alice");
        assert_eq!(localpart("weird"), "weird");
    }
}
