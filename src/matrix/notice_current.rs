//! A go-live notice that stays current: while the stream is live, the notice
//! (in its room and each following room) is edited in place (`m.replace`,
//! no mentions: no new notification) at most every `notice_update_secs`
//! when the viewer count or the thumbnail changed. The thumbnail
//! (`crate::thumbnail`) is uploaded to the homeserver's media repository
//! with the go-live notice and again at most every `notice_thumbnail_secs`,
//! and shown in the notice's HTML body. Private streams get no thumbnail in
//! the room: media uploads can be fetched by anyone who has their URI.
//!
//! The edits are not queued durably: a lost one is made up by the next.
//! [`Current`] decides (no I/O); the loop in `Matrix` uploads and sends.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use ruma::OwnedRoomId;
use ruma::api::client::media::create_content;
use serde_json::{Value, json};
use tracing::{info, warn};

use super::ids::new_txn_id;
use super::text::html_escape;
use super::{Matrix, MatrixError};
use crate::hub::Access;
use crate::log_every::LogEvery;
use crate::thumbnail::{Thumbnail, Thumbnails};

static UPDATE_FAILED_LOG: LogEvery = LogEvery::new(Duration::from_secs(60));

/// A thumbnail in the media repository.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Uploaded {
    pub mxc: String,
    pub width: u32,
    pub height: u32,
    /// `Thumbnail::seq` of what was uploaded.
    pub seq: u64,
    pub at: Instant,
}

/// What a stream's notice shows now.
#[derive(Debug, Clone)]
struct Shown {
    session: String,
    /// `None`: no count shown yet.
    viewers: Option<u64>,
    /// When the notice was last sent or edited.
    at: Instant,
    thumb: Option<Uploaded>,
}

/// What is due for a stream's notice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Due {
    /// Upload the current thumbnail first.
    pub upload: bool,
}

/// How often a notice may change: any edit, and a new thumbnail.
#[derive(Debug, Clone, Copy)]
pub(super) struct Cadence {
    pub every: Duration,
    pub thumb_every: Duration,
}

/// The notices' current content, per stream.
#[derive(Default)]
pub(super) struct Current {
    shown: Mutex<HashMap<String, Shown>>,
    thumbnails: OnceLock<Arc<Thumbnails>>,
}

impl Current {
    /// Whether `stream`'s notice of `session` is to be edited now.
    /// `thumb_seq`: the stream's current thumbnail, if it may be shown.
    pub fn due(
        &self,
        stream: &str,
        session: &str,
        viewers: u64,
        thumb_seq: Option<u64>,
        now: Instant,
        cadence: Cadence,
    ) -> Option<Due> {
        let Cadence { every, thumb_every } = cadence;
        let mut shown = self.shown.lock();
        let s = shown.entry(stream.to_string()).or_insert_with(|| Shown {
            session: session.to_string(),
            viewers: None,
            at: now,
            thumb: None,
        });
        if s.session != session {
            // A new session (the notice's sending recorded nothing here,
            // e.g. another node's outbox sent it): start from now.
            *s = Shown {
                session: session.to_string(),
                viewers: None,
                at: now,
                thumb: None,
            };
        }
        if now < s.at + every {
            return None;
        }
        let upload = thumb_seq.is_some_and(|seq| match &s.thumb {
            None => true,
            Some(u) => u.seq != seq && now >= u.at + thumb_every,
        });
        (upload || s.viewers != Some(viewers)).then_some(Due { upload })
    }

    /// The notice (or an edit) of `session` was sent showing this.
    pub fn sent(
        &self,
        stream: &str,
        session: &str,
        viewers: Option<u64>,
        thumb: Option<Uploaded>,
        now: Instant,
    ) {
        let mut shown = self.shown.lock();
        let s = shown.entry(stream.to_string()).or_insert_with(|| Shown {
            session: session.to_string(),
            viewers,
            at: now,
            thumb: None,
        });
        if s.session != session {
            s.session = session.to_string();
            s.thumb = None;
        }
        s.viewers = viewers;
        s.at = now;
        if thumb.is_some() {
            s.thumb = thumb;
        }
    }

