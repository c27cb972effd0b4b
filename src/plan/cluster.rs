//! The cluster answer of `roomcast plan`: how many nodes of a given NIC and
//! core count carry a planned use, from the bitrate and the fan-out CPU
//! measured in README "Measurements".
//!
//! A node carries viewer sessions up to the first of three bounds: its NIC
//! ([`NIC_SHARE`] of it), its cores ([`CPU_SHARE`] of them at
//! [`CORES_PER_MBPS`]) and the configured `[limits]` (per node). Every node
//! past the first pulls each stream once from the stream's origin (the
//! cluster's WHEP edge relay), which costs the origin one session per edge
//! and stream: with `n` nodes of `cap` sessions each, `n * cap` must cover
//! the viewers plus `(n - 1) * streams_in` relay sessions.

use std::fmt::Write;

use super::{Plan, PlanInput};
use crate::config::LimitsConfig;

/// Share of a node's NIC planned for viewers; the rest absorbs ingest,
/// retransmissions and the keyframe bursts of joins.
pub const NIC_SHARE: f64 = 0.8;
/// Share of a node's cores planned for fan-out; the rest is for ingest, the
/// AAC→Opus transcode, HTTP and the OS.
pub const CPU_SHARE: f64 = 0.75;
/// WebRTC fan-out CPU per Mbit/s sent to viewers: README "Measurements",
/// `bench/fanout.sh`, 500 viewers of a 2.5 + 0.096 Mbit/s stream on one
/// worker took 0.85 cores (4.8 µs per packet). Workers scale with cores
/// (`webrtc.workers = 0`: one per core).
pub const CORES_PER_MBPS: f64 = 0.85 / (500.0 * 2.596);

/// A node's size.
#[derive(Debug, Clone, Copy)]
pub struct NodeSize {
    pub nic_mbps: f64,
    pub cores: f64,
}

/// What binds a node first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bound {
    Nic,
    Cpu,
    Limits,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ClusterPlan {
    /// Viewer sessions one node carries, and by each bound.
    pub per_node: u64,
    pub by_nic: u64,
    pub by_cpu: u64,
    /// `[limits]` (max_viewers, max_egress_mbps) per node, if set.
    pub by_limits: Option<u64>,
    pub bound: Bound,
    /// Nodes needed; `None` when a node cannot even carry the relays.
    pub nodes: Option<u64>,
    /// Relay sessions the origins serve to the other nodes.
    pub relay_sessions: u64,
}

/// Sessions that fit in `budget` at `cost` each (all of them when free).
fn fit(budget: f64, cost: f64) -> u64 {
    if cost <= 0.0 {
        return u64::MAX;
    }
    let n = (budget / cost).floor();
    if n >= u64::MAX as f64 {
        u64::MAX
    } else {
        n.max(0.0) as u64
    }
}

pub fn cluster(i: &PlanInput, p: &Plan, node: NodeSize, limits: &LimitsConfig) -> ClusterPlan {
    let per_session_mbps = (i.video_kbps + i.audio_kbps) / 1000.0;
    let by_nic = fit(node.nic_mbps * NIC_SHARE, per_session_mbps);
    let by_cpu = fit(node.cores * CPU_SHARE, per_session_mbps * CORES_PER_MBPS);
    let mut by_limits: Option<u64> = None;
    if limits.max_viewers > 0 {
        by_limits = Some(limits.max_viewers as u64);
    }
    if limits.max_egress_mbps > 0.0 {
        let n = fit(limits.max_egress_mbps, per_session_mbps);
        by_limits = Some(by_limits.map_or(n, |m| m.min(n)));
    }
    let (mut per_node, mut bound) = (by_nic, Bound::Nic);
    if by_cpu < per_node {
        (per_node, bound) = (by_cpu, Bound::Cpu);
    }
    if let Some(l) = by_limits.filter(|&l| l < per_node) {
        (per_node, bound) = (l, Bound::Limits);
    }
    let (out, inn) = (p.streams_out, p.streams_in);
    // Smallest n with n * per_node >= out + (n - 1) * inn.
    let nodes = if out <= per_node {
        Some(1)
    } else if per_node <= inn {
        None
    } else {
        Some((out - inn).div_ceil(per_node - inn))
    };
    ClusterPlan {
        per_node,
        by_nic,
        by_cpu,
        by_limits,
        bound,
        nodes,
        relay_sessions: nodes.map_or(0, |n| (n - 1) * inn),
    }
}

fn count(n: u64) -> String {
    if n == u64::MAX {
        "any number of".to_string()
    } else {
        n.to_string()
    }
}

