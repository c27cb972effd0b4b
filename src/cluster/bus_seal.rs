//! Sealing the cluster bus's messages. Anyone who can connect to the
//! cluster's database can LISTEN on the bus's channel and NOTIFY on it, and
//! read and write its payload table: without this, such a role reads private
//! rooms' chat and membership and forges messages as any node (viewer counts
//! that make every cap refuse, a member's access given back). Every message
//! (inline or through the table) is sealed with ChaCha20-Poly1305 under a key
//! derived from `cluster.secret` (which every node already shares): it is
//! unreadable without the secret, and one that fails to open is dropped.
//! The sealed envelope carries its sending time and the nonce is remembered
//! for as long as a message is accepted, so a recorded message cannot be
//! replayed.
//!
//! Sans-I/O: the clock is a parameter; the nonce is random (96 bits: far
//! from colliding at a bus's message rate).

use std::collections::{HashSet, VecDeque};

use aws_lc_rs::aead::{Aad, CHACHA20_POLY1305, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// What starts a sealed payload (never '@', which names a table row).
const PREFIX: &str = "s1.";
/// Bound to every message: a key derived for something else never opens one.
const AAD: &[u8] = b"roomcast-cluster-bus-v1";
/// How far a message's time may be from the receiver's clock (as
/// `cluster::auth`'s tokens).
pub const MAX_AGE_MS: u64 = 60_000;
/// Nonces remembered against replays: more than a minute of messages at any
/// rate the bus sees (a few per second per node); 12 bytes each.
const SEEN_MAX: usize = 65_536;

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum SealError {
    #[error("not sealed with this cluster's secret (is cluster.secret the same on every node?)")]
    Unsealed,
    #[error("a message {0} ms away from this node's clock (clocks more than 60 s apart?)")]
    Stale(i64),
    #[error("a message seen before (replayed)")]
    Replayed,
}

/// Seals and opens bus messages with the cluster's key.
pub struct Sealer {
    key: LessSafeKey,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key.
        f.write_str("Sealer")
    }
}

impl Sealer {
    /// The bus's key: HMAC-SHA256 of a label under `cluster.secret` (as
    /// `NodeAuth` keys its tokens), so it differs from every other use.
    pub fn new(secret: &str) -> Sealer {
        let mut mac =
            Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes any key");
        mac.update(b"roomcast-cluster-bus-key-v1");
        let bytes = mac.finalize().into_bytes();
        let key = UnboundKey::new(&CHACHA20_POLY1305, &bytes).expect("a 32-byte key");
        Sealer {
            key: LessSafeKey::new(key),
        }
    }

    /// `plain` sealed at `now_ms`, as NOTIFY text.
    pub fn seal(&self, plain: &[u8], now_ms: u64) -> String {
        let nonce: [u8; NONCE_LEN] = rand::random();
        let mut buf = Vec::with_capacity(8 + plain.len() + 16);
        buf.extend_from_slice(&now_ms.to_be_bytes());
        buf.extend_from_slice(plain);
        self.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(AAD),
                &mut buf,
            )
            .expect("sealing a bounded message");
        let mut out = String::with_capacity(PREFIX.len() + (NONCE_LEN + buf.len()) * 4 / 3 + 4);
        out.push_str(PREFIX);
        let mut raw = Vec::with_capacity(NONCE_LEN + buf.len());
        raw.extend_from_slice(&nonce);
        raw.extend_from_slice(&buf);
        URL_SAFE_NO_PAD.encode_string(&raw, &mut out);
        out
    }

    /// The message sealed in `text`, if it opens, is fresh at `now_ms` and
    /// was not seen before (`seen` remembers it).
    pub fn open(&self, text: &str, now_ms: u64, seen: &mut Seen) -> Result<Vec<u8>, SealError> {
        let b64 = text.strip_prefix(PREFIX).ok_or(SealError::Unsealed)?;
        let mut raw = URL_SAFE_NO_PAD
            .decode(b64)
            .map_err(|_| SealError::Unsealed)?;
        if raw.len() < NONCE_LEN + 8 + 16 {
            return Err(SealError::Unsealed);
        }
        let mut nonce = [0u8; NONCE_LEN];
        nonce.copy_from_slice(&raw[..NONCE_LEN]);
        let plain = self
            .key
            .open_in_place(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(AAD),
                &mut raw[NONCE_LEN..],
            )
            .map_err(|_| SealError::Unsealed)?;
        let mut t = [0u8; 8];
        t.copy_from_slice(&plain[..8]);
        let age = now_ms as i64 - u64::from_be_bytes(t) as i64;
        if age.unsigned_abs() > MAX_AGE_MS {
            return Err(SealError::Stale(age));
        }
        let body = plain[8..].to_vec();
        if !seen.insert(nonce) {
            return Err(SealError::Replayed);
        }
        Ok(body)
    }
}