    /// Whether the notice of `session` wants a newer thumbnail now (none
    /// shown yet, or the shown one is `thumb_every` old): only then does it
    /// ask for one, so a notice renews the stream's thumbnail about once per
    /// `notice_thumbnail_secs`, not every `[thumbnails] interval_secs`.
    pub fn wants_thumbnail(
        &self,
        stream: &str,
        session: &str,
        now: Instant,
        thumb_every: Duration,
    ) -> bool {
        self.shown
            .lock()
            .get(stream)
            .filter(|s| s.session == session)
            .and_then(|s| s.thumb.as_ref())
            .is_none_or(|u| now >= u.at + thumb_every)
    }

    /// The thumbnail the notice of `session` shows.
    pub fn uploaded(&self, stream: &str, session: &str) -> Option<Uploaded> {
        self.shown
            .lock()
            .get(stream)
            .filter(|s| s.session == session)
            .and_then(|s| s.thumb.clone())
    }
}

/// The go-live notice's text and HTML (without any `@room`).
pub(super) fn live_text(
    title: &str,
    url: &str,
    viewers: Option<u64>,
    thumb: Option<&Uploaded>,
) -> (String, String) {
    let count = viewers
        .map(|n| format!(" · {n} watching"))
        .unwrap_or_default();
    let text = format!("🔴 {title} is live: {url}{count}");
    let mut html = format!(
        "🔴 <b>{}</b> is live — <a href=\"{}\">watch</a>{count}",
        html_escape(title),
        html_escape(url)
    );
    if let Some(t) = thumb {
        html.push_str(&format!(
            "<br><a href=\"{}\"><img src=\"{}\" alt=\"{}\" width=\"{}\" height=\"{}\"></a>",
            html_escape(url),
            html_escape(&t.mxc),
            html_escape(title),
            t.width,
            t.height
        ));
    }
    (text, html)
}

impl Matrix {
    /// The thumbnails to show in go-live notices (set once at start-up).
    pub fn set_thumbnails(&self, thumbnails: Arc<Thumbnails>) {
        let _ = self.notices.current.thumbnails.set(thumbnails);
    }

    /// The thumbnails, when the stream's may go to the room.
    fn notice_thumbnails(&self, stream: &str) -> Option<&Arc<Thumbnails>> {
        let s = self.hub.get(stream)?;
        if s.access() != Access::Public {
            return None;
        }
        self.notices.current.thumbnails.get()
    }

    /// Uploads `t` to the media repository.
    async fn upload_thumbnail(&self, stream: &str, t: &Thumbnail) -> Result<Uploaded, MatrixError> {
        let mut req = create_content::v3::Request::new(t.jpeg.to_vec());
        req.content_type = Some("image/jpeg".into());
        req.filename = Some(format!("{stream}.jpg"));
        let r = self.client.send(req, None).await?;
        Ok(Uploaded {
            mxc: r.content_uri.to_string(),
            width: t.width,
            height: t.height,
            seq: t.seq,
            at: Instant::now(),
        })
    }

    /// For the go-live notice being delivered: the thumbnail to show
    /// (uploaded now, or already for this session). A failed upload sends
    /// the notice without it.
    pub(super) async fn golive_thumbnail(&self, stream: &str, session: &str) -> Option<Uploaded> {
        if let Some(u) = self.notices.current.uploaded(stream, session) {
            return Some(u);
        }
        // An ask: the first thumbnail is made now (waited for, bounded).
        let t = self
            .notice_thumbnails(stream)?
            .want_within(stream, crate::thumbnail::FIRST_WAIT)
            .await
            .ok()?;
        match self.upload_thumbnail(stream, &t).await {
            Ok(u) => {
                self.notices
                    .current
                    .sent(stream, session, None, Some(u.clone()), Instant::now());
                Some(u)
            }
            Err(e) => {
                warn!(stream = %stream, "matrix: uploading the thumbnail failed: {e}");
                None
            }
        }
    }

    /// The go-live notice of `session` was delivered.
    pub(super) fn golive_sent(&self, stream: &str, session: &str) {
        let thumb = self.notices.current.uploaded(stream, session);
        self.notices
            .current
            .sent(stream, session, None, thumb, Instant::now());
    }

