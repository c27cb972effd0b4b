//! Go-live notices. A stream that stays live for `golive_delay_ms` gets one
//! notice in its room and in each room following it (`!live follow`; a
//! flapping connection gets none, and a reconnect within the delay continues
//! the same session); when it ends for longer than the delay, each notice is
//! edited to say for how long it ran and its peak viewers. Both, and the
//! stream state event, go through a durable outbox that retries with backoff
//! until the homeserver takes them, so each is delivered exactly once even
//! when the homeserver is down as the stream starts.
//!
//! [`Notices`] owns the go-live sessions (a sans-I/O state machine, persisted
//! by one writer task so a restart mid-stream continues the session: no
//! second notice, and the "ended" edit lands on the first) and wakes the
//! outbox. Live and offline come from the hub's lossless control path, so a
//! busy chat cannot make the watcher miss a go-live or an end.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;
use ruma::api::client::message::send_message_event;
use ruma::api::client::state::send_state_event;
use ruma::events::{MessageLikeEventType, StateEventType};
use ruma::serde::Raw;
use ruma::{OwnedRoomId, OwnedTransactionId};
use serde_json::{Value, json};
use tokio::sync::Notify;
use tokio::sync::broadcast::error::RecvError;
use tracing::{info, warn};

use super::ids::new_txn_id;
use super::text::{format_duration, html_escape};
use super::{HsError, Matrix, MatrixError};
use crate::hub::HubEvent;
use crate::store::matrix::{GoliveRow, NewOutbox, OutboxRow};

/// State event type of a stream (state_key = stream name).
pub const STREAM_STATE_TYPE: &str = "io.roomcast.stream";

/// How long a session found at start-up waits for its publisher to come back
/// (roomcast restarted under a live stream: OBS reconnects within seconds)
/// before it ends, when `golive_delay_ms` is shorter.
const RESTART_GRACE: Duration = Duration::from_secs(60);

/// The outbox and the go-live sessions.
#[derive(Default)]
pub struct Notices {
    sessions: Mutex<Sessions>,
    /// Live-session count of each stream last seen live on the control
    /// path (offline streams have no entry, so removed ones leave none).
    seen_live: Mutex<HashMap<String, u64>>,
    wake: Notify,
    /// Streams whose session changed since it was last written.
    dirty: Mutex<HashSet<String>>,
    persist_wake: Notify,
    /// What the live notices show now (viewer count, thumbnail).
    pub(super) current: super::notice_current::Current,
}

impl Notices {
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// (stream, session) of each announced session whose stream is live.
    pub(super) fn announced_live(&self) -> Vec<(String, String)> {
        self.sessions.lock().announced_live()
    }

    fn changed(&self, stream: &str) {
        self.dirty.lock().insert(stream.to_string());
        self.persist_wake.notify_one();
    }

    /// What the control path says now about `stream`: `Some(true)` it went
    /// live, `Some(false)` offline; a new live session with no offline seen
    /// in between is reported as offline then live by the caller.
    fn note_control(&self, stream: &str, live: bool, sessions: u64) -> (bool, bool) {
        let mut seen = self.seen_live.lock();
        let prev = if live {
            seen.insert(stream.to_string(), sessions)
        } else {
            seen.remove(stream)
        };
        // Offline before, or never seen: as an offline entry would say.
        let (was_live, was_sessions) = prev.map_or((false, sessions), |n| (true, n));
        let went_offline = was_live && (!live || sessions != was_sessions);
        let went_live = live && (!was_live || sessions != was_sessions);
        (went_offline, went_live)
    }
}

/// One stream's go-live session. Times are ms since the Unix epoch, so a
/// session survives a restart.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Session {
    id: String,
    started_ms: u64,
    peak: u64,
    announced: bool,
    /// Set while the publisher is gone; the session ends if it stays gone.
    offline_since_ms: Option<u64>,
}

/// The go-live sessions of every stream, without I/O: the driver feeds it
/// live/offline and timer expiries, and performs what it answers.
#[derive(Default)]
struct Sessions(HashMap<String, Session>);

