//! Destination keys at rest: sealed with AES-256-GCM under a secret that is
//! not in the database (`restream.secret_file`, mode 0600, created on first
//! use), so a database dump alone does not reveal them.
//!
//! Sealed form: base64url(nonce ‖ ciphertext ‖ tag), with the stream and
//! label as associated data so a sealed key cannot be moved to another row.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

pub struct Sealer {
    key: LessSafeKey,
}

#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("{path}: {why}")]
    File { path: String, why: String },
    #[error("a stored destination key cannot be opened (another restream secret?)")]
    Open,
}

impl Sealer {
    pub fn from_bytes(secret: &[u8; 32]) -> Sealer {
        Sealer {
            key: LessSafeKey::new(
                UnboundKey::new(&AES_256_GCM, secret).expect("32 bytes is an AES-256 key"),
            ),
        }
    }

    /// Reads the secret (64 hex characters) from `path`, creating it with
    /// mode 0600 when absent. Refuses a file others can read.
    pub fn from_file(path: &Path) -> Result<Sealer, SecretError> {
        let err = |why: String| SecretError::File {
            path: path.display().to_string(),
            why,
        };
        if !path.exists() {
            let mut secret = [0u8; 32];
            SystemRandom::new()
                .fill(&mut secret)
                .map_err(|_| err("no randomness".into()))?;
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path)
                .map_err(|e| err(format!("cannot create: {e}")))?;
            f.write_all(hex::encode(secret).as_bytes())
                .and_then(|_| f.sync_all())
                .map_err(|e| err(format!("cannot write: {e}")))?;
            return Ok(Sealer::from_bytes(&secret));
        }
        let meta = std::fs::metadata(path).map_err(|e| err(e.to_string()))?;
        if meta.permissions().mode() & 0o077 != 0 {
            return Err(err(format!(
                "mode {:o} lets others read it; chmod 600",
                meta.permissions().mode() & 0o777
            )));
        }
        let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
        let bytes = hex::decode(text.trim()).map_err(|_| err("not hex".into()))?;
        let secret: [u8; 32] = bytes
            .try_into()
            .map_err(|_| err("must hold 64 hex characters (32 bytes)".into()))?;
        Ok(Sealer::from_bytes(&secret))
    }

    pub fn seal(&self, stream: &str, label: &str, key: &str) -> String {
        let mut nonce = [0u8; NONCE_LEN];
        SystemRandom::new()
            .fill(&mut nonce)
            .expect("the system has randomness");
        let mut buf = key.as_bytes().to_vec();
        self.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad(stream, label).as_bytes()),
                &mut buf,
            )
            .expect("AES-GCM seals any length we store");
        let mut out = nonce.to_vec();
        out.extend_from_slice(&buf);
        URL_SAFE_NO_PAD.encode(out)
    }

    pub fn open(&self, stream: &str, label: &str, sealed: &str) -> Result<String, SecretError> {
        let raw = URL_SAFE_NO_PAD
            .decode(sealed)
            .map_err(|_| SecretError::Open)?;
        if raw.len() < NONCE_LEN {
            return Err(SecretError::Open);
        }
        let (nonce, rest) = raw.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| SecretError::Open)?;
        let mut buf = rest.to_vec();
        let plain = self
            .key
            .open_in_place(nonce, Aad::from(aad(stream, label).as_bytes()), &mut buf)
            .map_err(|_| SecretError::Open)?;
        String::from_utf8(plain.to_vec()).map_err(|_| SecretError::Open)
    }
}

fn aad(stream: &str, label: &str) -> String {
    format!("roomcast restream key\0{stream}\0{label}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_keys_open_only_with_the_secret_and_their_row() {
        let dir = std::env::temp_dir().join(format!("rc-secret-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("restream.secret");
        let s = Sealer::from_file(&path).unwrap();
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let sealed = s.seal("t1", "twitch", "live_abc123secret");
        assert!(!sealed.contains("abc123"));
        let again = Sealer::from_file(&path).unwrap();
        assert_eq!(
            again.open("t1", "twitch", &sealed).unwrap(),
            "live_abc123secret"
        );
        assert!(
            again.open("t1", "youtube", &sealed).is_err(),
            "bound to its row"
        );
        assert!(
            Sealer::from_bytes(&[7; 32])
                .open("t1", "twitch", &sealed)
                .is_err()
        );
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(
            Sealer::from_file(&path).is_err(),
            "a readable secret is refused"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
