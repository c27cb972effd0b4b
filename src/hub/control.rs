//! The lossless control path: live, offline, title, description, access and
//! room changes are state, not messages.
//!
//! Chat and viewer counts go through the hub's bounded broadcast channel,
//! where a slow listener may miss some (and resyncs). Control changes must
//! never be missed, yet a queue of them per listener would grow without bound
//! under a flapping publisher. So a change bumps one global generation
//! counter and stamps the stream with it; a listener keeps only the last
//! generation it has read, and on a change reads the *current* state of
//! every stream stamped after it. Nothing can be dropped, because nothing is
//! queued: a listener that was slow sees the latest state of each changed
//! stream (intermediate states coalesce, which is what a page must show
//! anyway). The memory is one counter per listener, plus what a listener
//! keeps to diff (at most one entry per stream it watches).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;
use serde::Serialize;
use tokio::sync::watch;

use super::{Access, Hub, Stream};

/// The global generation counter of control changes.
pub(super) struct ControlClock {
    /// Held while a generation is taken, stamped and published, so
    /// generations are published in order and a stream's stamp is visible
    /// before the generation that names it.
    stamping: Mutex<u64>,
    tx: watch::Sender<u64>,
}

impl ControlClock {
    pub(super) fn new() -> Arc<ControlClock> {
        let (tx, _) = watch::channel(0);
        Arc::new(ControlClock {
            stamping: Mutex::new(0),
            tx,
        })
    }

    /// Stamps `stamp` with a new generation and wakes every listener. Call
    /// after the change is in the stream's state.
    pub(super) fn bump(&self, stamp: &AtomicU64) {
        let mut generation = self.stamping.lock();
        *generation += 1;
        stamp.store(*generation, Ordering::Release);
        self.tx.send_replace(*generation);
    }

    /// Wakes every listener without a stream changed (streams left the
    /// registry: `hub/tenure.rs`).
    pub(super) fn wake(&self) {
        let mut generation = self.stamping.lock();
        *generation += 1;
        self.tx.send_replace(*generation);
    }

    fn now(&self) -> u64 {
        *self.stamping.lock()
    }
}

/// Why a stream's Matrix room is no longer the bot's.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RoomLost {
    /// "kicked", "banned" or "gone" (the bot left, e.g. the room was deleted).
    pub reason: String,
    /// Who removed the bot, when someone did.
    pub by: Option<String>,
    /// Seconds since the Unix epoch.
    pub at: u64,
}

/// What the control path carries about one stream, read from its state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ControlState {
    pub live: bool,
    /// How many times the stream went live: a different count with `live`
    /// unchanged means it went offline and live again in between.
    pub live_sessions: u64,
    pub title: String,
    pub description: Option<String>,
    pub access: Access,
    pub room_lost: Option<RoomLost>,
    /// Cluster mode: live on another node (its origin's publish session).
    /// `live` stays this node's own publisher or relay pull.
    pub elsewhere: Option<String>,
}

impl ControlState {
    /// What pages show: live here or on another node of the cluster.
    pub fn shown_live(&self) -> bool {
        self.live || self.elsewhere.is_some()
    }

    /// Whether the stream went offline and live again between `self` and
    /// `now` although both show it live. In a cluster the origin's session
    /// tells (an edge's relay pull starting or ending is not a new
    /// broadcast); on one node the count of times it went live.
    pub fn restarted(&self, now: &ControlState) -> bool {
        if !(self.shown_live() && now.shown_live()) {
            return false;
        }
        match (&self.elsewhere, &now.elsewhere) {
            (Some(a), Some(b)) => a != b,
            (None, None) => self.live_sessions != now.live_sessions,
            // Moved between this node and another: a new session.
            _ => true,
        }
    }
}

/// One listener's position on the control path.
pub struct ControlFeed {
    rx: watch::Receiver<u64>,
    seen: u64,
    /// The hub's count of removed streams when last looked at.
    removals: u64,
    /// Streams were removed since [`ControlFeed::take_removed`].
    removed: bool,
}

impl Hub {
    /// A listener of control changes from now on (read the current state
    /// first, then wait on [`ControlFeed::changed`]).
    pub fn control_feed(&self) -> ControlFeed {
        let mut rx = self.control.tx.subscribe();
        rx.borrow_and_update();
        ControlFeed {
            rx,
            seen: self.control.now(),
            removals: self.removed_streams(),
            removed: false,
        }
    }
}

