//! Screen-share parties (issue 16 item 2). In a room with `!live party on`
//! the widget trades the user's OpenID token for a party token (membership
//! checked with the homeserver, once), lists the members sharing, and on
//! **Share screen** gets the user's personal slot stream in the room (made on
//! first use: slot `party`, owner the user, a key nobody knows) and a
//! short-lived publish grant bound to that stream and user. WHIP takes the
//! grant through the admission path (`Admission::publish_grant`); leaving the
//! room, losing the power to share or the party being turned off ends the
//! share there. Go-live notices of party streams are the compact form
//! (notices.rs), or only the state event when the room is quiet.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use serde::Serialize;
use sha2::{Digest, Sha256};
use tracing::info;

use super::access::{ACCESS_TTL_SECS, OpenIdError};
use super::{Matrix, MatrixError};
use crate::party::ShareCaps;
use crate::party::estimate::{ShareEstimate, checked};
use crate::store::matrix::MappingRow;
use crate::store::party::PartyRoom;

/// The slot value that marks a member's personal party stream.
pub const PARTY_SLOT: &str = "party";
/// A publish grant only has to last until the WHIP POST.
pub const PUBLISH_GRANT_TTL_SECS: u64 = 300;

/// `party-<16 hex>`: one stream per (room, user), stable across shares, and
/// a valid stream name whatever the user id holds.
pub fn party_stream_name(room: &str, user: &str) -> String {
    let d = Sha256::new()
        .chain_update(room.as_bytes())
        .chain_update([0u8])
        .chain_update(user.as_bytes())
        .finalize();
    format!("party-{}", &hex::encode(d)[..16])
}

/// What a party token is signed for (never a stream name: `!` and `:` are
/// not allowed in those, so it cannot pass as a viewer token).
fn session_scope(room: &str) -> String {
    format!("party:{room}")
}

use crate::admission::publish_scope;

#[derive(Debug)]
pub enum PartyError {
    /// `!live party on` was not said in this room.
    Off,
    /// The room is not one of roomcast's.
    NoRoom,
    OpenId(OpenIdError),
    NotAMember,
    NoPower {
        needed: i64,
    },
    BadToken,
    Unavailable(String),
    /// One more share would pass these caps (src/party/estimate.rs).
    OverCapacity(Vec<String>),
}

impl From<crate::store::StoreError> for PartyError {
    fn from(e: crate::store::StoreError) -> Self {
        PartyError::Unavailable(e.to_string())
    }
}

impl From<MatrixError> for PartyError {
    fn from(e: MatrixError) -> Self {
        PartyError::Unavailable(e.to_string())
    }
}

/// The answer to a widget's OpenID exchange.
#[derive(Serialize)]
pub struct Welcome {
    pub party_token: String,
    pub expires_in: u64,
    pub user_id: String,
    pub display_name: String,
    pub may_share: bool,
    pub needed_level: i64,
    pub max_kbps: u32,
}

#[derive(Serialize)]
pub struct Sharer {
    pub stream: String,
    pub user_id: String,
    pub display_name: String,
    pub live: bool,
    /// A viewer token of the asking member for this stream.
    pub access_token: String,
    /// `server/media_id` of the member's avatar, served by the media proxy
    /// (`GET /api/v1/streams/{stream}/media/{server}/{id}?size=avatar` with
    /// `access_token`): authenticated media needs a token the page has not.
    pub avatar: Option<String>,
}

#[derive(Serialize)]
pub struct PartyView {
    pub enabled: bool,
    pub sharers: Vec<Sharer>,
    /// What the asking member's share would add (none while they share,
    /// or without a party token).
    pub estimate: Option<ShareEstimate>,
}

#[derive(Serialize)]
pub struct ShareGrant {
    pub stream: String,
    pub whip_url: String,
    pub publish_token: String,
    pub max_kbps: u32,
}

/// How long a room's party setting is trusted without asking the database.
const PARTY_CACHE_TTL: Duration = Duration::from_secs(5);

/// Party settings of mapped rooms (bounded by them: only a mapped room is
/// looked up), with their read time.
#[derive(Default)]
pub(super) struct PartyCache(Mutex<HashMap<String, (Instant, Option<PartyRoom>)>>);

impl PartyCache {
    fn get(&self, room: &str) -> Option<Option<PartyRoom>> {
        let m = self.0.lock();
        let (at, party) = m.get(room)?;
        (at.elapsed() < PARTY_CACHE_TTL).then_some(*party)
    }

