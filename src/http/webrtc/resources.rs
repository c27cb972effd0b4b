//! WHIP and WHEP session resources. The `Location` a client gets is
//! `/whip|whep/{stream}/{secret}` where the secret is 128 random bits: holding
//! it is the proof of ownership that `PATCH` and `DELETE` need. The engine's
//! session ids (a counter) never leave the server.
//!
//! Only a SHA-256 of each secret is kept, and lookups go by that digest: how
//! long a lookup takes says nothing about how close a guess was (the same
//! reason keys are stored hashed in `auth::keys`).

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::Mutex;
use sha2::{Digest, Sha256};

use crate::rtc::Engine;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A WHEP viewer.
    Viewer,
    /// A WHIP publisher.
    Publisher,
}

struct Entry {
    kind: Kind,
    stream: String,
    id: u64,
    /// The entity-tag of the session's ICE state (RFC 9725 §4.3): changes
    /// with each ICE restart.
    etag: String,
    /// The client's ICE ufrag now (from its offer, then its restarts): a
    /// `PATCH` with other credentials is a restart.
    remote_ufrag: Option<String>,
}

/// What a `PATCH` needs of a live session.
#[derive(Debug, Clone)]
pub struct Session {
    pub id: u64,
    pub etag: String,
    pub remote_ufrag: Option<String>,
}

/// The first entity-tag of a session: names it without repeating the secret.
pub fn first_etag(secret: &str) -> String {
    hex::encode(&Sha256::digest(secret.as_bytes())[..8])
}

/// The map from resource secrets to engine sessions.
pub struct Resources {
    engine: Arc<Engine>,
    inner: Mutex<Inner>,
}

struct Inner {
    map: HashMap<[u8; 32], Entry>,
    /// Ended sessions are dropped from the map when it reaches this size
    /// (then twice the live count): amortized O(1) per session, no task.
    prune_at: usize,
}

const MIN_PRUNE_AT: usize = 64;

fn digest(secret: &str) -> [u8; 32] {
    Sha256::digest(secret.as_bytes()).into()
}

impl Resources {
    pub fn new(engine: Arc<Engine>) -> Resources {
        Resources {
            engine,
            inner: Mutex::new(Inner {
                map: HashMap::new(),
                prune_at: MIN_PRUNE_AT,
            }),
        }
    }

    fn alive(&self, e: &Entry) -> bool {
        match e.kind {
            Kind::Viewer => self.engine.has_viewer(&e.stream, e.id),
            Kind::Publisher => self.engine.has_publisher(&e.stream, e.id),
        }
    }

    /// Registers engine session `id` and returns its secret (32 hex digits).
    pub fn add(&self, kind: Kind, stream: &str, id: u64) -> String {
        self.add_with_ufrag(kind, stream, id, None)
    }

    /// [`Resources::add`] for a session whose client offered ICE ufrag
    /// `remote_ufrag`.
    pub fn add_with_ufrag(
        &self,
        kind: Kind,
        stream: &str,
        id: u64,
        remote_ufrag: Option<String>,
    ) -> String {
        let secret = hex::encode(rand::random::<[u8; 16]>());
        let mut inner = self.inner.lock();
        if inner.map.len() >= inner.prune_at {
            inner.map.retain(|_, e| self.alive(e));
            inner.prune_at = (inner.map.len() * 2).max(MIN_PRUNE_AT);
        }
        inner.map.insert(
            digest(&secret),
            Entry {
                kind,
                stream: stream.to_string(),
                id,
                etag: first_etag(&secret),
                remote_ufrag,
            },
        );
        secret
    }

    /// The live engine session `secret` names under `stream`, if any.
    pub fn find(&self, kind: Kind, stream: &str, secret: &str) -> Option<u64> {
        let key = digest(secret);
        let mut inner = self.inner.lock();
        let e = inner.map.get(&key)?;
        if e.kind != kind || e.stream != stream {
            return None;
        }
        if !self.alive(e) {
            inner.map.remove(&key);
            return None;
        }
        Some(e.id)
    }

    /// The live session `secret` names under `stream`, with its ICE state.
    pub fn session(&self, kind: Kind, stream: &str, secret: &str) -> Option<Session> {
        let id = self.find(kind, stream, secret)?;
        let inner = self.inner.lock();
        let e = inner.map.get(&digest(secret))?;
        Some(Session {
            id,
            etag: e.etag.clone(),
            remote_ufrag: e.remote_ufrag.clone(),
        })
    }

    /// Records an ICE restart of the session `secret` names: the client's
    /// new ufrag, and a new entity-tag, which it returns.
    pub fn restarted(&self, secret: &str, remote_ufrag: &str) -> Option<String> {
        let mut inner = self.inner.lock();
        let e = inner.map.get_mut(&digest(secret))?;
        e.etag = hex::encode(rand::random::<[u8; 8]>());
        e.remote_ufrag = Some(remote_ufrag.to_string());
        Some(e.etag.clone())
    }

    /// Forgets `secret` and returns its engine session (live or not).
    pub fn take(&self, kind: Kind, stream: &str, secret: &str) -> Option<u64> {
        let key = digest(secret);
        let mut inner = self.inner.lock();
        let e = inner.map.get(&key)?;
        if e.kind != kind || e.stream != stream {
            return None;
        }
        inner.map.remove(&key).map(|e| e.id)
    }
}
