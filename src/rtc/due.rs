//! When a session's timers are due, and how late they may run.
//!
//! A worker that sleeps until each session's next timer wakes once per
//! timer: with one WHIP publisher and 50 viewers, str0m's reports, stats,
//! NACK and TWCC checks and our own sender reports came to about 150
//! wake-ups a second, each of them, on a VM, tens of µs of CPU to wake an
//! idle vCPU (`bench/wake_cost.c`). While a stream is live the worker wakes
//! for its media anyway (Opus every 20 ms, video every 33 ms), and those
//! timers do not care about a few milliseconds: they are *lax*, run by the
//! first wake-up after they are due, and wake the worker themselves only
//! after their slack. Timers that pace something (a replay, ICE and DTLS
//! set-up, the frame assembler's wait for a retransmission, the session's
//! expiry) stay exact.

use std::time::{Duration, Instant};

use str0m::Reason;

/// How late a report or stats timer (a sender or receiver report, about
/// once a second; str0m's stats) may run: more than the gap between two
/// frames of 30 fps video, so while a viewer's media flows its reports never
/// wake the worker on their own.
pub const REPORT_SLACK: Duration = Duration::from_millis(50);

/// How late str0m's checks for NACKs and TWCC feedback to a publisher
/// (every 33 and 50 ms while media arrives) may run: one Opus packet's
/// time, so they ride the publisher's own packets. A NACK sent up to this
/// late still leaves most of the frame assembler's wait for the
/// retransmission (`media::rtp_video::GAP_WAIT`, 250 ms).
pub const FEEDBACK_SLACK: Duration = Duration::from_millis(20);

/// A timer's window: it may run from `at` and must run by `by`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Due {
    pub at: Instant,
    pub by: Instant,
}

impl Due {
    /// A timer that runs on time.
    pub fn exact(at: Instant) -> Due {
        Due { at, by: at }
    }

    /// A timer that may wait up to `slack` for another wake-up.
    pub fn lax(at: Instant, slack: Duration) -> Due {
        Due {
            at,
            by: at.checked_add(slack).unwrap_or(at),
        }
    }

    /// str0m's next timeout for `reason`: regular RTCP reports and stats,
    /// NACK and TWCC checks are lax; the rest (ICE, DTLS, SCTP, pacing,
    /// bandwidth estimation) exact.
    pub fn of_str0m(at: Instant, reason: Reason) -> Due {
        match reason {
            Reason::Feedback | Reason::Stats => Due::lax(at, REPORT_SLACK),
            Reason::Nack | Reason::Twcc => Due::lax(at, FEEDBACK_SLACK),
            _ => Due::exact(at),
        }
    }

    /// Both timers' windows: the worker looks from the sooner `at` and
    /// must wake by the sooner `by`.
    pub fn min(self, other: Due) -> Due {
        Due {
            at: self.at.min(other.at),
            by: self.by.min(other.by),
        }
    }

    /// Whether the timer may run at `now`.
    pub fn is_due(&self, now: Instant) -> bool {
        self.at <= now
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_stats_and_feedback_checks_are_lax_and_the_rest_exact() {
        let t = Instant::now();
        for reason in [Reason::Feedback, Reason::Stats] {
            assert_eq!(Due::of_str0m(t, reason).by, t + REPORT_SLACK, "{reason:?}");
        }
        for reason in [Reason::Nack, Reason::Twcc] {
            assert_eq!(
                Due::of_str0m(t, reason).by,
                t + FEEDBACK_SLACK,
                "{reason:?}"
            );
        }
        for reason in [
            Reason::Ice,
            Reason::DTLS,
            Reason::Sctp,
            Reason::Pacer(str0m::PacerReason::Paced),
        ] {
            assert_eq!(Due::of_str0m(t, reason), Due::exact(t), "{reason:?}");
        }
    }

    #[test]
    fn an_exact_timer_bounds_a_lax_one_and_the_soonest_start_wins() {
        let t = Instant::now();
        let lax = Due::lax(t, REPORT_SLACK);
        let exact = Due::exact(t + Duration::from_millis(10));
        assert_eq!(
            lax.min(exact),
            Due {
                at: t,
                by: t + Duration::from_millis(10)
            }
        );
        let later_lax = Due::lax(t + Duration::from_millis(5), REPORT_SLACK);
        assert_eq!(lax.min(later_lax), lax);
        assert!(lax.is_due(t) && !exact.is_due(t));
    }
}
