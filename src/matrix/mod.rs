//! The Matrix application service: streams are rooms. Room names are titles,
//! the timeline is the chat, the bot announces go-lives and hands out keys.
//!
//! - `appservice` — the endpoints the homeserver calls (transactions, queries, ping)
//! - `transactions` — `Transactions`: the durable inbox, exactly once, one
//!   worker per room with waiting events
//! - `client` — calls to the homeserver (ruma request types over reqwest; 429s
//!   and transient failures retried)
//! - `commands` — the `!live …` parser (sans-I/O)
//! - `decisions` — what a command does: a refusal or a list of effects (sans-I/O)
//! - `executor` — runs commands: facts → decision → effects, each once per event
//! - `room_map` — `Rooms`: the room ↔ stream mapping, power, room version (sans-I/O)
//! - `rooms` — room events → state and hub, invites, widgets, rooms on demand
//! - `power` — power levels and creators; redaction and admin checks
//! - `keys` — keys by DM (checked DM room, hash committed after sending)
//! - `resync` — room state re-read at start-up and after an outage
//! - `upgrades` — room upgrades: streams follow the tombstone
//! - `notices` — go-live notices and stream state events through a durable outbox
//! - `claims` — several processes on one PostgreSQL database: room, outbox
//!   and node leases, go-live sessions owned by the publisher's node
//! - `chat` — chat relay to the SSE feed and guests posting through puppets
//! - `access` — viewer access to streams of private rooms (OpenID, signed links)
//! - `api` — the HTTP API the pages use (guests, chat, access, rooms)

pub mod access;
mod bridge_info;
pub mod chat;
pub mod chat_view;
mod claims;
pub mod client;
mod cluster_bus;
pub mod commands;
mod decisions;
mod executor;
pub mod federation;
mod follow;
mod ids;
mod keys;
pub mod media_proxy;
mod notice_current;
mod notices;
mod obs;
pub mod party;
pub mod permissions;
mod power;
mod recordings;
pub mod registration;
pub mod replay_chat;
mod restream_cmd;
mod resync;
mod room_lost;
mod room_map;
mod rooms;
mod text;
mod transactions;
mod upgrades;

use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use ruma::api::appservice::Registration;
use ruma::{OwnedUserId, UserId};
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use crate::auth::keys::KeyRing;
use crate::config::MatrixConfig;
use crate::hub::{Access, ChatMessage, Hub, RoomInfo};
use crate::store::matrix::{MappingRow, RoomRow};
use crate::store::{Store, StoreError};
pub use client::{HsClient, HsError};
pub use text::html_escape;

/// Why applying something failed.
#[derive(Debug, thiserror::Error)]
pub enum MatrixError {
    #[error(transparent)]
    Hs(#[from] HsError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl MatrixError {
    /// Worth retrying (the homeserver or the database may be back later).
    pub fn is_transient(&self) -> bool {
        match self {
            MatrixError::Hs(e) => e.is_transient(),
            MatrixError::Store(_) => true,
        }
    }
}

/// Where streamers publish, for the settings the bot sends.
#[derive(Debug, Clone)]
pub struct IngestUrls {
    /// `rtmp://host:port/app` (None when RTMP is off).
    pub rtmp: Option<String>,
    pub public_base: String,
}

/// A client-server event as it arrives in a transaction or from /messages.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct Ev {
    pub event_id: Option<String>,
    pub room_id: Option<String>,
    #[serde(default)]
    pub sender: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub state_key: Option<String>,
    #[serde(default)]
    pub content: serde_json::Value,
    #[serde(default)]
    pub origin_server_ts: u64,
    pub redacts: Option<String>,
}