impl Sessions {
    /// The stream went live. `Some(id)`: a session to announce after the
    /// delay (a new one, or one going on that was never announced, e.g. a
    /// restart cut its delay short; announcing is idempotent); `None`: an
    /// announced session goes on (back within the delay).
    fn went_live(&mut self, stream: &str, now_ms: u64) -> Option<String> {
        if let Some(s) = self.0.get_mut(stream) {
            s.offline_since_ms = None;
            return (!s.announced).then(|| s.id.clone());
        }
        let id = format!("{now_ms}");
        self.0.insert(
            stream.to_string(),
            Session {
                id: id.clone(),
                started_ms: now_ms,
                peak: 0,
                announced: false,
                offline_since_ms: None,
            },
        );
        Some(id)
    }

    /// The announce timer of session `id` fired: `Some(started_ms)` when it
    /// is to be announced now (still live, not yet announced).
    fn announce_due(&mut self, stream: &str, id: &str) -> Option<u64> {
        match self.0.get_mut(stream) {
            Some(s) if s.id == id && s.offline_since_ms.is_none() && !s.announced => {
                s.announced = true;
                Some(s.started_ms)
            }
            _ => None,
        }
    }

    /// The stream went offline: `Some((id, since))` for the end timer.
    fn went_offline(&mut self, stream: &str, now_ms: u64) -> Option<(String, u64)> {
        let s = self.0.get_mut(stream)?;
        let since = *s.offline_since_ms.get_or_insert(now_ms);
        Some((s.id.clone(), since))
    }

    /// The end timer set at `since` fired: the session ends if the stream
    /// stayed offline since then. Returns it when it had been announced.
    fn end_due(&mut self, stream: &str, id: &str, since: u64) -> Option<Session> {
        match self.0.get(stream) {
            Some(s) if s.id == id && s.offline_since_ms == Some(since) => {
                let s = self.0.remove(stream)?;
                s.announced.then_some(s)
            }
            _ => None,
        }
    }

    fn announced_live(&self) -> Vec<(String, String)> {
        self.0
            .iter()
            .filter(|(_, s)| s.announced && s.offline_since_ms.is_none())
            .map(|(stream, s)| (stream.clone(), s.id.clone()))
            .collect()
    }

    fn note_viewers(&mut self, stream: &str, count: u64) -> bool {
        match self.0.get_mut(stream) {
            Some(s) if count > s.peak => {
                s.peak = count;
                true
            }
            _ => false,
        }
    }

    /// Sessions read at start-up: their publishers are gone (roomcast was
    /// not running), so each is offline from `now_ms` unless it was already.
    /// Returns the end timers to set.
    fn restore(&mut self, rows: Vec<GoliveRow>, now_ms: u64) -> Vec<(String, String, u64)> {
        let mut timers = Vec::new();
        for r in rows {
            let since = r.offline_since_ms.map_or(now_ms, |t| t as u64);
            timers.push((r.stream.clone(), r.session.clone(), since));
            self.0.insert(
                r.stream,
                Session {
                    id: r.session,
                    started_ms: r.started_ms as u64,
                    peak: r.peak as u64,
                    announced: r.announced,
                    offline_since_ms: Some(since),
                },
            );
        }
        timers
    }

    /// Session `id` belongs to another node (the one with the publisher):
    /// this one forgets it. True when it was here.
    fn forget(&mut self, stream: &str, id: &str) -> bool {
        if self.0.get(stream).is_some_and(|s| s.id == id) {
            self.0.remove(stream);
            true
        } else {
            false
        }
    }

    fn row(&self, stream: &str) -> Option<GoliveRow> {
        self.0.get(stream).map(|s| GoliveRow {
            stream: stream.to_string(),
            session: s.id.clone(),
            started_ms: s.started_ms as i64,
            peak: s.peak as i64,
            announced: s.announced,
            offline_since_ms: s.offline_since_ms.map(|t| t as i64),
        })
    }
}