impl ControlFeed {
    /// Waits for control changes and returns the streams changed since the
    /// last call (read their current state). `None` once the hub is gone.
    /// Also returns (maybe with no stream) when streams left the registry:
    /// see [`ControlFeed::take_removed`].
    pub async fn changed(&mut self, hub: &Hub) -> Option<Vec<Arc<Stream>>> {
        loop {
            self.rx.changed().await.ok()?;
            let now = *self.rx.borrow_and_update();
            let seen = std::mem::replace(&mut self.seen, now);
            let changed: Vec<_> = hub
                .streams()
                .into_iter()
                .filter(|s| s.control_stamp.load(Ordering::Acquire) > seen)
                .collect();
            let removals = hub.removed_streams();
            let removed = std::mem::replace(&mut self.removals, removals) != removals;
            self.removed |= removed;
            if !changed.is_empty() || removed {
                return Some(changed);
            }
        }
    }

    /// Whether streams left the registry (`hub/tenure.rs`) since the last
    /// call: a listener that keeps something per stream name then drops
    /// what it keeps of names the hub no longer has, so that it stays
    /// bounded by the registry.
    pub fn take_removed(&mut self) -> bool {
        std::mem::take(&mut self.removed)
    }

    /// Waits until `stream`'s control state changes. `false` once the hub is gone.
    pub async fn stream_changed(&mut self, stream: &Stream) -> bool {
        loop {
            if self.rx.changed().await.is_err() {
                return false;
            }
            let now = *self.rx.borrow_and_update();
            let seen = std::mem::replace(&mut self.seen, now);
            if stream.control_stamp.load(Ordering::Acquire) > seen {
                return true;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hub::IngestProtocol;

    #[tokio::test]
    async fn a_change_among_a_flood_is_never_missed() {
        let hub = Hub::new();
        let a = hub.ensure_stream("a", None);
        let b = hub.ensure_stream("b", None);
        let mut feed = hub.control_feed();
        // Many changes while the listener does not read: it gets the last state.
        for i in 0..10_000 {
            a.set_title(&format!("t{i}"));
        }
        let publisher = hub.publish(&b, IngestProtocol::Whip);
        let changed = feed.changed(&hub).await.expect("hub");
        let names: Vec<_> = changed.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["a", "b"]);
        assert_eq!(a.control_state().title, "t9999");
        assert!(b.control_state().live);
        // Offline and live again while not read: the count tells.
        let before = b.control_state().live_sessions;
        drop(publisher);
        let _p = hub.publish(&b, IngestProtocol::Whip);
        let changed = feed.changed(&hub).await.expect("hub");
        assert_eq!(changed.len(), 1);
        assert_eq!(b.control_state().live_sessions, before + 1);
    }

    #[test]
    fn an_edge_pull_starting_is_not_a_new_broadcast_a_new_origin_session_is() {
        let hub = Hub::new();
        let s = hub.ensure_stream("s", None);
        let offline = s.control_state();
        s.set_live_elsewhere(Some("a:1"));
        let elsewhere = s.control_state();
        assert!(!offline.shown_live() && elsewhere.shown_live());
        assert!(!offline.restarted(&elsewhere));
        // This node starts pulling: the same broadcast.
        let pull = hub.publish(&s, IngestProtocol::Relay);
        let pulled = s.control_state();
        assert!(!elsewhere.restarted(&pulled));
        // The publisher reconnected on another node: a new session.
        s.set_live_elsewhere(Some("b:2"));
        assert!(pulled.restarted(&s.control_state()));
        drop(pull);
        // On one node, offline and live again in between.
        let one = hub.ensure_stream("one", None);
        let p = hub.publish(&one, IngestProtocol::Whip);
        let before = one.control_state();
        drop(p);
        let _p = hub.publish(&one, IngestProtocol::Whip);
        assert!(before.restarted(&one.control_state()));
    }

    #[tokio::test]
    async fn a_removal_wakes_the_feed_and_is_told_once() {
        let hub = Hub::new();
        let a = hub.ensure_stream("a", None);
        hub.ensure_ephemeral("share", None, std::time::Duration::ZERO);
        let mut feed = hub.control_feed();
        assert_eq!(hub.sweep(std::time::Instant::now()), 1);
        let changed = feed.changed(&hub).await.expect("hub");
        assert!(changed.is_empty(), "no stream changed, one left");
        assert!(feed.take_removed());
        assert!(!feed.take_removed(), "told once");
        // Later changes come as before, without a removal.
        a.set_title("t");
        let changed = feed.changed(&hub).await.expect("hub");
        assert_eq!(changed.len(), 1);
        assert!(!feed.take_removed());
    }

    #[tokio::test]
    async fn a_stream_feed_wakes_only_for_its_stream() {
        let hub = Hub::new();
        let a = hub.ensure_stream("a", None);
        let b = hub.ensure_stream("b", None);
        let mut feed = hub.control_feed();
        b.set_title("other");
        a.set_room_lost(Some(RoomLost {
            reason: "kicked".into(),
            by: Some("@mod:hs".into()),
            at: 1,
        }));
        assert!(feed.stream_changed(&a).await);
        assert_eq!(
            a.control_state().room_lost.map(|l| l.reason),
            Some("kicked".into())
        );
    }
}
