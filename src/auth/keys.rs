//! Stream keys. Keys are random secrets; only their SHA-256 is kept. A key is
//! matched against every stream's hash in constant time, so response timing says
//! nothing about which bytes were right.

use parking_lot::RwLock;
use rand::Rng;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

pub(crate) const KEY_ALPHABET: &[u8] = b"ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz23456789";
const KEY_LEN: usize = 32;

/// A new random key (32 characters, about 185 bits).
pub fn generate_key() -> String {
    let mut rng = rand::rng();
    (0..KEY_LEN)
        .map(|_| KEY_ALPHABET[rng.random_range(0..KEY_ALPHABET.len())] as char)
        .collect()
}

pub fn hash_key(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

pub fn hash_key_hex(key: &str) -> String {
    hex::encode(hash_key(key))
}

/// In-memory index of key hashes → stream names, loaded from the store.
#[derive(Default)]
pub struct KeyRing {
    entries: RwLock<Vec<([u8; 32], String)>>,
}

impl KeyRing {
    pub fn set(&self, stream: &str, hash_hex: &str) {
        let Ok(bytes) = hex::decode(hash_hex) else {
            return;
        };
        let Ok(hash) = <[u8; 32]>::try_from(bytes.as_slice()) else {
            return;
        };
        let mut e = self.entries.write();
        e.retain(|(_, s)| s != stream);
        e.push((hash, stream.to_string()));
    }

    /// The stream this key publishes to. Compares against every entry so the time
    /// taken does not depend on where (or whether) a match is.
    pub fn stream_for_key(&self, key: &str) -> Option<String> {
        let h = hash_key(key);
        let entries = self.entries.read();
        let mut found: Option<&String> = None;
        for (hash, stream) in entries.iter() {
            if bool::from(hash.ct_eq(&h)) {
                found = Some(stream);
            }
        }
        found.cloned()
    }

    /// Checks a key for a known stream (WHIP: stream in the URL, key as Bearer).
    pub fn verify(&self, stream: &str, key: &str) -> bool {
        let h = hash_key(key);
        let entries = self.entries.read();
        let mut ok = false;
        for (hash, s) in entries.iter() {
            ok |= bool::from(hash.ct_eq(&h)) & (s == stream);
        }
        ok
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_map_to_streams() {
        let ring = KeyRing::default();
        let k1 = generate_key();
        let k2 = generate_key();
        assert_ne!(k1, k2);
        assert_eq!(k1.len(), 32);
        ring.set("a", &hash_key_hex(&k1));
        ring.set("b", &hash_key_hex(&k2));
        assert_eq!(ring.stream_for_key(&k1).as_deref(), Some("a"));
        assert_eq!(ring.stream_for_key(&k2).as_deref(), Some("b"));
        assert_eq!(ring.stream_for_key("wrong"), None);
        assert!(ring.verify("a", &k1));
        assert!(!ring.verify("b", &k1));
        // Rotating a key replaces the old one.
        let k3 = generate_key();
        ring.set("a", &hash_key_hex(&k3));
        assert_eq!(ring.stream_for_key(&k1), None);
        assert_eq!(ring.stream_for_key(&k3).as_deref(), Some("a"));
    }
}
