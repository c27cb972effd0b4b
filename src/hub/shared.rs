//! What a stream's state holds about the other nodes of a cluster
//! (`src/cluster/bus.rs` sets it): whether the stream is live on another
//! node, and how many viewers the other nodes have. Pages, feeds and the API
//! show the cluster's figures; `/metrics`, caps per node and relay demand
//! keep using this node's own ([`Stream::viewers`]).

use std::sync::atomic::Ordering;

use super::{IngestProtocol, Stream, StreamState};

impl Stream {
    /// Cluster mode: the stream's origin is another node, in publish
    /// session `session` (None: not live elsewhere). Tells control listeners
    /// on a change.
    pub fn set_live_elsewhere(&self, session: Option<&str>) {
        {
            let mut st = self.state.lock();
            if st.elsewhere.as_deref() == session {
                return;
            }
            st.elsewhere = session.map(str::to_string);
        }
        self.control_changed();
    }

    /// Cluster mode: the other nodes' viewers of this stream, each node's
    /// relay pulls already taken off (a pull is one viewer on the origin,
    /// not a person). Tells viewer-count listeners on a change.
    pub fn set_viewers_elsewhere(&self, count: i64) {
        if self.viewers_elsewhere.swap(count, Ordering::Relaxed) != count {
            self.notify_viewers(0);
        }
    }

    /// Viewers over the whole cluster (on one node: [`Stream::viewers`]).
    pub fn cluster_viewers(&self) -> usize {
        let st = self.state.lock();
        self.cluster_viewers_locked(&st)
    }

    pub(super) fn cluster_viewers_locked(&self, st: &StreamState) -> usize {
        let own = self.viewers() as i64 - i64::from(pulls_here(st));
        (own + self.viewers_elsewhere.load(Ordering::Relaxed)).max(0) as usize
    }

    /// This node's figures for the bus: (local viewers, whether this node
    /// pulls the stream from its origin).
    pub fn local_load(&self) -> (usize, bool) {
        let st = self.state.lock();
        (self.viewers(), pulls_here(&st))
    }
}

/// Whether the stream's current publisher here is a relay pull.
fn pulls_here(st: &StreamState) -> bool {
    st.publisher
        .as_ref()
        .is_some_and(|p| p.protocol == IngestProtocol::Relay)
}

#[cfg(test)]
mod tests {
    use crate::hub::{Hub, IngestProtocol};

    #[test]
    fn cluster_viewers_count_people_not_pulls() {
        let hub = Hub::new();
        let s = hub.ensure_stream("a", None);
        let _relay = hub.publish(&s, IngestProtocol::Relay);
        for _ in 0..3 {
            s.viewer_joined();
        }
        // Three viewers here, through this node's pull; two elsewhere plus
        // the origin's count of our pull (1) minus nothing.
        s.set_viewers_elsewhere(3);
        assert_eq!(s.viewers(), 3);
        assert_eq!(s.cluster_viewers(), 3 - 1 + 3);
        assert_eq!(s.snapshot().viewers, 5);
        s.set_live_elsewhere(Some("o:1"));
        assert!(s.control_state().shown_live());
        drop(_relay);
        s.set_viewers_elsewhere(-5);
        assert_eq!(s.cluster_viewers(), 0, "never below zero");
    }
}