pub struct Matrix {
    cfg: MatrixConfig,
    reg: Registration,
    registration_path: String,
    pub client: HsClient,
    bot: OwnedUserId,
    hub: Arc<Hub>,
    keys: Arc<KeyRing>,
    store: Store,
    urls: IngestUrls,
    /// The room ↔ stream mapping, power in rooms, the default room version.
    rooms: room_map::Rooms,
    /// The homeserver answered the start-up ping.
    connected: AtomicBool,
    /// The durable inbox and the per-room workers.
    txns: transactions::Transactions,
    /// The pages' chat: history, members' names and avatars, reactions,
    /// media, guest limits.
    chat: chat::Chat,
    /// Recordings' replays: their sessions' chat read from the timeline.
    replay_chats: replay_chat::ReplayChats,
    /// DM rooms already told that encrypted messages cannot be read.
    told_encrypted: Mutex<HashSet<String>>,
    /// Party settings of mapped rooms, read at most every few seconds (party.rs).
    party_cache: party::PartyCache,
    /// Party shares' unused grants by (room, user): they count under the caps.
    share_slots: crate::party::slots::ShareSlots<(String, String)>,
    notices: notices::Notices,
    /// Leases when other processes share the database (claims.rs).
    claims: claims::Claims,
    pub tokens: access::ViewerTokens,
    /// `[matrix.permissions]`, resolved.
    perms: permissions::Permissions,
    /// Rooms made on alias lookups: a few a minute for the whole server.
    on_demand: Mutex<chat::Limiter>,
    /// When an alias lookup was last refused for the rate (logged once a minute).
    on_demand_warned: Mutex<Option<std::time::Instant>>,
    /// Cluster mode: the bus to the other nodes (chat they cannot read).
    bus: std::sync::OnceLock<Arc<crate::cluster::bus::Bus>>,
    /// Recording (`[recording]`): commands and the "ended" replay link.
    recorder: std::sync::OnceLock<Arc<crate::recording::Recorder>>,
    /// Restream destinations and health (`!live restream`), set at start-up.
    restream: std::sync::OnceLock<Arc<crate::restream::Restreamer>>,
}

impl Matrix {
    /// Loads the registration and the stored rooms, and puts the rooms' state
    /// (titles, topics, access) into the hub. Nothing here needs the homeserver.
    pub async fn new(
        cfg: &MatrixConfig,
        config_dir: Option<&Path>,
        hub: Arc<Hub>,
        keys: Arc<KeyRing>,
        store: Store,
        urls: IngestUrls,
    ) -> anyhow::Result<Matrix> {
        let mut reg_path = std::path::PathBuf::from(&cfg.registration);
        if reg_path.is_relative()
            && let Some(dir) = config_dir
            && !reg_path.exists()
        {
            reg_path = dir.join(&reg_path);
        }
        let reg = registration::load(&reg_path)?;
        let bot = UserId::parse(format!("@{}:{}", reg.sender_localpart, cfg.server_name))
            .map_err(|e| anyhow::anyhow!("matrix: bad bot user id from sender_localpart: {e}"))?;
        if !reg
            .namespaces
            .aliases
            .iter()
            .any(|ns| ns.regex.starts_with(&format!("#{}", cfg.alias_prefix)))
        {
            warn!(
                alias_prefix = %cfg.alias_prefix,
                "matrix: the registration's alias namespace does not start with #<matrix.alias_prefix>; \
                 rooms created by `!live new` may be refused their alias"
            );
        }
        let client = HsClient::new(&cfg.homeserver_url, &reg.as_token)?;
        let chat = chat::Chat::new(&cfg.homeserver_url, &reg.as_token);
        let secret = store
            .setting_or_insert(
                "viewer_link_secret",
                &hex::encode(rand::random::<[u8; 32]>()),
            )
            .await?;
        let backend = store.backend();
        let m = Matrix {
            cfg: cfg.clone(),
            registration_path: reg_path.display().to_string(),
            reg,
            client,
            bot,
            hub,
            keys,
            store,
            urls,
            rooms: room_map::Rooms::default(),
            connected: AtomicBool::new(false),
            txns: transactions::Transactions::default(),
            chat,
            replay_chats: replay_chat::ReplayChats::default(),
            told_encrypted: Mutex::new(HashSet::new()),
            party_cache: party::PartyCache::default(),
            share_slots: Default::default(),
            notices: notices::Notices::default(),
            claims: claims::Claims::new(backend),
            tokens: access::ViewerTokens::new(&secret),
            perms: cfg.permissions()?,
            // 3 at once, then one every 20 s.
            on_demand: Mutex::new(chat::Limiter::new(3.0, 1.0 / 20.0)),
            on_demand_warned: Mutex::new(None),
            bus: std::sync::OnceLock::new(),
            recorder: std::sync::OnceLock::new(),
            restream: std::sync::OnceLock::new(),
        };
        m.load_mapping().await?;
        m.store.prune_processed(7).await?;
        m.store.prune_command_steps(7).await?;
        let gone = m.store.prune_idle_guests(7).await?;
        if gone > 0 {
            info!(
                guests = gone,
                "matrix: forgot guests that never posted in a week"
            );
        }
        Ok(m)
    }

