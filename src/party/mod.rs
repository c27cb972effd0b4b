//! Standalone screen-share parties (`[[parties]]`, issue 16 item 3): the
//! Matrix widget's party without Matrix. A participant proves the party key
//! once and picks a display name; they get a participant id and a signed
//! party token. Sharing makes their stream `<party>-<id>` in the hub and a
//! short-lived publish grant, signed for that stream and participant, that
//! WHIP checks through the admission service (this type is its grant
//! verifier for standalone parties). No I/O here: the HTTP layer drives it.
//!
//! Before a share, the party's view carries what one more share would cost
//! (estimate.rs) and the caps it would pass; a share over a cap is refused.
//!
//! A grant holds its share's place under the caps until it is used or
//! expires (slots.rs), so members pressing Share at once cannot all pass.
//!
//! Bounded: at most `max_participants` per party; participants neither
//! sharing (live, or holding an unexpired grant) nor seen (a poll of the
//! party) for [`IDLE`] are forgotten.

pub mod estimate;
pub mod feed;
pub mod slots;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use hmac::{Hmac, Mac};
use parking_lot::Mutex;
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::admission::{AccessTokens, Grant, TokenError, publish_scope};
use crate::config::PartyConfig;
use estimate::ShareEstimate;
use slots::ShareSlots;

/// Adds to an estimate's `over` the server's caps it passes (the admission
/// service's `check_party_share`).
pub trait ShareCaps: Fn(&mut ShareEstimate) {}
impl<F: Fn(&mut ShareEstimate)> ShareCaps for F {}

/// How long a party token lasts.
pub const TOKEN_TTL_SECS: u64 = 12 * 3600;
/// A publish grant only has to last until the WHIP POST.
pub const GRANT_TTL_SECS: u64 = 300;
/// A participant not seen for this long (and not live) is forgotten.
pub const IDLE: Duration = Duration::from_secs(60);
/// A share's stream is ephemeral in the hub (`hub/tenure.rs`): it waits
/// this long for its first publisher (the grant's lifetime, and a minute for
/// grant times in whole seconds), and leaves the registry once idle after.
pub const SHARE_STREAM_HOLD: Duration = Duration::from_secs(GRANT_TTL_SECS + 60);

#[derive(Debug, PartialEq, Eq)]
pub enum PartyError {
    UnknownParty,
    KeyRejected,
    BadName,
    Full,
    BadToken,
    /// One more share would pass these caps.
    OverCapacity(Vec<String>),
}

struct Participant {
    name: String,
    seen: Instant,
}

struct Party {
    key_digest: [u8; 32],
    max_kbps: u32,
    max_participants: usize,
    max_sharers: usize,
    members: Mutex<HashMap<String, Participant>>,
    /// Grants issued and not yet live, by participant id.
    slots: ShareSlots<String>,
}

/// A joined participant's session.
#[derive(Serialize, Debug)]
pub struct Joined {
    pub party_token: String,
    pub expires_in: u64,
    pub user_id: String,
    pub display_name: String,
    pub may_share: bool,
    pub max_kbps: u32,
}

#[derive(Serialize, Debug)]
pub struct Sharer {
    pub stream: String,
    pub user_id: String,
    pub display_name: String,
    pub live: bool,
    /// Standalone party streams are public (their names are unguessable).
    pub access_token: Option<String>,
    /// No avatars without Matrix (the tile shows an initial).
    pub avatar: Option<String>,
}

#[derive(Serialize, Debug)]
pub struct View {
    pub enabled: bool,
    pub sharers: Vec<Sharer>,
    /// What the asking participant's share would add (none while they share).
    pub estimate: Option<ShareEstimate>,
}

#[derive(Serialize, Debug)]
pub struct ShareGrant {
    pub stream: String,
    pub whip_url: String,
    pub publish_token: String,
    pub max_kbps: u32,
    pub display_name: String,
}

pub struct Parties {
    secret: [u8; 32],
    parties: HashMap<String, Party>,
}

fn digest(s: &str) -> [u8; 32] {
    Sha256::digest(s.as_bytes()).into()
}

/// 1–32 characters after trimming, no control characters.
fn display_name(name: &str) -> Result<String, PartyError> {
    let n = name.trim();
    let count = n.chars().count();
    if count == 0 || count > 32 || n.chars().any(char::is_control) {
        return Err(PartyError::BadName);
    }
    Ok(n.to_string())
}

