//! Which streams leave the registry, and when.
//!
//! Most streams are *declared*: by the config file, a database row, a
//! Matrix room or a publisher's key. Their title, access and room live on
//! the [`Stream`], so the registry keeps them for good. A standalone party
//! member's share is *ephemeral*: anyone with the party key can make one
//! (`<party>-<id>`) at the join rate, so it must not outlive its use, or the
//! registry grows without bound.
//!
//! An ephemeral stream is removed by [`Hub::sweep`] once it is idle: not
//! live here or on another node, past its hold (a share's stream waits for
//! its first publisher as long as the grant lasts; going live ends the
//! hold), and not held by anyone but the registry. The last is what makes a
//! removal safe: viewers, sinks (HLS, recording, restream, transcoder),
//! egress sessions, relays, page feeds and publishers all hold an
//! `Arc<Stream>`, and a new handle can only come from the registry (under
//! its lock) or from another handle. So with the registry's write lock held
//! and a strong count of 1, nobody can hold or be taking the stream; after
//! the removal a lookup by name finds nothing (a viewer gets the usual
//! unknown-stream answer) and the next share makes a fresh stream.
//!
//! A removal wakes the control feeds ([`super::ControlFeed::take_removed`])
//! so listeners that keep something per stream name drop it too.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::{Hub, Stream};

/// How often [`Hub::spawn_sweeper`] removes idle ephemeral streams.
pub const SWEEP_INTERVAL: Duration = Duration::from_secs(5);

/// Whether the registry keeps a stream for good.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Tenure {
    Declared,
    /// Removed when idle; not before `hold_until` while it never went live.
    Ephemeral {
        hold_until: Option<Instant>,
    },
}

impl Tenure {
    /// The stream went live: an ephemeral one no longer waits for its
    /// publisher, and is removable once idle.
    pub(super) fn published(&mut self) {
        if let Tenure::Ephemeral { hold_until } = self {
            *hold_until = None;
        }
    }
}

impl Stream {
    /// Whether the registry removes this stream once it is idle.
    pub fn is_ephemeral(&self) -> bool {
        matches!(self.state.lock().tenure, Tenure::Ephemeral { .. })
    }

    /// Ephemeral, past its hold, and idle here and in the cluster. (Whether
    /// anyone holds it is the caller's part: [`Hub::sweep`].)
    fn idle_ephemeral(&self, now: Instant) -> bool {
        let st = self.state.lock();
        let past_hold = match st.tenure {
            Tenure::Declared => return false,
            Tenure::Ephemeral { hold_until } => hold_until.is_none_or(|t| t <= now),
        };
        past_hold
            && st.publisher.is_none()
            && st.elsewhere.is_none()
            && self.viewers.load(Ordering::Relaxed) == 0
            && self.viewers_elsewhere.load(Ordering::Relaxed) == 0
            && self.fanout.lock().sinks.is_empty()
    }
}

impl Hub {
    /// The stream `name`, made ephemeral if absent: removed by
    /// [`Hub::sweep`] once idle, but not within `hold` from now while it
    /// has not gone live (an existing ephemeral stream's hold is extended
    /// to that). A declared stream of that name stays declared. The title
    /// is set only when the stream is made.
    pub fn ensure_ephemeral(&self, name: &str, title: Option<&str>, hold: Duration) -> Arc<Stream> {
        let until = Instant::now() + hold;
        let fresh = Tenure::Ephemeral {
            hold_until: Some(until),
        };
        let stream = self.get_or_create(name, title, fresh);
        if let Tenure::Ephemeral { hold_until } = &mut stream.state.lock().tenure {
            *hold_until = Some(hold_until.map_or(until, |t| t.max(until)));
        }
        stream
    }

    /// Removes the ephemeral streams that are idle at `now` and held by
    /// nobody but the registry; returns how many.
    pub fn sweep(&self, now: Instant) -> usize {
        // Candidates first, without the registry's lock (a stream's own
        // locks are not taken under it while others may hold the stream).
        let candidates: Vec<String> = self
            .streams()
            .into_iter()
            .filter(|s| s.idle_ephemeral(now))
            .map(|s| s.name.clone())
            .collect();
        if candidates.is_empty() {
            return 0;
        }
        let mut removed = 0;
        {
            let mut streams = self.streams.write();
            for name in candidates {
                // Under the write lock nobody can take a new handle, and a
                // count of 1 means nobody has one (nor the stream's locks).
                let idle = streams
                    .get(&name)
                    .is_some_and(|s| Arc::strong_count(s) == 1 && s.idle_ephemeral(now));
                if idle {
                    streams.remove(&name);
                    removed += 1;
                }
            }
        }
        if removed > 0 {
            self.removed.fetch_add(removed as u64, Ordering::Relaxed);
            self.control.wake();
        }
        removed
    }

