//! Viewer access to streams of rooms whose join rule is not public: a signed,
//! expiring token, obtained either from the widget's Matrix OpenID token
//! (checked with the user's homeserver, ours or another over federation; the
//! user must be joined to the room) or from a
//! link the bot hands out (`!live link 24h`). The admission service checks
//! them for every surface. A token from OpenID names its user, so that
//! leaving the room ends what it admitted (`membership_changed`).

use hmac::{Hmac, Mac};
use sha2::Sha256;
use tracing::info;

use super::federation::{FedError, Federation};
use super::{HsError, Matrix, MatrixError};

/// How long an access token from an OpenID exchange lasts.
pub const ACCESS_TTL_SECS: u64 = 3600;

/// Told when a user's membership of a stream's room changes:
/// `(stream, user, joined)`.
pub type MembershipHook = Box<dyn Fn(&str, &str, bool) + Send + Sync>;

pub struct ViewerTokens {
    secret: Vec<u8>,
    on_membership: std::sync::OnceLock<MembershipHook>,
    /// Checks OpenID tokens of other homeservers (made on first use).
    federation: std::sync::OnceLock<Result<Federation, String>>,
}

#[derive(Debug, PartialEq, Eq)]
pub enum TokenError {
    Malformed,
    Expired,
    BadSignature,
}

impl ViewerTokens {
    pub fn new(secret: &str) -> ViewerTokens {
        ViewerTokens {
            secret: secret.as_bytes().to_vec(),
            on_membership: std::sync::OnceLock::new(),
            federation: std::sync::OnceLock::new(),
        }
    }

    /// Who is told of membership changes (set once, at start-up).
    pub fn on_membership(&self, hook: MembershipHook) {
        let _ = self.on_membership.set(hook);
    }

    /// The membership hook, for party.rs to end a share.
    pub(super) fn membership_hook(&self) -> Option<&MembershipHook> {
        self.on_membership.get()
    }

    fn mac(&self, stream: &str, exp: u64, user: Option<&str>) -> Hmac<Sha256> {
        let mut mac =
            Hmac::<Sha256>::new_from_slice(&self.secret).expect("HMAC takes any key length");
        mac.update(match user {
            None => b"roomcast-viewer-v1\0",
            Some(_) => b"roomcast-viewer-v2\0",
        });
        mac.update(stream.as_bytes());
        mac.update(b"\0");
        mac.update(exp.to_string().as_bytes());
        if let Some(u) = user {
            mac.update(b"\0");
            mac.update(u.as_bytes());
        }
        mac
    }

    /// `v1.<expiry unix seconds>.<hex HMAC-SHA256 over stream and expiry>`.
    pub fn sign(&self, stream: &str, exp: u64) -> String {
        let sig = self.mac(stream, exp, None).finalize().into_bytes();
        format!("v1.{exp}.{}", hex::encode(sig))
    }

    /// A member's token: `v2.<expiry>.<hex user id>.<hex HMAC over stream,
    /// expiry and user>`.
    pub fn sign_for(&self, stream: &str, exp: u64, user: &str) -> String {
        let sig = self.mac(stream, exp, Some(user)).finalize().into_bytes();
        format!("v2.{exp}.{}.{}", hex::encode(user), hex::encode(sig))
    }

    /// The token's expiry (and user, for a member's token) when it is good
    /// for `stream` at `now`.
    pub fn verify(
        &self,
        stream: &str,
        token: &str,
        now: u64,
    ) -> Result<(u64, Option<String>), TokenError> {
        let parts: Vec<&str> = token.splitn(5, '.').collect();
        let (exp, user, sig) = match parts.as_slice() {
            ["v1", exp, sig] => (exp, None, sig),
            ["v2", exp, user, sig] => {
                let user = hex::decode(user).map_err(|_| TokenError::Malformed)?;
                let user = String::from_utf8(user).map_err(|_| TokenError::Malformed)?;
                (exp, Some(user), sig)
            }
            _ => return Err(TokenError::Malformed),
        };
        let exp: u64 = exp.parse().map_err(|_| TokenError::Malformed)?;
        let sig = hex::decode(sig).map_err(|_| TokenError::Malformed)?;
        // Constant-time comparison inside verify_slice.
        self.mac(stream, exp, user.as_deref())
            .verify_slice(&sig)
            .map_err(|_| TokenError::BadSignature)?;
        if exp <= now {
            return Err(TokenError::Expired);
        }
        Ok((exp, user))
    }
}

/// The admission service checks viewer tokens with the bridge's secret.
impl crate::admission::AccessTokens for Matrix {
    fn verify(
        &self,
        stream: &str,
        token: &str,
    ) -> Result<crate::admission::Grant, crate::admission::TokenError> {
        use crate::admission::TokenError as T;
        self.tokens
            .verify(stream, token, super::unix_now())
            .map(|(expires, user)| crate::admission::Grant { expires, user })
            .map_err(|e| match e {
                TokenError::Malformed => T::Malformed,
                TokenError::Expired => T::Expired,
                TokenError::BadSignature => T::BadSignature,
            })
    }
}

