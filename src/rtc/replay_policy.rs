//! When a viewer gets a GOP replay, and how long what it was sent stays
//! retransmittable (sans-I/O; the shard applies the verdicts to str0m).
//!
//! A replayed GOP is hundreds of packets sent within a few hundred ms. Under
//! loss its keyframe usually misses a packet or two, and the browser NACKs
//! them and, ~200 ms into waiting, also sends a PLI. The NACKs can only be
//! answered if the RTX cache still holds the keyframe once the rest of the
//! GOP has gone out, so a replay gets a cache sized from its GOP (bounded in
//! bytes) for its duration plus a second of round trips. A PLI while that
//! keyframe is still retransmittable is left to NACK/RTX; a PLI after that
//! (the keyframe failed) gets another replay from a small per-viewer token
//! bucket, so a PLI flood costs at most one GOP a second.
//!
//! The join's replay is the exception: it leaves right after our last DTLS
//! flight, and packets that overtake that flight (reordering) reach a browser
//! that has no SRTP keys yet, which drops them unseen: it cannot NACK a
//! keyframe start it never saw. A PLI after the join's replay is served from
//! the bucket at once.
//!
//! A stream that has gone still gets no replay: when the publisher pauses,
//! the browser asks for a keyframe on its own timer (Chromium every 3 s
//! while no frame comes), and a replay would only show the viewer the last
//! GOP again, a second of the past looping every few seconds, each loop
//! looking like media to the player's path watch. A viewer that was sent the
//! newest frame (live, or in a replay) and has seen no video for
//! [`STILL_AFTER`] keeps its last picture; the publisher is still asked, and
//! a WebRTC one answers with a keyframe when it goes on. Right after the
//! join's replay a request is served as above: it is how a browser that got
//! none of it asks, within a few hundred ms.

use std::time::{Duration, Instant};

/// Replays a viewer can have back to back: the join's, and one more for a
/// keyframe that did not arrive whole.
const BURST: u32 = 2;
/// One replay credit comes back per this period.
const REFILL: Duration = Duration::from_secs(1);
/// After a replay's keyframe went out, a keyframe request is left to NACK/RTX
/// for this long (several round trips; Chromium re-sends a NACK every RTT).
pub const NACK_REPAIR_WINDOW: Duration = Duration::from_millis(600);
/// A keyframe request this long after the stream's last video frame is a
/// browser's timer for a picture that stopped, not a failed decode (those
/// come within a few hundred ms of the loss).
pub const STILL_AFTER: Duration = Duration::from_secs(2);
/// How long a replay's packets stay in the RTX cache after the replay.
const REPLAY_RTX_MARGIN: Duration = Duration::from_millis(1000);
/// What one RTX cache entry costs str0m besides its payload (its slot).
const RTX_ENTRY_OVERHEAD_BYTES: usize = 430;
/// The most a replay's RTX cache may hold, slots and payloads, per viewer.
pub const REPLAY_RTX_CACHE_MAX_BYTES: usize = 2 * 1024 * 1024;

/// What to do about a keyframe request (or a join).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Send the cached GOP.
    Replay,
    /// The last replay's keyframe can still be retransmitted: NACKs repair it.
    Repair,
    /// Out of credit: the request is kept and served at this time.
    Later(Instant),
    /// The viewer has the newest frame and the stream has been still since:
    /// a replay would only rewind it.
    Still,
}

/// The RTX cache a replay needs: str0m's `set_rtx_cache(max_packets, max_age)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RtxCacheSize {
    pub max_packets: usize,
    pub max_age: Duration,
}

impl RtxCacheSize {
    /// For a replay of `gop_packets` packets (`gop_bytes` of payload) sent at
    /// `pace_bytes_per_ms` (0: unpaced), on top of the live cache `live`:
    /// the GOP, the live packets of its duration plus the margin (at most as
    /// many again, for a GOP of a second or more), within the byte bound.
    pub fn for_replay(
        gop_packets: usize,
        gop_bytes: usize,
        pace_bytes_per_ms: u64,
        live: RtxCacheSize,
    ) -> RtxCacheSize {
        let duration = match pace_bytes_per_ms {
            0 => Duration::ZERO,
            p => Duration::from_millis(gop_bytes as u64 / p + 1),
        };
        let mean = gop_bytes.checked_div(gop_packets).unwrap_or(1200);
        let bound = REPLAY_RTX_CACHE_MAX_BYTES / (mean + RTX_ENTRY_OVERHEAD_BYTES);
        RtxCacheSize {
            max_packets: (2 * gop_packets + live.max_packets)
                .min(bound)
                .max(live.max_packets),
            max_age: (duration + REPLAY_RTX_MARGIN).max(live.max_age),
        }
    }
}

