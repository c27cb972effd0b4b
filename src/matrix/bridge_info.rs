//! What the bot tells rooms about itself and hands out in them:
//! - the MSC2346 bridge info state event (`m.bridge` and the unstable
//!   `uk.half-shot.bridge` Element reads), which clients show under
//!   Settings → Bridges: the bot, the protocol, and the stream as the channel;
//! - the go-live notice's link for a private room, signed for the session, so
//!   the members who read the notice can open the stream without the widget.

use ruma::api::client::state::send_state_event;
use ruma::events::StateEventType;
use ruma::serde::Raw;
use serde_json::{Value, json};
use tracing::warn;

use super::{Matrix, MatrixError};
use crate::hub::Access;

/// Both names of the bridge info event: the spec-to-be and the one Element reads.
pub const BRIDGE_EVENT_TYPES: [&str; 2] = ["m.bridge", "uk.half-shot.bridge"];

/// How long a go-live notice's link admits: longer than any one session a
/// streamer runs; the "ended" edit replaces the notice's text (and link).
pub const GOLIVE_LINK_SECS: u64 = 12 * 3600;

/// The bridge info content of one stream (sans-I/O).
pub fn bridge_content(bot: &str, stream: &str, title: &str, watch_url: &str) -> Value {
    json!({
        "bridgebot": bot,
        "protocol": {
            "id": "roomcast",
            "displayname": "roomcast live stream",
        },
        "channel": {
            "id": stream,
            "displayname": if title.is_empty() { stream } else { title },
            "external_url": watch_url,
        },
    })
}

/// One state key per stream (a room may carry several).
pub fn bridge_state_key(stream: &str) -> String {
    format!("io.roomcast://roomcast/{stream}")
}

/// `watch_url` with a viewer token for `stream` when the room is private.
pub fn link_with_access(watch_url: &str, token: Option<&str>) -> String {
    match token {
        Some(t) => format!("{watch_url}?access={t}"),
        None => watch_url.to_string(),
    }
}

impl Matrix {
    /// The bridge info state events for every stream of `room`. Best effort:
    /// a failure is logged and the attach goes on (it is only a description).
    pub(super) async fn put_bridge_info(&self, room: &str) {
        if let Err(e) = self.try_put_bridge_info(room).await {
            warn!(room = %room, error = %e, "matrix: could not set the bridge info state");
        }
    }

    async fn try_put_bridge_info(&self, room: &str) -> Result<(), MatrixError> {
        let room_id = ruma::OwnedRoomId::try_from(room)
            .map_err(|e| super::HsError::Protocol(format!("bad room id: {e}")))?;
        for m in self.streams_of_room(room) {
            let title = self
                .hub
                .get(&m.stream)
                .map(|s| s.title())
                .unwrap_or_default();
            let content = bridge_content(
                self.bot.as_str(),
                &m.stream,
                &title,
                &self.watch_url(&m.stream),
            );
            let raw = Raw::from_json(
                serde_json::value::to_raw_value(&content)
                    .map_err(|e| super::HsError::Protocol(e.to_string()))?,
            );
            for kind in BRIDGE_EVENT_TYPES {
                let req = send_state_event::v3::Request::new_raw(
                    room_id.clone(),
                    StateEventType::from(kind),
                    bridge_state_key(&m.stream),
                    raw.clone(),
                );
                self.client.send(req, None).await?;
            }
        }
        Ok(())
    }

    /// The go-live notice's link: in a private room, signed for the session
    /// ([`GOLIVE_LINK_SECS`]), since only members can read the notice.
    pub(super) fn golive_watch_url(&self, stream: &str) -> String {
        let private = self
            .hub
            .get(stream)
            .is_some_and(|s| s.access() == Access::Private);
        let token = private.then(|| {
            self.tokens
                .sign(stream, super::unix_now() + GOLIVE_LINK_SECS)
        });
        link_with_access(&self.watch_url(stream), token.as_deref())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bridge_info_names_the_stream() {
        let c = bridge_content(
            "@roomcast:hs",
            "show",
            "The Show",
            "https://l.example/watch/show",
        );
        assert_eq!(c["bridgebot"], "@roomcast:hs");
        assert_eq!(c["protocol"]["id"], "roomcast");
        assert_eq!(c["channel"]["id"], "show");
        assert_eq!(c["channel"]["displayname"], "The Show");
        assert_eq!(c["channel"]["external_url"], "https://l.example/watch/show");
        let untitled = bridge_content("@b:hs", "show", "", "u");
        assert_eq!(untitled["channel"]["displayname"], "show");
        assert_eq!(bridge_state_key("show"), "io.roomcast://roomcast/show");
    }

    #[test]
    fn private_links_carry_a_token() {
        assert_eq!(link_with_access("u/watch/s", None), "u/watch/s");
        assert_eq!(
            link_with_access("u/watch/s", Some("v1.9.ab")),
            "u/watch/s?access=v1.9.ab"
        );
    }
}
