//! Recording in rooms: `!live record on|off [name]`, `!live recordings
//! [name]`, `!live delete-recording <id>`, and the replay link of the
//! "ended" notice. The answers are decided without I/O (`decide_*`,
//! `list_text`); `Matrix::recording_command` looks up the facts.

use std::sync::Arc;

use super::bridge_info::{GOLIVE_LINK_SECS, link_with_access};
use super::commands::Command;
use super::decisions::NOT_ADMIN;
use super::{Matrix, MatrixError};
use crate::hub::Access;
use crate::recording::{DeleteError, Recorder};
use crate::store::recordings::RecordingRow;

/// Recordings listed by `!live recordings`.
pub const LIST_LIMIT: i64 = 5;

pub const DISABLED: &str = "Recording is turned off on this server ([recording] enabled = false).";

/// `!live record on|off`: who manages the stream (its owner or a room admin).
pub fn decide_record(
    stream: &str,
    on: bool,
    enabled: bool,
    may_manage: bool,
    live: bool,
) -> Result<String, String> {
    if !enabled {
        return Err(DISABLED.into());
    }
    if !may_manage {
        return Err(NOT_ADMIN.into());
    }
    Ok(match (on, live) {
        (true, true) => format!("Recording '{stream}' from now on, and its next broadcasts."),
        (true, false) => format!("'{stream}' will be recorded from its next broadcast on."),
        (false, true) => {
            format!("'{stream}' is no longer recorded; the recording of this broadcast ends here.")
        }
        (false, false) => format!("'{stream}' will not be recorded."),
    })
}

/// `!live delete-recording`: the stream's owner, an admin of its room, or a
/// server admin.
pub fn decide_delete(found: bool, may_manage: bool, id: &str) -> Result<(), String> {
    // Without the right, the recording is as good as unknown.
    if !found || !may_manage {
        return Err(format!("There is no recording '{id}' you can delete."));
    }
    Ok(())
}

/// Whether `!live recordings` must come from who manages the stream: in a
/// DM, for a private stream, or one this node's hub does not have (unknown
/// is not public).
pub fn list_needs_manager(in_dm: bool, access: Option<Access>) -> bool {
    in_dm && access.is_none_or(|a| a == Access::Private)
}

/// "1 h 02 min" of a recording.
fn length(r: &RecordingRow) -> String {
    super::text::format_duration((r.duration_ms / 1000) as u64)
}

/// The answer to `!live recordings`: newest first, each with its link.
pub fn list_text(stream: &str, rows: &[RecordingRow], link: impl Fn(&str) -> String) -> String {
    if rows.is_empty() {
        return format!("'{stream}' has no recordings.");
    }
    let mut out = format!("Recordings of '{stream}' (newest first):");
    for r in rows {
        let when = time::OffsetDateTime::from_unix_timestamp(r.started_ms / 1000)
            .map(|t| {
                format!(
                    "{:04}-{:02}-{:02} {:02}:{:02} UTC",
                    t.year(),
                    u8::from(t.month()),
                    t.day(),
                    t.hour(),
                    t.minute()
                )
            })
            .unwrap_or_default();
        let state = match r.state.as_str() {
            "recording" => " (recording now)",
            "interrupted" => " (interrupted)",
            _ => "",
        };
        out.push_str(&format!(
            "\n• {when} — {} — {}{state}: {} (id {})",
            r.title_end,
            length(r),
            link(&r.id),
            r.id
        ));
    }
    out
}

impl Matrix {
    /// The recorder, for the commands and the "ended" notice.
    pub fn set_recorder(&self, r: Arc<Recorder>) {
        let _ = self.recorder.set(r);
    }

    /// The replay link of recording `id` of `stream`: its watch page, with
    /// a viewer token in a private room (as the go-live link).
    pub(super) fn replay_url(&self, stream: &str, id: &str) -> String {
        let private = self
            .hub
            .get(stream)
            .is_some_and(|s| s.access() == Access::Private);
        let token = private.then(|| {
            self.tokens
                .sign(stream, super::unix_now() + GOLIVE_LINK_SECS)
        });
        let url = format!("{}?recording={id}", self.watch_url(stream));
        match token {
            Some(t) => format!("{url}&access={t}"),
            None => link_with_access(&url, None),
        }
    }

