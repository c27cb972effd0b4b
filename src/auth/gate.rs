//! One decision for every session, whatever its protocol: stream key,
//! SignedPolicy and admission webhook, in OvenMediaEngine's order.
//!
//! Publishing is authorized by any of: the stream's key, a valid signed URL
//! (`[signed_policy] publish`), an admission webhook that allows it. It is
//! refused by any of: a wrong key, a signed URL that does not verify, a
//! webhook that denies it (the webhook is asked for keyed publishes too).
//! Playback is open unless `[signed_policy] playback` or `[admission]
//! playback` is set.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::admission::{Admission, AdmissionError, Direction, SessionInfo, Ticket};
use super::keys::KeyRing;
use super::signed_policy::{self, Client, PolicyError, QueryNames};
use crate::config::SignedPolicyConfig;

/// What a refused session is told.
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    #[error("stream key rejected")]
    KeyRejected,
    #[error(
        "publishing to '{0}' needs its stream key (WHIP: Authorization: Bearer KEY) or a signed URL"
    )]
    KeyRequired(String),
    #[error("signed URL refused: {0}")]
    Policy(#[from] PolicyError),
    #[error("{0}")]
    Admission(#[from] AdmissionError),
    #[error("'{0}' is not a stream name: {1}")]
    BadName(String, String),
}

impl Refusal {
    /// HTTP status and error code for the JSON error.
    pub fn status_code(&self) -> (u16, &'static str) {
        match self {
            Refusal::KeyRejected => (401, "stream_key_rejected"),
            Refusal::KeyRequired(_) => (401, "stream_key_required"),
            Refusal::Policy(_) => (403, "signed_url_refused"),
            Refusal::Admission(AdmissionError::Denied(_)) => (403, "admission_denied"),
            Refusal::Admission(_) => (503, "admission_unavailable"),
            Refusal::BadName(..) => (400, "bad_stream_name"),
        }
    }
}

/// A session as the gate sees it.
pub struct Attempt {
    /// The stream named by the URL (or, for RTMP without a key, the key field).
    pub stream: String,
    /// A stream key proved it (checked by the caller, who knows the protocol).
    pub keyed: bool,
    /// The URL's query (after `?`), where a policy and signature may be.
    pub query: String,
    /// `scheme://host:port/path` forms the URL may have been signed as.
    pub bases: Vec<String>,
    /// For the admission webhook: protocol, URL (never with a key), client.
    pub protocol: &'static str,
    pub url: String,
    pub client: SocketAddr,
    pub real_ip: Option<IpAddr>,
    pub user_agent: Option<String>,
}

/// An authorized session.
pub struct Pass {
    /// The stream to publish to or play (the webhook's `new_url` may change it).
    pub stream: String,
    /// SignedPolicy `stream_expire` or the webhook's `lifetime`, whichever is sooner.
    pub expires_at: Option<Instant>,
    /// Tells the webhook when the session closes (dropped with the session).
    pub ticket: Option<Ticket>,
}

pub struct Gate {
    pub keys: Arc<KeyRing>,
    pub policy: Option<SignedPolicyConfig>,
    pub admission: Option<Arc<Admission>>,
}

impl Gate {
    fn names(p: &SignedPolicyConfig) -> QueryNames {
        QueryNames {
            policy: p.policy_query_key.clone(),
            signature: p.signature_query_key.clone(),
        }
    }

    fn check_policy(
        &self,
        a: &Attempt,
        required: bool,
        enabled: bool,
    ) -> Result<Option<Option<u64>>, Refusal> {
        let Some(p) = self.policy.as_ref().filter(|_| enabled) else {
            return Ok(None);
        };
        let names = Self::names(p);
        if !required && !signed_policy::has_policy(&a.query, &names) {
            return Ok(None);
        }
        let grant = signed_policy::verify(
            p.secret_key.as_bytes(),
            &a.bases,
            &a.query,
            &names,
            Client {
                ip: a.client.ip(),
                real_ip: a.real_ip,
            },
            signed_policy::now_ms(),
        )?;
        Ok(Some(grant.stream_expire_ms))
    }

    /// Whether `query` carries a SignedPolicy (verified later).
    pub fn has_policy(&self, query: &str) -> bool {
        self.policy
            .as_ref()
            .is_some_and(|p| signed_policy::has_policy(query, &Self::names(p)))
    }

    /// Whether the admission webhook decides publishing (and so may create
    /// streams on demand, as OME's does).
    pub fn webhook_decides_publish(&self) -> bool {
        self.admission
            .as_ref()
            .is_some_and(|a| a.applies_to(Direction::Incoming))
    }

    /// Whether playback is admitted by a signed URL or the admission
    /// webhook (`Config::playback_checked_per_request`, as this gate holds
    /// it): surfaces that serve many files per viewer (LL-HLS, recordings)
    /// cannot check that per file.
    pub fn playback_checked_per_request(&self) -> bool {
        self.policy.as_ref().is_some_and(|p| p.playback)
            || self
                .admission
                .as_ref()
                .is_some_and(|a| a.applies_to(Direction::Outgoing))
    }

    /// Whether an unkeyed publish could still be authorized (a policy or a webhook).
    pub fn keyless_publish_possible(&self, query: &str) -> bool {
        let policy = self
            .policy
            .as_ref()
            .is_some_and(|p| p.publish && signed_policy::has_policy(query, &Self::names(p)));
        policy || self.webhook_decides_publish()
    }

    pub async fn admit_publish(&self, a: Attempt) -> Result<Pass, Refusal> {
        let publish_policy = self.policy.as_ref().is_some_and(|p| p.publish);
        let stream_expire = self.check_policy(&a, false, publish_policy)?;
        let webhook = self
            .admission
            .as_ref()
            .filter(|w| w.applies_to(Direction::Incoming));
        if !a.keyed && stream_expire.is_none() && webhook.is_none() {
            return Err(Refusal::KeyRequired(a.stream));
        }
        self.finish(a, stream_expire.flatten(), webhook, Direction::Incoming)
            .await
    }

    pub async fn admit_play(&self, a: Attempt) -> Result<Pass, Refusal> {
        let required = self.policy.as_ref().is_some_and(|p| p.playback);
        let stream_expire = self.check_policy(&a, true, required)?;
        let webhook = self
            .admission
            .as_ref()
            .filter(|w| w.applies_to(Direction::Outgoing));
        self.finish(a, stream_expire.flatten(), webhook, Direction::Outgoing)
            .await
    }

    async fn finish(
        &self,
        a: Attempt,
        stream_expire_ms: Option<u64>,
        webhook: Option<&Arc<Admission>>,
        direction: Direction,
    ) -> Result<Pass, Refusal> {
        let mut expires_at = stream_expire_ms.map(|ms| {
            let left = ms.saturating_sub(signed_policy::now_ms());
            Instant::now() + Duration::from_millis(left)
        });
        let mut stream = a.stream;
        let mut ticket = None;
        if let Some(w) = webhook {
            let admitted = w
                .opening(SessionInfo {
                    direction,
                    protocol: a.protocol,
                    url: a.url,
                    client: a.client,
                    real_ip: a.real_ip,
                    user_agent: a.user_agent,
                })
                .await?;
            if let Some(life) = admitted.lifetime {
                let t = Instant::now() + life;
                expires_at = Some(expires_at.map_or(t, |e| e.min(t)));
            }
            if let Some(s) = admitted.new_stream {
                stream = s;
            }
            ticket = Some(admitted.ticket);
        }
        crate::config::validate_stream_name(&stream)
            .map_err(|reason| Refusal::BadName(stream.clone(), reason))?;
        Ok(Pass {
            stream,
            expires_at,
            ticket,
        })
    }
}
