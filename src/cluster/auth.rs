//! Node-to-node authentication: a request from one node to another carries
//! `X-Roomcast-Cluster: v2.<node>.<unix secs>.<nonce>.<hex HMAC-SHA256>`
//! over the node, the time, a random nonce, the method, the path and the
//! SHA-256 of the body, keyed with `cluster.secret`. Checked in constant
//! time, short lived (a minute either way), and good for one request: the
//! verifier remembers the tags it accepted until they are stale, so a
//! header seen on the wire can be neither replayed nor put on another body
//! (another viewer's SDP offer). Sans-I/O: the clock is a parameter.

use std::collections::HashMap;

use hmac::{Hmac, Mac};
use parking_lot::Mutex;
use sha2::{Digest, Sha256};

/// The request header carrying the token.
pub const HEADER: &str = "x-roomcast-cluster";

/// How far a token's time may be from the verifier's clock.
const MAX_SKEW_SECS: u64 = 60;
/// Tags accepted within the last two skews, kept to refuse their replay.
/// Node-to-node requests are a few per pull; a verifier that sees more than
/// this within two minutes refuses until the oldest go stale.
const MAX_REMEMBERED: usize = 8192;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("malformed cluster token")]
    Malformed,
    #[error(
        "cluster token of an older roomcast ({0}): every node of a cluster must run the same version"
    )]
    OldVersion(String),
    #[error("cluster token expired or from the future (clocks more than 60 s apart?)")]
    Stale,
    #[error("cluster token signature mismatch (is cluster.secret the same on every node?)")]
    BadSignature,
    #[error("cluster token already used")]
    Replayed,
    #[error("too many node-to-node requests in two minutes; try again later")]
    Busy,
}

/// Signs and checks node-to-node requests with the shared secret.
pub struct NodeAuth {
    secret: Vec<u8>,
    node_id: String,
    /// Tags accepted, with their token's time: each verifies once.
    used: Mutex<HashMap<[u8; 32], u64>>,
}

impl std::fmt::Debug for NodeAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the secret.
        f.debug_struct("NodeAuth")
            .field("node_id", &self.node_id)
            .finish_non_exhaustive()
    }
}

/// What a token covers besides the node and time.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    pub method: &'a str,
    pub path: &'a str,
    pub body: &'a [u8],
}

impl NodeAuth {
    pub fn new(secret: &str, node_id: &str) -> NodeAuth {
        NodeAuth {
            secret: secret.as_bytes().to_vec(),
            node_id: node_id.to_string(),
            used: Mutex::new(HashMap::new()),
        }
    }

    fn mac(&self, node: &str, secs: u64, nonce: &str, req: Request<'_>) -> Hmac<Sha256> {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.secret).expect("HMAC takes any key");
        for part in [
            "roomcast-cluster-v2",
            node,
            &secs.to_string(),
            nonce,
            &req.method.to_ascii_uppercase(),
            req.path,
        ] {
            mac.update(part.as_bytes());
            mac.update(b"\n");
        }
        mac.update(&Sha256::digest(req.body));
        mac
    }

    /// The header value for `req` at `now_secs`.
    pub fn sign(&self, req: Request<'_>, now_secs: u64) -> String {
        let nonce = hex::encode(rand::random::<[u8; 12]>());
        let tag = self
            .mac(&self.node_id, now_secs, &nonce, req)
            .finalize()
            .into_bytes();
        format!(
            "v2.{}.{now_secs}.{nonce}.{}",
            self.node_id,
            hex::encode(tag)
        )
    }

