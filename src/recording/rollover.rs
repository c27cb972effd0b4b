//! When a long recording ends and the next one begins
//! (`recording.max_recording_hours`). Pure.
//!
//! A recording of a stream that never stops would grow without end: one
//! index and one file of days, and retention, which deletes only finished
//! recordings, could never free it. At the limit the recording ends before
//! a frame a recording can begin with (a video keyframe, or any frame of a
//! stream without video), and the next recording begins with that frame:
//! nothing is lost between them and nothing is in both.

use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rollover {
    /// `None`: recordings last as long as their broadcast.
    limit: Option<Duration>,
}

impl Rollover {
    /// `max_hours` as configured: 0 turns rollover off. The config check
    /// bounds it; a value no `Duration` holds (had it not) is no limit
    /// rather than a panic in a recording's start.
    pub fn new(max_hours: f64) -> Rollover {
        Rollover {
            limit: (max_hours > 0.0)
                .then(|| Duration::try_from_secs_f64(max_hours * 3600.0).ok())
                .flatten(),
        }
    }

    /// Whether a recording that began at `started` ends before this frame,
    /// at `now`. `can_begin`: whether a recording can begin with it.
    pub fn due(&self, started: Instant, now: Instant, can_begin: bool) -> bool {
        can_begin
            && self
                .limit
                .is_some_and(|l| now.saturating_duration_since(started) >= l)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_recording_ends_at_its_age_limit_before_a_frame_that_can_begin_one() {
        let t0 = Instant::now();
        let day = Rollover::new(24.0);
        let h = |hours: f64| t0 + Duration::from_secs_f64(hours * 3600.0);
        assert!(!day.due(t0, h(23.99), true), "younger");
        assert!(day.due(t0, h(24.0), true), "at the limit");
        assert!(day.due(t0, h(30.0), true), "past it");
        assert!(!day.due(t0, h(30.0), false), "not before a delta frame");
        // A clock that went back: not due.
        assert!(!day.due(h(1.0), t0, true));
        // Off.
        assert!(!Rollover::new(0.0).due(t0, h(1000.0), true));
        // Beyond what a Duration holds (the config check refuses it): no
        // limit, no panic.
        for huge in [1e16, f64::INFINITY, f64::NAN] {
            assert!(!Rollover::new(huge).due(t0, h(1000.0), true), "{huge}");
        }
        // Fractions of an hour (a test's few seconds).
        let tiny = Rollover::new(0.0025);
        assert!(!tiny.due(t0, t0 + Duration::from_millis(8_999), true));
        assert!(tiny.due(t0, t0 + Duration::from_secs(9), true));
    }
}
