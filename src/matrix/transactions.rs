//! Appservice transactions: written to a durable inbox and acknowledged at
//! once, then processed in order per room, one worker per room with waiting
//! events (the HTTP endpoint that receives them is `http::matrix::appservice`).
//!
//! Why a worker per active room rather than one scheduler: a room's events
//! must be applied in order, and a slow homeserver call (or a retry after a
//! 429) must hold up only its own room. A tokio task per room with pending
//! events gives both with no bookkeeping of whose turn it is; it ends when
//! its room's inbox is empty, so idle rooms cost nothing. A semaphore with
//! FIFO permits bounds how many events are processed at once (so a burst
//! over many rooms does not open hundreds of homeserver calls) and lets the
//! rooms take turns event by event; waits between retries hold no permit.
//! The queue itself is the database (`matrix_inbox`, bounded per room in
//! events and bytes); memory holds one room id per active room.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tokio::sync::Semaphore;
use tracing::{debug, info, warn};

use super::{Ev, Matrix, MatrixError};
use crate::log_every::LogEvery;
use crate::store::StoreError;
use crate::store::matrix::InboxEvent;

/// Events processed at once over all rooms.
const MAX_CONCURRENT: usize = 32;
/// Events a worker reads from the inbox at a time.
const BATCH: i64 = 16;
/// A homeserver error that stays transient this long gives up the event (a
/// command gets a "try again" reply). Our own database failing never does:
/// the event waits until it is back.
const GIVE_UP_AFTER: Duration = Duration::from_secs(120);
const FIRST_RETRY: Duration = Duration::from_millis(500);
const MAX_RETRY: Duration = Duration::from_secs(30);

/// The reply to a command given up after transient failures.
pub const TRY_AGAIN: &str = "Sorry, I could not do that just now (the homeserver did not answer). Please try again in a minute.";

/// Exactly-once acceptance and the per-room workers' bookkeeping.
pub struct Transactions {
    /// Rooms with a running worker, and how often each was woken (a worker
    /// that found its inbox empty exits only if nobody woke it meanwhile).
    active: Mutex<HashMap<String, u64>>,
    permits: Semaphore,
    /// Test hook (`RCTEST_MATRIX_STALL_ROOM`, `RCTEST_MATRIX_STALL_MS`):
    /// every event of this room waits this long before it is processed, as
    /// if its homeserver calls were slow. Unset in production.
    stall: Option<(String, Duration)>,
    /// Test hook (`RCTEST_MATRIX_CRASH_AFTER`): the process aborts right
    /// after a command records this step, as a crash mid-command would.
    crash_after: Option<String>,
    full_warned: LogEvery,
}

impl Default for Transactions {
    fn default() -> Self {
        let stall = std::env::var("RCTEST_MATRIX_STALL_ROOM").ok().map(|room| {
            let ms = std::env::var("RCTEST_MATRIX_STALL_MS")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(5_000);
            (room, Duration::from_millis(ms))
        });
        Transactions {
            active: Mutex::new(HashMap::new()),
            permits: Semaphore::new(MAX_CONCURRENT),
            stall,
            crash_after: std::env::var("RCTEST_MATRIX_CRASH_AFTER").ok(),
            full_warned: LogEvery::new(Duration::from_secs(60)),
        }
    }
}

impl Transactions {
    /// Notes new events for `room`; true when a worker must be started.
    fn wake(&self, room: &str) -> bool {
        let mut active = self.active.lock();
        match active.get_mut(room) {
            Some(wakes) => {
                *wakes += 1;
                false
            }
            None => {
                active.insert(room.to_string(), 0);
                true
            }
        }
    }

    fn wakes(&self, room: &str) -> u64 {
        self.active.lock().get(room).copied().unwrap_or(0)
    }

    /// The worker found nothing to do: it ends unless it was woken since
    /// `seen` (then there is more to read).
    fn idle(&self, room: &str, seen: u64) -> bool {
        let mut active = self.active.lock();
        if active.get(room).is_some_and(|w| *w == seen) {
            active.remove(room);
            true
        } else {
            false
        }
    }
}

/// Commands are `m.text` messages starting with the prefix.
fn is_command(ev: &Ev) -> bool {
    ev.kind == "m.room.message"
        && ev.content["body"]
            .as_str()
            .is_some_and(|b| b.trim_start().starts_with(super::commands::PREFIX))
}