/// "1 h 02 min", "3 min", "45 s".
fn ms_since_epoch(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn now_ms() -> u64 {
    ms_since_epoch(SystemTime::now())
}

impl Matrix {
    /// Session `id` of `stream` is another node's: not announced or ended here.
    pub(super) fn session_elsewhere(&self, stream: &str, id: &str) {
        if self.notices.sessions.lock().forget(stream, id) {
            info!(stream = %stream, "matrix: the stream's go-live session belongs to another node");
        }
    }

    /// Before announcing: on a shared database the session must be this
    /// node's (claimed in the database), else it is forgotten here.
    async fn own_session(&self, stream: &str, id: &str) -> bool {
        if !self.claims.shared() {
            return true;
        }
        let Some(row) = self.notices.sessions.lock().row(stream) else {
            return false;
        };
        if row.session != id {
            return false;
        }
        match self
            .store
            .claim_golive_session(&row, self.claims.node())
            .await
        {
            Ok(true) => true,
            Ok(false) => {
                self.session_elsewhere(stream, id);
                false
            }
            // Queuing the notice needs the database too, and retries.
            Err(e) => {
                warn!(stream = %stream, "matrix: claiming the go-live session failed: {e}");
                true
            }
        }
    }

    /// Whether the hub has `stream` live on this node.
    pub(super) fn live_here(&self, stream: &str) -> bool {
        self.hub.get(stream).is_some_and(|s| s.control_state().live)
    }

    fn golive_delay(&self) -> Duration {
        Duration::from_millis(self.cfg.golive_delay_ms)
    }

    /// Follows live and offline on the hub's control path (lossless) and
    /// viewer counts on its event channel (for the peak; a missed count is
    /// made up from the current one).
    pub(super) async fn watch_hub(self: Arc<Self>) {
        let mut control = self.hub.control_feed();
        let mut rx = self.hub.subscribe_events();
        tokio::spawn(self.clone().persist_loop());
        tokio::spawn(self.clone().notice_update_loop());
        if let Err(e) = self.restore_lost_rooms().await {
            warn!("matrix: cannot read the lost rooms: {e}");
        }
        self.restore_sessions().await;
        self.control_changed(self.hub.streams());
        loop {
            tokio::select! {
                biased;
                changed = control.changed(&self.hub) => match changed {
                    Some(streams) => self.control_changed(streams),
                    None => return,
                },
                ev = rx.recv() => match ev {
                    Ok(HubEvent::Viewers { stream, count }) => self.note_viewers(&stream, count),
                    Ok(_) => {}
                    Err(RecvError::Lagged(_)) => {
                        for s in self.hub.streams() {
                            self.note_viewers(&s.name, s.cluster_viewers());
                        }
                    }
                    Err(RecvError::Closed) => return,
                },
            }
        }
    }

    fn control_changed(self: &Arc<Self>, streams: Vec<Arc<crate::hub::Stream>>) {
        for s in streams {
            let c = s.control_state();
            let (went_offline, went_live) =
                self.notices.note_control(&s.name, c.live, c.live_sessions);
            if went_offline {
                self.on_offline(&s.name);
            }
            if went_live {
                self.on_live(&s.name);
            }
        }
    }

    fn note_viewers(&self, stream: &str, count: usize) {
        if self
            .notices
            .sessions
            .lock()
            .note_viewers(stream, count as u64)
        {
            self.notices.changed(stream);
        }
    }

    /// Continues the sessions persisted before a restart: each ends unless
    /// its publisher comes back within the grace.
    async fn restore_sessions(self: &Arc<Self>) {
        let mut delay = Duration::from_secs(1);
        let rows = loop {
            let rows = if self.claims.shared() {
                self.sessions_at_start().await
            } else {
                self.store.golive_sessions().await
            };
            match rows {
                Ok(rows) => break rows,
                Err(e) => {
                    warn!(
                        retry_in_s = delay.as_secs(),
                        "matrix: cannot read the go-live sessions yet: {e}"
                    );
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(30));
                }
            }
        };
        if rows.is_empty() {
            return;
        }
        info!(
            sessions = rows.len(),
            "matrix: go-live sessions from before the restart continue"
        );
        self.continue_sessions(rows);
    }

    /// Takes over sessions whose node stopped: each ends unless its
    /// publisher comes back (here) within the grace.
    pub(super) fn continue_sessions(self: &Arc<Self>, rows: Vec<GoliveRow>) {
        let timers = self.notices.sessions.lock().restore(rows, now_ms());
        let grace = self.golive_delay().max(RESTART_GRACE);
        for (stream, id, since) in timers {
            self.notices.changed(&stream);
            self.end_after(stream, id, since, grace);
        }
    }

    /// Writes changed sessions, one writer so the last state read is the last
    /// written; a failed write is retried with backoff.
    async fn persist_loop(self: Arc<Self>) {
        let mut backoff = Duration::from_secs(1);
        loop {
            let dirty: Vec<String> = self.notices.dirty.lock().drain().collect();
            if dirty.is_empty() {
                self.notices.persist_wake.notified().await;
                continue;
            }
            let mut failed = false;
            for stream in dirty {
                let row = self.notices.sessions.lock().row(&stream);
                let r = match &row {
                    Some(row) if self.claims.shared() => self
                        .store
                        .claim_golive_session(row, self.claims.node())
                        .await
                        .map(|mine| {
                            if !mine {
                                self.session_elsewhere(&stream, &row.session);
                            }
                        }),
                    Some(row) => self.store.save_golive_session(row).await,
                    None if self.claims.shared() => {
                        self.store
                            .delete_own_golive_session(&stream, self.claims.node())
                            .await
                    }
                    None => self.store.delete_golive_session(&stream).await,
                };
                if let Err(e) = r {
                    if !failed {
                        warn!(stream = %stream, retry_in_s = backoff.as_secs(), "matrix: cannot save the go-live session yet: {e}");
                    }
                    failed = true;
                    self.notices.dirty.lock().insert(stream);
                }
            }
            if failed {
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(30));
            } else {
                backoff = Duration::from_secs(1);
            }
        }
    }

    pub(super) fn on_live(self: &Arc<Self>, stream: &str) {
        if self.relayed_here(stream) {
            return;
        }
        if self.room_of_stream(stream).is_none() {
            if self.claims.shared() {
                // Mapped by another node since this one started?
                let me = self.clone();
                let stream = stream.to_string();
                tokio::spawn(async move {
                    if me.reload_stream(&stream).await && me.room_of_stream(&stream).is_some() {
                        me.on_live(&stream);
                    }
                });
            }
            return;
        }
        let id = self.notices.sessions.lock().went_live(stream, now_ms());
        self.notices.changed(stream);
        let Some(id) = id else {
            return;
        };
        let me = self.clone();
        let stream = stream.to_string();
        tokio::spawn(async move {
            tokio::time::sleep(me.golive_delay()).await;
            if !me.own_session(&stream, &id).await {
                return;
            }
            let Some(started_ms) = me.notices.sessions.lock().announce_due(&stream, &id) else {
                return;
            };
            me.notices.changed(&stream);
            let started = UNIX_EPOCH + Duration::from_millis(started_ms);
            queue_durably("go-live notice", &stream, || {
                me.enqueue_live(&stream, &id, started)
            })
            .await;
        });
    }

    fn on_offline(self: &Arc<Self>, stream: &str) {
        if self.relayed_here(stream) {
            return;
        }
        let Some((id, since)) = self.notices.sessions.lock().went_offline(stream, now_ms()) else {
            return;
        };
        self.notices.changed(stream);
        self.end_after(stream.to_string(), id, since, self.golive_delay());
    }

    /// A cluster edge's pull of a stream published on another node: that
    /// node's go-live session announces and ends it, not this one.
    fn relayed_here(&self, stream: &str) -> bool {
        self.hub.get(stream).is_some_and(|s| s.is_relayed())
    }

    /// Ends session `id` after `wait` unless its stream came back meanwhile.
    fn end_after(self: &Arc<Self>, stream: String, id: String, since: u64, wait: Duration) {
        let me = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(wait).await;
            let ended = me.notices.sessions.lock().end_due(&stream, &id, since);
            me.notices.changed(&stream);
            let Some(s) = ended else { return };
            let ran = Duration::from_millis(since.saturating_sub(s.started_ms));
            queue_durably("stream-ended notice", &stream, || {
                me.enqueue_ended(&stream, &s.id, s.started_ms, ran, s.peak as usize)
            })
            .await;
        });
    }

    fn stream_state(&self, stream: &str, live: bool, started: Option<SystemTime>) -> Value {
        let base = &self.urls.public_base;
        let title = self.hub.get(stream).map(|s| s.title()).unwrap_or_default();
        json!({
            "stream": stream,
            "state": if live { "live" } else { "offline" },
            "title": title,
            "watch_url": format!("{base}/watch/{stream}"),
            "whep_url": format!("{base}/whep/{stream}"),
            "hls_url": format!("{base}/hls/{stream}/index.m3u8"),
            "started_at": started.map(ms_since_epoch),
        })
    }

    /// Queues the stream state event with no live session (attach, detach).
    pub(super) async fn enqueue_state(&self, stream: &str, live: bool) -> Result<(), MatrixError> {
        let Some((m, _)) = self.room_of_stream(stream) else {
            return Ok(());
        };
        let session = format!("state-{}", ms_since_epoch(SystemTime::now()));
        let payload = self.stream_state(stream, live, None).to_string();
        self.store
            .enqueue_outbox(&[outbox_item("state", &m.room_id, stream, &session, payload)])
            .await?;
        self.notices.wake();
        Ok(())
    }

    /// The stream's title, or its name when it has none.
    pub(super) fn title_of(&self, stream: &str) -> String {
        self.hub
            .get(stream)
            .map(|s| s.title())
            .unwrap_or_else(|| stream.to_string())
    }

    /// Queues a notice of `kind` in the stream's room and, after it, the
    /// stream state event, and the same notice in each of `others` (rooms
    /// following the stream), in one transaction (a retry cannot queue a
    /// notice twice).
    #[allow(clippy::too_many_arguments)]
    async fn enqueue_notice(
        &self,
        room_id: &str,
        others: &[String],
        stream: &str,
        session: &str,
        kind: &str,
        notice: Value,
        started: Option<SystemTime>,
    ) -> Result<(), MatrixError> {
        let state = self
            .stream_state(stream, started.is_some(), started)
            .to_string();
        let mut items = Vec::new();
        // A lost room is told nothing; its followers still are.
        if !self.room_is_lost(stream) {
            items.push(outbox_item(
                kind,
                room_id,
                stream,
                session,
                notice.to_string(),
            ));
            items.push(outbox_item("state", room_id, stream, session, state));
        }
        // A follower is told without an @room mention: that is its room's choice.
        let mut quiet = notice.clone();
        quiet["mention"] = json!(false);
        let quiet = quiet.to_string();
        for other in others.iter().filter(|r| *r != room_id) {
            items.push(outbox_item(kind, other, stream, session, quiet.clone()));
        }
        self.store.enqueue_outbox(&items).await?;
        self.notices.wake();
        Ok(())
    }

    async fn enqueue_live(
        &self,
        stream: &str,
        session: &str,
        started: SystemTime,
    ) -> Result<(), MatrixError> {
        let Some((m, room)) = self.room_of_stream(stream) else {
            return Ok(());
        };
        // A party share: a compact notice in its room only, or just the state.
        let party = self.party_notices(stream).await?;
        if party == Some(false) {
            return self.enqueue_state(stream, true).await;
        }
        let followers = match party {
            Some(_) => Vec::new(),
            None => self.store.followers(stream).await?,
        };
        let mut notice = json!({
            "title": self.title_of(stream),
            "watch_url": self.golive_watch_url(stream),
            "mention": room.notify && party.is_none(),
        });
        if party.is_some() {
            notice["party"] = json!(self.title_of(stream));
        }
        self.enqueue_notice(
            &m.room_id,
            &followers,
            stream,
            session,
            "notice",
            notice,
            Some(started),
        )
        .await?;
        info!(stream = %stream, room = %m.room_id, followers = followers.len(), "matrix: go-live notice queued");
        Ok(())
    }

    async fn enqueue_ended(
        &self,
        stream: &str,
        session: &str,
        started_ms: u64,
        ran: Duration,
        peak: usize,
    ) -> Result<(), MatrixError> {
        let Some((m, _)) = self.room_of_stream(stream) else {
            return Ok(());
        };
        let party = self.party_notices(stream).await?;
        if party == Some(false) {
            return self.enqueue_state(stream, false).await;
        }
        // The rooms that got this session's go-live notice get its end.
        let told = self.store.outbox_rooms(stream, session, "notice").await?;
        let mut ended = json!({
            "title": self.title_of(stream),
            "duration_s": ran.as_secs(),
            "peak": peak,
            "watch_url": self.watch_url(stream),
        });
        // A recorded session's end links its replay (recordings.rs).
        if let Some(url) = self.session_replay_url(stream, started_ms).await {
            ended["replay_url"] = json!(url);
        }
        if party.is_some() {
            ended["party"] = json!(self.title_of(stream));
        }
        self.enqueue_notice(&m.room_id, &told, stream, session, "ended", ended, None)
            .await?;
        info!(stream = %stream, duration_s = ran.as_secs(), peak, "matrix: stream-ended notice queued");
        Ok(())
    }

    pub(super) async fn outbox_loop(self: Arc<Self>) {
        let mut backoff = Duration::from_secs(1);
        // Other nodes queue too, and do not wake this one: poll.
        let idle_poll = if self.claims.shared() {
            super::claims::OUTBOX_POLL
        } else {
            Duration::from_secs(30)
        };
        loop {
            if !self.claim_outbox().await {
                // Another node delivers the outbox.
                tokio::time::sleep(super::claims::OUTBOX_POLL).await;
                continue;
            }
            let pending = match self.store.pending_outbox().await {
                Ok(p) => p,
                Err(e) => {
                    warn!("matrix: reading the outbox failed: {e}");
                    tokio::time::sleep(Duration::from_secs(5)).await;
                    continue;
                }
            };
            if pending.is_empty() {
                // Woken by new items (or poll now and then, to be safe).
                let _ = tokio::time::timeout(idle_poll, self.notices.wake.notified()).await;
                continue;
            }
            let mut failed = false;
            for item in pending {
                if !self.claim_outbox().await {
                    break;
                }
                match self.deliver(&item).await {
                    Ok(event_id) => {
                        backoff = Duration::from_secs(1);
                        if let Err(e) = self.store.outbox_done(item.id, event_id.as_deref()).await {
                            warn!("matrix: outbox bookkeeping failed: {e}");
                            failed = true;
                            break;
                        }
                        info!(
                            kind = %item.kind,
                            stream = %item.stream,
                            room = %item.room_id,
                            event_id = event_id.as_deref().unwrap_or(""),
                            attempts = item.attempts + 1,
                            "matrix: notice delivered"
                        );
                    }
                    Err(e) if e.is_transient() => {
                        let _ = self.store.outbox_attempted(item.id).await;
                        warn!(
                            kind = %item.kind,
                            stream = %item.stream,
                            attempt = item.attempts + 1,
                            retry_in_ms = backoff.as_millis() as u64,
                            "matrix: notice not delivered yet: {e}"
                        );
                        failed = true;
                        break;
                    }
                    Err(e) => {
                        // Refused for good (e.g. the bot left the room): drop it.
                        warn!(kind = %item.kind, stream = %item.stream, "matrix: notice dropped: {e}");
                        let _ = self.store.outbox_done(item.id, None).await;
                    }
                }
            }
            if failed {
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(8));
            }
        }
    }

    async fn deliver(&self, item: &OutboxRow) -> Result<Option<String>, MatrixError> {
        if item.kind == "dm" {
            return self.deliver_dm(item).await.map(Some);
        }
        let room_id = OwnedRoomId::try_from(item.room_id.as_str())
            .map_err(|e| HsError::Protocol(format!("bad room id: {e}")))?;
        let p: Value = serde_json::from_str(&item.payload).unwrap_or_default();
        let txn: OwnedTransactionId = item.txn_id.as_str().into();
        match item.kind.as_str() {
            "state" => {
                let raw = Raw::from_json(serde_json::value::to_raw_value(&p).map_err(json_err)?);
                let req = send_state_event::v3::Request::new_raw(
                    room_id,
                    StateEventType::from(STREAM_STATE_TYPE),
                    item.stream.clone(),
                    raw,
                );
                let r = self.client.send(req, None).await?;
                Ok(Some(r.event_id.to_string()))
            }
            "notice" => {
                let title = p["title"].as_str().unwrap_or(&item.stream);
                let url = p["watch_url"].as_str().unwrap_or_default();
                let mention = p["mention"].as_bool().unwrap_or(false)
                    && self
                        .bot_can_mention_room(&item.room_id)
                        .await
                        .unwrap_or(false);
                let at = if mention { "@room " } else { "" };
                let (body, html) = match p["party"].as_str() {
                    Some(who) => super::party::share_notice(who),
                    None => {
                        let thumb = self.golive_thumbnail(&item.stream, &item.session).await;
                        let (text, html) =
                            super::notice_current::live_text(title, url, None, thumb.as_ref());
                        (format!("{at}{text}"), format!("{at}{html}"))
                    }
                };
                let mut content = json!({
                    "msgtype": "m.notice",
                    "body": body,
                    "format": "org.matrix.custom.html",
                    "formatted_body": html,
                    "m.mentions": {},
                    "io.roomcast.golive": {"stream": item.stream, "session": item.session},
                });
                if mention {
                    content["m.mentions"] = json!({"room": true});
                }
                let sent = self.send_message(room_id, txn, &content).await?;
                // A screen share's compact notice is not kept current (it
                // would be rewritten as a go-live notice).
                if p["party"].is_null() {
                    self.golive_sent(&item.stream, &item.session);
                }
                Ok(Some(sent))
            }
            "ended" => {
                let title = p["title"].as_str().unwrap_or(&item.stream);
                let secs = p["duration_s"].as_u64().unwrap_or(0);
                let peak = p["peak"].as_u64().unwrap_or(0);
                let viewers = if peak == 1 { "viewer" } else { "viewers" };
                let mut text = format!(
                    "⚫ {title} ended after {}, peak {peak} {viewers}",
                    format_duration(secs)
                );
                let mut html = format!(
                    "⚫ <b>{}</b> ended after {}, peak {peak} {viewers}",
                    html_escape(title),
                    format_duration(secs)
                );
                if let Some(url) = p["replay_url"].as_str() {
                    text.push_str(&format!(" — replay: {url}"));
                    html.push_str(&format!(" — <a href=\"{}\">replay</a>", html_escape(url)));
                }
                let (text, html) = match p["party"].as_str() {
                    Some(who) => super::party::share_ended_notice(who, secs),
                    None => (text, html),
                };
                let new_content = json!({
                    "msgtype": "m.notice",
                    "body": text,
                    "format": "org.matrix.custom.html",
                    "formatted_body": html,
                    "m.mentions": {},
                });
                let notice = self
                    .store
                    .outbox_event_in(&item.stream, &item.session, "notice", &item.room_id)
                    .await?;
                let content = match notice {
                    // Edit the go-live notice, so the room keeps one message per session.
                    Some(event_id) => json!({
                        "msgtype": "m.notice",
                        "body": format!("* {text}"),
                        "format": "org.matrix.custom.html",
                        "formatted_body": format!("* {html}"),
                        "m.new_content": new_content,
                        "m.relates_to": {"rel_type": "m.replace", "event_id": event_id},
                        "m.mentions": {},
                    }),
                    None => new_content,
                };
                self.send_message(room_id, txn, &content).await.map(Some)
            }
            other => Err(HsError::Protocol(format!("unknown outbox item '{other}'")).into()),
        }
    }

    /// A DM queued for a user (`room_id` holds the user id): sent in the
    /// bot's direct chat with them, with the item's transaction id.
    async fn deliver_dm(&self, item: &OutboxRow) -> Result<String, MatrixError> {
        let p: Value = serde_json::from_str(&item.payload).unwrap_or_default();
        let user = p["user"].as_str().unwrap_or(&item.room_id);
        let room = self.dm_room(user).await?;
        let room_id = OwnedRoomId::try_from(room.as_str())
            .map_err(|e| HsError::Protocol(format!("bad room id: {e}")))?;
        let content = json!({
            "msgtype": "m.notice",
            "body": p["body"].as_str().unwrap_or_default(),
            "m.mentions": {},
        });
        self.send_message(room_id, item.txn_id.as_str().into(), &content)
            .await
    }

    pub(super) async fn send_message(
        &self,
        room_id: OwnedRoomId,
        txn: OwnedTransactionId,
        content: &Value,
    ) -> Result<String, MatrixError> {
        let raw = Raw::from_json(serde_json::value::to_raw_value(content).map_err(json_err)?);
        let req = send_message_event::v3::Request::new_raw(
            room_id,
            txn,
            MessageLikeEventType::RoomMessage,
            raw,
        );
        let r = self.client.send(req, None).await?;
        Ok(r.event_id.to_string())
    }

    pub(super) async fn bot_can_mention_room(&self, room_id: &str) -> Result<bool, MatrixError> {
        let (level, pl) = self.power_of(room_id, self.bot.as_str()).await?;
        let needed = pl["notifications"]["room"].as_i64().unwrap_or(50);
        Ok(level >= needed)
    }
}

