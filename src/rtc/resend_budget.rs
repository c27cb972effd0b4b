//! How much a viewer's NACKs may have resent (the direct path), in bytes
//! relative to the media it was sent over the last second, as str0m's
//! `rtx_ratio_cap`: a NACK flood costs a share of the stream, not a fixed
//! packet rate (1000 packets a second were ~10 Mbit/s whatever the stream).
//! Sans-I/O: every call takes `now`.

use std::time::{Duration, Instant};

/// Resends may add this share of the media sent: at most double what a
/// viewer is sent, still its own stream's share, not a fixed rate. Chromium
/// NACKs packets that are only late: behind 5 % loss with 50 ms of jitter it
/// asks for ~57 % of the video again (str0m's path, README → Soak and
/// faults). At 18 % (str0m's `rtx_ratio_cap` is 15 %) the picture froze
/// 23–28 times in 20 s against 5–6 and fell to 17–25 fps
/// (`tests/faults_network.rs`).
const SHARE_PERCENT: u64 = 100;
/// And this much a second whatever the stream: a slow stream that lost a
/// keyframe packet or two still gets them.
const FLOOR_BYTES: u64 = 16 * 1024;
const WINDOW: Duration = Duration::from_secs(1);

#[derive(Debug, Default)]
pub struct ResendBudget {
    /// The current one-second window's start.
    window: Option<Instant>,
    /// Media bytes sent in the previous window and in this one.
    media: [u64; 2],
    /// Bytes resent (or queued for it) in this window.
    resent: u64,
}

impl ResendBudget {
    fn roll(&mut self, now: Instant) {
        let Some(start) = self.window else {
            self.window = Some(now);
            return;
        };
        let since = now.saturating_duration_since(start);
        if since < WINDOW {
            return;
        }
        self.media = if since < 2 * WINDOW {
            [self.media[1], 0]
        } else {
            [0, 0]
        };
        self.resent = 0;
        self.window = Some(if since < 2 * WINDOW {
            start + WINDOW
        } else {
            now
        });
    }

    /// `bytes` of media went out at `now`.
    pub fn sent(&mut self, now: Instant, bytes: usize) {
        self.roll(now);
        self.media[1] += bytes as u64;
    }

    /// Whether a resend of `bytes` fits at `now`; if so it is counted.
    pub fn take(&mut self, now: Instant, bytes: usize) -> bool {
        self.roll(now);
        let last_second = self.media[0].max(self.media[1]);
        let allowed = last_second * SHARE_PERCENT / 100 + FLOOR_BYTES;
        if self.resent + bytes as u64 > allowed {
            return false;
        }
        self.resent += bytes as u64;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// How many resends of 1000 bytes fit at `now`.
    fn fits(b: &mut ResendBudget, now: Instant) -> u64 {
        let mut n = 0;
        while b.take(now, 1000) {
            n += 1;
        }
        n
    }

    #[test]
    fn resends_are_a_share_of_the_last_seconds_media() {
        let t = Instant::now();
        let mut b = ResendBudget::default();
        // 1 MB of media: the share of it and the floor.
        for i in 0..1000 {
            b.sent(t + Duration::from_micros(i * 900), 1000);
        }
        let share = (1_000_000 * SHARE_PERCENT / 100 + FLOOR_BYTES) / 1000;
        assert_eq!(fits(&mut b, t + Duration::from_millis(950)), share);
        // The next second still sees the last one's media, once.
        assert_eq!(fits(&mut b, t + Duration::from_millis(1100)), share);
        assert_eq!(fits(&mut b, t + Duration::from_millis(1500)), 0);
        // Media stopped two seconds ago: the floor only.
        assert_eq!(
            fits(&mut b, t + Duration::from_millis(3200)),
            FLOOR_BYTES / 1000
        );
        // A stream ten times smaller gets a tenth of the share.
        let mut small = ResendBudget::default();
        small.sent(t, 100_000);
        assert_eq!(
            fits(&mut small, t),
            (100_000 * SHARE_PERCENT / 100 + FLOOR_BYTES) / 1000
        );
    }
}
