//! Which live streams get their thumbnail renewed: only those somebody asked
//! for within `wanted_for_secs` (the JPEG's GET, the Matrix notice), so a
//! stream nobody looks at costs no decode. Pure: the round in `mod.rs`
//! applies it to each live stream once a second.

use std::time::{Duration, Instant};

/// A stream's asks and decodes, as the round sees them.
#[derive(Debug, Clone, Copy, Default)]
pub struct Demand {
    /// The last ask for its thumbnail.
    pub wanted_at: Option<Instant>,
    /// The last decode started.
    pub tried_at: Option<Instant>,
    /// A decode is running.
    pub busy: bool,
}

/// What the round does with a live stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Decode its newest keyframe (if that one was not tried already).
    Renew,
    /// Nothing now.
    Wait,
    /// Nobody wants it and its picture is over an interval old: drop the
    /// picture, so the next ask gets a fresh one rather than one from long
    /// ago (and an unwatched stream holds no JPEG).
    Forget,
}

/// `[thumbnails] interval_secs` and `wanted_for_secs`.
#[derive(Debug, Clone, Copy)]
pub struct Policy {
    pub interval: Duration,
    /// `None`: every live stream is always wanted (`wanted_for_secs = 0`).
    pub wanted_for: Option<Duration>,
}

impl Policy {
    pub fn wanted(&self, d: &Demand, now: Instant) -> bool {
        match self.wanted_for {
            None => true,
            Some(w) => d.wanted_at.is_some_and(|at| now < at + w),
        }
    }

    pub fn step(&self, d: &Demand, now: Instant) -> Step {
        if d.busy {
            return Step::Wait;
        }
        let recent = d.tried_at.is_some_and(|t| now < t + self.interval);
        match (self.wanted(d, now), recent) {
            (_, true) => Step::Wait,
            (true, false) => Step::Renew,
            (false, false) => Step::Forget,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    fn policy(wanted_for: Option<u64>) -> Policy {
        Policy {
            interval: 10 * S,
            wanted_for: wanted_for.map(Duration::from_secs),
        }
    }

    #[test]
    fn a_stream_nobody_asked_for_is_not_decoded() {
        let now = Instant::now();
        let p = policy(Some(60));
        assert_eq!(p.step(&Demand::default(), now), Step::Forget);
        let d = Demand {
            tried_at: Some(now - 11 * S),
            ..Demand::default()
        };
        assert_eq!(p.step(&d, now), Step::Forget);
    }

    #[test]
    fn an_ask_renews_at_most_every_interval_for_wanted_for() {
        let t0 = Instant::now();
        let p = policy(Some(60));
        let mut d = Demand {
            wanted_at: Some(t0),
            ..Demand::default()
        };
        assert_eq!(p.step(&d, t0), Step::Renew, "the first ask: at once");
        d.tried_at = Some(t0);
        d.busy = true;
        assert_eq!(p.step(&d, t0 + 20 * S), Step::Wait, "one decode at a time");
        d.busy = false;
        assert_eq!(
            p.step(&d, t0 + 9 * S),
            Step::Wait,
            "not before the interval"
        );
        assert_eq!(p.step(&d, t0 + 10 * S), Step::Renew);
        d.tried_at = Some(t0 + 50 * S);
        assert_eq!(p.step(&d, t0 + 59 * S), Step::Wait);
        // 60 s after the last ask it is no longer renewed, and once over an
        // interval old it is dropped.
        assert_eq!(p.step(&d, t0 + 60 * S), Step::Forget);
        d.tried_at = Some(t0 + 55 * S);
        assert_eq!(p.step(&d, t0 + 61 * S), Step::Wait, "young: kept");
        assert_eq!(p.step(&d, t0 + 65 * S), Step::Forget);
        // A new ask renews at once.
        d.wanted_at = Some(t0 + 100 * S);
        assert_eq!(p.step(&d, t0 + 100 * S), Step::Renew);
    }

    #[test]
    fn wanted_for_zero_renews_every_live_stream() {
        let now = Instant::now();
        let p = policy(None);
        assert!(p.wanted(&Demand::default(), now));
        assert_eq!(p.step(&Demand::default(), now), Step::Renew);
        let d = Demand {
            tried_at: Some(now - 10 * S),
            ..Demand::default()
        };
        assert_eq!(p.step(&d, now), Step::Renew);
    }
}