    fn put(&self, room: &str, party: Option<PartyRoom>) {
        self.0
            .lock()
            .insert(room.to_string(), (Instant::now(), party));
    }
}

/// The compact go-live notice of a share: (plain, HTML).
pub(super) fn share_notice(who: &str) -> (String, String) {
    (
        format!("🔴 {who} is sharing their screen"),
        format!(
            "🔴 <b>{}</b> is sharing their screen",
            super::text::html_escape(who)
        ),
    )
}

/// Its edit when the share ends.
pub(super) fn share_ended_notice(who: &str, secs: u64) -> (String, String) {
    let took = super::text::format_duration(secs);
    (
        format!("⚫ {who} shared their screen for {took}"),
        format!(
            "⚫ <b>{}</b> shared their screen for {took}",
            super::text::html_escape(who)
        ),
    )
}

fn is_party(m: &MappingRow) -> bool {
    m.slot.as_deref() == Some(PARTY_SLOT) && m.owner.is_some()
}

impl Matrix {
    /// `!live party on|quiet|off` (room admins; checked by the executor).
    pub(super) async fn cmd_party(
        &self,
        room: &str,
        on: bool,
        notices: bool,
    ) -> Result<Result<(), String>, MatrixError> {
        if self.room_row(room).is_none() {
            return Ok(Err(
                "This room has no stream: `!live attach <name>` first.".into()
            ));
        }
        let party = on.then_some(PartyRoom { notices });
        self.store.set_party_room(room, party).await?;
        self.party_cache.put(room, party);
        if !on {
            for m in self.streams_of_room(room).iter().filter(|m| is_party(m)) {
                let owner = m.owner.as_deref().unwrap_or_default();
                self.end_share(&m.stream, owner);
                self.share_slots
                    .release(&(room.to_string(), owner.to_string()));
            }
        }
        let text = match (on, notices) {
            (true, true) => {
                "Screen-share party on: members get a Share screen button in the widget, and each share a short notice."
            }
            (true, false) => {
                "Screen-share party on, quietly: members get a Share screen button in the widget; shares post no notice."
            }
            (false, _) => {
                "Screen-share party off: the Share screen button is gone and shares ended."
            }
        };
        info!(room = %room, on, notices, "matrix: party setting changed");
        self.reply(room, text).await;
        Ok(Ok(()))
    }

    /// Ends what `user`'s share of `stream` admitted (the publisher), without
    /// leaving them refused afterwards.
    fn end_share(&self, stream: &str, user: &str) {
        if let Some(hook) = self.tokens.membership_hook() {
            hook(stream, user, false);
            hook(stream, user, true);
        }
    }

    /// The user's display name when joined to `room` (and their member event
    /// remembered, so their tile's avatar is known to the media proxy).
    async fn joined_name(&self, room: &str, user: &str) -> Result<Option<String>, MatrixError> {
        let ev = self.state_event(room, "m.room.member", user).await?;
        if let Some(e) = &ev {
            self.remember_member(room, user, &e["content"]);
        }
        Ok(ev
            .filter(|e| e["content"]["membership"].as_str() == Some("join"))
            .map(|e| {
                e["content"]["displayname"]
                    .as_str()
                    .map(str::trim)
                    .filter(|n| !n.is_empty())
                    .unwrap_or(user)
                    .chars()
                    .take(64)
                    .collect()
            }))
    }

    async fn party_of(&self, room: &str) -> Result<PartyRoom, PartyError> {
        if self.room_row(room).is_none() {
            return Err(PartyError::NoRoom);
        }
        // Every widget polls: the database is asked at most every few seconds
        // per room (another node's `!live party` shows within that).
        if let Some(known) = self.party_cache.get(room) {
            return known.ok_or(PartyError::Off);
        }
        let party = self
            .store
            .party_room(room)
            .await
            .map_err(|e| PartyError::Unavailable(e.to_string()))?;
        self.party_cache.put(room, party);
        party.ok_or(PartyError::Off)
    }