    async fn load_mapping(&self) -> Result<(), StoreError> {
        let rooms = self.store.rooms().await?;
        let maps = self.store.mappings().await?;
        for (room, m) in self.rooms.load(rooms, maps) {
            self.apply_room_to_stream(&room, &m);
        }
        Ok(())
    }

    /// Puts what is known about a room into the hub's view of one stream.
    fn apply_room_to_stream(&self, room: &RoomRow, m: &MappingRow) {
        let stream = self.hub.ensure_stream(&m.stream, None);
        stream.set_room(Some(RoomInfo {
            room_id: room.room_id.clone(),
            alias: room.alias.clone(),
            chat: !room.encrypted,
        }));
        stream.set_access(if room.join_rule == "public" {
            Access::Public
        } else {
            Access::Private
        });
        // A member's screen share keeps their name as its title.
        if let Some(name) = &room.name
            && m.slot.as_deref() != Some(party::PARTY_SLOT)
        {
            stream.set_title(&stream_title(name, m.slot.as_deref()));
        }
        stream.set_description(room.topic.as_deref());
    }

    pub fn bot(&self) -> &UserId {
        &self.bot
    }

    pub fn server_name(&self) -> &str {
        &self.cfg.server_name
    }

    pub fn hs_token(&self) -> &str {
        &self.reg.hs_token
    }

    pub fn is_connected(&self) -> bool {
        self.connected.load(Ordering::Relaxed)
    }

    /// The room a stream belongs to.
    pub fn room_of_stream(&self, stream: &str) -> Option<(MappingRow, RoomRow)> {
        self.rooms.of_stream(stream)
    }

    fn streams_of_room(&self, room_id: &str) -> Vec<MappingRow> {
        self.rooms.streams_of(room_id)
    }

    fn room_row(&self, room_id: &str) -> Option<RoomRow> {
        self.rooms.row(room_id)
    }

    fn alias_for(&self, name: &str) -> String {
        format!(
            "#{}{}:{}",
            self.cfg.alias_prefix, name, self.cfg.server_name
        )
    }

    fn is_puppet(&self, user_id: &str) -> bool {
        user_id
            .strip_prefix('@')
            .and_then(|u| u.split_once(':'))
            .is_some_and(|(local, server)| {
                local.starts_with(registration::PUPPET_PREFIX) && server == self.cfg.server_name
            })
    }

    fn watch_url(&self, stream: &str) -> String {
        format!("{}/watch/{stream}", self.urls.public_base)
    }

    /// Starts the background work: connecting to the homeserver (retried until
    /// it answers; media keeps being served meanwhile), the go-live watcher and
    /// the outbox.
    pub fn spawn(self: &Arc<Self>) {
        let me = self.clone();
        tokio::spawn(async move { me.connect_loop().await });
        let me = self.clone();
        tokio::spawn(async move { me.watch_hub().await });
        let me = self.clone();
        tokio::spawn(async move { me.outbox_loop().await });
        let me = self.clone();
        tokio::spawn(async move { me.resume_inbox().await });
        let me = self.clone();
        tokio::spawn(async move { me.watch_outages().await });
        let me = self.clone();
        tokio::spawn(async move { me.keep_claims().await });
        tokio::spawn(self.clone().watch_restream());
    }

