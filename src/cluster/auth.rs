//! Node-to-node authentication: a request from one node to another carries
//! `X-Roomcast-Cluster: v1.<node>.<unix secs>.<hex HMAC-SHA256>` over the
//! node, the time and the request path, keyed with `cluster.secret`. Short
//! lived (a replayed header works only on the same path for a minute) and
//! checked in constant time. Sans-I/O: the clock is a parameter.

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// The request header carrying the token.
pub const HEADER: &str = "x-roomcast-cluster";

/// How far a token's time may be from the verifier's clock.
const MAX_SKEW_SECS: u64 = 60;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("malformed cluster token")]
    Malformed,
    #[error("cluster token expired or from the future (clocks more than 60 s apart?)")]
    Stale,
    #[error("cluster token signature mismatch (is cluster.secret the same on every node?)")]
    BadSignature,
}

/// Signs and checks node-to-node requests with the shared secret.
pub struct NodeAuth {
    secret: Vec<u8>,
    node_id: String,
}

impl std::fmt::Debug for NodeAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the secret.
        f.debug_struct("NodeAuth")
            .field("node_id", &self.node_id)
            .finish()
    }
}

impl NodeAuth {
    pub fn new(secret: &str, node_id: &str) -> NodeAuth {
        NodeAuth {
            secret: secret.as_bytes().to_vec(),
            node_id: node_id.to_string(),
        }
    }

    fn mac(&self, node: &str, secs: u64, path: &str) -> Hmac<Sha256> {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.secret).expect("HMAC takes any key");
        mac.update(b"roomcast-cluster-v1\n");
        mac.update(node.as_bytes());
        mac.update(b"\n");
        mac.update(secs.to_string().as_bytes());
        mac.update(b"\n");
        mac.update(path.as_bytes());
        mac
    }

    /// The header value for a request to `path` at `now_secs`.
    pub fn sign(&self, path: &str, now_secs: u64) -> String {
        let tag = self
            .mac(&self.node_id, now_secs, path)
            .finalize()
            .into_bytes();
        format!("v1.{}.{now_secs}.{}", self.node_id, hex::encode(tag))
    }

    /// Checks a header value for a request to `path`; returns the calling node.
    pub fn verify(&self, value: &str, path: &str, now_secs: u64) -> Result<String, AuthError> {
        let mut parts = value.trim().splitn(4, '.');
        let (Some("v1"), Some(node), Some(secs), Some(tag)) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(AuthError::Malformed);
        };
        let secs: u64 = secs.parse().map_err(|_| AuthError::Malformed)?;
        let tag = hex::decode(tag).map_err(|_| AuthError::Malformed)?;
        if node.is_empty() || node.len() > 64 {
            return Err(AuthError::Malformed);
        }
        if secs.abs_diff(now_secs) > MAX_SKEW_SECS {
            return Err(AuthError::Stale);
        }
        // verify_slice compares in constant time.
        self.mac(node, secs, path)
            .verify_slice(&tag)
            .map_err(|_| AuthError::BadSignature)?;
        Ok(node.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_verify_only_with_the_secret_path_and_time_they_were_made_for() {
        let a = NodeAuth::new("s3cret-s3cret-s3cret-s3cret-0123", "a");
        let b = NodeAuth::new("s3cret-s3cret-s3cret-s3cret-0123", "b");
        let t = a.sign("/whep/t1", 1000);
        assert_eq!(b.verify(&t, "/whep/t1", 1030).as_deref(), Ok("a"));
        assert_eq!(b.verify(&t, "/whep/t2", 1000), Err(AuthError::BadSignature));
        assert_eq!(b.verify(&t, "/whep/t1", 1100), Err(AuthError::Stale));
        let other = NodeAuth::new("another-secret-another-secret-01", "b");
        assert_eq!(
            other.verify(&t, "/whep/t1", 1000),
            Err(AuthError::BadSignature)
        );
        // A node id swapped in does not verify.
        let forged = t.replacen("v1.a.", "v1.c.", 1);
        assert_eq!(
            b.verify(&forged, "/whep/t1", 1000),
            Err(AuthError::BadSignature)
        );
        for bad in ["", "v1", "v2.a.1000.00", "v1.a.x.00", "v1.a.1000.zz"] {
            assert_eq!(b.verify(bad, "/whep/t1", 1000), Err(AuthError::Malformed));
        }
        assert!(!format!("{a:?}").contains("s3cret"));
    }
}