    /// The widget's OpenID token → a party token for `room`.
    pub async fn party_welcome(
        &self,
        room: &str,
        openid_token: &str,
        server_name: &str,
    ) -> Result<Welcome, PartyError> {
        self.party_of(room).await?;
        let user = self
            .openid_user(openid_token, server_name)
            .await
            .map_err(PartyError::OpenId)?;
        let name = self
            .joined_name(room, &user)
            .await?
            .ok_or(PartyError::NotAMember)?;
        let (level, _) = self.power_of(room, &user).await?;
        let needed = self.cfg.party_power_level;
        let exp = super::unix_now() + ACCESS_TTL_SECS;
        Ok(Welcome {
            party_token: self.tokens.sign_for(&session_scope(room), exp, &user),
            expires_in: ACCESS_TTL_SECS,
            user_id: user,
            display_name: name,
            may_share: level >= needed,
            needed_level: needed,
            max_kbps: self.cfg.party_max_kbps,
        })
    }

    fn party_user(&self, room: &str, token: &str) -> Result<String, PartyError> {
        match self
            .tokens
            .verify(&session_scope(room), token, super::unix_now())
        {
            Ok((_, Some(user))) => Ok(user),
            _ => Err(PartyError::BadToken),
        }
    }

    /// Who shares in `room` now, with a viewer token of the asking member
    /// for each (their membership was checked for the party token; leaving
    /// revokes what those admit).
    /// Without a token: only whether the room has a party (so the widget
    /// asks for an OpenID token only where it is needed).
    /// `caps`: the server's caps on one more share (the admission service).
    pub async fn party_view(
        &self,
        room: &str,
        token: Option<&str>,
        caps: impl ShareCaps,
    ) -> Result<PartyView, PartyError> {
        let enabled = match self.party_of(room).await {
            Ok(_) => true,
            Err(PartyError::Off | PartyError::NoRoom) => false,
            Err(e) => return Err(e),
        };
        let Some(token) = token else {
            return Ok(PartyView {
                enabled,
                sharers: Vec::new(),
                estimate: None,
            });
        };
        let user = self.party_user(room, token)?;
        let exp = super::unix_now() + ACCESS_TTL_SECS;
        let sharers = self
            .streams_of_room(room)
            .iter()
            .filter(|m| is_party(m))
            .filter_map(|m| {
                let s = self.hub.get(&m.stream)?;
                let owner = m.owner.clone().unwrap_or_default();
                Some(Sharer {
                    avatar: self.member_avatar(room, &owner),
                    stream: m.stream.clone(),
                    user_id: owner,
                    display_name: s.title(),
                    live: s.is_live(),
                    access_token: self.tokens.sign_for(&m.stream, exp, &user),
                })
            })
            .collect::<Vec<_>>();
        let live = sharers.iter().filter(|s| s.live);
        let estimate = (enabled && !live.clone().any(|s| s.user_id == user)).then(|| {
            let n = live.count();
            checked(n, self.cfg.party_max_kbps, self.cfg.party_max_sharers, caps)
        });
        Ok(PartyView {
            enabled,
            sharers,
            estimate,
        })
    }

    /// Members of `room` sharing now, as share slots' keys (room, user).
    fn live_sharers(&self, room: &str) -> Vec<(String, String)> {
        self.streams_of_room(room)
            .iter()
            .filter(|m| is_party(m))
            .filter(|m| self.hub.get(&m.stream).is_some_and(|s| s.is_live()))
            .filter_map(|m| Some((room.to_string(), m.owner.clone()?)))
            .collect()
    }

    /// **Share screen**: the member's personal stream in `room` (made on first
    /// use) and a publish grant for it. Membership and power are asked of the
    /// homeserver now; then the party's and the server's caps (`caps`),
    /// counting live shares and unused grants, and the grant takes its slot
    /// in the same step (src/party/slots.rs).
    pub async fn party_share(
        &self,
        room: &str,
        token: &str,
        caps: impl ShareCaps,
    ) -> Result<ShareGrant, PartyError> {
        let user = self.party_user(room, token)?;
        self.party_of(room).await?;
        let name = self
            .joined_name(room, &user)
            .await?
            .ok_or(PartyError::NotAMember)?;
        let (level, _) = self.power_of(room, &user).await?;
        let needed = self.cfg.party_power_level;
        if level < needed {
            return Err(PartyError::NoPower { needed });
        }
        let now = super::unix_now();
        let exp = now + PUBLISH_GRANT_TTL_SECS;
        let slot = (room.to_string(), user.clone());
        let live = self.live_sharers(room);
        let in_room = |k: &(String, String)| k.0 == room;
        self.share_slots.reserve(&slot, &live, now, exp, in_room, |sharing| {
            let (kbps, max) = (self.cfg.party_max_kbps, self.cfg.party_max_sharers);
            let e = checked(sharing, kbps, max, caps);
            if e.over.is_empty() {
                return Ok(());
            }
            info!(room = %room, user = %user, "matrix: party share refused: {}", e.over.join("; "));
            Err(PartyError::OverCapacity(e.over))
        })?;
        let granted = self.grant_share(room, &user, &name, exp).await;
        if granted.is_err() {
            self.share_slots.release(&slot);
        }
        granted
    }

