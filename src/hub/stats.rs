//! Per-stream measurements for the API: frame rate, bitrate, keyframe interval.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Rates are averaged over this window.
const WINDOW: Duration = Duration::from_secs(2);

#[derive(Debug, Default)]
struct RateWindow {
    /// Arrival, media time (ms, when known) and size of each frame.
    samples: VecDeque<(Instant, Option<i64>, usize)>,
}

impl RateWindow {
    fn push(&mut self, now: Instant, media_ms: Option<i64>, bytes: usize) {
        self.samples.push_back((now, media_ms, bytes));
        while let Some(&(t, _, _)) = self.samples.front() {
            if now.saturating_duration_since(t) > WINDOW {
                self.samples.pop_front();
            } else {
                break;
            }
        }
    }

    /// Samples inside the window ending at `now`, the bytes that arrived
    /// over their span, and that span in seconds. The first sample's bytes
    /// are not counted: n samples span n − 1 intervals, and each interval's
    /// bytes are the frame that ends it. Counting the first too overstated
    /// every rate, and a new stream's wildly: its keyframe and two frames
    /// after it, 66 ms apart, read as several times its bitrate, and a viewer
    /// cap (`limits.max_egress_mbps`) refused viewers of a stream that fitted.
    ///
    /// The span is the frames' media time when they all carry a sane one:
    /// frames that arrive in a burst (a publisher catching up after a stall,
    /// a busy scheduler) are still 1/30 s apart for a 30 fps source, and over
    /// their arrival span a burst read as a multiple of the stream's rate
    /// (the same cap refused a party's viewers that way). Arrival times are
    /// the fallback.
    fn live(&self, now: Instant) -> Option<(usize, usize, f64)> {
        let first = self
            .samples
            .iter()
            .position(|&(t, _, _)| now.saturating_duration_since(t) <= WINDOW)?;
        let window = || self.samples.iter().skip(first);
        let n = self.samples.len() - first;
        if n < 2 {
            return None;
        }
        let bytes = window().skip(1).map(|&(_, _, b)| b).sum();
        let arrival_span = self.samples[self.samples.len() - 1]
            .0
            .saturating_duration_since(self.samples[first].0)
            .as_secs_f64();
        let times = || window().filter_map(|&(_, m, _)| m);
        let media_span_ms = times()
            .max()
            .zip(times().min())
            .map(|(hi, lo)| hi.saturating_sub(lo));
        let sane = |ms: i64| ms > 0 && ms as f64 <= 5.0 * WINDOW.as_millis() as f64;
        let span = match media_span_ms {
            Some(ms) if times().count() == n && sane(ms) => ms as f64 / 1000.0,
            _ => arrival_span,
        };
        (span > 0.0).then_some((n, bytes, span))
    }

    /// Frames per second over the window (media time when the frames carry
    /// it, see [`RateWindow::live`]).
    fn per_second(&self, now: Instant) -> Option<f64> {
        let (n, _, span) = self.live(now)?;
        Some((n - 1) as f64 / span)
    }

    fn kbps(&self, now: Instant) -> Option<u64> {
        self.live(now)
            .map(|(_, bytes, span)| (bytes as f64 * 8.0 / span / 1000.0).round() as u64)
    }
}

#[derive(Debug, Default)]
pub struct StreamStats {
    pub bframes: bool,
    video: RateWindow,
    audio: RateWindow,
    last_keyframe_ms: Option<i64>,
    keyframe_interval_ms: Option<u64>,
}

impl StreamStats {
    /// Records a video frame; returns the keyframe interval when it is a keyframe
    /// that follows another one.
    pub fn on_video(
        &mut self,
        now: Instant,
        stream_ms: i64,
        bytes: usize,
        keyframe: bool,
    ) -> Option<u64> {
        self.video.push(now, Some(stream_ms), bytes);
        if !keyframe {
            return None;
        }
        let interval = self
            .last_keyframe_ms
            .map(|prev| stream_ms.saturating_sub(prev).max(0) as u64);
        self.last_keyframe_ms = Some(stream_ms);
        if interval.is_some() {
            self.keyframe_interval_ms = interval;
        }
        interval
    }

    pub fn on_audio(&mut self, now: Instant, stream_ms: i64, bytes: usize) {
        self.audio.push(now, Some(stream_ms), bytes);
    }

    pub fn video_fps(&self, now: Instant) -> Option<f64> {
        self.video
            .per_second(now)
            .map(|f| (f * 100.0).round() / 100.0)
    }