impl Matrix {
    /// Accepts a transaction: its new events are in the inbox when this
    /// returns Ok (answer 200), and the rooms' workers are running. A replayed
    /// id queues nothing; a known id that brings events never seen queues
    /// those (Synapse on SQLite numbers its transactions from 1 again after a
    /// restart, so an id alone would drop the first messages after it).
    /// Err (answer non-2xx, the homeserver retries): the database is away.
    pub async fn accept_transaction(
        self: &Arc<Self>,
        txn_id: &str,
        events: &[Ev],
    ) -> Result<(), MatrixError> {
        let rows: Vec<InboxEvent> = events
            .iter()
            .filter_map(|ev| {
                // A restream key is sealed before the event is stored.
                let sealed = is_command(ev).then(|| self.seal_command_key(ev)).flatten();
                let ev = sealed.as_ref().unwrap_or(ev);
                Some(InboxEvent {
                    event_id: ev.event_id.clone()?,
                    room_id: ev.room_id.clone()?,
                    json: serde_json::to_string(ev).ok()?,
                    chat: is_chat(ev),
                })
            })
            .collect();
        let accepted = self.store.accept_transaction(txn_id, &rows).await?;
        if accepted.replayed && accepted.queued == 0 {
            info!(txn = %txn_id, "matrix: transaction replayed; already applied");
        } else if accepted.replayed {
            info!(
                txn = %txn_id,
                "matrix: transaction id seen before but with new events (the homeserver \
                 numbers its transactions anew after a restart); applying the new ones"
            );
        }
        for room in &accepted.full {
            if let Some(suppressed) = self.txns.full_warned.allow() {
                warn!(room = %room, suppressed, "matrix: a room's inbox is full; its new events are dropped (logged once a minute)");
            }
        }
        for room in accepted.rooms {
            self.start_worker(room);
        }
        debug!(txn = %txn_id, events = events.len(), queued = accepted.queued, "matrix: transaction accepted");
        Ok(())
    }

    /// Starts the workers of rooms whose events a crash or a stop left in
    /// the inbox.
    pub(super) async fn resume_inbox(self: &Arc<Self>) {
        let mut delay = FIRST_RETRY;
        let rooms = loop {
            match self.store.inbox_rooms().await {
                Ok(r) => break r,
                Err(e) => {
                    warn!("matrix: reading the inbox failed: {e}");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(MAX_RETRY);
                }
            }
        };
        if !rooms.is_empty() {
            info!(
                rooms = rooms.len(),
                "matrix: processing events received before the last stop"
            );
        }
        for room in rooms {
            self.start_worker(room);
        }
    }

    pub(super) fn start_worker(self: &Arc<Self>, room: String) {
        if self.txns.wake(&room) {
            let me = self.clone();
            tokio::spawn(async move { me.room_worker(room).await });
        }
    }

    /// Processes a room's inbox in order until it is empty. With other
    /// processes on the database (claims.rs) it first takes the room's
    /// lease, checks it before each event, and gives it back when done; a
    /// room another node holds is left to that node.
    async fn room_worker(self: Arc<Self>, room: String) {
        let mut delay = FIRST_RETRY;
        let mut held = false;
        loop {
            let seen = self.txns.wakes(&room);
            if !held {
                match self.claim_room(&room).await {
                    Ok(true) => {
                        held = true;
                        if let Err(e) = self.reload_room(&room).await {
                            warn!(room = %room, "matrix: reading the room failed: {e}");
                        }
                    }
                    // Another node processes the room: it looks at the
                    // inbox again after giving the room back, so what was
                    // queued here is not left behind.
                    Ok(false) => {
                        if self.txns.idle(&room, seen) {
                            return;
                        }
                        continue;
                    }
                    Err(e) => {
                        warn!(room = %room, "matrix: claiming the room failed: {e}");
                        tokio::time::sleep(delay).await;
                        delay = (delay * 2).min(MAX_RETRY);
                        continue;
                    }
                }
            }
            let batch = match self.store.inbox_batch(&room, BATCH).await {
                Ok(b) => b,
                Err(e) => {
                    warn!(room = %room, "matrix: reading the inbox failed: {e}");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(MAX_RETRY);
                    continue;
                }
            };
            delay = FIRST_RETRY;
            if batch.is_empty() {
                self.release_room(&room).await;
                held = false;
                if self.txns.idle(&room, seen) {
                    // Another node may have queued events for the room while
                    // this one held it, and left them to this one.
                    if self.room_has_events(&room).await && self.txns.wake(&room) {
                        continue;
                    }
                    return;
                }
                continue;
            }
            for (seq, json) in batch {
                // The lease may have lapsed (the database was away longer
                // than its expiry) and another node taken the room over.
                if self.txns_lost_room(&room).await {
                    held = false;
                    break;
                }
                let ev = serde_json::from_str::<Ev>(&json);
                let id = ev
                    .as_ref()
                    .ok()
                    .and_then(|e| e.event_id.clone())
                    .unwrap_or_default();
                match ev {
                    Ok(ev) => self.process(&room, &ev).await,
                    // Written by us from an Ev: cannot happen short of a hand edit.
                    Err(e) => {
                        warn!(room = %room, seq, "matrix: unreadable inbox event skipped: {e}")
                    }
                }
                self.mark_processed(seq, &id).await;
            }
        }
    }