fn json_err(e: serde_json::Error) -> MatrixError {
    MatrixError::Hs(HsError::Protocol(e.to_string()))
}

fn outbox_item<'a>(
    kind: &'a str,
    room_id: &'a str,
    stream: &'a str,
    session: &'a str,
    payload: String,
) -> NewOutbox<'a> {
    NewOutbox {
        kind,
        room_id,
        stream,
        session,
        payload,
        txn_id: new_txn_id(),
    }
}

/// After this long a go-live notice is stale: stop trying to queue it.
const QUEUE_GIVE_UP: Duration = Duration::from_secs(3600);

/// Runs `queue` until it succeeds: a notice must not be lost because the
/// database was away (a PostgreSQL restart) when the stream went live. Each
/// call queues atomically, so a retry never queues anything twice.
async fn queue_durably<F, Fut>(what: &str, stream: &str, mut queue: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<(), MatrixError>>,
{
    let first = Instant::now();
    let mut delay = Duration::from_secs(1);
    let mut failed = false;
    loop {
        let Err(e) = queue().await else {
            if failed {
                info!(stream = %stream, "matrix: {what} queued after the database came back");
            }
            return;
        };
        failed = true;
        if first.elapsed() >= QUEUE_GIVE_UP {
            warn!(stream = %stream, "matrix: giving up on the {what}: {e}");
            return;
        }
        warn!(stream = %stream, retry_in_s = delay.as_secs(), "matrix: cannot queue the {what} yet: {e}");
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(30));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_session_is_announced_once_and_ends_after_staying_offline() {
        let mut s = Sessions::default();
        let id = s.went_live("a", 1_000).expect("new session");
        // Back within the delay: the same session, and one announcement.
        let (_, since) = s.went_offline("a", 2_000).expect("session");
        assert_eq!(s.went_live("a", 2_500), Some(id.clone()), "same session");
        assert_eq!(s.end_due("a", &id, since), None, "came back: no end");
        assert_eq!(s.announce_due("a", &id), Some(1_000));
        assert_eq!(s.announce_due("a", &id), None);
        assert!(s.note_viewers("a", 7));
        assert!(!s.note_viewers("a", 3));
        let (_, since) = s.went_offline("a", 9_000).expect("session");
        let ended = s.end_due("a", &id, since).expect("announced, so told");
        assert_eq!((ended.started_ms, ended.peak), (1_000, 7));
        assert!(s.row("a").is_none());
    }

    #[test]
    fn a_flap_gets_no_notice() {
        let mut s = Sessions::default();
        let id = s.went_live("a", 1_000).expect("new session");
        let (_, since) = s.went_offline("a", 1_200).expect("session");
        assert_eq!(s.announce_due("a", &id), None);
        assert_eq!(s.end_due("a", &id, since), None, "never announced");
        assert!(s.row("a").is_none());
    }

    #[test]
    fn a_restored_session_continues_or_ends() {
        let mut s = Sessions::default();
        let id = s.went_live("a", 1_000).expect("new session");
        s.announce_due("a", &id);
        let row = s.row("a").expect("row");
        // Restarted: the publisher comes back within the grace.
        let mut after = Sessions::default();
        let timers = after.restore(vec![row.clone()], 50_000);
        assert_eq!(timers, [("a".to_string(), id.clone(), 50_000)]);
        assert_eq!(after.went_live("a", 52_000), None, "same session");
        assert_eq!(after.end_due("a", &id, 50_000), None);
        assert_eq!(after.announce_due("a", &id), None, "announced before");
        // Restarted and the publisher never comes back: it ends.
        let mut gone = Sessions::default();
        gone.restore(vec![row], 50_000);
        let ended = gone.end_due("a", &id, 50_000).expect("ended");
        assert_eq!(ended.id, id);
    }

    #[test]
    fn a_session_of_another_node_is_forgotten() {
        let mut s = Sessions::default();
        let id = s.went_live("a", 1_000).expect("new session");
        assert!(!s.forget("a", "other"), "another session: kept");
        assert!(s.forget("a", &id));
        assert!(s.row("a").is_none());
        assert_eq!(s.announce_due("a", &id), None, "not announced here");
    }

    #[test]
    fn the_control_path_is_read_as_transitions() {
        let n = Notices::default();
        assert_eq!(n.note_control("a", true, 1), (false, true));
        assert_eq!(n.note_control("a", true, 1), (false, false));
        // Offline and live again between two reads.
        assert_eq!(n.note_control("a", true, 2), (true, true));
        assert_eq!(n.note_control("a", false, 2), (true, false));
        assert_eq!(n.note_control("a", false, 2), (false, false));
        assert_eq!(n.note_control("a", true, 3), (false, true));
        // Offline streams keep no entry: streams made and removed again and
        // again (party shares) leave nothing behind.
        for i in 0..100 {
            let name = format!("share-{i}");
            assert_eq!(n.note_control(&name, true, 1), (false, true));
            assert_eq!(n.note_control(&name, false, 1), (true, false));
        }
        assert_eq!(n.seen_live.lock().len(), 1, "only the live \"a\"");
    }
}