impl Parties {
    pub fn new(configs: &[PartyConfig]) -> Parties {
        Parties {
            secret: rand::random(),
            parties: configs
                .iter()
                .map(|c| {
                    (
                        c.name.clone(),
                        Party {
                            key_digest: digest(&c.key),
                            max_kbps: c.max_kbps,
                            max_participants: c.max_participants,
                            max_sharers: c.max_sharers,
                            members: Mutex::new(HashMap::new()),
                            slots: ShareSlots::default(),
                        },
                    )
                })
                .collect(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.parties.is_empty()
    }

    pub fn exists(&self, party: &str) -> bool {
        self.parties.contains_key(party)
    }

    fn mac(&self, scope: &str, exp: u64, subject: &str) -> Hmac<Sha256> {
        let mut mac =
            Hmac::<Sha256>::new_from_slice(&self.secret).expect("HMAC takes any key length");
        mac.update(b"roomcast-party-v1\0");
        mac.update(scope.as_bytes());
        mac.update(b"\0");
        mac.update(exp.to_string().as_bytes());
        mac.update(b"\0");
        mac.update(subject.as_bytes());
        mac
    }

    /// `s1.<exp>.<hex subject>.<hex HMAC over scope, exp and subject>`.
    fn sign(&self, scope: &str, exp: u64, subject: &str) -> String {
        let sig = self.mac(scope, exp, subject).finalize().into_bytes();
        format!("s1.{exp}.{}.{}", hex::encode(subject), hex::encode(sig))
    }

    fn check(&self, scope: &str, token: &str, now: u64) -> Result<(u64, String), TokenError> {
        let parts: Vec<&str> = token.splitn(5, '.').collect();
        let ["s1", exp, subject, sig] = parts.as_slice() else {
            return Err(TokenError::Malformed);
        };
        let exp: u64 = exp.parse().map_err(|_| TokenError::Malformed)?;
        let subject = hex::decode(subject)
            .ok()
            .and_then(|s| String::from_utf8(s).ok())
            .ok_or(TokenError::Malformed)?;
        let sig = hex::decode(sig).map_err(|_| TokenError::Malformed)?;
        self.mac(scope, exp, &subject)
            .verify_slice(&sig)
            .map_err(|_| TokenError::BadSignature)?;
        if exp <= now {
            return Err(TokenError::Expired);
        }
        Ok((exp, subject))
    }

    /// A participant proves the key and picks a name. Whether a stream is
    /// live (`live_of`) keeps its sharer a member while their page is away.
    pub fn join(
        &self,
        party: &str,
        key: &str,
        name: &str,
        now: u64,
        live_of: impl Fn(&str) -> Option<bool>,
    ) -> Result<Joined, PartyError> {
        let p = self.parties.get(party).ok_or(PartyError::UnknownParty)?;
        // Digests compared: no early exit on the key's bytes.
        if digest(key) != p.key_digest {
            return Err(PartyError::KeyRejected);
        }
        let name = display_name(name)?;
        let mut members = p.members.lock();
        let t = Instant::now();
        members.retain(|id, m| {
            t.duration_since(m.seen) < IDLE
                || p.slots.held(id, now)
                || live_of(&Self::stream_of(party, id)) == Some(true)
        });
        if members.len() >= p.max_participants {
            return Err(PartyError::Full);
        }
        let id = hex::encode(rand::random::<[u8; 6]>());
        members.insert(
            id.clone(),
            Participant {
                name: name.clone(),
                seen: t,
            },
        );
        Ok(Joined {
            party_token: self.sign(party, now + TOKEN_TTL_SECS, &id),
            expires_in: TOKEN_TTL_SECS,
            user_id: id,
            display_name: name,
            may_share: true,
            max_kbps: p.max_kbps,
        })
    }

    /// The participant a party token names, marked as seen.
    fn member(&self, party: &str, token: &str, now: u64) -> Result<(&Party, String), PartyError> {
        let p = self.parties.get(party).ok_or(PartyError::UnknownParty)?;
        let (_, id) = self
            .check(party, token, now)
            .map_err(|_| PartyError::BadToken)?;
        let mut members = p.members.lock();
        let m = members.get_mut(&id).ok_or(PartyError::BadToken)?;
        m.seen = Instant::now();
        Ok((p, id))
    }

    pub fn stream_of(party: &str, id: &str) -> String {
        format!("{party}-{id}")
    }

    /// `stream`'s party and participant id, if it is named as a share of a
    /// party of this server (`<party>-<12 hex>`), whether or not the
    /// participant is still a member.
    fn share_of<'a>(&self, stream: &'a str) -> Option<(&Party, &'a str)> {
        let (party, id) = stream.rsplit_once('-')?;
        let hex = |c: char| c.is_ascii_digit() || ('a'..='f').contains(&c);
        if id.len() != 12 || !id.chars().all(hex) {
            return None;
        }
        Some((self.parties.get(party)?, id))
    }

    /// Whether `stream` is named as a share of one of this server's parties:
    /// such a stream is ephemeral in the hub.
    pub fn is_share_stream(&self, stream: &str) -> bool {
        self.share_of(stream).is_some()
    }

    /// The display name of the member whose share `stream` is.
    pub fn sharer_name(&self, stream: &str) -> Option<String> {
        let (p, id) = self.share_of(stream)?;
        p.members.lock().get(id).map(|m| m.name.clone())
    }

    /// The participants with a stream, and whether it is live (`live_of`).
    pub fn view(
        &self,
        party: &str,
        token: &str,
        now: u64,
        live_of: impl Fn(&str) -> Option<bool>,
        caps: impl ShareCaps,
    ) -> Result<View, PartyError> {
        let (p, me) = self.member(party, token, now)?;
        let members = p.members.lock();
        let mut sharers: Vec<Sharer> = members
            .iter()
            .filter_map(|(id, m)| {
                let stream = Self::stream_of(party, id);
                let live = live_of(&stream)?;
                Some(Sharer {
                    stream,
                    user_id: id.clone(),
                    display_name: m.name.clone(),
                    live,
                    access_token: None,
                    avatar: None,
                })
            })
            .collect();
        drop(members);
        sharers.sort_by(|a, b| a.stream.cmp(&b.stream));
        let sharing = |s: &&Sharer| s.live;
        let estimate = (!sharers.iter().filter(sharing).any(|s| s.user_id == me)).then(|| {
            let n = sharers.iter().filter(sharing).count();
            estimate::checked(n, p.max_kbps, p.max_sharers, caps)
        });
        Ok(View {
            enabled: true,
            sharers,
            estimate,
        })
    }

    /// Share screen: the participant's stream name and a publish grant.
    /// Refused when the share would pass a cap (`caps`), counting the
    /// participants' live shares (`live_of`) and unused grants but the
    /// asking one's own; a grant holds its slot until used or expired.
    pub fn share(
        &self,
        party: &str,
        token: &str,
        now: u64,
        live_of: impl Fn(&str) -> Option<bool>,
        caps: impl ShareCaps,
    ) -> Result<ShareGrant, PartyError> {
        let (p, id) = self.member(party, token, now)?;
        let live: Vec<String> = p
            .members
            .lock()
            .keys()
            .filter(|other| live_of(&Self::stream_of(party, other)) == Some(true))
            .cloned()
            .collect();
        p.slots.reserve(
            &id,
            &live,
            now,
            now + GRANT_TTL_SECS,
            |_| true,
            |sharing| {
                let e = estimate::checked(sharing, p.max_kbps, p.max_sharers, caps);
                if e.over.is_empty() {
                    Ok(())
                } else {
                    Err(PartyError::OverCapacity(e.over))
                }
            },
        )?;
        let name = p
            .members
            .lock()
            .get(&id)
            .map(|m| m.name.clone())
            .unwrap_or_default();
        let stream = Self::stream_of(party, &id);
        Ok(ShareGrant {
            whip_url: format!("/whip/{stream}"),
            publish_token: self.sign(&publish_scope(&stream), now + GRANT_TTL_SECS, &id),
            stream,
            max_kbps: p.max_kbps,
            display_name: name,
        })
    }
}

/// The admission service checks standalone parties' publish grants here.
impl AccessTokens for Parties {
    fn verify(&self, scope: &str, token: &str) -> Result<Grant, TokenError> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let (expires, id) = self.check(scope, token, now)?;
        Ok(Grant {
            expires,
            user: Some(id),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parties() -> Parties {
        Parties::new(&[PartyConfig {
            name: "friends".into(),
            key: "a-long-party-key-1234".into(),
            max_kbps: 2000,
            max_participants: 2,
            max_sharers: 1,
        }])
    }

    #[test]
    fn join_share_and_grants() {
        let p = parties();
        assert_eq!(
            p.join("friends", "wrong", "Ann", 0, |_| None).unwrap_err(),
            PartyError::KeyRejected
        );
        assert_eq!(
            p.join("nope", "a-long-party-key-1234", "Ann", 0, |_| None)
                .unwrap_err(),
            PartyError::UnknownParty
        );
        assert_eq!(
            p.join("friends", "a-long-party-key-1234", " \n", 0, |_| None)
                .unwrap_err(),
            PartyError::BadName
        );
        let ann = p
            .join("friends", "a-long-party-key-1234", " Ann ", 0, |_| None)
            .unwrap();
        assert_eq!(ann.display_name, "Ann");
        let grant = p
            .share("friends", &ann.party_token, 0, |_| None, |_| {})
            .unwrap();
        assert_eq!(grant.stream, format!("friends-{}", ann.user_id));
        assert!(crate::config::validate_stream_name(&grant.stream).is_ok());
        // Named as a share (so ephemeral in the hub), and whose.
        assert!(p.is_share_stream(&grant.stream));
        assert_eq!(p.sharer_name(&grant.stream).as_deref(), Some("Ann"));
        for other in [
            "friends",
            "friends-0123",
            "nope-0123456789ab",
            "friends-0123456789AB",
        ] {
            assert!(!p.is_share_stream(other), "{other}");
        }
        assert!(
            p.is_share_stream("friends-0123456789ab"),
            "a former member's"
        );
        assert_eq!(p.sharer_name("friends-0123456789ab"), None);
        // The grant is for that stream only, and a party token is no grant.
        let scope = publish_scope(&grant.stream);
        assert_eq!(
            p.check(&scope, &grant.publish_token, 0).unwrap().1,
            ann.user_id
        );
        assert!(
            p.check(&publish_scope("friends-other"), &grant.publish_token, 0)
                .is_err()
        );
        assert!(p.check(&scope, &ann.party_token, 0).is_err());
        assert_eq!(
            p.check(&scope, &grant.publish_token, GRANT_TTL_SECS + 1),
            Err(TokenError::Expired)
        );
        // Another server's secret signs nothing here.
        assert!(parties().check(&scope, &grant.publish_token, 0).is_err());
        let view = p
            .view("friends", &ann.party_token, 0, |_| Some(true), |_| {})
            .unwrap();
        // Ann shares: no estimate for her.
        assert!(view.estimate.is_none());
        assert_eq!(view.sharers.len(), 1);
        assert_eq!(view.sharers[0].display_name, "Ann");
        // Bounded: two participants at most, one sharing: Bo sees the cap
        // before sharing and is refused.
        let bo = p
            .join("friends", "a-long-party-key-1234", "Bo", 0, |_| None)
            .unwrap();
        let ann_live = |s: &str| Some(s.ends_with(&ann.user_id));
        let view = p
            .view("friends", &bo.party_token, 0, ann_live, |_| {})
            .unwrap();
        let e = view.estimate.expect("Bo's estimate");
        assert_eq!((e.sharers, e.streams_out), (2, 4));
        assert_eq!(
            e.over,
            vec!["this party allows 1 member sharing at once".to_string()]
        );
        let refused = p.share("friends", &bo.party_token, 0, ann_live, |_| {});
        assert!(
            matches!(refused, Err(PartyError::OverCapacity(ref o)) if o.len() == 1),
            "{refused:?}"
        );
        // Server caps come from the admission service.
        let refused = p.share("friends", &ann.party_token, 0, ann_live, |e| {
            e.over.push("limits".into())
        });
        assert_eq!(
            refused.unwrap_err(),
            PartyError::OverCapacity(vec!["limits".into()])
        );
        assert_eq!(
            p.join("friends", "a-long-party-key-1234", "Cy", 0, |_| None)
                .unwrap_err(),
            PartyError::Full
        );
    }

    #[test]
    fn a_grant_holds_its_slot_before_it_is_used() {
        let p = parties();
        let key = "a-long-party-key-1234";
        let ann = p.join("friends", key, "Ann", 0, |_| None).unwrap();
        let bo = p.join("friends", key, "Bo", 0, |_| None).unwrap();
        let nobody_live = |_: &str| Some(false);
        // One sharer at most: Ann's grant, unused yet, keeps Bo out.
        p.share("friends", &ann.party_token, 0, nobody_live, |_| {})
            .unwrap();
        let refused = p.share("friends", &bo.party_token, 1, nobody_live, |_| {});
        assert_eq!(
            refused.unwrap_err(),
            PartyError::OverCapacity(vec![
                "this party allows 1 member sharing at once".to_string()
            ])
        );
        // Ann publishes: still one slot, hers.
        let ann_live = |s: &str| Some(s.ends_with(&ann.user_id));
        assert!(
            p.share("friends", &bo.party_token, 2, ann_live, |_| {})
                .is_err()
        );
        // Ann's share ended and her grant expired: Bo's turn.
        p.share(
            "friends",
            &bo.party_token,
            GRANT_TTL_SECS,
            nobody_live,
            |_| {},
        )
        .unwrap();
        assert!(
            p.share(
                "friends",
                &ann.party_token,
                GRANT_TTL_SECS,
                nobody_live,
                |_| {}
            )
            .is_err()
        );
    }
}
