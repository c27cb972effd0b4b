//! Caps over the whole cluster (`[cluster] max_viewers`,
//! `max_viewers_per_stream`), beside each node's own `[limits]`. The figures
//! are the cluster bus's sums (src/cluster/bus.rs): each node's count is as
//! fresh as its last message (a fraction of a second), so a burst of joins
//! on several nodes at once may pass a cap by a few viewers; a node's own
//! `[limits]` stay exact.

use std::sync::Arc;

use super::{Admission, Refusal};
use crate::hub::Stream;

/// The cluster's caps and where to read its total.
pub struct ClusterCaps {
    pub max_viewers: usize,
    pub max_viewers_per_stream: usize,
    /// WebRTC viewers over the cluster (relay pulls not counted).
    pub total: Arc<dyn Fn() -> i64 + Send + Sync>,
}

impl Admission {
    /// Cluster mode: the cluster-wide caps (once, at start-up).
    pub fn set_cluster_caps(&self, caps: ClusterCaps) {
        let _ = self.cluster_caps.set(caps);
    }

    /// Would one more viewer of `stream` take the cluster over a cap?
    pub(super) fn check_cluster_caps(&self, stream: &Stream) -> Result<(), Refusal> {
        let Some(caps) = self.cluster_caps.get() else {
            return Ok(());
        };
        if caps.max_viewers_per_stream > 0
            && stream.cluster_viewers() >= caps.max_viewers_per_stream
        {
            return Err(Refusal::Busy(format!(
                "stream '{}' has reached the cluster's limit of {} viewers; try again later",
                stream.name, caps.max_viewers_per_stream
            )));
        }
        if caps.max_viewers > 0 && (caps.total)() >= caps.max_viewers as i64 {
            return Err(Refusal::Busy(format!(
                "the cluster has reached its limit of {} viewers; try again later",
                caps.max_viewers
            )));
        }
        Ok(())
    }
}
