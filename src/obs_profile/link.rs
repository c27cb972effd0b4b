//! One-time profile links: `/obs/{secret}`. The database keeps only the
//! secret's hash; the stream key in the profile is derived from the secret,
//! so no copy of the key is stored anywhere, and a link whose derived key is
//! no longer the stream's key (rotated since) is dead without any cleanup.

use base64::Engine as _;
use rand::RngCore;
use sha2::{Digest, Sha256};

use crate::auth::keys::KEY_ALPHABET;

/// How long a link lasts unless the config says otherwise.
pub const DEFAULT_TTL_SECS: u64 = 24 * 3600;

/// A new link secret: 256 random bits, URL-safe (43 characters).
pub fn new_secret() -> String {
    let mut b = [0u8; 32];
    rand::rng().fill_bytes(&mut b);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

/// Whether `s` looks like a secret (checked before any database read).
pub fn well_formed(s: &str) -> bool {
    s.len() == 43
        && s.bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_')
}

/// The row id: the secret's SHA-256, hex.
pub fn id_of(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

/// The stream key the link's profile carries (the same 32-character
/// alphabet as `generate_key`), derived apart from the id.
pub fn key_of(secret: &str) -> String {
    let d = Sha256::new()
        .chain_update(b"roomcast obs-profile key\0")
        .chain_update(secret.as_bytes())
        .finalize();
    d.iter()
        .map(|b| KEY_ALPHABET[*b as usize % KEY_ALPHABET.len()] as char)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_ids_and_keys() {
        let s = new_secret();
        assert!(well_formed(&s), "{s}");
        assert_ne!(s, new_secret());
        assert!(!well_formed("short"));
        assert!(!well_formed(&format!("{}/", &s[..42])));
        assert_eq!(id_of(&s).len(), 64);
        let k = key_of(&s);
        assert_eq!(k.len(), 32);
        assert_eq!(k, key_of(&s));
        assert_ne!(k, key_of(&new_secret()));
        // The id says nothing about the key.
        assert_ne!(id_of(&s), crate::auth::keys::hash_key_hex(&k));
    }
}