/// One viewer's replay credit and its last replayed keyframe.
#[derive(Debug)]
pub struct ReplayPolicy {
    credits: u32,
    refilled: Instant,
    /// The sequence number of the last replay's first packet, and when.
    keyframe: Option<(u64, Instant)>,
    /// A request refused for credit, to be served at `refilled + REFILL`.
    pending: bool,
    /// When the viewer last saw a live video frame of its stream.
    video_at: Instant,
    /// It was sent that frame (or the newest, in a replay).
    sent_newest: bool,
    /// When the join's replay went out, until a keyframe it can repair: what
    /// follows may not decode (see the module doc). A browser that got none
    /// of it asks within a few hundred ms, so after [`STILL_AFTER`] it counts
    /// as received.
    joined_at: Option<Instant>,
}

impl ReplayPolicy {
    pub fn new(now: Instant) -> ReplayPolicy {
        ReplayPolicy {
            credits: BURST,
            refilled: now,
            keyframe: None,
            pending: false,
            video_at: now,
            sent_newest: false,
            joined_at: None,
        }
    }

    /// A live video frame of the stream reached the viewer at `now`; `sent`:
    /// the viewer was sent it (its keyframe gate let it through).
    pub fn live_video(&mut self, now: Instant, sent: bool, keyframe: bool) {
        self.video_at = now;
        self.sent_newest = sent;
        if sent && keyframe {
            self.joined_at = None;
        }
    }

    /// Whether the viewer has the newest frame, as far as we can know.
    fn has_newest(&self, now: Instant) -> bool {
        self.sent_newest
            && self
                .joined_at
                .is_none_or(|t| now.saturating_duration_since(t) >= STILL_AFTER)
    }

    fn refill(&mut self, now: Instant) {
        while self.credits < BURST && now.saturating_duration_since(self.refilled) >= REFILL {
            self.credits += 1;
            self.refilled += REFILL;
        }
        if self.credits == BURST {
            self.refilled = now;
        }
    }

    /// A keyframe request. `next_seq` is the sequence number the next video
    /// packet gets, `cache_packets` how many the RTX cache holds now.
    pub fn request(&mut self, now: Instant, next_seq: u64, cache_packets: usize) -> Verdict {
        if self.has_newest(now) && now.saturating_duration_since(self.video_at) >= STILL_AFTER {
            self.pending = false;
            return Verdict::Still;
        }
        if let Some((seq, at)) = self.keyframe
            && now.saturating_duration_since(at) < NACK_REPAIR_WINDOW
            && next_seq.saturating_sub(seq) < cache_packets as u64
        {
            return Verdict::Repair;
        }
        self.refill(now);
        if self.credits > 0 {
            self.credits -= 1;
            self.pending = false;
            Verdict::Replay
        } else {
            self.pending = true;
            Verdict::Later(self.refilled + REFILL)
        }
    }

    /// A replay starts: its first packet gets `first_seq`. `nackable`: the
    /// viewer can NACK all of it (false for the join's, see the module doc).
    pub fn replayed(&mut self, now: Instant, first_seq: u64, nackable: bool) {
        self.keyframe = nackable.then_some((first_seq, now));
        self.joined_at = (!nackable).then_some(now);
        self.sent_newest = true;
    }

    /// When a request refused for credit is due.
    pub fn due(&self) -> Option<Instant> {
        self.pending.then(|| self.refilled + REFILL)
    }