    /// The replay link of the recording of the session that started at
    /// `started_ms`, if the stream was recorded.
    pub(super) async fn session_replay_url(&self, stream: &str, started_ms: u64) -> Option<String> {
        let rec = self.recorder.get()?;
        let row = rec.recording_of_session(stream, started_ms).await?;
        Some(self.replay_url(stream, &row.id))
    }

    /// `!live record`, `!live recordings`, `!live delete-recording`.
    pub(super) async fn recording_command(
        self: &Arc<Self>,
        room: &str,
        sender: &str,
        in_dm: bool,
        cmd: Command,
    ) -> Result<Result<(), String>, MatrixError> {
        let Some(rec) = self.recorder.get().cloned() else {
            return Ok(Err(DISABLED.into()));
        };
        match cmd {
            Command::Record { on, name } => {
                let m = match self.resolve(room, in_dm, name) {
                    Ok(m) => m,
                    Err(r) => return Ok(Err(r)),
                };
                let may = self.may_manage(&m, sender).await?;
                let live = self.hub.get(&m.stream).is_some_and(|s| s.is_live());
                let text = match decide_record(&m.stream, on, rec.enabled(), may, live) {
                    Ok(t) => t,
                    Err(r) => return Ok(Err(r)),
                };
                if let Err(e) = rec.set_choice(&m.stream, on, sender).await {
                    return Ok(Err(format!("That did not work: {e}")));
                }
                self.reply(room, &text).await;
                Ok(Ok(()))
            }
            Command::Recordings { name } => {
                let m = match self.resolve(room, in_dm, name) {
                    Ok(m) => m,
                    Err(r) => return Ok(Err(r)),
                };
                // A private stream's recordings, asked for in a DM: only
                // for who manages it (as `!live status`). A stream this
                // node's hub does not have counts as private: unknown is
                // not public.
                let stream = self.hub.get(&m.stream);
                if list_needs_manager(in_dm, stream.as_ref().map(|s| s.access()))
                    && !self.may_manage(&m, sender).await?
                {
                    return Ok(Err(format!(
                        "There is no stream '{}' in a Matrix room.",
                        m.stream
                    )));
                }
                let mut rows = match rec.store().recordings_of(&m.stream, LIST_LIMIT).await {
                    Ok(r) => r,
                    Err(e) => return Ok(Err(format!("The recordings cannot be read now: {e}"))),
                };
                // Those made private in another room are not this room's
                // to see (the API refuses them the same way).
                let room_now = stream.as_ref().and_then(|s| s.room());
                rows.retain(|r| {
                    crate::admission::recording::servable(
                        r.private,
                        r.room_id.as_deref(),
                        stream.as_ref().map_or(Access::Private, |s| s.access()),
                        room_now.as_ref().map(|x| x.room_id.as_str()),
                    )
                });
                let text = list_text(&m.stream, &rows, |id| self.replay_url(&m.stream, id));
                self.reply(room, &text).await;
                Ok(Ok(()))
            }
            Command::DeleteRecording { id } => {
                let row = if crate::recording::valid_id(&id) {
                    rec.store().recording(&id).await.ok().flatten()
                } else {
                    None
                };
                let may = match &row {
                    Some(_) if self.perms.level_of(sender) == super::permissions::Level::Admin => {
                        true
                    }
                    Some(r) => match self.store.mapping(&r.stream).await? {
                        Some(m) => self.may_manage(&m, sender).await?,
                        None => false,
                    },
                    None => false,
                };
                if let Err(r) = decide_delete(row.is_some(), may, &id) {
                    return Ok(Err(r));
                }
                match rec.delete(&id).await {
                    Ok(_) => {
                        self.reply(room, &format!("Recording {id} is deleted."))
                            .await;
                        Ok(Ok(()))
                    }
                    Err(e @ DeleteError::Forwarded(_)) => {
                        self.reply(room, &format!("Recording {id}: {e}.")).await;
                        Ok(Ok(()))
                    }
                    Err(e @ (DeleteError::Active | DeleteError::OtherNode(_))) => {
                        Ok(Err(format!("{e}.")))
                    }
                    Err(e) => Ok(Err(format!("That did not work: {e}"))),
                }
            }
            _ => Ok(Ok(())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(id: &str, state: &str) -> RecordingRow {
        RecordingRow {
            id: id.into(),
            stream: "s".into(),
            session: "1".into(),
            node: String::new(),
            started_ms: 1_800_000_000_000,
            ended_ms: Some(1_800_000_125_000),
            duration_ms: 125_000,
            bytes: 10,
            video_codec: None,
            audio_codec: None,
            peak_viewers: 3,
            title_start: "a".into(),
            title_end: "Show".into(),
            room_id: None,
            state: state.into(),
            private: false,
        }
    }

    #[test]
    fn a_stream_unknown_here_is_listed_in_a_dm_only_to_its_manager() {
        assert!(list_needs_manager(true, None), "not in this node's hub");
        assert!(list_needs_manager(true, Some(Access::Private)));
        assert!(!list_needs_manager(true, Some(Access::Public)));
        // In the stream's room, its members see the list.
        assert!(!list_needs_manager(false, None));
        assert!(!list_needs_manager(false, Some(Access::Private)));
    }

    #[test]
    fn the_commands_parse() {
        use super::super::commands::{Parsed, parse};
        let c = |s: &str| match parse(s) {
            Parsed::Command(c) => c,
            other => panic!("{s}: {other:?}"),
        };
        assert_eq!(
            c("!live record on"),
            Command::Record {
                on: true,
                name: None
            }
        );
        assert_eq!(
            c("!live record OFF show"),
            Command::Record {
                on: false,
                name: Some("show".into())
            }
        );
        assert_eq!(c("!live recordings"), Command::Recordings { name: None });
        assert_eq!(
            c("!live delete-recording 0123abcd"),
            Command::DeleteRecording {
                id: "0123abcd".into()
            }
        );
        for bad in [
            "!live record",
            "!live record maybe",
            "!live delete-recording",
            "!live delete-recording ../x",
        ] {
            assert!(matches!(parse(bad), Parsed::Error(_)), "{bad}");
        }
    }

    #[test]
    fn record_needs_the_feature_and_the_right() {
        assert_eq!(
            decide_record("s", true, false, true, false),
            Err(DISABLED.into())
        );
        assert_eq!(
            decide_record("s", true, true, false, false),
            Err(NOT_ADMIN.into())
        );
        assert!(
            decide_record("s", false, true, true, true)
                .unwrap()
                .contains("ends here")
        );
        assert!(
            decide_record("s", true, true, true, false)
                .unwrap()
                .contains("next broadcast")
        );
    }

    #[test]
    fn delete_hides_what_the_sender_cannot_delete() {
        assert!(decide_delete(true, true, "x").is_ok());
        assert_eq!(
            decide_delete(true, false, "x"),
            decide_delete(false, true, "x")
        );
    }

    #[test]
    fn the_list_has_links_lengths_and_states() {
        let rows = [row("b", "recording"), row("a", "complete")];
        let t = list_text("s", &rows, |id| format!("https://x/watch/s?recording={id}"));
        assert!(t.starts_with("Recordings of 's' (newest first):"), "{t}");
        assert!(t.contains("\n• 2027-01-15 08:00 UTC — Show — 2 min (recording now): https://x/watch/s?recording=b (id b)"), "{t}");
        assert!(t.contains("https://x/watch/s?recording=a (id a)"), "{t}");
        assert_eq!(
            list_text("s", &[], |_| String::new()),
            "'s' has no recordings."
        );
    }
}
