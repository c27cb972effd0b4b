//! Who may see a recording beyond its live stream's admission: a recording
//! made while its stream was private keeps that, whatever the stream becomes
//! (detached from its room, made public, attached to another room).

use crate::hub::Access;

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