    async fn connect_loop(self: Arc<Self>) {
        let mut delay = Duration::from_secs(1);
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            match self.connect().await {
                Ok(ping_ms) => {
                    self.connected.store(true, Ordering::Relaxed);
                    info!(
                        homeserver = %self.cfg.homeserver_url,
                        bot = %self.bot,
                        ping_ms,
                        "matrix: connected to the homeserver, appservice ping ok"
                    );
                    break;
                }
                Err(e) => {
                    warn!(
                        attempt,
                        retry_in_s = delay.as_secs(),
                        "matrix: {}",
                        self.explain_connect_error(&e)
                    );
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(30));
                }
            }
        }
        self.notices.wake();
        // What changed in the rooms while roomcast was away, then the
        // recent chat of every room, for the pages' history.
        self.resync_rooms().await;
        let rooms = self.rooms.room_ids();
        for room in rooms {
            if let Err(e) = self.backfill(&room).await {
                warn!(room = %room, "matrix: chat backfill failed: {e}");
            }
        }
    }

    /// Registers the bot (idempotent), sets its name, pings the homeserver.
    async fn connect(&self) -> Result<u64, HsError> {
        use ruma::api::client::account::register;
        let mut req = register::v3::Request::new();
        req.username = Some(self.reg.sender_localpart.clone());
        req.login_type = Some(register::LoginType::ApplicationService);
        req.inhibit_login = true;
        match self.client.send(req, None).await {
            Ok(_) => {}
            Err(e) if e.errcode() == Some("M_USER_IN_USE") => {}
            Err(e) => return Err(e),
        }
        #[allow(deprecated)]
        let req = ruma::api::client::profile::set_display_name::v3::Request::new(
            self.bot.clone(),
            Some(self.cfg.bot_display_name.clone()),
        );
        self.client.send(req, Some(&self.bot)).await?;
        self.refresh_room_version().await?;
        let mut ping =
            ruma::api::client::appservice::request_ping::v1::Request::new(self.reg.id.clone());
        ping.transaction_id = Some(ids::new_txn_id().as_str().into());
        let r = self.client.send(ping, None).await?;
        Ok(r.duration.as_millis() as u64)
    }

    fn explain_connect_error(&self, e: &HsError) -> String {
        let url = self.reg.url.as_deref().unwrap_or("(none)");
        match e {
            HsError::Unreachable(d) => format!(
                "cannot reach the homeserver at {} ({d}); is it running, and is matrix.homeserver_url right? \
                 Retrying; streams keep working meanwhile",
                self.cfg.homeserver_url
            ),
            HsError::Api { errcode, .. }
                if errcode == "M_UNKNOWN_TOKEN"
                    || errcode == "M_MISSING_TOKEN"
                    || errcode == "M_FORBIDDEN" =>
            {
                format!(
                    "the homeserver rejected roomcast's as_token ({e}); add {} to its app_service_config_files \
                     (Synapse) and restart it",
                    self.registration_path
                )
            }
            HsError::Api { errcode, .. }
                if errcode == "M_BAD_STATUS"
                    || errcode == "M_CONNECTION_FAILED"
                    || errcode == "M_CONNECTION_TIMEOUT" =>
            {
                format!(
                    "the homeserver cannot reach roomcast at url {url} of {} ({e}); set `url` there to an \
                     address of http.listen that the homeserver can reach",
                    self.registration_path
                )
            }
            HsError::Api { errcode, .. } if errcode == "M_URL_NOT_SET" => format!(
                "{} has no `url`; set it to roomcast's http.listen address as the homeserver reaches it",
                self.registration_path
            ),
            other => format!("homeserver start-up calls failed: {other}"),
        }
    }

    /// The chat history (oldest first) of a stream's room.
    pub fn chat_history(&self, stream: &str) -> Vec<Arc<ChatMessage>> {
        let Some((m, _)) = self.room_of_stream(stream) else {
            return Vec::new();
        };
        self.chat.history_of(&m.room_id)
    }
}

/// A slot's stream is titled after the room and the slot.
fn stream_title(room_name: &str, slot: Option<&str>) -> String {
    match slot {
        Some(s) => format!("{room_name} — {s}"),
        None => room_name.to_string(),
    }
}

/// Seconds since the Unix epoch.
fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