    /// Checks a header value for `req`, once: returns the calling node, and
    /// refuses the same token after that.
    pub fn verify(
        &self,
        value: &str,
        req: Request<'_>,
        now_secs: u64,
    ) -> Result<String, AuthError> {
        let mut parts = value.trim().splitn(5, '.');
        let version = parts.next().unwrap_or_default();
        if version != "v2" {
            return Err(match version {
                "v1" => AuthError::OldVersion(version.to_string()),
                _ => AuthError::Malformed,
            });
        }
        let (Some(node), Some(secs), Some(nonce), Some(tag)) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(AuthError::Malformed);
        };
        let secs: u64 = secs.parse().map_err(|_| AuthError::Malformed)?;
        let tag: [u8; 32] = hex::decode(tag)
            .ok()
            .and_then(|t| t.try_into().ok())
            .ok_or(AuthError::Malformed)?;
        if node.is_empty() || node.len() > 64 || nonce.is_empty() || nonce.len() > 64 {
            return Err(AuthError::Malformed);
        }
        if secs.abs_diff(now_secs) > MAX_SKEW_SECS {
            return Err(AuthError::Stale);
        }
        // verify_slice compares in constant time.
        self.mac(node, secs, nonce, req)
            .verify_slice(&tag)
            .map_err(|_| AuthError::BadSignature)?;
        self.remember(tag, secs, now_secs)?;
        Ok(node.to_string())
    }

    /// Marks a verified tag used; refuses one already used.
    fn remember(&self, tag: [u8; 32], secs: u64, now_secs: u64) -> Result<(), AuthError> {
        let mut used = self.used.lock();
        if used.contains_key(&tag) {
            return Err(AuthError::Replayed);
        }
        if used.len() >= MAX_REMEMBERED {
            // A token older than the skew can no longer verify: forget it.
            used.retain(|_, t| t.abs_diff(now_secs) <= MAX_SKEW_SECS);
            if used.len() >= MAX_REMEMBERED {
                return Err(AuthError::Busy);
            }
        }
        used.insert(tag, secs);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "s3cret-s3cret-s3cret-s3cret-0123";

    fn post<'a>(path: &'a str, body: &'a [u8]) -> Request<'a> {
        Request {
            method: "POST",
            path,
            body,
        }
    }

    #[test]
    fn tokens_verify_only_with_the_secret_request_and_time_they_were_made_for() {
        let a = NodeAuth::new(SECRET, "a");
        let t = a.sign(post("/whep/t1", b"offer"), 1000);
        let fresh = || NodeAuth::new(SECRET, "b");
        assert_eq!(
            fresh()
                .verify(&t, post("/whep/t1", b"offer"), 1030)
                .as_deref(),
            Ok("a")
        );
        for (why, req) in [
            ("another path", post("/whep/t2", b"offer")),
            ("another body", post("/whep/t1", b"another offer")),
            (
                "another method",
                Request {
                    method: "DELETE",
                    path: "/whep/t1",
                    body: b"offer",
                },
            ),
        ] {
            assert_eq!(
                fresh().verify(&t, req, 1000),
                Err(AuthError::BadSignature),
                "{why}"
            );
        }
        assert_eq!(
            fresh().verify(&t, post("/whep/t1", b"offer"), 1100),
            Err(AuthError::Stale)
        );
        let other = NodeAuth::new("another-secret-another-secret-01", "b");
        assert_eq!(
            other.verify(&t, post("/whep/t1", b"offer"), 1000),
            Err(AuthError::BadSignature)
        );
        // A node id or a nonce swapped in does not verify.
        let forged = t.replacen("v2.a.", "v2.c.", 1);
        assert_eq!(
            fresh().verify(&forged, post("/whep/t1", b"offer"), 1000),
            Err(AuthError::BadSignature)
        );
        let mut parts: Vec<&str> = t.split('.').collect();
        parts[3] = "00112233445566778899aabb";
        assert_eq!(
            fresh().verify(&parts.join("."), post("/whep/t1", b"offer"), 1000),
            Err(AuthError::BadSignature)
        );
        for bad in [
            "",
            "v2",
            "v2.a.1000.00",
            "v2.a.x.n.00",
            "v2.a.1000.n.zz",
            "v3.a.1.n.00",
        ] {
            assert_eq!(
                fresh().verify(bad, post("/whep/t1", b"offer"), 1000),
                Err(AuthError::Malformed),
                "{bad:?}"
            );
        }
        assert!(matches!(
            fresh().verify("v1.a.1000.00", post("/whep/t1", b"offer"), 1000),
            Err(AuthError::OldVersion(_))
        ));
        assert!(!format!("{a:?}").contains("s3cret"));
    }

    #[test]
    fn a_token_verifies_once_and_each_signing_makes_a_new_one() {
        let a = NodeAuth::new(SECRET, "a");
        let b = NodeAuth::new(SECRET, "b");
        let req = post("/whep/t1", b"offer");
        let t = a.sign(req, 1000);
        assert_eq!(b.verify(&t, req, 1000).as_deref(), Ok("a"));
        assert_eq!(b.verify(&t, req, 1001), Err(AuthError::Replayed));
        // The same request signed again in the same second is a new token.
        let again = a.sign(req, 1000);
        assert_ne!(again, t);
        assert_eq!(b.verify(&again, req, 1000).as_deref(), Ok("a"));
    }

    #[test]
    fn remembered_tokens_are_bounded_and_forgotten_once_stale() {
        let a = NodeAuth::new(SECRET, "a");
        let b = NodeAuth::new(SECRET, "b");
        let req = post("/whep/t1", b"");
        for _ in 0..MAX_REMEMBERED {
            let t = a.sign(req, 1000);
            b.verify(&t, req, 1000).unwrap();
        }
        // Full of tokens still fresh: refused, not grown.
        assert_eq!(
            b.verify(&a.sign(req, 1000), req, 1000),
            Err(AuthError::Busy)
        );
        assert_eq!(b.used.lock().len(), MAX_REMEMBERED);
        // Once they are stale they make room.
        let later = 1000 + MAX_SKEW_SECS + 1;
        assert_eq!(
            b.verify(&a.sign(req, later), req, later).as_deref(),
            Ok("a")
        );
        assert_eq!(b.used.lock().len(), 1);
    }
}
