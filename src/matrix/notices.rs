//! Go-live notices. A stream that stays live for `golive_delay_ms` gets one
//! notice in its room (a flapping connection gets none, and a reconnect within
//! the delay continues the same session); when it ends for longer than the
//! delay, the notice is edited to say for how long it ran and its peak viewers.
//! Both, and the stream state event, go through a durable outbox that retries
//! with backoff until the homeserver takes them, so each is delivered exactly
//! once even when the homeserver is down as the stream starts.

use std::collections::HashMap;
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

use super::{HsError, Matrix, MatrixError};
use crate::hub::HubEvent;
use crate::store::matrix::{NewOutbox, OutboxRow};

/// State event type of a stream (state_key = stream name).
pub const STREAM_STATE_TYPE: &str = "io.roomcast.stream";

#[derive(Default)]
pub struct Notices {
    sessions: Mutex<HashMap<String, Session>>,
    wake: Notify,
}

struct Session {
    id: String,
    started: SystemTime,
    started_at: Instant,
    peak: usize,
    announced: bool,
    /// Set while the publisher is gone; the session ends if it stays gone.
    offline_since: Option<Instant>,
}

impl Notices {
    pub fn wake(&self) {
        self.wake.notify_one();
    }
}

/// "1 h 02 min", "3 min", "45 s".
pub fn format_duration(secs: u64) -> String {
    let (h, m, s) = (secs / 3600, (secs % 3600) / 60, secs % 60);
    if h > 0 {
        format!("{h} h {m:02} min")
    } else if m > 0 {
        format!("{m} min")
    } else {
        format!("{s} s")
    }
}