    /// Whether this node no longer holds `room` (renewing it on the way).
    /// A database error counts as still held: processing waits on the
    /// database anyway, and the heartbeat says whether the lease lapsed.
    async fn txns_lost_room(&self, room: &str) -> bool {
        matches!(self.claim_room(room).await, Ok(false))
    }

    /// Applies one event, retrying transient failures: the database's until
    /// it is back, the homeserver's for `GIVE_UP_AFTER` (then a command is
    /// answered "try again").
    async fn process(self: &Arc<Self>, room: &str, ev: &Ev) {
        if let Some((stalled, pause)) = &self.txns.stall
            && stalled == room
        {
            tokio::time::sleep(*pause).await;
        }
        let first = Instant::now();
        let mut delay = FIRST_RETRY;
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            let result = {
                let _permit = self.txns.permits.acquire().await;
                self.handle_event(ev).await
            };
            let e = match result {
                Ok(()) => return,
                Err(e) => e,
            };
            let store_down = matches!(e, MatrixError::Store(_));
            if !store_down && (!e.is_transient() || first.elapsed() >= GIVE_UP_AFTER) {
                warn!(room = %room, event = ev.event_id.as_deref().unwrap_or(""), attempt, "matrix: event given up: {e}");
                if is_command(ev) {
                    self.reply(room, TRY_AGAIN).await;
                }
                return;
            }
            warn!(
                room = %room,
                event = ev.event_id.as_deref().unwrap_or(""),
                attempt,
                retry_in_ms = delay.as_millis() as u64,
                "matrix: event not applied yet, retrying: {e}"
            );
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(MAX_RETRY);
        }
    }

    /// Removes a processed event from the inbox (retried while the database is away).
    async fn mark_processed(&self, seq: i64, event_id: &str) {
        let mut delay = FIRST_RETRY;
        loop {
            match self.store.inbox_done(seq, event_id).await {
                Ok(()) => return,
                Err(e) => {
                    let e: StoreError = e;
                    warn!(seq, "matrix: inbox bookkeeping failed, retrying: {e}");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(MAX_RETRY);
                }
            }
        }
    }

    // --- command steps: idempotency by event id ----------------------------------------

    /// What a step of the command carried by `event` recorded (None: not done).
    pub(super) async fn step_done(
        &self,
        event: Option<&str>,
        step: &str,
    ) -> Result<Option<String>, MatrixError> {
        match event {
            Some(id) => Ok(self.store.command_step(id, step).await?),
            None => Ok(None),
        }
    }

    pub(super) async fn record_step(
        &self,
        event: Option<&str>,
        step: &str,
        value: &str,
    ) -> Result<(), MatrixError> {
        if let Some(id) = event {
            self.store.set_command_step(id, step, value).await?;
        }
        if self.txns.crash_after.as_deref() == Some(step) {
            tracing::error!(
                step,
                "matrix: test hook RCTEST_MATRIX_CRASH_AFTER: aborting"
            );
            std::process::abort();
        }
        Ok(())
    }
}

/// A message, sticker or reaction that is not a `!live` command: what a
/// full inbox drops first.
fn is_chat(ev: &Ev) -> bool {
    ev.state_key.is_none()
        && matches!(
            ev.kind.as_str(),
            "m.room.message" | "m.sticker" | "m.reaction"
        )
        && !is_command(ev)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn worker_ends_only_when_not_woken_meanwhile() {
        let t = Transactions::default();
        assert!(t.wake("!a"), "the first wake starts a worker");
        assert!(!t.wake("!a"), "a running worker is not started twice");
        let seen = t.wakes("!a");
        assert!(!t.wake("!a"));
        assert!(!t.idle("!a", seen), "woken after it looked: it reads again");
        let seen = t.wakes("!a");
        assert!(t.idle("!a", seen));
        assert!(t.wake("!a"), "after it ended, a wake starts a new one");
    }

    #[test]
    fn commands_are_recognised() {
        let ev = |kind: &str, body: &str| Ev {
            event_id: Some("$e".into()),
            room_id: Some("!r".into()),
            sender: "@u:x".into(),
            kind: kind.into(),
            state_key: None,
            content: serde_json::json!({"msgtype": "m.text", "body": body}),
            origin_server_ts: 0,
            redacts: None,
        };
        assert!(is_command(&ev("m.room.message", " !live new x")));
        assert!(!is_command(&ev("m.room.message", "hello")));
        assert!(!is_command(&ev("m.room.name", "!live")));
        assert!(is_chat(&ev("m.room.message", "hello")));
        assert!(is_chat(&ev("m.reaction", "")));
        assert!(
            !is_chat(&ev("m.room.message", "!live key")),
            "a command is kept"
        );
        let mut rename = ev("m.room.name", "");
        rename.state_key = Some(String::new());
        assert!(!is_chat(&rename), "state is kept");
    }
}
