//! `roomcast plan`: bandwidth and monthly transit for a planned use, the
//! arithmetic of the guide roomcast was designed from, checked against the
//! configured egress caps so a host with a transit limit is never surprised.

pub mod cluster;

use std::fmt::Write;

use crate::config::LimitsConfig;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// One streamer, many viewers: 1 stream in, one out per viewer.
    Solo,
    /// Several streamers and a producer: one in and one out per streamer.
    Event,
    /// A screen-share call: one in per user, users² out.
    Call,
}

#[derive(Debug, Clone, Copy)]
pub struct PlanInput {
    pub video_kbps: f64,
    pub audio_kbps: f64,
    pub mode: Mode,
    /// Viewers (solo) or users/streamers (event, call).
    pub people: u32,
    pub hours_per_day: f64,
    pub days_per_month: f64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    pub streams_in: u64,
    pub streams_out: u64,
    pub mbps_in: f64,
    pub mbps_out: f64,
    /// Decimal gigabytes (10^9 bytes), as hosts bill.
    pub gb_out_per_month: f64,
    pub gb_in_per_month: f64,
}

pub fn plan(i: &PlanInput) -> Plan {
    let n = u64::from(i.people);
    let (streams_in, streams_out) = match i.mode {
        Mode::Solo => (1, n),
        Mode::Event => (n, n),
        Mode::Call => (n, n * n),
    };
    let per_stream_mbps = (i.video_kbps + i.audio_kbps) / 1000.0;
    let mbps_in = per_stream_mbps * streams_in as f64;
    let mbps_out = per_stream_mbps * streams_out as f64;
    let seconds = i.hours_per_day * 3600.0 * i.days_per_month;
    let gb = |mbps: f64| mbps * seconds / 8.0 / 1000.0;
    Plan {
        streams_in,
        streams_out,
        mbps_in,
        mbps_out,
        gb_out_per_month: gb(mbps_out),
        gb_in_per_month: gb(mbps_in),
    }
}

/// A `[limits]` cap `plan` checks: callers match on this, never on the
/// sentence (rewording a message must not change what is refused).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    MaxEgressMbps,
    MaxViewers,
    MaxViewersPerStream,
}

/// A cap the plan exceeds, with the sentence `roomcast plan` prints.
#[derive(Debug, Clone, PartialEq)]
pub struct OverCap {
    pub limit: Limit,
    pub text: String,
}

impl std::fmt::Display for OverCap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

/// Which configured caps the plan exceeds.
pub fn caps_over(i: &PlanInput, p: &Plan, limits: &LimitsConfig) -> Vec<OverCap> {
    let mut over = Vec::new();
    let mut push = |limit, text| over.push(OverCap { limit, text });
    if limits.max_egress_mbps > 0.0 && p.mbps_out > limits.max_egress_mbps {
        push(
            Limit::MaxEgressMbps,
            format!(
                "{:.2} Mbit/s out is over limits.max_egress_mbps = {}",
                p.mbps_out, limits.max_egress_mbps
            ),
        );
    }
    if limits.max_viewers > 0 && p.streams_out > limits.max_viewers as u64 {
        push(
            Limit::MaxViewers,
            format!(
                "{} viewer sessions are over limits.max_viewers = {}",
                p.streams_out, limits.max_viewers
            ),
        );
    }
    let per_stream = match i.mode {
        Mode::Solo => p.streams_out,
        Mode::Event => 1,
        Mode::Call => u64::from(i.people),
    };
    if limits.max_viewers_per_stream > 0 && per_stream > limits.max_viewers_per_stream as u64 {
        push(
            Limit::MaxViewersPerStream,
            format!(
                "{per_stream} viewers of one stream are over limits.max_viewers_per_stream = {}",
                limits.max_viewers_per_stream
            ),
        );
    }
    over
}

/// Which configured caps the plan exceeds, as sentences.
pub fn check_caps(i: &PlanInput, p: &Plan, limits: &LimitsConfig) -> Vec<String> {
    caps_over(i, p, limits)
        .into_iter()
        .map(|o| o.text)
        .collect()
}

pub fn render(i: &PlanInput, p: &Plan, limits: &LimitsConfig) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{:?}: {} stream(s) in, {} out, at {} + {} kbps each",
        i.mode, p.streams_in, p.streams_out, i.video_kbps, i.audio_kbps
    );
    let _ = writeln!(s, "in:  {:.2} Mbit/s", p.mbps_in);
    let _ = writeln!(s, "out: {:.2} Mbit/s", p.mbps_out);
    let _ = writeln!(
        s,
        "monthly transit at {} h/day, {} days: {:.0} GB out, {:.0} GB in",
        i.hours_per_day, i.days_per_month, p.gb_out_per_month, p.gb_in_per_month
    );
    let over = check_caps(i, p, limits);
    if over.is_empty() {
        let _ = writeln!(s, "fits the configured limits");
    } else {
        for o in over {
            let _ = writeln!(s, "does not fit: {o}");
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn solo5() -> PlanInput {
        PlanInput {
            video_kbps: 2000.0,
            audio_kbps: 256.0,
            mode: Mode::Solo,
            people: 5,
            hours_per_day: 4.0,
            days_per_month: 20.0,
        }
    }

    #[test]
    fn the_guides_solo_example() {
        let p = plan(&solo5());
        assert!((p.mbps_out - 11.28).abs() < 1e-9, "{}", p.mbps_out);
        assert!((p.mbps_in - 2.256).abs() < 1e-9);
        assert!(
            (p.gb_out_per_month - 406.08).abs() < 0.01,
            "{}",
            p.gb_out_per_month
        );
        let text = render(&solo5(), &p, &LimitsConfig::default());
        assert!(text.contains("out: 11.28 Mbit/s"), "{text}");
        assert!(text.contains("406 GB out"), "{text}");
        assert!(text.contains("fits"));
    }

    #[test]
    fn call_mode_is_users_squared_and_caps_are_checked() {
        let i = PlanInput {
            mode: Mode::Call,
            people: 8,
            ..solo5()
        };
        let p = plan(&i);
        assert_eq!((p.streams_in, p.streams_out), (8, 64));
        let limits = LimitsConfig {
            max_egress_mbps: 100.0,
            max_viewers: 50,
            max_viewers_per_stream: 4,
            ..LimitsConfig::default()
        };
        let over = check_caps(&i, &p, &limits);
        assert_eq!(over.len(), 3, "{over:?}");
        assert!(over[0].contains("144.38 Mbit/s"), "{over:?}");
        // The typed caps, in the order of the sentences.
        let limits_over: Vec<Limit> = caps_over(&i, &p, &limits).iter().map(|o| o.limit).collect();
        assert_eq!(
            limits_over,
            [
                Limit::MaxEgressMbps,
                Limit::MaxViewers,
                Limit::MaxViewersPerStream
            ]
        );
        assert!(render(&i, &p, &limits).contains("does not fit"));
    }

    #[test]
    fn event_mode_is_one_out_per_streamer() {
        let p = plan(&PlanInput {
            mode: Mode::Event,
            people: 4,
            ..solo5()
        });
        assert_eq!((p.streams_in, p.streams_out), (4, 4));
    }
}