    pub fn video_kbps(&self, now: Instant) -> Option<u64> {
        self.video.kbps(now)
    }

    pub fn audio_kbps(&self, now: Instant) -> Option<u64> {
        self.audio.kbps(now)
    }

    pub fn keyframe_interval_ms(&self) -> Option<u64> {
        self.keyframe_interval_ms
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn measures_fps_bitrate_and_keyframe_interval() {
        let mut s = StreamStats::default();
        let t0 = Instant::now();
        for i in 0..60u64 {
            let now = t0 + Duration::from_millis(i * 1000 / 30);
            let kf = i % 30 == 0;
            let iv = s.on_video(now, (i * 1000 / 30) as i64, 1000, kf);
            if i == 30 {
                assert_eq!(iv, Some(1000));
            }
        }
        let now = t0 + Duration::from_millis(59 * 1000 / 30);
        let fps = s.video_fps(now).unwrap();
        assert!((fps - 30.0).abs() < 0.6, "{fps}");
        let kbps = s.video_kbps(now).unwrap();
        assert!((230..=250).contains(&kbps), "{kbps}");
        assert_eq!(s.keyframe_interval_ms(), Some(1000));
    }

    #[test]
    fn a_new_streams_keyframe_does_not_inflate_its_bitrate() {
        // 1 s GOPs at 30 fps: a 60 KB keyframe and 29 frames of 6 KB, i.e.
        // 234 KB/s = 1 872 kbit/s. A tenth of a second after the start the
        // window holds the keyframe and 3 frames; counting the keyframe over
        // those 100 ms read 6 240 kbit/s.
        let steady = (60_000 + 29 * 6_000) * 8 / 1000;
        let mut s = StreamStats::default();
        let t0 = Instant::now();
        let mut at = t0;
        for i in 0..90u64 {
            at = t0 + Duration::from_millis(i * 100 / 3);
            let kf = i % 30 == 0;
            s.on_video(
                at,
                (i * 100 / 3) as i64,
                if kf { 60_000 } else { 6_000 },
                kf,
            );
            if i >= 3 {
                let kbps = s.video_kbps(at).unwrap();
                assert!(
                    kbps <= steady * 11 / 10,
                    "frame {i}: {kbps} kbit/s, steady {steady}"
                );
            }
        }
        // Once the window holds whole GOPs, the rate is the stream's.
        let kbps = s.video_kbps(at).unwrap();
        assert!(
            kbps.abs_diff(steady) <= steady / 10,
            "{kbps} against {steady}"
        );
    }

    #[test]
    fn a_burst_of_late_frames_keeps_the_sources_frame_rate() {
        let mut s = StreamStats::default();
        let t0 = Instant::now();
        // A 30 fps source 500 ms late for a second, then catching up in one
        // burst: by arrival the 2 s window holds 2.5 s of frames (37.5 fps).
        for i in 0..=90u64 {
            let media = i * 1000 / 30;
            let arrival = match i {
                0..30 => media + 500,
                _ => media.max(1467),
            };
            s.on_video(
                t0 + Duration::from_millis(arrival),
                media as i64,
                1000,
                false,
            );
        }
        let now = t0 + Duration::from_millis(3000);
        let fps = s.video_fps(now).unwrap();
        assert!((fps - 30.0).abs() < 0.6, "{fps}");
        // 1000 bytes a frame at 30 fps: 240 kbit/s, not the burst's rate.
        let kbps = s.video_kbps(now).unwrap();
        assert!((230..=250).contains(&kbps), "{kbps}");
    }

    #[test]
    fn a_new_streams_first_frames_in_one_burst_read_as_the_streams_rate() {
        // A publisher's first six frames (the keyframe, then 6 KB each at
        // 30 fps, 1 440 kbit/s) reach the hub within 5 ms, as a loaded
        // publisher sends them: over that arrival span they read as 48 Mbit/s.
        let mut s = StreamStats::default();
        let t0 = Instant::now();
        for i in 0..6u64 {
            let bytes = if i == 0 { 60_000 } else { 6_000 };
            s.on_video(
                t0 + Duration::from_millis(i),
                (i * 100 / 3) as i64,
                bytes,
                i == 0,
            );
        }
        let kbps = s.video_kbps(t0 + Duration::from_millis(5)).unwrap();
        assert!(kbps.abs_diff(1_440) <= 50, "{kbps}");
    }
}
