//! Counters and the ingest→egress transit histogram, one set per worker so the
//! hot path only touches its own cache lines; summed when /metrics is scraped.

use std::fmt::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

/// Upper bounds of the transit histogram's buckets, in microseconds.
/// Fine around 10 ms, where a keyframe's fan-out to hundreds of viewers lands.
const BUCKETS_US: [u64; 17] = [
    50, 100, 250, 500, 1_000, 2_000, 3_000, 5_000, 7_500, 10_000, 15_000, 20_000, 25_000, 50_000,
    100_000, 250_000, 1_000_000,
];

#[derive(Default)]
pub struct ShardMetrics {
    pub rtp_packets: AtomicU64,
    pub rtp_bytes: AtomicU64,
    pub datagrams: AtomicU64,
    /// Times a viewer that could not keep up was skipped ahead to a keyframe.
    pub laggard_skips: AtomicU64,
    /// Media or network input dropped because the shard's queue was full.
    pub queue_drops: AtomicU64,
    /// Sessions ended by a panic while handling their input.
    pub session_panics: AtomicU64,
    /// Times the worker's loop panicked and was restarted.
    pub restarts: AtomicU64,
    /// Counts per bucket, then one for everything above the last bound.
    transit: [AtomicU64; BUCKETS_US.len() + 1],
    transit_sum_us: AtomicU64,
}

impl ShardMetrics {
    /// Records how long a frame took from arriving at the server to being sent
    /// to one viewer.
    pub fn observe_transit(&self, d: Duration) {
        let us = d.as_micros() as u64;
        let i = BUCKETS_US.partition_point(|&b| b < us);
        self.transit[i].fetch_add(1, Relaxed);
        self.transit_sum_us.fetch_add(us, Relaxed);
    }
}

#[derive(Default, Clone)]
pub struct EngineMetrics {
    pub shards: Vec<Arc<ShardMetrics>>,
}

impl EngineMetrics {
    fn sum(&self, f: impl Fn(&ShardMetrics) -> &AtomicU64) -> u64 {
        self.shards.iter().map(|s| f(s).load(Relaxed)).sum()
    }

    /// Appends the Prometheus text for the engine.
    pub fn render(&self, out: &mut String) {
        let counters = [
            (
                "roomcast_rtp_packets_sent_total",
                "RTP packets written to viewers.",
                self.sum(|s| &s.rtp_packets),
            ),
            (
                "roomcast_rtp_payload_bytes_sent_total",
                "RTP payload bytes written to viewers.",
                self.sum(|s| &s.rtp_bytes),
            ),
            (
                "roomcast_webrtc_datagrams_sent_total",
                "Datagrams (RTP, RTCP, STUN, DTLS) sent to peers.",
                self.sum(|s| &s.datagrams),
            ),
            (
                "roomcast_webrtc_queue_drops_total",
                "Frames or datagrams dropped because a worker's queue was full.",
                self.sum(|s| &s.queue_drops),
            ),
            (
                "roomcast_webrtc_laggard_skips_total",
                "Times a viewer that could not keep up (its ICE-TCP outbox full) was skipped ahead to the next keyframe.",
                self.sum(|s| &s.laggard_skips),
            ),
            (
                "roomcast_webrtc_session_panics_total",
                "WebRTC sessions ended by a panic while handling their input.",
                self.sum(|s| &s.session_panics),
            ),
            (
                "roomcast_webrtc_worker_restarts_total",
                "Times a WebRTC worker's loop panicked and was restarted.",
                self.sum(|s| &s.restarts),
            ),
        ];
        for (name, help, v) in counters {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}"
            );
        }
        let name = "roomcast_transit_seconds";
        let _ = writeln!(
            out,
            "# HELP {name} Time from a frame arriving at the server to its being sent to a viewer.\n# TYPE {name} histogram"
        );
        let mut cumulative = 0;
        for (i, bound) in BUCKETS_US.iter().enumerate() {
            cumulative += self.sum(|s| &s.transit[i]);
            let _ = writeln!(
                out,
                "{name}_bucket{{le=\"{}\"}} {cumulative}",
                *bound as f64 / 1e6
            );
        }
        cumulative += self.sum(|s| &s.transit[BUCKETS_US.len()]);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {cumulative}");
        let _ = writeln!(
            out,
            "{name}_sum {}",
            self.sum(|s| &s.transit_sum_us) as f64 / 1e6
        );
        let _ = writeln!(out, "{name}_count {cumulative}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_renders_cumulative_buckets() {
        let s = Arc::new(ShardMetrics::default());
        s.observe_transit(Duration::from_micros(40));
        s.observe_transit(Duration::from_micros(700));
        s.observe_transit(Duration::from_secs(2));
        let m = EngineMetrics { shards: vec![s] };
        let mut out = String::new();
        m.render(&mut out);
        assert!(
            out.contains("roomcast_transit_seconds_bucket{le=\"0.00005\"} 1"),
            "{out}"
        );
        assert!(out.contains("roomcast_transit_seconds_bucket{le=\"0.001\"} 2"));
        assert!(out.contains("roomcast_transit_seconds_bucket{le=\"+Inf\"} 3"));
        assert!(out.contains("roomcast_transit_seconds_count 3"));
    }
}
