//! Publish grants: a member's screen share in a party room (matrix/party.rs)
//! publishes over WHIP with a short-lived grant signed by the bridge for
//! (stream, user) instead of the stream key. The WHIP handler asks
//! [`Admission::publish_grant`]; the session it admits is remembered, so that
//! the member leaving the room (or losing the power to share) ends it.

use std::sync::Arc;

use super::Admission;

/// What a publish grant for `stream` is signed for: never a stream name
/// (`:` is not allowed in those), so a viewer token is not a grant.
pub fn publish_scope(stream: &str) -> String {
    format!("publish:{stream}")
}

impl Admission {
    /// The member a good publish grant for `stream` was issued to (and who has
    /// not left the room since).
    pub fn publish_grant(&self, stream: &str, token: &str) -> Option<String> {
        let scope = publish_scope(stream);
        let grant = [self.tokens.as_ref(), self.party_grants.get()]
            .into_iter()
            .flatten()
            .find_map(|t| t.verify(&scope, token).ok())?;
        let user = grant.user?;
        if grant.expires <= super::unix_now()
            || self
                .left
                .lock()
                .contains_key(&(stream.to_string(), user.clone()))
        {
            return None;
        }
        Some(user)
    }

    /// Who signs standalone parties' grants (src/party); set once at start-up.
    pub fn set_party_grants(&self, grants: Arc<dyn super::AccessTokens>) {
        let _ = self.party_grants.set(grants);
    }

    /// Remembers the WHIP publisher session `id` a grant of `user` admitted.
    /// Ended sessions are forgotten here, so the map is bounded by the live
    /// ones (a standalone party's member may never leave a room).
    pub fn track_publisher(&self, stream: &str, user: &str, id: u64) {
        let mut tracked = self.granted_publishers.lock();
        tracked.retain(|(stream, _), id| self.engine.has_publisher(stream, *id));
        tracked.insert((stream.to_string(), user.to_string()), id);
    }

    /// Ends `user`'s granted publisher of `stream`, if any (they left).
    pub(super) fn end_granted_publisher(&self, stream: &str, user: &str) -> bool {
        let id = self
            .granted_publishers
            .lock()
            .remove(&(stream.to_string(), user.to_string()));
        match id {
            Some(id) if self.engine.remove_publisher(stream, id) => {
                tracing::info!(
                    stream,
                    user,
                    "publisher ended: their share's grounds are gone"
                );
                true
            }
            _ => false,
        }
    }
}
