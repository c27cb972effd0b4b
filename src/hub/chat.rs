//! A chat message as the hub carries it to the pages' feeds: plain data,
//! made from a room's timeline by `matrix::chat_view` and sent on the
//! cluster bus.

use serde::{Deserialize, Serialize};

/// A chat message of a stream's Matrix room, as pages show it (`rich`: see
/// `matrix::chat_view`). Deserialized from the cluster bus (`cluster/bus.rs`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ChatMessage {
    /// The Matrix event id.
    pub id: String,
    /// Display name.
    pub sender: String,
    pub sender_id: String,
    pub body: String,
    /// Origin server timestamp, ms since the Unix epoch.
    pub ts: u64,
    /// Posted by a guest of the watch page (a puppet user).
    pub guest: bool,
    /// What the chat shows beyond the plain text (HTML, reply, media, reactions…).
    #[serde(flatten)]
    pub rich: Rich,
}

/// The chat message beyond its plain text (serialized flat into `chat` events).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct Rich {
    /// `m.text`, `m.emote`, `m.notice`, `m.image`, `m.video`, `m.audio`,
    /// `m.file`, or `m.sticker` (the event type of a sticker).
    pub msgtype: String,
    /// `formatted_body` through the allow-list (reply fallback removed).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub html: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reply_to: Option<ReplyTo>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub media: Option<Media>,
    /// The sender's avatar, `{server}/{media_id}` on the media proxy.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub avatar: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub reactions: Vec<Reaction>,
    /// Shown with its latest edit (`m.replace`).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub edited: bool,
}

/// The message a reply answers, as the chat quotes it.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct ReplyTo {
    pub id: String,
    /// Absent when the message is not known (too old, or redacted).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sender: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
}

/// An image, sticker or video thumbnail, served by the media proxy.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct Media {
    /// `{server}/{media_id}`: `GET /api/v1/streams/{stream}/media/{path}`.
    pub path: String,
    /// Ask for a thumbnail (`?size=thumb`) rather than the file itself.
    pub thumbnail: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub w: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub h: Option<u32>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Reaction {
    pub key: String,
    pub count: u32,
}