    /// Sweeps every [`SWEEP_INTERVAL`] while the hub exists.
    pub fn spawn_sweeper(self: &Arc<Self>) {
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(SWEEP_INTERVAL);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(hub) = weak.upgrade() else { return };
                let n = hub.sweep(Instant::now());
                if n > 0 {
                    tracing::debug!(removed = n, "hub: idle ephemeral streams removed");
                }
            }
        });
    }

    /// Streams in the registry: (declared, ephemeral).
    pub fn stream_counts(&self) -> (usize, usize) {
        let all = self.streams();
        let ephemeral = all.iter().filter(|s| s.is_ephemeral()).count();
        (all.len() - ephemeral, ephemeral)
    }

    /// Ephemeral streams removed from the registry so far.
    pub fn removed_streams(&self) -> u64 {
        self.removed.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hub::{Frame, FrameSink, IngestProtocol};

    struct Nobody;
    impl FrameSink for Nobody {
        fn deliver(&self, _s: &Arc<Stream>, _f: &Arc<Frame>) {}
    }

    const HOLD: Duration = Duration::from_secs(300);

    #[test]
    fn only_idle_unheld_ephemeral_streams_leave_the_registry() {
        let hub = Hub::new();
        hub.ensure_stream("declared", None);
        let held = hub.ensure_ephemeral("held", Some("Ann"), Duration::ZERO);
        let live = hub.ensure_ephemeral("live", None, Duration::ZERO);
        let publisher = hub.publish(&live, IngestProtocol::Whip);
        let sink: Arc<dyn FrameSink> = Arc::new(Nobody);
        let sunk = hub.ensure_ephemeral("sunk", None, Duration::ZERO);
        sunk.attach_sink(7, &sink);
        drop(sunk);
        hub.ensure_ephemeral("waiting", None, HOLD);
        hub.ensure_ephemeral("idle", Some("Bo"), Duration::ZERO);
        let t0 = Instant::now();
        let later = t0 + HOLD + Duration::from_secs(1);
        assert_eq!(hub.stream_counts(), (1, 5));
        assert!(held.is_ephemeral() && !hub.get("declared").unwrap().is_ephemeral());

        // Unheld, idle, never live and past its hold: removed, and only it.
        assert_eq!(hub.sweep(t0), 1);
        assert!(hub.get("idle").is_none());
        assert_eq!(hub.removed_streams(), 1);
        // Held by a handle, live, a sink attached, waiting for its first
        // publisher: all stay; a declared stream never goes, even idle.
        for name in ["declared", "held", "live", "sunk", "waiting"] {
            assert!(hub.get(name).is_some(), "{name} was removed");
        }
        // The hold ends with time, or when the stream goes live.
        assert_eq!(hub.sweep(later), 1);
        assert!(hub.get("waiting").is_none());
        let again = hub.ensure_ephemeral("waiting", None, HOLD);
        drop(hub.publish(&again, IngestProtocol::Whip));
        drop(again);
        assert_eq!(hub.sweep(t0), 1, "went live and ended: no more hold");
        // The handle, the publisher and the sink go: so do their streams.
        drop(held);
        drop(publisher);
        drop(live);
        hub.get("sunk").unwrap().detach_sink(7);
        assert_eq!(hub.sweep(later), 3);
        assert_eq!(hub.stream_counts(), (1, 0));
        assert_eq!(hub.removed_streams(), 6);
        assert_eq!(hub.sweep(later + HOLD), 0, "the declared stream stays");
    }

    #[test]
    fn a_removed_stream_comes_back_fresh_and_declaring_keeps_it() {
        let hub = Hub::new();
        let s = hub.ensure_ephemeral("p-1", Some("Ann"), Duration::ZERO);
        drop(hub.publish(&s, IngestProtocol::Whip));
        assert_eq!(s.control_state().live_sessions, 1);
        drop(s);
        assert_eq!(hub.sweep(Instant::now()), 1);
        let s = hub.ensure_ephemeral("p-1", Some("Ann again"), Duration::ZERO);
        assert_eq!(s.title(), "Ann again");
        assert_eq!(s.control_state().live_sessions, 0);
        // A declaring path (a Matrix room, a database row) takes the name
        // over: the stream stays, and an ephemeral ensure does not undo it.
        hub.ensure_stream("p-1", None);
        hub.ensure_ephemeral("p-1", None, Duration::ZERO);
        drop(s);
        assert_eq!(hub.sweep(Instant::now()), 0);
        assert!(!hub.get("p-1").unwrap().is_ephemeral());
    }
}
