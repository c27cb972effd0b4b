//! Who may see a recording: its live stream's admission (access only, as
//! LL-HLS: no caps, no gate), then what the recording itself keeps. A
//! recording made while its stream was private keeps that, whatever the
//! stream becomes (detached from its room, made public, attached to another
//! room). The recordings API, its files, the WebM replay and the replay
//! chat all ask [`Admission::admit_recording`]; listings ask
//! [`Admission::admit_recordings_of`] and then [`RecordingsPass::shows`].

use std::sync::Arc;

use super::{Admission, Purpose, Refusal, ViewerFacts};
use crate::hub::{Access, Stream};
use crate::store::recordings::RecordingRow;

/// What a recording's index row says about who may see it.
#[derive(Debug, Clone, Copy)]
pub struct Recorded<'a> {
    pub id: &'a str,
    /// The stream was private at some time while recorded.
    pub private: bool,
    /// The Matrix room the stream belonged to when recorded.
    pub room: Option<&'a str>,
}

impl<'a> From<&'a RecordingRow> for Recorded<'a> {
    fn from(r: &'a RecordingRow) -> Self {
        Recorded {
            id: &r.id,
            private: r.private,
            room: r.room_id.as_deref(),
        }
    }
}

/// A request admitted to a stream's recordings (the listing).
pub struct RecordingsPass {
    pub stream: Arc<Stream>,
}

impl RecordingsPass {
    /// Whether the listing shows `recorded` (those it may not show are as
    /// if they did not exist).
    pub fn shows(&self, recorded: Recorded<'_>) -> bool {
        let room = self.stream.room();
        servable(
            recorded.private,
            recorded.room,
            self.stream.access(),
            room.as_ref().map(|r| r.room_id.as_str()),
        )
    }
}

/// A request admitted to one recording.
pub struct RecordingPass {
    pub stream: Arc<Stream>,
    /// Whether what is served may sit in shared caches (a public stream's
    /// recording that was never private).
    pub shared_cache: bool,
    /// Whether its chat may be read (`chat_readable`).
    pub chat: bool,
}

impl Admission {
    /// A stream's recordings: refused when playback is admitted per session
    /// (a signed URL or the admission webhook cannot be checked for every
    /// file a player fetches), else as the live stream admits a viewer.
    pub async fn admit_recordings_of(&self, facts: ViewerFacts) -> Result<RecordingsPass, Refusal> {
        if self.gate.playback_checked_per_request() {
            return Err(Refusal::RecordingsUnavailable);
        }
        let pass = self.admit_viewer(facts, Purpose::Recording).await?;
        Ok(RecordingsPass {
            stream: pass.stream,
        })
    }

    /// One recording (`facts.stream` is the stream it recorded): as
    /// [`Admission::admit_recordings_of`], then refused as if unknown when
    /// the stream's current credentials say nothing about who may see what
    /// it recorded while private elsewhere.
    pub async fn admit_recording(
        &self,
        facts: ViewerFacts,
        recorded: Recorded<'_>,
    ) -> Result<RecordingPass, Refusal> {
        let pass = self.admit_recordings_of(facts).await?;
        if !pass.shows(recorded) {
            return Err(Refusal::UnknownRecording(recorded.id.to_string()));
        }
        let room = pass.stream.room();
        let room = room.as_ref().map(|r| r.room_id.as_str());
        Ok(RecordingPass {
            shared_cache: pass.stream.access() == Access::Public && !recorded.private,
            chat: chat_readable(recorded.room, room),
            stream: pass.stream,
        })
    }
}

/// Whether a recording may be served to someone the stream's current
/// admission let in. A recording made private is served only while the
/// stream is private again in the room it was recorded in (that room's
/// members are who may see it; nobody else's credentials say that).
pub fn servable(
    recorded_private: bool,
    recorded_room: Option<&str>,
    access: Access,
    room: Option<&str>,
) -> bool {
    !recorded_private || (access == Access::Private && recorded_room == room)
}

/// Whether a recording's chat may be read: the timeline of the room it was
/// recorded in, only while the stream still belongs to that room (after a
/// detach the bot is still in the old room, and its members' chat is not
/// the stream's any more).
pub fn chat_readable(recorded_room: Option<&str>, room: Option<&str>) -> bool {
    recorded_room.is_some() && recorded_room == room
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_private_recording_stays_private() {
        let r = Some("!a:hs");
        // Made public: everyone the stream admits.
        assert!(servable(false, r, Access::Public, None));
        // Made private: served while private in the same room only.
        assert!(servable(true, r, Access::Private, r));
        assert!(!servable(true, r, Access::Public, None), "detached");
        assert!(!servable(true, r, Access::Public, r), "made public");
        assert!(!servable(true, r, Access::Private, Some("!b:hs")), "moved");
        // Private without a room (a config's private stream): its tokens.
        assert!(servable(true, None, Access::Private, None));
        assert!(!servable(true, None, Access::Public, None));
    }

    #[test]
    fn chat_only_from_the_streams_room() {
        assert!(chat_readable(Some("!a:hs"), Some("!a:hs")));
        assert!(!chat_readable(Some("!a:hs"), None));
        assert!(!chat_readable(Some("!a:hs"), Some("!b:hs")));
        assert!(!chat_readable(None, None));
    }
}
