//! Who may watch a stream, decided once for every surface: WHEP, OME
//! signalling, LL-HLS, the event feeds (chat included), the API listing, the
//! index page, the multi-view and the recordings (`recording.rs`) all ask
//! [`Admission::admit_viewer`]; WHIP and RTMP ask the [`Gate`] through
//! [`Admission::admit_publisher`]. No HTTP here:
//! the HTTP layer turns a [`Refusal`] into its status and JSON.
//!
//! The sequence: gate (SignedPolicy, admission webhook; media only) → hub
//! lookup → private-room check (viewer token) → live check → caps (a
//! reservation, so concurrent joins cannot all slip under a cap, taken
//! without holding a lock across any SDP work). A [`ViewerPass`] carries its
//! expiry and its grounds; WebRTC sessions admitted by it are tracked, and a
//! sweep ends them when their grounds go away (the room turned private).

pub mod cluster_caps;
pub mod party_caps;
pub mod publish_grant;
pub mod rate;
pub mod recording;

pub use publish_grant::publish_scope;

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::auth::gate::{self, Attempt, Gate};
use crate::config::LimitsConfig;
use crate::hub::{Access, Hub, Stream};
use crate::rtc::Engine;
use rate::{Concurrency, RateLimiter, Slot};

/// Checks a viewer token for a stream (the Matrix bridge signs them).
pub trait AccessTokens: Send + Sync {
    fn verify(&self, stream: &str, token: &str) -> Result<Grant, TokenError>;
}

/// What a good viewer token grants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    /// Unix seconds.
    pub expires: u64,
    /// The room member it was issued to (from OpenID); `None` for a link.
    pub user: Option<String>,
}

/// How long a member who left stays refused for tokens issued before (the
/// longest a member's token lasts, with room to spare).
const LEFT_MEMORY: Duration = Duration::from_secs(2 * 3600);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenError {
    Malformed,
    Expired,
    BadSignature,
}

/// What a viewer asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// A WebRTC session (WHEP, OME): everything, caps included.
    WebRtc,
    /// LL-HLS files: access only (HLS checks its own egress cap per player).
    Hls,
    /// The stream's metadata and chat (feeds, listings, pages).
    Look,
    /// Its recordings (`recording.rs`): access only, as LL-HLS.
    Recording,
}

/// Why a viewer may watch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Grounds {
    /// The stream is public.
    Public,
    /// A viewer token for the stream, valid until its expiry.
    Token,
    /// Another cluster node's relay pull (its `cluster.secret` token was
    /// verified by the HTTP layer): that node admits its own viewers.
    Cluster,
}

/// The facts of a request, as the HTTP layer read them.
pub struct ViewerFacts {
    pub stream: String,
    /// The client's address (through `http.trusted_proxies`).
    pub client: IpAddr,
    /// `Authorization: Bearer` or `?access=`.
    pub token: Option<String>,
    /// For the gate (media only).
    pub attempt: Option<Attempt>,
    /// An authenticated relay pull of another cluster node (set only after
    /// the cluster token verified).
    pub relay: bool,
}

/// An admitted viewer.
pub struct ViewerPass {
    pub stream: Arc<Stream>,
    pub grounds: Grounds,
    /// The soonest of the signed URL's, the webhook's and the token's expiry.
    pub expires_at: Option<Instant>,
    /// Tells the admission webhook when the session closes.
    pub ticket: Option<crate::auth::admission::Ticket>,
    /// Holds a place under the viewer caps until the session is registered.
    pub reservation: Option<Reservation>,
    /// The room member whose token admitted this.
    pub member: Option<String>,
    /// Set when that member leaves the room.
    revoked: Option<Arc<AtomicBool>>,
}

impl ViewerPass {
    /// Whether the pass still holds now (expiry, and a public stream's grounds).
    pub fn holds(&self) -> bool {
        if self.expires_at.is_some_and(|t| Instant::now() >= t) {
            return false;
        }
        if self.revoked.as_ref().is_some_and(|r| r.load(Relaxed)) {
            return false;
        }
        !(self.grounds == Grounds::Public && self.stream.access() != Access::Public)
    }
}

