//! `[recording]`: where and what to record, and how much to keep.

use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RecordingConfig {
    /// Off by default: recordings fill disks.
    pub enabled: bool,
    /// Where recordings are written (one directory per recording).
    pub dir: String,
    /// Whether a stream with no choice of its own is recorded: `[[streams]]
    /// record = …` and a room's `!live record on|off` override it.
    pub record_by_default: bool,
    /// Recordings older than this are deleted; 0 keeps them.
    pub retention_days: u64,
    /// The oldest finished recordings are deleted while all together take
    /// more than this (GB = 10^9 bytes); 0 = no cap.
    pub max_total_gb: f64,
    /// Recording pauses while the directory's filesystem has less free
    /// space than this, and resumes when it has it again.
    pub min_free_gb: f64,
    /// `Authorization: Bearer <admin_token>` may `DELETE
    /// /api/v1/recordings/{id}` (owners delete through the bot).
    pub admin_token: Option<String>,
    /// Segments end at the first keyframe at or after this (and are
    /// fsynced as they end: a crash loses at most the segment in progress).
    pub segment_secs: f64,
    /// A publisher back within this continues the same recording (with a
    /// discontinuity). Absent: `matrix.golive_delay_ms`, or 5000 without Matrix.
    pub continue_within_ms: Option<u64>,
    /// A recording this old ends at the next keyframe and the next one
    /// begins there (`rollover`); 0: a recording lasts as long as its
    /// broadcast. Hours; fractions allowed.
    pub max_recording_hours: f64,
}

impl Default for RecordingConfig {
    fn default() -> Self {
        RecordingConfig {
            enabled: false,
            dir: "recordings".into(),
            record_by_default: true,
            retention_days: 0,
            max_total_gb: 0.0,
            min_free_gb: 1.0,
            admin_token: None,
            segment_secs: 4.0,
            continue_within_ms: None,
            max_recording_hours: 24.0,
        }
    }
}

/// The largest `recording.max_recording_hours` (a year).
pub const MAX_RECORDING_HOURS: f64 = 8760.0;

impl RecordingConfig {
    /// `(key, reason)` of the first bad value.
    pub fn check(&self) -> Result<(), (&'static str, String)> {
        if self.enabled && self.dir.trim().is_empty() {
            return Err(("recording.dir", "must name a directory".into()));
        }
        for (key, v) in [
            ("recording.max_total_gb", self.max_total_gb),
            ("recording.min_free_gb", self.min_free_gb),
        ] {
            if !(v >= 0.0 && v.is_finite()) {
                return Err((key, "must be a number of GB ≥ 0".into()));
            }
        }
        if !(1.0..=30.0).contains(&self.segment_secs) {
            return Err((
                "recording.segment_secs",
                "must be between 1 and 30 seconds".into(),
            ));
        }
        if let Some(t) = &self.admin_token
            && t.chars().count() < 16
        {
            return Err((
                "recording.admin_token",
                "too short; use at least 16 random characters".into(),
            ));
        }
        let hours = self.max_recording_hours;
        if !(hours >= 0.0 && hours.is_finite()) {
            return Err((
                "recording.max_recording_hours",
                "must be a number of hours ≥ 0 (0: no limit)".into(),
            ));
        }
        // A year: beyond it the limit means nothing, and far beyond it the
        // duration overflows.
        if hours > MAX_RECORDING_HOURS {
            return Err((
                "recording.max_recording_hours",
                format!("must be at most {MAX_RECORDING_HOURS} (a year); 0 for no limit"),
            ));
        }
        if hours > 0.0 && hours * 3600.0 < 2.0 * self.segment_secs {
            return Err((
                "recording.max_recording_hours",
                "must be 0 (no limit) or at least two segments (2 × recording.segment_secs)".into(),
            ));
        }
        if self.continue_within_ms.is_some_and(|ms| ms > 600_000) {
            return Err((
                "recording.continue_within_ms",
                "must be at most 600000 (10 minutes)".into(),
            ));
        }
        Ok(())
    }

    pub fn max_total_bytes(&self) -> Option<u64> {
        (self.max_total_gb > 0.0).then_some((self.max_total_gb * 1e9) as u64)
    }

    pub fn min_free_bytes(&self) -> u64 {
        (self.min_free_gb * 1e9) as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn max_recording_hours_is_off_or_at_least_two_segments() {
        let with = |hours: f64| RecordingConfig {
            max_recording_hours: hours,
            ..RecordingConfig::default()
        };
        assert_eq!(RecordingConfig::default().max_recording_hours, 24.0);
        for ok in [0.0, 24.0, 0.5, 8.0 / 3600.0] {
            assert!(with(ok).check().is_ok(), "{ok}");
        }
        assert!(with(MAX_RECORDING_HOURS).check().is_ok());
        for bad in [
            -1.0,
            f64::NAN,
            f64::INFINITY,
            7.0 / 3600.0,
            MAX_RECORDING_HOURS + 1.0,
            1e16,
        ] {
            assert_eq!(
                with(bad).check().unwrap_err().0,
                "recording.max_recording_hours",
                "{bad}"
            );
        }
    }
}
