//! What one more share costs a party (issue 16 item 4), from the model of
//! `roomcast plan --mode call` (src/plan.rs): N members sharing and watching
//! each other are N streams in and N² out, and the fan-out CPU per Mbit/s
//! sent is the one `plan` uses for clusters (README "Measurements"). The
//! widget and the party page show it before a member shares; the caps it is
//! checked against are the admission service's (src/admission/party_caps.rs).
//! Formatting is the page's; the arithmetic lives only here.

use serde::Serialize;

use crate::plan::cluster::CORES_PER_MBPS;
use crate::plan::{Mode, Plan, PlanInput, plan};

/// Opus as browsers send a shared screen's sound (their default is 32–64
/// kbit/s): the audio half of a share's bitrate, beside the video cap.
pub const SHARE_AUDIO_KBPS: f64 = 64.0;

/// A party with one more sharer.
#[derive(Serialize, Debug, Clone, PartialEq)]
pub struct ShareEstimate {
    /// Members sharing once this share starts: the call model's users.
    pub sharers: u32,
    /// The video cap plus [`SHARE_AUDIO_KBPS`].
    pub kbps_per_share: f64,
    pub streams_in: u64,
    pub streams_out: u64,
    pub mbps_in: f64,
    pub mbps_out: f64,
    /// Fan-out CPU of `mbps_out`, in cores (1.0 = one core).
    pub cores: f64,
    /// The caps this share would pass, as sentences (empty: it fits).
    pub over: Vec<String>,
}

impl ShareEstimate {
    /// Viewer sessions and Mbit/s the new share adds when every sharer
    /// watches every share: N² − (N−1)² = 2N − 1 sessions.
    pub fn added(&self) -> (u64, f64) {
        let sessions = u64::from(self.sharers) * 2 - 1;
        (sessions, sessions as f64 * self.kbps_per_share / 1000.0)
    }

    /// The `plan` input this estimate was made from.
    pub fn plan_input(&self) -> PlanInput {
        plan_input(self.sharers, self.kbps_per_share - SHARE_AUDIO_KBPS)
    }
}

fn plan_input(people: u32, video_kbps: f64) -> PlanInput {
    PlanInput {
        video_kbps,
        audio_kbps: SHARE_AUDIO_KBPS,
        mode: Mode::Call,
        people,
        // Transit per month is not shown before a share.
        hours_per_day: 0.0,
        days_per_month: 0.0,
    }
}

/// The party once someone else starts sharing: `sharing_now` live shares
/// (the asking member's own not among them), each capped at `max_kbps`.
pub fn estimate(sharing_now: usize, max_kbps: u32) -> ShareEstimate {
    let sharers = u32::try_from(sharing_now)
        .unwrap_or(u32::MAX - 1)
        .saturating_add(1);
    let input = plan_input(sharers, f64::from(max_kbps));
    let Plan {
        streams_in,
        streams_out,
        mbps_in,
        mbps_out,
        ..
    } = plan(&input);
    ShareEstimate {
        sharers,
        kbps_per_share: f64::from(max_kbps) + SHARE_AUDIO_KBPS,
        streams_in,
        streams_out,
        mbps_in,
        mbps_out,
        cores: mbps_out * CORES_PER_MBPS,
        over: Vec::new(),
    }
}

/// [`estimate`] with its `over` filled: the party's own cap on sharers
/// (`max_sharers`, 0: none), then the server's (`server_caps`).
pub fn checked(
    sharing_now: usize,
    max_kbps: u32,
    max_sharers: usize,
    server_caps: impl Fn(&mut ShareEstimate),
) -> ShareEstimate {
    let mut e = estimate(sharing_now, max_kbps);
    if max_sharers > 0 && e.sharers as usize > max_sharers {
        let who = if max_sharers == 1 {
            "member"
        } else {
            "members"
        };
        e.over.push(format!(
            "this party allows {max_sharers} {who} sharing at once"
        ));
    }
    server_caps(&mut e);
    e
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eight_sharers_are_the_guides_call() {
        // Seven sharing, an eighth asks: 8 in, 64 out at 2500 + 64 kbps.
        let e = estimate(7, 2500);
        assert_eq!((e.sharers, e.streams_in, e.streams_out), (8, 8, 64));
        assert!((e.mbps_out - 64.0 * 2.564).abs() < 1e-9, "{}", e.mbps_out);
        assert!((e.mbps_in - 8.0 * 2.564).abs() < 1e-9);
        // The same figure as `roomcast plan --mode call`.
        assert_eq!(plan(&e.plan_input()).mbps_out, e.mbps_out);
        // 164 Mbit/s of fan-out: about a tenth of a core.
        assert!(e.cores > 0.09 && e.cores < 0.12, "{}", e.cores);
        // The eighth share adds 15 sessions (64 − 49).
        let (sessions, mbps) = e.added();
        assert_eq!(sessions, 15);
        assert!((mbps - 15.0 * 2.564).abs() < 1e-9);
    }

    #[test]
    fn the_first_share_is_one_in_one_out() {
        let e = estimate(0, 1500);
        assert_eq!((e.sharers, e.streams_in, e.streams_out), (1, 1, 1));
        assert_eq!(e.added().0, 1);
        assert!(e.over.is_empty());
    }
}