    /// Edits the live notices that are due, until the process ends.
    pub(super) async fn notice_update_loop(self: Arc<Self>) {
        let every = Duration::from_secs(self.cfg.notice_update_secs);
        let tick = every.min(Duration::from_secs(1));
        loop {
            tokio::time::sleep(tick).await;
            for (stream, session) in self.notices.announced_live() {
                if let Err(e) = self.update_notice(&stream, &session).await
                    && let Some(suppressed) = UPDATE_FAILED_LOG.allow()
                {
                    warn!(stream = %stream, suppressed, "matrix: editing the go-live notice failed: {e}");
                }
            }
            self.notices
                .current
                .shown
                .lock()
                .retain(|stream, _| self.live_here(stream));
        }
    }

    async fn update_notice(&self, stream: &str, session: &str) -> Result<(), MatrixError> {
        let Some(s) = self.hub.get(stream) else {
            return Ok(());
        };
        // A screen share's compact notice is not a go-live notice.
        if self
            .room_of_stream(stream)
            .is_some_and(|(m, _)| m.slot.as_deref() == Some(super::party::PARTY_SLOT))
        {
            return Ok(());
        }
        let viewers = s.cluster_viewers() as u64;
        let now = Instant::now();
        let thumb_every = Duration::from_secs(self.cfg.notice_thumbnail_secs);
        let thumb = self.notice_thumbnails(stream).and_then(|t| {
            let asks = self
                .notices
                .current
                .wants_thumbnail(stream, session, now, thumb_every);
            if asks { t.want(stream) } else { t.peek(stream) }.ok()
        });
        let Some(due) = self.notices.current.due(
            stream,
            session,
            viewers,
            thumb.as_ref().map(|t| t.seq),
            now,
            Cadence {
                every: Duration::from_secs(self.cfg.notice_update_secs),
                thumb_every,
            },
        ) else {
            return Ok(());
        };
        let uploaded = match (&thumb, due.upload) {
            (Some(t), true) => match self.upload_thumbnail(stream, t).await {
                Ok(u) => Some(u),
                Err(e) => {
                    warn!(stream = %stream, "matrix: uploading the thumbnail failed: {e}");
                    self.notices.current.uploaded(stream, session)
                }
            },
            _ => self.notices.current.uploaded(stream, session),
        };
        // The stream may have ended meanwhile: its "ended" edit must stay the last.
        let still_live = || {
            self.notices
                .announced_live()
                .iter()
                .any(|(st, se)| st == stream && se == session)
        };
        if !still_live() {
            return Ok(());
        }
        let (text, html) = live_text(
            &self.title_of(stream),
            &self.golive_watch_url(stream),
            Some(viewers),
            uploaded.as_ref(),
        );
        let mut edited = 0;
        let mut failed = None;
        for room in self.store.outbox_rooms(stream, session, "notice").await? {
            if !still_live() {
                break;
            }
            let Some(event_id) = self
                .store
                .outbox_event_in(stream, session, "notice", &room)
                .await?
            else {
                continue;
            };
            let Ok(room_id) = OwnedRoomId::try_from(room.as_str()) else {
                continue;
            };
            let content = edit_content(&event_id, &text, &html, stream, session, viewers);
            // One room refusing (the bot was removed) must not stop the
            // others, nor make them be edited again at once.
            match self
                .send_message(room_id, new_txn_id().as_str().into(), &content)
                .await
            {
                Ok(_) => edited += 1,
                Err(e) => failed = Some(e),
            }
        }
        // Recorded even after a failure: the next try waits for the interval.
        // Counted from when the sends are done, not from `now`: a slow
        // upload or homeserver would otherwise bring this edit and the next
        // closer together in the room than `notice_update_secs`.
        self.notices
            .current
            .sent(stream, session, Some(viewers), uploaded, Instant::now());
        if edited > 0 {
            info!(stream = %stream, viewers, rooms = edited, "matrix: go-live notice edited");
        }
        if let Some(e) = failed {
            return Err(e);
        }
        Ok(())
    }
}