fn ms_since_epoch(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Matrix {
    fn golive_delay(&self) -> Duration {
        Duration::from_millis(self.cfg.golive_delay_ms)
    }

    pub(super) async fn watch_hub(self: Arc<Self>) {
        let mut rx = self.hub.subscribe_events();
        loop {
            let ev = match rx.recv().await {
                Ok(ev) => ev,
                Err(RecvError::Lagged(n)) => {
                    warn!(
                        missed = n,
                        "matrix: go-live watcher fell behind the hub's events"
                    );
                    continue;
                }
                Err(RecvError::Closed) => return,
            };
            match ev {
                HubEvent::Live { stream } => self.on_live(&stream),
                HubEvent::Offline { stream } => self.on_offline(&stream),
                HubEvent::Viewers { stream, count } => {
                    if let Some(s) = self.notices.sessions.lock().get_mut(&stream) {
                        s.peak = s.peak.max(count);
                    }
                }
                _ => {}
            }
        }
    }

    fn on_live(self: &Arc<Self>, stream: &str) {
        if self.room_of_stream(stream).is_none() {
            return;
        }
        let id = {
            let mut sessions = self.notices.sessions.lock();
            if let Some(s) = sessions.get_mut(stream)
                && s.offline_since.is_some()
            {
                // Back within the delay: the same session goes on.
                s.offline_since = None;
                return;
            }
            let id = format!("{}", ms_since_epoch(SystemTime::now()));
            sessions.insert(
                stream.to_string(),
                Session {
                    id: id.clone(),
                    started: SystemTime::now(),
                    started_at: Instant::now(),
                    peak: 0,
                    announced: false,
                    offline_since: None,
                },
            );
            id
        };
        let me = self.clone();
        let stream = stream.to_string();
        tokio::spawn(async move {
            tokio::time::sleep(me.golive_delay()).await;
            let started = {
                let mut sessions = me.notices.sessions.lock();
                match sessions.get_mut(&stream) {
                    Some(s) if s.id == id && s.offline_since.is_none() && !s.announced => {
                        s.announced = true;
                        s.started
                    }
                    _ => return,
                }
            };
            queue_durably("go-live notice", &stream, || {
                me.enqueue_live(&stream, &id, started)
            })
            .await;
        });
    }

    fn on_offline(self: &Arc<Self>, stream: &str) {
        let id = {
            let mut sessions = self.notices.sessions.lock();
            let Some(s) = sessions.get_mut(stream) else {
                return;
            };
            s.offline_since = Some(Instant::now());
            s.id.clone()
        };
        let me = self.clone();
        let stream = stream.to_string();
        tokio::spawn(async move {
            tokio::time::sleep(me.golive_delay()).await;
            let ended = {
                let mut sessions = me.notices.sessions.lock();
                match sessions.get(&stream) {
                    Some(s) if s.id == id && s.offline_since.is_some() => {
                        let s = sessions.remove(&stream).expect("present");
                        Some(s)
                    }
                    _ => None,
                }
            };
            let Some(s) = ended else { return };
            if !s.announced {
                return;
            }
            let ran = s
                .offline_since
                .unwrap_or_else(Instant::now)
                .saturating_duration_since(s.started_at);
            queue_durably("stream-ended notice", &stream, || {
                me.enqueue_ended(&stream, &s.id, ran, s.peak)
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
    fn title_of(&self, stream: &str) -> String {
        self.hub
            .get(stream)
            .map(|s| s.title())
            .unwrap_or_else(|| stream.to_string())
    }

    /// Queues a notice of `kind` and, after it, the stream state event, in one
    /// transaction (a retry cannot queue the notice twice).
    async fn enqueue_notice(
        &self,
        room_id: &str,
        stream: &str,
        session: &str,
        kind: &str,
        notice: Value,
        started: Option<SystemTime>,
    ) -> Result<(), MatrixError> {
        let state = self
            .stream_state(stream, started.is_some(), started)
            .to_string();
        self.store
            .enqueue_outbox(&[
                outbox_item(kind, room_id, stream, session, notice.to_string()),
                outbox_item("state", room_id, stream, session, state),
            ])
            .await?;
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
        let notice = json!({
            "title": self.title_of(stream),
            "watch_url": self.golive_watch_url(stream),
            "mention": room.notify,
        });
        self.enqueue_notice(&m.room_id, stream, session, "notice", notice, Some(started))
            .await?;
        info!(stream = %stream, room = %m.room_id, "matrix: go-live notice queued");
        Ok(())
    }

    async fn enqueue_ended(
        &self,
        stream: &str,
        session: &str,
        ran: Duration,
        peak: usize,
    ) -> Result<(), MatrixError> {
        let Some((m, _)) = self.room_of_stream(stream) else {
            return Ok(());
        };
        let ended = json!({
            "title": self.title_of(stream),
            "duration_s": ran.as_secs(),
            "peak": peak,
            "watch_url": self.watch_url(stream),
        });
        self.enqueue_notice(&m.room_id, stream, session, "ended", ended, None)
            .await?;
        info!(stream = %stream, duration_s = ran.as_secs(), peak, "matrix: stream-ended notice queued");
        Ok(())
    }

    pub(super) async fn outbox_loop(self: Arc<Self>) {
        let mut backoff = Duration::from_secs(1);
        loop {
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
                let _ = tokio::time::timeout(Duration::from_secs(30), self.notices.wake.notified())
                    .await;
                continue;
            }
            let mut failed = false;
            for item in pending {
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
                let mut content = json!({
                    "msgtype": "m.notice",
                    "body": format!("{at}🔴 {title} is live: {url}"),
                    "format": "org.matrix.custom.html",
                    "formatted_body": format!(
                        "{at}🔴 <b>{}</b> is live — <a href=\"{}\">watch</a>",
                        html_escape(title),
                        html_escape(url)
                    ),
                    "m.mentions": {},
                    "io.roomcast.golive": {"stream": item.stream, "session": item.session},
                });
                if mention {
                    content["m.mentions"] = json!({"room": true});
                }
                self.send_message(room_id, txn, &content).await.map(Some)
            }
            "ended" => {
                let title = p["title"].as_str().unwrap_or(&item.stream);
                let secs = p["duration_s"].as_u64().unwrap_or(0);
                let peak = p["peak"].as_u64().unwrap_or(0);
                let viewers = if peak == 1 { "viewer" } else { "viewers" };
                let text = format!(
                    "⚫ {title} ended after {}, peak {peak} {viewers}",
                    format_duration(secs)
                );
                let html = format!(
                    "⚫ <b>{}</b> ended after {}, peak {peak} {viewers}",
                    html_escape(title),
                    format_duration(secs)
                );
                let new_content = json!({
                    "msgtype": "m.notice",
                    "body": text,
                    "format": "org.matrix.custom.html",
                    "formatted_body": html,
                    "m.mentions": {},
                });
                let notice = self
                    .store
                    .outbox_event(&item.stream, &item.session, "notice")
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

pub fn new_txn_id() -> String {
    format!("rc{}", hex::encode(rand::random::<[u8; 12]>()))
}

pub fn html_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_well() {
        assert_eq!(format_duration(3720), "1 h 02 min");
        assert_eq!(format_duration(180), "3 min");
        assert_eq!(format_duration(45), "45 s");
    }

    #[test]
    fn html_is_escaped() {
        assert_eq!(html_escape("<b>&\"x'"), "&lt;b&gt;&amp;&quot;x&#39;");
    }
}