/// Why a viewer or publisher was refused.
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    #[error(transparent)]
    Gate(#[from] gate::Refusal),
    #[error("there is no stream '{0}'")]
    UnknownStream(String),
    #[error("stream '{0}' is offline")]
    Offline(String),
    #[error(
        "stream '{0}' belongs to a private room: open it from the room's widget or a viewer link"
    )]
    AccessRequired(String),
    #[error("this viewer link or token has expired; ask for a new one")]
    AccessExpired(String),
    #[error("this token does not give access to stream '{0}'")]
    AccessDenied(String),
    #[error("{0}")]
    Busy(String),
    #[error("too many requests from this address; try again in {0} s")]
    RateLimited(u32),
    #[error("no recording '{0}'")]
    UnknownRecording(String),
    #[error(
        "this server admits viewers by signed URL or webhook, which recordings cannot check per file"
    )]
    RecordingsUnavailable,
}

pub struct Admission {
    gate: Arc<Gate>,
    hub: Arc<Hub>,
    engine: Arc<Engine>,
    tokens: Option<Arc<dyn AccessTokens>>,
    limits: LimitsConfig,
    /// Egress now (WebRTC and HLS), Mbit/s.
    egress_mbps: Box<dyn Fn() -> f64 + Send + Sync>,
    /// Admissions between their cap check and their session's registration.
    in_flight: Arc<Mutex<HashMap<String, usize>>>,
    /// WebRTC viewer sessions and what admitted them.
    sessions: Mutex<HashMap<u64, Tracked>>,
    offers: RateLimiter,
    access: RateLimiter,
    hls_blocking: Concurrency,
    /// Members who left a stream's room, and when: their tokens are refused.
    left: Mutex<HashMap<(String, String), Instant>>,
    /// Passes of members, to revoke when they leave.
    member_passes: Mutex<HashMap<(String, String), RevokeFlags>>,
    /// Cluster mode: caps over all nodes (cluster_caps.rs).
    cluster_caps: std::sync::OnceLock<cluster_caps::ClusterCaps>,
    /// WHIP sessions admitted by a member's publish grant (publish_grant.rs).
    granted_publishers: Mutex<HashMap<(String, String), u64>>,
    /// Standalone parties' publish grants (src/party), set at start-up.
    party_grants: std::sync::OnceLock<Arc<dyn AccessTokens>>,
}

/// The revocation flags of one member's passes.
type RevokeFlags = Vec<Weak<AtomicBool>>;

struct Tracked {
    stream: Arc<Stream>,
    grounds: Grounds,
    member: Option<String>,
}

