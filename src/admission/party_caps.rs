//! Whether one more screen share fits this server (issue 16 item 4): the
//! party alone against `[limits]` (the `plan --mode call` check), and what the share adds to what this server (and the cluster)
//! carries now. A forecast, so that a member hears "no" before the grid
//! overloads the server; each viewer joining still passes the per-viewer caps
//! of `reserve`/`check_cluster_caps`.

use super::Admission;
use crate::party::estimate::ShareEstimate;

impl Admission {
    /// Adds to `e.over` the server's and the cluster's caps the share would
    /// pass (the party's own cap is the party's: estimate.rs).
    pub fn check_party_share(&self, e: &mut ShareEstimate) {
        let mut over = Vec::new();
        let limits = &self.limits;
        let input = e.plan_input();
        // The party alone against this node's caps; then, for a cap the
        // party alone fits, what the share adds to what is in use now.
        let alone = crate::plan::check_caps(&input, &crate::plan::plan(&input), limits);
        let flagged = |key: &str| alone.iter().any(|s| s.contains(&format!("limits.{key} =")));
        let (sessions, mbps) = e.added();
        let cap = limits.max_egress_mbps;
        if cap > 0.0 && !flagged("max_egress_mbps") {
            let now = (self.egress_mbps)();
            if now + mbps > cap {
                over.push(format!(
                    "{now:.1} Mbit/s are in use and this share adds {mbps:.1}: over limits.max_egress_mbps = {cap}"
                ));
            }
        }
        if limits.max_viewers > 0 && !flagged("max_viewers") {
            let (total, _) = self.engine.viewer_counts("");
            if total as u64 + sessions > limits.max_viewers as u64 {
                over.push(format!(
                    "{total} viewers are watching and this share adds {sessions}: over limits.max_viewers = {}",
                    limits.max_viewers
                ));
            }
        }
        over.extend(alone);
        if let Some(caps) = self.cluster_caps.get() {
            let others = u64::from(e.sharers) - 1;
            if caps.max_viewers_per_stream > 0 && others > caps.max_viewers_per_stream as u64 {
                over.push(format!(
                    "{others} members would watch this share: over cluster.max_viewers_per_stream = {}",
                    caps.max_viewers_per_stream
                ));
            }
            let now = (caps.total)().max(0) as u64;
            if caps.max_viewers > 0 && now + sessions > caps.max_viewers as u64 {
                over.push(format!(
                    "{now} viewers are watching in the cluster and this share adds {sessions}: over cluster.max_viewers = {}",
                    caps.max_viewers
                ));
            }
        }
        e.over.extend(over);
    }
}
