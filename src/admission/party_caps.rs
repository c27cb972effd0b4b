//! Whether one more screen share fits this server (issue 16 item 4): the
//! party alone against `[limits]` (the `plan --mode call` check), and what the share adds to what this server (and the cluster)
//! carries now. A forecast, so that a member hears "no" before the grid
//! overloads the server; each viewer joining still passes the per-viewer caps
//! of `reserve`/`check_cluster_caps`.

use super::Admission;
use crate::config::LimitsConfig;
use crate::party::estimate::ShareEstimate;
use crate::plan::Limit;

/// What this node and the cluster carry now, as the caps count it.
#[derive(Debug, Clone, Copy, Default)]
pub struct InUse {
    pub egress_mbps: f64,
    pub viewers: u64,
    /// Cluster mode: `(max_viewers_per_stream, max_viewers, viewers now)`.
    pub cluster: Option<(usize, usize, u64)>,
}

impl Admission {
    /// Adds to `e.over` the server's and the cluster's caps the share would
    /// pass (the party's own cap is the party's: estimate.rs).
    pub fn check_party_share(&self, e: &mut ShareEstimate) {
        let used = InUse {
            egress_mbps: (self.egress_mbps)(),
            viewers: self.engine.viewer_counts("").0 as u64,
            cluster: self.cluster_caps.get().map(|c| {
                let now = (c.total)().max(0) as u64;
                (c.max_viewers_per_stream, c.max_viewers, now)
            }),
        };
        let over = caps_passed(e, &self.limits, &used);
        e.over.extend(over);
    }
}

/// The caps one more share passes: the party alone against `limits` (as
/// `plan` checks them); for a cap the party alone fits, what the share adds
/// to what is `used` now; and the cluster's. Every participant reads these
/// (in a standalone party, anyone with its key): they name the cap and the
/// party's own figures, never what the server or the cluster carries now.
pub fn caps_passed(e: &ShareEstimate, limits: &LimitsConfig, used: &InUse) -> Vec<String> {
    let mut over = Vec::new();
    let input = e.plan_input();
    let alone = crate::plan::caps_over(&input, &crate::plan::plan(&input), limits);
    let flagged = |limit: Limit| alone.iter().any(|o| o.limit == limit);
    let (sessions, mbps) = e.added();
    let cap = limits.max_egress_mbps;
    let now = used.egress_mbps;
    if cap > 0.0 && !flagged(Limit::MaxEgressMbps) && now + mbps > cap {
        over.push(format!(
            "this share adds {mbps:.1} Mbit/s out, more than this server has left under limits.max_egress_mbps = {cap}"
        ));
    }
    let total = used.viewers;
    if limits.max_viewers > 0
        && !flagged(Limit::MaxViewers)
        && total + sessions > limits.max_viewers as u64
    {
        over.push(format!(
            "this share adds {sessions} viewer sessions, more than this server has left under limits.max_viewers = {}",
            limits.max_viewers
        ));
    }
    over.extend(alone.into_iter().map(|o| o.text));
    if let Some((per_stream, max_viewers, now)) = used.cluster {
        let others = u64::from(e.sharers) - 1;
        if per_stream > 0 && others > per_stream as u64 {
            over.push(format!(
                "{others} members would watch this share: over cluster.max_viewers_per_stream = {per_stream}"
            ));
        }
        if max_viewers > 0 && now + sessions > max_viewers as u64 {
            over.push(format!(
                "this share adds {sessions} viewer sessions, more than the cluster has left under cluster.max_viewers = {max_viewers}"
            ));
        }
    }
    over
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::party::estimate::estimate;

    #[test]
    fn no_caps_no_refusal() {
        let e = estimate(7, 2500);
        assert!(caps_passed(&e, &LimitsConfig::default(), &InUse::default()).is_empty());
    }

    #[test]
    fn the_party_alone_is_said_once_and_load_now_counts() {
        // Three sharers of 1500 + 64: 9 × 1.564 = 14.08 Mbit/s out.
        let e = estimate(2, 1500);
        let limits = LimitsConfig {
            max_egress_mbps: 10.0,
            ..LimitsConfig::default()
        };
        let over = caps_passed(&e, &limits, &InUse::default());
        assert_eq!(
            over,
            vec!["14.08 Mbit/s out is over limits.max_egress_mbps = 10".to_string()]
        );
        // The party alone fits 20 Mbit/s; what other streams use does not.
        let limits = LimitsConfig {
            max_egress_mbps: 20.0,
            max_viewers: 30,
            ..LimitsConfig::default()
        };
        assert!(caps_passed(&e, &limits, &InUse::default()).is_empty());
        let busy = InUse {
            egress_mbps: 15.0,
            viewers: 27,
            cluster: None,
        };
        let over = caps_passed(&e, &limits, &busy);
        // The third share adds 5 sessions (9 − 4): 7.8 Mbit/s. What the
        // server carries now (15.0, 27) is nobody's business in the party.
        assert_eq!(
            over,
            vec![
                "this share adds 7.8 Mbit/s out, more than this server has left under limits.max_egress_mbps = 20".to_string(),
                "this share adds 5 viewer sessions, more than this server has left under limits.max_viewers = 30".to_string(),
            ]
        );
    }

    #[test]
    fn a_cap_the_party_alone_passes_is_not_said_twice() {
        // Three sharers: 9 sessions, over 5 viewers alone; the per-stream cap
        // (3 viewers of one stream) is another cap and does not hide it.
        let e = estimate(2, 1500);
        let limits = LimitsConfig {
            max_viewers: 5,
            max_viewers_per_stream: 2,
            ..LimitsConfig::default()
        };
        let busy = InUse {
            viewers: 4,
            ..InUse::default()
        };
        let over = caps_passed(&e, &limits, &busy);
        assert_eq!(
            over,
            vec![
                "9 viewer sessions are over limits.max_viewers = 5".to_string(),
                "3 viewers of one stream are over limits.max_viewers_per_stream = 2".to_string()
            ]
        );
    }

    #[test]
    fn cluster_caps() {
        let e = estimate(4, 1000);
        let used = InUse {
            cluster: Some((3, 100, 95)),
            ..InUse::default()
        };
        let over = caps_passed(&e, &LimitsConfig::default(), &used);
        assert_eq!(over.len(), 2, "{over:?}");
        assert!(
            over[0].contains("4 members would watch this share"),
            "{over:?}"
        );
        assert_eq!(
            over[1],
            "this share adds 9 viewer sessions, more than the cluster has left under cluster.max_viewers = 100"
        );
        assert!(!over.concat().contains("95"), "{over:?}");
    }
}