    /// The share's stream, titled with the member's name, and its grant.
    async fn grant_share(
        &self,
        room: &str,
        user: &str,
        name: &str,
        exp: u64,
    ) -> Result<ShareGrant, PartyError> {
        let user = user.to_string();
        let stream = party_stream_name(room, &user);
        self.create_stream(room, &stream, Some(PARTY_SLOT), Some(&user))
            .await?;
        // The tile and the notice name the member, not the room.
        self.store.set_stream_title(&stream, name).await?;
        if let Some(s) = self.hub.get(&stream) {
            s.set_title(name);
        }
        // A member who left and came back shares again.
        if let Some(hook) = self.tokens.membership_hook() {
            hook(&stream, &user, true);
        }
        info!(room = %room, user = %user, stream = %stream, "matrix: party share granted");
        Ok(ShareGrant {
            whip_url: format!("/whip/{stream}"),
            publish_token: self.tokens.sign_for(&publish_scope(&stream), exp, &user),
            stream,
            max_kbps: self.cfg.party_max_kbps,
        })
    }

    /// Whether `stream` is a member's party stream.
    pub fn is_party_stream(&self, stream: &str) -> bool {
        self.room_of_stream(stream)
            .is_some_and(|(m, _)| is_party(&m))
    }

    /// `Some(notices)` when `stream` is a member's party stream.
    pub(super) async fn party_notices(&self, stream: &str) -> Result<Option<bool>, MatrixError> {
        let Some((m, _)) = self.room_of_stream(stream) else {
            return Ok(None);
        };
        if !is_party(&m) {
            return Ok(None);
        }
        Ok(Some(
            self.store
                .party_room(&m.room_id)
                .await?
                .is_none_or(|p| p.notices),
        ))
    }

    /// The room's power levels changed: sharers below the party's level stop.
    pub(super) async fn party_power_changed(&self, room: &str) -> Result<(), MatrixError> {
        let shares: Vec<MappingRow> = self
            .streams_of_room(room)
            .into_iter()
            .filter(|m| is_party(m) && self.hub.get(&m.stream).is_some_and(|s| s.is_live()))
            .collect();
        for m in shares {
            let user = m.owner.as_deref().unwrap_or_default();
            let (level, _) = self.power_of(room, user).await?;
            if level < self.cfg.party_power_level {
                info!(room = %room, user = %user, stream = %m.stream, "matrix: party share ended: the member lost the power to share");
                self.end_share(&m.stream, user);
                self.share_slots
                    .release(&(room.to_string(), user.to_string()));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn party_streams_are_per_room_and_user_and_valid_names() {
        let a = party_stream_name("!r:hs", "@alice:hs");
        assert_eq!(a, party_stream_name("!r:hs", "@alice:hs"));
        assert_ne!(a, party_stream_name("!r:hs", "@bob:hs"));
        assert_ne!(a, party_stream_name("!s:hs", "@alice:hs"));
        assert!(crate::config::validate_stream_name(&a).is_ok());
        // Scopes can never be stream names, so grants and viewer tokens do not mix.
        assert!(crate::config::validate_stream_name(&session_scope("!r:hs")).is_err());
        assert!(crate::config::validate_stream_name(&publish_scope(&a)).is_err());
    }

    #[test]
    fn a_publish_grant_is_not_a_viewer_token() {
        let t = super::super::access::ViewerTokens::new("s");
        let stream = party_stream_name("!r:hs", "@alice:hs");
        let grant = t.sign_for(&publish_scope(&stream), 100, "@alice:hs");
        assert!(t.verify(&stream, &grant, 0).is_err());
        assert_eq!(
            t.verify(&publish_scope(&stream), &grant, 0),
            Ok((100, Some("@alice:hs".to_string())))
        );
        let viewer = t.sign_for(&stream, 100, "@alice:hs");
        assert!(t.verify(&publish_scope(&stream), &viewer, 0).is_err());
    }
}
