//! Per-stream measurements for the API: frame rate, bitrate, keyframe interval.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Rates are averaged over this window.
const WINDOW: Duration = Duration::from_secs(2);

#[derive(Debug, Default)]
struct RateWindow {
    samples: VecDeque<(Instant, usize)>,
}

impl RateWindow {
    fn push(&mut self, now: Instant, bytes: usize) {
        self.samples.push_back((now, bytes));
        while let Some(&(t, _)) = self.samples.front() {
            if now.saturating_duration_since(t) > WINDOW {
                self.samples.pop_front();
            } else {
                break;
            }
        }
    }

    /// Samples inside the window ending at `now`, and the span they cover.
    fn live(&self, now: Instant) -> Option<(usize, usize, f64)> {
        let first = self
            .samples
            .iter()
            .position(|&(t, _)| now.saturating_duration_since(t) <= WINDOW)?;
        let n = self.samples.len() - first;
        if n < 2 {
            return None;
        }
        let bytes = self.samples.iter().skip(first).map(|&(_, b)| b).sum();
        let span = self.samples[self.samples.len() - 1]
            .0
            .saturating_duration_since(self.samples[first].0)
            .as_secs_f64();
        (span > 0.0).then_some((n, bytes, span))
    }

    fn per_second(&self, now: Instant) -> Option<f64> {
        self.live(now).map(|(n, _, span)| (n - 1) as f64 / span)
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
        self.video.push(now, bytes);
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

    pub fn on_audio(&mut self, now: Instant, bytes: usize) {
        self.audio.push(now, bytes);
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
}