    /// A keyframe reached the viewer another way (the live stream's, a
    /// replay under way), or there is none to replay: a pending request is
    /// answered (it must not keep the viewer's timer due).
    pub fn keyframe_sent(&mut self) {
        self.pending = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIVE: RtxCacheSize = RtxCacheSize {
        max_packets: 128,
        max_age: Duration::from_millis(500),
    };

    #[test]
    fn the_join_and_one_failed_keyframe_are_replayed_at_once_then_one_a_second() {
        let t0 = Instant::now();
        let mut p = ReplayPolicy::new(t0);
        assert_eq!(p.request(t0, 100, 1000), Verdict::Replay);
        p.replayed(t0, 100, false);
        // The join's keyframe may have reached the browser before its keys.
        let t = t0 + Duration::from_millis(100);
        assert_eq!(p.request(t, 600, 1000), Verdict::Replay);
        p.replayed(t, 600, true);
        // This one is retransmittable: NACKs repair it.
        let t = t0 + Duration::from_millis(200);
        assert_eq!(p.request(t, 900, 1000), Verdict::Repair);
        // Evicted from the cache (more packets since than it holds): no
        // credit left, served when the next comes back.
        assert_eq!(
            p.request(t, 1700, 1000),
            Verdict::Later(t0 + Duration::from_secs(1))
        );
        assert_eq!(p.due(), Some(t0 + Duration::from_secs(1)));
        let t = t0 + Duration::from_secs(1);
        assert_eq!(p.request(t, 1800, 1000), Verdict::Replay);
        assert_eq!(p.due(), None);
        p.replayed(t, 1800, true);
        let t = t + NACK_REPAIR_WINDOW;
        assert!(matches!(p.request(t, 1500, 1000), Verdict::Later(_)));
        p.keyframe_sent();
        assert_eq!(p.due(), None);
    }

    #[test]
    fn a_still_stream_gets_no_replay_once_the_viewer_has_its_newest_frame() {
        let t0 = Instant::now();
        let ms = |n| t0 + Duration::from_millis(n);
        let mut p = ReplayPolicy::new(t0);
        assert_eq!(p.request(t0, 0, 1000), Verdict::Replay);
        p.replayed(t0, 0, false);
        // Right after the join's replay, a request is how a browser that got
        // none of it asks, even from a still stream.
        assert_eq!(p.request(ms(300), 10, 1000), Verdict::Replay);
        p.replayed(ms(300), 10, true);
        // That replay brought the newest frame: a request while nothing new
        // comes is the browser's timer.
        assert_eq!(p.request(ms(3000), 20, 1000), Verdict::Still);
        assert_eq!(p.due(), None);
        // The publisher goes on: a request soon after a frame is a failed
        // decode, and gets its replay.
        p.live_video(ms(7000), true, false);
        assert_eq!(p.request(ms(7100), 30, 1000), Verdict::Replay);
        p.replayed(ms(7100), 30, true);
        // A frame the gate held back (waiting for a keyframe): the viewer
        // has not the newest, so even a still stream is replayed.
        p.live_video(ms(8000), false, false);
        assert_eq!(p.request(ms(11_000), 40, 1000), Verdict::Replay);

        // Joined into a stream that is still (or stops soon after): once
        // the join is STILL_AFTER old, its replay counts as received.
        let mut p = ReplayPolicy::new(t0);
        p.replayed(t0, 0, false);
        p.live_video(ms(33), true, false);
        assert_eq!(p.request(ms(1900), 10, 1000), Verdict::Replay);
        let mut p = ReplayPolicy::new(t0);
        p.replayed(t0, 0, false);
        p.live_video(ms(33), true, false);
        assert_eq!(p.request(ms(2100), 10, 1000), Verdict::Still);
        // A live keyframe it was sent ends the join's exception at once.
        let mut p = ReplayPolicy::new(t0);
        p.replayed(t0, 0, false);
        p.live_video(ms(500), true, true);
        p.live_video(ms(533), true, false);
        assert_eq!(p.request(ms(533) + STILL_AFTER, 10, 1000), Verdict::Still);
    }

    #[test]
    fn a_flood_gets_at_most_one_replay_a_second() {
        let t0 = Instant::now();
        let mut p = ReplayPolicy::new(t0);
        let mut replays = 0;
        for ms in 0..10_000u64 {
            let now = t0 + Duration::from_millis(ms);
            if p.request(now, ms * 1000, 10) == Verdict::Replay {
                replays += 1;
                p.replayed(now, ms * 1000, true);
            }
        }
        assert!(replays <= BURST + 10, "{replays}");
    }

    #[test]
    fn a_replay_cache_holds_the_gop_within_its_byte_bound() {
        // 480 packets of ~1000 bytes at 32 Mbit/s (4000 bytes/ms): 121 ms.
        let c = RtxCacheSize::for_replay(480, 480_000, 4000, LIVE);
        assert_eq!(c.max_packets, 2 * 480 + 128);
        assert_eq!(c.max_age, Duration::from_millis(121 + 1000));
        // A huge GOP is cut to the byte bound, never below the live cache.
        let c = RtxCacheSize::for_replay(10_000, 12_000_000, 4000, LIVE);
        assert_eq!(c.max_packets, REPLAY_RTX_CACHE_MAX_BYTES / (1200 + 430));
        let c = RtxCacheSize::for_replay(0, 0, 0, LIVE);
        assert!(c.max_packets >= 128 && c.max_age >= LIVE.max_age);
    }
}