/// An `m.replace` edit of the go-live notice `event_id`, with no mentions.
fn edit_content(
    event_id: &str,
    text: &str,
    html: &str,
    stream: &str,
    session: &str,
    viewers: u64,
) -> Value {
    let golive = json!({"stream": stream, "session": session, "viewers": viewers});
    json!({
        "msgtype": "m.notice",
        "body": format!("* {text}"),
        "format": "org.matrix.custom.html",
        "formatted_body": format!("* {html}"),
        "m.new_content": {
            "msgtype": "m.notice",
            "body": text,
            "format": "org.matrix.custom.html",
            "formatted_body": html,
            "m.mentions": {},
            "io.roomcast.golive": golive,
        },
        "m.relates_to": {"rel_type": "m.replace", "event_id": event_id},
        "m.mentions": {},
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const EVERY: Duration = Duration::from_secs(60);
    const THUMB_EVERY: Duration = Duration::from_secs(300);
    const CADENCE: Cadence = Cadence {
        every: EVERY,
        thumb_every: THUMB_EVERY,
    };

    fn uploaded(seq: u64, at: Instant) -> Uploaded {
        Uploaded {
            mxc: format!("mxc://hs/{seq}"),
            width: 320,
            height: 180,
            seq,
            at,
        }
    }

    #[test]
    fn edits_wait_for_the_interval_and_a_change() {
        let c = Current::default();
        let t0 = Instant::now();
        c.sent("a", "s1", None, Some(uploaded(1, t0)), t0);
        let due = |v, seq, after| c.due("a", "s1", v, seq, t0 + after, CADENCE);
        assert_eq!(due(3, Some(1), Duration::from_secs(10)), None, "too soon");
        assert_eq!(
            due(3, Some(1), EVERY),
            Some(Due { upload: false }),
            "the count was never shown"
        );
        c.sent("a", "s1", Some(3), None, t0 + EVERY);
        assert_eq!(c.uploaded("a", "s1").map(|u| u.seq), Some(1), "kept");
        assert_eq!(
            due(3, Some(2), EVERY * 2),
            None,
            "same count; thumbnail too fresh"
        );
        assert_eq!(due(5, Some(2), EVERY * 2), Some(Due { upload: false }));
        assert_eq!(
            due(3, Some(2), THUMB_EVERY),
            Some(Due { upload: true }),
            "the thumbnail is renewed every few minutes"
        );
        assert_eq!(due(3, Some(1), THUMB_EVERY), None, "the same thumbnail");
    }

    #[test]
    fn the_notice_asks_for_a_thumbnail_only_when_it_would_show_a_newer_one() {
        let c = Current::default();
        let t0 = Instant::now();
        assert!(c.wants_thumbnail("a", "s1", t0, THUMB_EVERY), "none shown");
        c.sent("a", "s1", None, None, t0);
        assert!(c.wants_thumbnail("a", "s1", t0, THUMB_EVERY), "none shown");
        c.sent("a", "s1", None, Some(uploaded(1, t0)), t0);
        assert!(!c.wants_thumbnail("a", "s1", t0 + EVERY, THUMB_EVERY));
        assert!(c.wants_thumbnail("a", "s1", t0 + THUMB_EVERY, THUMB_EVERY));
        assert!(
            c.wants_thumbnail("a", "s2", t0, THUMB_EVERY),
            "a new session"
        );
    }

    #[test]
    fn a_new_session_starts_over() {
        let c = Current::default();
        let t0 = Instant::now();
        c.sent("a", "s1", Some(2), Some(uploaded(1, t0)), t0);
        assert_eq!(c.due("a", "s2", 2, Some(1), t0 + EVERY, CADENCE), None);
        assert_eq!(c.uploaded("a", "s2"), None);
        assert_eq!(
            c.due("a", "s2", 2, Some(1), t0 + EVERY * 2, CADENCE),
            Some(Due { upload: true })
        );
    }

    #[test]
    fn the_text_shows_count_and_thumbnail_without_mentions() {
        let t = uploaded(1, Instant::now());
        let (text, html) = live_text("<Demo>", "https://x/watch/a", Some(4), Some(&t));
        assert_eq!(text, "🔴 <Demo> is live: https://x/watch/a · 4 watching");
        assert!(html.contains("<b>&lt;Demo&gt;</b>"), "{html}");
        assert!(html.contains("<img src=\"mxc://hs/1\""), "{html}");
        assert!(!text.contains("@room"));
        let e = edit_content("$ev", &text, &html, "a", "s1", 4);
        assert_eq!(e["m.relates_to"]["rel_type"], "m.replace");
        assert_eq!(e["m.mentions"], json!({}));
        assert_eq!(e["m.new_content"]["io.roomcast.golive"]["viewers"], 4);
    }
}