pub fn render(node: NodeSize, c: &ClusterPlan) -> String {
    let mut s = String::new();
    let size = format!("{} Mbit/s, {} core(s)", node.nic_mbps, node.cores);
    match c.nodes {
        Some(n) => {
            let _ = writeln!(s, "cluster of nodes with {size}: {n} node(s)");
        }
        None => {
            let _ = writeln!(
                s,
                "cluster: does not fit: a node with {size} carries {} session(s), not even one relay per stream",
                c.per_node
            );
        }
    }
    let bound = match c.bound {
        Bound::Nic => "the NIC",
        Bound::Cpu => "the CPU",
        Bound::Limits => "[limits]",
    };
    let _ = writeln!(
        s,
        "  one node carries {} viewer session(s), bound by {bound} (NIC: {} at {:.0} % of it; CPU: {} at {:.0} % of the cores, {:.2} ms CPU per Mbit/s sent{})",
        count(c.per_node),
        count(c.by_nic),
        NIC_SHARE * 100.0,
        count(c.by_cpu),
        CPU_SHARE * 100.0,
        CORES_PER_MBPS * 1000.0,
        c.by_limits
            .map(|l| format!("; [limits]: {}", count(l)))
            .unwrap_or_default()
    );
    if c.relay_sessions > 0 {
        let _ = writeln!(
            s,
            "  relays: each node past the first pulls each stream once from its origin ({} session(s) in all)",
            c.relay_sessions
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::super::{Mode, plan};
    use super::*;

    fn solo(viewers: u32) -> PlanInput {
        PlanInput {
            video_kbps: 2000.0,
            audio_kbps: 256.0,
            mode: Mode::Solo,
            people: viewers,
            hours_per_day: 4.0,
            days_per_month: 20.0,
        }
    }

    const VPS: NodeSize = NodeSize {
        nic_mbps: 1000.0,
        cores: 2.0,
    };

    #[test]
    fn a_1_gbit_node_is_nic_bound_and_1000_viewers_need_three() {
        let i = solo(1000);
        let c = cluster(&i, &plan(&i), VPS, &LimitsConfig::default());
        // 800 Mbit/s / 2.256 Mbit/s; 1.5 cores / (2.256 × 0.000655).
        assert_eq!((c.by_nic, c.by_cpu), (354, 1015), "{c:?}");
        assert_eq!((c.per_node, c.bound), (354, Bound::Nic));
        // Two nodes carry 708 - 1 relay; three carry 1062 - 2.
        assert_eq!(c.nodes, Some(3));
        assert_eq!(c.relay_sessions, 2);
        let text = render(VPS, &c);
        assert!(text.contains("3 node(s)"), "{text}");
        assert!(text.contains("bound by the NIC"), "{text}");
    }

    #[test]
    fn a_10_gbit_node_is_cpu_bound() {
        let big = NodeSize {
            nic_mbps: 10_000.0,
            cores: 2.0,
        };
        let i = solo(5000);
        let c = cluster(&i, &plan(&i), big, &LimitsConfig::default());
        assert_eq!((c.per_node, c.bound), (1015, Bound::Cpu), "{c:?}");
        assert_eq!(c.nodes, Some(5));
        // Small events fit one node, with no relay.
        let i = solo(300);
        let c = cluster(&i, &plan(&i), big, &LimitsConfig::default());
        assert_eq!((c.nodes, c.relay_sessions), (Some(1), 0));
        assert!(!render(big, &c).contains("relays"));
    }

    #[test]
    fn per_node_limits_bind_and_relays_of_many_streams_may_not_fit() {
        let limits = LimitsConfig {
            max_viewers: 200,
            max_egress_mbps: 900.0,
            ..LimitsConfig::default()
        };
        let i = solo(1000);
        let c = cluster(&i, &plan(&i), VPS, &limits);
        assert_eq!(
            (c.per_node, c.bound, c.by_limits),
            (200, Bound::Limits, Some(200))
        );
        // n * 200 >= 1000 + (n - 1): n = 6.
        assert_eq!(c.nodes, Some(6));
        assert!(render(VPS, &c).contains("[limits]: 200"));

        // An event of 400 streamers: a node of 354 sessions cannot carry a
        // relay of each stream.
        let i = PlanInput {
            mode: Mode::Event,
            ..solo(400)
        };
        let c = cluster(&i, &plan(&i), VPS, &LimitsConfig::default());
        assert_eq!(c.nodes, None);
        assert!(render(VPS, &c).contains("does not fit"));
    }

    #[test]
    fn audio_only_or_free_streams_do_not_divide_by_zero() {
        let i = PlanInput {
            video_kbps: 0.0,
            audio_kbps: 0.0,
            ..solo(10)
        };
        let c = cluster(&i, &plan(&i), VPS, &LimitsConfig::default());
        assert_eq!(c.nodes, Some(1));
        assert!(render(VPS, &c).contains("any number of"));
    }
}
