//! The party view as a feed (`GET <party view>/events`): the grid learns who
//! shares when it changes instead of polling. This is the sans-I/O half: when
//! a freshly computed view is worth sending, and how often to recompute it
//! without a hub change. The HTTP half (src/http/party_events.rs) wakes on
//! the hub's control path (a sharer's stream going live or offline) and on
//! [`RECHECK`] (membership, power and the party switch are not hub events).

use std::hash::{DefaultHasher, Hash, Hasher};
use std::time::Duration;

use serde_json::Value;

/// How often a feed recomputes its view without a hub change: what the hub
/// does not see (a member leaving, power changing, the party turned off).
pub const RECHECK: Duration = Duration::from_secs(3);
/// A comment this often keeps proxies from closing an idle feed.
pub const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// The outcome of recomputing a feed's view.
pub enum Recheck {
    View(Value),
    /// The token no longer holds (expired, left the room): the feed ends.
    Ended,
    /// A passing failure (the homeserver, the database): try at the next wake.
    Unavailable,
}

/// What the feed sent last, as a hash of the view without the fields that
/// change on every computation (viewer tokens signed with a new expiry).
#[derive(Default)]
pub struct SentView(Option<u64>);

impl SentView {
    /// Whether `view` differs from the last view sent (and notes it as sent).
    pub fn fresh(&mut self, view: &Value) -> bool {
        let mut h = DefaultHasher::new();
        hash_without_tokens(view, &mut h);
        let now = h.finish();
        self.0.replace(now) != Some(now)
    }
}

fn hash_without_tokens(v: &Value, h: &mut DefaultHasher) {
    match v {
        Value::Object(map) => {
            for (k, v) in map.iter().filter(|(k, _)| *k != "access_token") {
                k.hash(h);
                hash_without_tokens(v, h);
            }
        }
        Value::Array(items) => {
            items.len().hash(h);
            for v in items {
                hash_without_tokens(v, h);
            }
        }
        // Scalars by their JSON text (a float hashes as it is sent).
        other => other.to_string().hash(h),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_view_is_sent_when_it_changes_not_when_only_tokens_do() {
        let mut sent = SentView::default();
        let view = |live: bool, token: &str| {
            json!({"enabled": true, "sharers": [
                {"stream": "party-1", "user_id": "@a:hs", "live": live, "access_token": token}
            ], "estimate": null})
        };
        assert!(sent.fresh(&view(true, "t1")), "the first view");
        assert!(!sent.fresh(&view(true, "t2")), "only a new token");
        assert!(sent.fresh(&view(false, "t3")), "the share ended");
        assert!(!sent.fresh(&view(false, "t3")));
        assert!(sent.fresh(&json!({"enabled": false, "sharers": [], "estimate": null})));
    }
}