/// A place under the caps, given back when dropped.
pub struct Reservation {
    in_flight: Arc<Mutex<HashMap<String, usize>>>,
    stream: String,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        let mut m = self.in_flight.lock();
        if let Some(n) = m.get_mut(&self.stream) {
            *n -= 1;
            if *n == 0 {
                m.remove(&self.stream);
            }
        }
    }
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl Admission {
    pub fn new(
        gate: Arc<Gate>,
        hub: Arc<Hub>,
        engine: Arc<Engine>,
        tokens: Option<Arc<dyn AccessTokens>>,
        limits: LimitsConfig,
        egress_mbps: Box<dyn Fn() -> f64 + Send + Sync>,
    ) -> Arc<Admission> {
        Arc::new(Admission {
            offers: RateLimiter::new(limits.offers_per_minute, limits.offers_burst),
            access: RateLimiter::new(limits.access_per_minute, limits.access_burst),
            hls_blocking: Concurrency::new(
                limits.hls_max_blocking,
                limits.hls_max_blocking_per_address,
            ),
            gate,
            hub,
            engine,
            tokens,
            limits,
            egress_mbps,
            in_flight: Arc::default(),
            sessions: Mutex::new(HashMap::new()),
            left: Mutex::new(HashMap::new()),
            member_passes: Mutex::new(HashMap::new()),
            cluster_caps: std::sync::OnceLock::new(),
            granted_publishers: Mutex::new(HashMap::new()),
            party_grants: std::sync::OnceLock::new(),
        })
    }

    pub fn gate(&self) -> &Gate {
        &self.gate
    }

    /// Publishers: stream key, SignedPolicy, admission webhook.
    pub async fn admit_publisher(&self, a: Attempt) -> Result<gate::Pass, Refusal> {
        Ok(self.gate.admit_publish(a).await?)
    }

    /// The whole viewer sequence for `purpose`.
    pub async fn admit_viewer(
        &self,
        facts: ViewerFacts,
        purpose: Purpose,
    ) -> Result<ViewerPass, Refusal> {
        if purpose == Purpose::WebRtc {
            self.offers
                .check(facts.client, Instant::now())
                .map_err(Refusal::RateLimited)?;
        }
        let relay = facts.relay;
        let (name, mut expires_at, ticket) = match facts.attempt {
            Some(a) if purpose == Purpose::WebRtc && !relay => {
                let p = self.gate.admit_play(a).await?;
                (p.stream, p.expires_at, p.ticket)
            }
            _ => (facts.stream, None, None),
        };
        let stream = self
            .hub
            .get(&name)
            .ok_or_else(|| Refusal::UnknownStream(name.clone()))?;
        let (grounds, token_expiry, member) = if relay {
            (Grounds::Cluster, None, None)
        } else {
            self.access_of(&stream, facts.token.as_deref())?
        };
        let revoked = member.as_ref().map(|user| {
            let flag = Arc::new(AtomicBool::new(false));
            let mut passes = self.member_passes.lock();
            let list = passes
                .entry((stream.name.clone(), user.clone()))
                .or_default();
            list.retain(|w| w.strong_count() > 0);
            list.push(Arc::downgrade(&flag));
            flag
        });
        if let Some(t) = token_expiry {
            expires_at = Some(expires_at.map_or(t, |e| e.min(t)));
        }
        let mut reservation = None;
        if purpose == Purpose::WebRtc {
            if !stream.is_live() {
                return Err(Refusal::Offline(name));
            }
            // Another node's pull is not a person: only viewers count.
            if !relay {
                self.check_cluster_caps(&stream)?;
            }
            reservation = Some(self.reserve(&stream, relay)?);
        }
        Ok(ViewerPass {
            stream,
            grounds,
            expires_at,
            ticket,
            reservation,
            member,
            revoked,
        })
    }

    /// Whether `token` may watch `name`, checked before anything costly is
    /// done for the request: a cluster node without the publisher pulls the
    /// stream from its origin for a viewer, and a private stream's viewer
    /// without a valid token must not make it pull. An unknown stream passes
    /// here; [`Admission::admit_viewer`] refuses it.
    pub fn check_access(&self, name: &str, token: Option<&str>) -> Result<(), Refusal> {
        match self.hub.get(name) {
            Some(stream) => self.access_of(&stream, token).map(|_| ()),
            None => Ok(()),
        }
    }

    /// May a request with `token` see `stream` at all (listings, pages)?
    pub fn may_see(&self, stream: &Stream, token: Option<&str>) -> bool {
        self.access_of(stream, token).is_ok()
    }

    #[allow(clippy::type_complexity)]
    fn access_of(
        &self,
        stream: &Stream,
        token: Option<&str>,
    ) -> Result<(Grounds, Option<Instant>, Option<String>), Refusal> {
        if stream.access() == Access::Public {
            return Ok((Grounds::Public, None, None));
        }
        let Some(tokens) = &self.tokens else {
            // Private streams exist only with the Matrix bridge.
            return Ok((Grounds::Public, None, None));
        };
        let name = &stream.name;
        let token = token.ok_or_else(|| Refusal::AccessRequired(name.clone()))?;
        match tokens.verify(name, token) {
            Ok(grant) => {
                if let Some(user) = &grant.user
                    && self.left.lock().contains_key(&(name.clone(), user.clone()))
                {
                    return Err(Refusal::AccessDenied(name.clone()));
                }
                let left = grant.expires.saturating_sub(unix_now());
                Ok((
                    Grounds::Token,
                    Some(Instant::now() + Duration::from_secs(left)),
                    grant.user,
                ))
            }
            Err(TokenError::Expired) => Err(Refusal::AccessExpired(name.clone())),
            Err(_) => Err(Refusal::AccessDenied(name.clone())),
        }
    }

    /// `POST …/access` (an OpenID exchange asks the homeserver): per address.
    pub fn check_access_rate(&self, client: IpAddr) -> Result<(), Refusal> {
        self.access
            .check(client, Instant::now())
            .map_err(Refusal::RateLimited)
    }

    /// A place for one more waiting LL-HLS blocking reload of `client`.
    pub fn hls_blocking_slot(&self, client: IpAddr) -> Result<Slot, Refusal> {
        self.hls_blocking
            .enter(client)
            .ok_or(Refusal::RateLimited(1))
    }

    /// A place under `[limits]` for one more WebRTC viewer of `stream`.
    /// Another node's relay pull (`relay`) is not held to the viewer caps:
    /// it is one session per node and stream that feeds that node's viewers,
    /// and a full origin must still feed the nodes its viewers are sent to
    /// (`cluster.redirect_viewers`). The egress cap still applies.
    fn reserve(&self, stream: &Stream, relay: bool) -> Result<Reservation, Refusal> {
        let limits = &self.limits;
        let mut in_flight = self.in_flight.lock();
        let (total, of_stream) = self.engine.viewer_counts(&stream.name);
        let pending_total: usize = in_flight.values().sum();
        let pending_here = in_flight.get(&stream.name).copied().unwrap_or(0);
        if !relay
            && limits.max_viewers_per_stream > 0
            && of_stream + pending_here >= limits.max_viewers_per_stream
        {
            return Err(Refusal::Busy(format!(
                "stream '{}' has reached its limit of {} viewers; try again later",
                stream.name, limits.max_viewers_per_stream
            )));
        }
        if !relay && limits.max_viewers > 0 && total + pending_total >= limits.max_viewers {
            return Err(Refusal::Busy(format!(
                "this server has reached its limit of {} viewers; try again later",
                limits.max_viewers
            )));
        }
        self.check_egress(stream)?;
        *in_flight.entry(stream.name.clone()).or_insert(0) += 1;
        Ok(Reservation {
            in_flight: self.in_flight.clone(),
            stream: stream.name.clone(),
        })
    }

    /// `[limits] max_egress_mbps`: would one more viewer of `stream` (WebRTC
    /// or HLS) take the server's egress over the cap?
    pub fn check_egress(&self, stream: &Stream) -> Result<(), Refusal> {
        let cap = self.limits.max_egress_mbps;
        if cap > 0.0 {
            let now = (self.egress_mbps)();
            let this = stream.bitrate_kbps() as f64 / 1000.0;
            if now + this > cap {
                return Err(Refusal::Busy(format!(
                    "this server's egress would exceed its cap of {cap} Mbit/s ({now:.1} Mbit/s in use, this stream needs {this:.1}); try again later"
                )));
            }
        }
        Ok(())
    }

    /// Remembers the WebRTC session `id` a pass admitted, so that it ends
    /// when the pass's grounds go away.
    pub fn track(&self, id: u64, pass: &ViewerPass) {
        self.sessions.lock().insert(
            id,
            Tracked {
                stream: pass.stream.clone(),
                grounds: pass.grounds,
                member: pass.member.clone(),
            },
        );
    }

    /// A user joined or left a stream's room (from the Matrix bridge). On
    /// leaving, what their token admitted ends: WebRTC sessions at once,
    /// feeds at their next check, and the token is refused from now on.
    pub fn membership_changed(&self, stream: &str, user: &str, joined: bool) {
        let key = (stream.to_string(), user.to_string());
        if joined {
            self.left.lock().remove(&key);
            return;
        }
        {
            let now = Instant::now();
            let mut left = self.left.lock();
            left.retain(|_, t| now.duration_since(*t) < LEFT_MEMORY);
            left.insert(key.clone(), now);
        }
        self.end_granted_publisher(stream, user);
        if let Some(flags) = self.member_passes.lock().remove(&key) {
            for f in flags.iter().filter_map(Weak::upgrade) {
                f.store(true, Relaxed);
            }
        }
        let mut ended = 0;
        self.sessions.lock().retain(|id, t| {
            if t.stream.name == stream && t.member.as_deref() == Some(user) {
                self.engine.remove_viewer(stream, *id);
                ended += 1;
                return false;
            }
            true
        });
        if ended > 0 {
            tracing::info!(
                stream,
                ended,
                "viewers ended: their membership of the room ended"
            );
        }
    }

    /// Ends WebRTC viewers whose grounds are gone (a public room turned
    /// private: its anonymous viewers); forgets ended sessions. Expiry is
    /// enforced by the engine itself (`SessionOpts::expires_at`).
    pub fn sweep(&self) -> usize {
        let mut ended = 0;
        let mut sessions = self.sessions.lock();
        sessions.retain(|id, t| {
            if !self.engine.has_viewer(&t.stream.name, *id) {
                return false;
            }
            if t.grounds == Grounds::Public && t.stream.access() != Access::Public {
                self.engine.remove_viewer(&t.stream.name, *id);
                ended += 1;
                return false;
            }
            true
        });
        if ended > 0 {
            tracing::info!(
                ended,
                "viewers ended: their stream's room is no longer public"
            );
        }
        ended
    }

    /// Runs [`Admission::sweep`] every second.
    pub fn spawn_sweeper(self: &Arc<Self>) {
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(a) = weak.upgrade() else { return };
                a.sweep();
            }
        });
    }
}