/// Why an OpenID exchange was refused.
#[derive(Debug)]
pub enum OpenIdError {
    /// The token's server cannot be asked (why).
    ForeignServer(String),
    BadToken,
    NotAMember,
    NoRoom,
    Unavailable(String),
}

impl Matrix {
    /// A user joined or left (or was kicked or banned from) `room`: the
    /// streams of the room are told, so what the user's token admitted ends.
    pub(super) fn membership_changed(&self, room: &str, user: &str, joined: bool) {
        let Some(hook) = self.tokens.on_membership.get() else {
            return;
        };
        for m in self.streams_of_room(room) {
            hook(&m.stream, user, joined);
        }
    }

    /// The local homeserver's answer for an OpenID token (through
    /// `homeserver_url`: no federation listener needed).
    async fn local_userinfo(&self, openid_token: &str) -> Result<String, OpenIdError> {
        let info = self
            .client
            .get_json(
                "/_matrix/federation/v1/openid/userinfo",
                &[("access_token", openid_token)],
            )
            .await
            .map_err(|e| match e {
                HsError::Api { status, .. } if status == 401 || status == 403 => {
                    OpenIdError::BadToken
                }
                other => OpenIdError::Unavailable(other.to_string()),
            })?;
        let sub = info["sub"].as_str().ok_or(OpenIdError::BadToken)?;
        // The spec requires the user id to be of the server asked.
        if !super::federation::sub_is_of(sub, &self.cfg.server_name) {
            return Err(OpenIdError::BadToken);
        }
        Ok(sub.to_string())
    }

    /// Another homeserver's answer, found over federation.
    async fn federated_userinfo(
        &self,
        server_name: &str,
        openid_token: &str,
    ) -> Result<String, OpenIdError> {
        let fed = self.tokens.federation.get_or_init(|| {
            Federation::new(
                self.cfg.federation_allow_private,
                self.cfg.federation_ca_file.as_deref(),
            )
        });
        let fed = fed
            .as_ref()
            .map_err(|e| OpenIdError::Unavailable(format!("federation: {e}")))?;
        fed.userinfo(server_name, openid_token)
            .await
            .map_err(|e| match e {
                FedError::BadToken => OpenIdError::BadToken,
                FedError::Unreachable(why) => OpenIdError::ForeignServer(why),
                FedError::Unavailable(why) => OpenIdError::Unavailable(why),
            })
    }

    /// The user an OpenID token of `server_name` belongs to (its homeserver says).
    pub(super) async fn openid_user(
        &self,
        openid_token: &str,
        server_name: &str,
    ) -> Result<String, OpenIdError> {
        if server_name == self.cfg.server_name {
            self.local_userinfo(openid_token).await
        } else {
            self.federated_userinfo(server_name, openid_token).await
        }
    }

    /// Checks a widget's OpenID token with the homeserver and the user's
    /// membership in the stream's room; returns a viewer token.
    pub async fn exchange_openid(
        &self,
        stream: &str,
        openid_token: &str,
        server_name: &str,
    ) -> Result<String, OpenIdError> {
        let Some((m, _)) = self.room_of_stream(stream) else {
            return Err(OpenIdError::NoRoom);
        };
        let sub = self.openid_user(openid_token, server_name).await?;
        let member = self
            .state_event(&m.room_id, "m.room.member", &sub)
            .await
            .map_err(|e: MatrixError| OpenIdError::Unavailable(e.to_string()))?;
        let joined = member.is_some_and(|ev| ev["content"]["membership"].as_str() == Some("join"));
        if !joined {
            return Err(OpenIdError::NotAMember);
        }
        info!(stream = %stream, user = %sub, "matrix: viewer admitted by OpenID");
        Ok(self
            .tokens
            .sign_for(stream, super::unix_now() + ACCESS_TTL_SECS, &sub))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_bind_stream_and_expiry() {
        let t = ViewerTokens::new("secret");
        let tok = t.sign("a", 1000);
        assert_eq!(t.verify("a", &tok, 999), Ok((1000, None)));
        let member = t.sign_for("a", 1000, "@u:hs");
        assert_eq!(
            t.verify("a", &member, 999),
            Ok((1000, Some("@u:hs".to_string())))
        );
        let other = member.replace(&hex::encode("@u:hs"), &hex::encode("@v:hs"));
        assert_eq!(t.verify("a", &other, 0), Err(TokenError::BadSignature));
        assert_eq!(t.verify("a", &tok, 1000), Err(TokenError::Expired));
        assert_eq!(t.verify("b", &tok, 0), Err(TokenError::BadSignature));
        let forged = tok.replace("v1.1000.", "v1.9999.");
        assert_eq!(t.verify("a", &forged, 0), Err(TokenError::BadSignature));
        assert_eq!(t.verify("a", "garbage", 0), Err(TokenError::Malformed));
        assert_eq!(t.verify("a", "v1.x.00", 0), Err(TokenError::Malformed));
        let other = ViewerTokens::new("other");
        assert_eq!(other.verify("a", &tok, 0), Err(TokenError::BadSignature));
    }
}
