//! Maps each publisher's media clock onto one continuous stream clock.
//!
//! Viewers keep their PeerConnection across a publisher takeover, so the RTP time
//! they see must keep moving forward: a new publisher's first frame is placed just
//! after the old one's last frame plus the wall-clock time in between. Audio and
//! video of one publisher share the offset, which keeps them in sync.

use std::time::{Duration, Instant};

/// Where the first publisher starts, so small negative publisher times (audio a
/// few ms before the first video frame) stay positive.
const BASE_MS: i64 = 10_000;

#[derive(Debug, Default)]
pub(super) struct Timeline {
    /// stream_ms = publisher_ms + offset; `None` until the current publisher's first frame.
    offset_ms: Option<i64>,
    /// The latest stream time handed out and when.
    last: Option<(i64, Instant)>,
    /// Ties stream time to the wall clock for RTCP sender reports.
    anchor: Option<(i64, Instant)>,
}

impl Timeline {
    pub(super) fn new_publisher(&mut self) {
        self.offset_ms = None;
    }

    /// Returns the stream time and its wall-clock instant for a publisher time.
    pub(super) fn map(&mut self, publisher_ms: i64, now: Instant) -> (i64, Instant) {
        let offset = *self.offset_ms.get_or_insert_with(|| {
            let base = match self.last {
                Some((ms, at)) => ms + now.saturating_duration_since(at).as_millis() as i64 + 1,
                None => BASE_MS,
            };
            base - publisher_ms
        });
        let stream_ms = publisher_ms + offset;
        let (anchor_ms, anchor_at) = *self.anchor.get_or_insert((stream_ms, now));
        let delta = stream_ms - anchor_ms;
        let wallclock = if delta >= 0 {
            anchor_at + Duration::from_millis(delta as u64)
        } else {
            anchor_at
                .checked_sub(Duration::from_millis(delta.unsigned_abs()))
                .unwrap_or(anchor_at)
        };
        if self.last.is_none_or(|(ms, _)| stream_ms > ms) {
            self.last = Some((stream_ms, now));
        }
        (stream_ms, wallclock)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_publisher_continues_after_the_first() {
        let mut t = Timeline::default();
        let t0 = Instant::now();
        let (a, _) = t.map(5_000, t0);
        let (b, _) = t.map(6_000, t0 + Duration::from_secs(1));
        assert_eq!(b - a, 1_000);
        t.new_publisher();
        // The new publisher starts its clock at 0, two seconds later.
        let (c, wall) = t.map(0, t0 + Duration::from_secs(3));
        assert!(c > b + 1_900 && c < b + 2_100, "{c} after {b}");
        assert!(wall >= t0 + Duration::from_millis(2_900));
        let (d, _) = t.map(40, t0 + Duration::from_secs(3));
        assert_eq!(d - c, 40);
    }
}