/// The nonces of recently opened messages (bounded: [`SEEN_MAX`]).
#[derive(Debug, Default)]
pub struct Seen {
    set: HashSet<[u8; NONCE_LEN]>,
    order: VecDeque<[u8; NONCE_LEN]>,
}

impl Seen {
    /// False when `nonce` was seen.
    fn insert(&mut self, nonce: [u8; NONCE_LEN]) -> bool {
        if !self.set.insert(nonce) {
            return false;
        }
        self.order.push_back(nonce);
        if self.order.len() > SEEN_MAX
            && let Some(old) = self.order.pop_front()
        {
            self.set.remove(&old);
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_800_000_000_000;

    #[test]
    fn a_sealed_message_opens_once() {
        let s = Sealer::new("a cluster secret of enough length");
        let mut seen = Seen::default();
        let text = s.seal(br#"{"n":"a"}"#, NOW);
        assert!(text.starts_with(PREFIX));
        assert!(
            !text.contains("\"n\""),
            "the content is not readable: {text}"
        );
        assert_eq!(s.open(&text, NOW + 10, &mut seen).unwrap(), br#"{"n":"a"}"#);
        assert_eq!(s.open(&text, NOW + 20, &mut seen), Err(SealError::Replayed));
    }

    #[test]
    fn forged_unsigned_and_stale_messages_are_dropped() {
        let s = Sealer::new("a cluster secret of enough length");
        let other = Sealer::new("another secret of enough length!!");
        let mut seen = Seen::default();
        // What a role with database access could NOTIFY without the secret.
        let plain = r#"{"n":"b","m":{"k":"viewers","counts":[["s",4000000000,false]]}}"#;
        assert_eq!(s.open(plain, NOW, &mut seen), Err(SealError::Unsealed));
        assert_eq!(
            s.open(&format!("{PREFIX}{plain}"), NOW, &mut seen),
            Err(SealError::Unsealed)
        );
        assert_eq!(
            s.open(&other.seal(plain.as_bytes(), NOW), NOW, &mut seen),
            Err(SealError::Unsealed),
            "sealed with another secret"
        );
        // One bit changed anywhere: refused.
        let text = s.seal(plain.as_bytes(), NOW);
        let mut raw = URL_SAFE_NO_PAD.decode(&text[PREFIX.len()..]).unwrap();
        for i in [0, NONCE_LEN, NONCE_LEN + 9, raw.len() - 1] {
            raw[i] ^= 1;
            let forged = format!("{PREFIX}{}", URL_SAFE_NO_PAD.encode(&raw));
            assert_eq!(
                s.open(&forged, NOW, &mut seen),
                Err(SealError::Unsealed),
                "byte {i}"
            );
            raw[i] ^= 1;
        }
        // Too old or from the future: refused (a recording replayed later).
        let old = s.seal(b"{}", NOW - MAX_AGE_MS - 1);
        assert!(matches!(
            s.open(&old, NOW, &mut seen),
            Err(SealError::Stale(_))
        ));
        let future = s.seal(b"{}", NOW + MAX_AGE_MS + 1);
        assert!(matches!(
            s.open(&future, NOW, &mut seen),
            Err(SealError::Stale(_))
        ));
        // The genuine one still opens.
        assert!(s.open(&text, NOW, &mut seen).is_ok());
    }

    #[test]
    fn the_seen_set_is_bounded() {
        let mut seen = Seen::default();
        for i in 0..(SEEN_MAX + 10) as u64 {
            let mut n = [0u8; NONCE_LEN];
            n[..8].copy_from_slice(&i.to_be_bytes());
            assert!(seen.insert(n));
        }
        assert_eq!(seen.set.len(), SEEN_MAX);
        assert_eq!(seen.order.len(), SEEN_MAX);
    }
}
