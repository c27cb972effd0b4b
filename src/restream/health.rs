//! What each push is doing, for the API, `/metrics`, `!live restream` and
//! the room's state event. Changes are counted so the room hears of a state
//! change once, not of every retry.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use parking_lot::Mutex;
use serde::Serialize;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum PushState {
    /// The stream is offline (or the destination switched off).
    Idle,
    Off,
    Connecting,
    Live,
    /// The connection failed or dropped; retrying with backoff.
    Reconnecting {
        attempt: u32,
        error: String,
    },
    /// Will not be retried while this publisher lasts (e.g. VP8 to RTMP).
    Failed {
        reason: String,
    },
}

impl PushState {
    /// One word for metrics labels and the room's summary.
    pub fn word(&self) -> &'static str {
        match self {
            PushState::Idle => "idle",
            PushState::Off => "off",
            PushState::Connecting => "connecting",
            PushState::Live => "live",
            PushState::Reconnecting { .. } => "reconnecting",
            PushState::Failed { .. } => "failed",
        }
    }

    /// Whether the room should hear of a change from `self` to `next`:
    /// a retry counter going up is not news, a new kind of state is.
    pub fn is_news(&self, next: &PushState) -> bool {
        self.word() != next.word()
    }
}

/// One destination's health, shared by its push task and the readers.
pub struct Health {
    state: Mutex<(PushState, Instant)>,
    pub bytes_sent: AtomicU64,
    /// Bytes sent at the last bitrate sample, and when.
    sample: Mutex<(u64, Instant, u64)>,
    /// Bumped on every change that is news (see [`PushState::is_news`]).
    pub generation: AtomicU64,
}

impl Default for Health {
    fn default() -> Self {
        Health {
            state: Mutex::new((PushState::Idle, Instant::now())),
            bytes_sent: AtomicU64::new(0),
            sample: Mutex::new((0, Instant::now(), 0)),
            generation: AtomicU64::new(0),
        }
    }
}

impl Health {
    pub fn set(&self, next: PushState) {
        let mut s = self.state.lock();
        if s.0 == next {
            return;
        }
        if s.0.is_news(&next) {
            self.generation.fetch_add(1, Ordering::Relaxed);
        }
        *s = (next, Instant::now());
    }

    pub fn state(&self) -> PushState {
        self.state.lock().0.clone()
    }

    /// Outgoing kbit/s over the last few seconds (sampled on read).
    pub fn bitrate_kbps(&self) -> u64 {
        let now = Instant::now();
        let sent = self.bytes_sent.load(Ordering::Relaxed);
        let mut s = self.sample.lock();
        let elapsed = now.duration_since(s.1).as_secs_f64();
        if elapsed >= 2.0 {
            s.2 = ((sent - s.0) as f64 * 8.0 / 1000.0 / elapsed) as u64;
            *s = (sent, now, s.2);
        }
        if matches!(self.state.lock().0, PushState::Live) {
            s.2
        } else {
            0
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_are_not_news_but_state_changes_are() {
        let h = Health::default();
        h.set(PushState::Connecting);
        h.set(PushState::Live);
        let g = h.generation.load(Ordering::Relaxed);
        h.set(PushState::Reconnecting {
            attempt: 1,
            error: "refused".into(),
        });
        h.set(PushState::Reconnecting {
            attempt: 2,
            error: "refused".into(),
        });
        h.set(PushState::Reconnecting {
            attempt: 3,
            error: "refused".into(),
        });
        assert_eq!(h.generation.load(Ordering::Relaxed), g + 1);
        h.set(PushState::Live);
        assert_eq!(h.generation.load(Ordering::Relaxed), g + 2);
    }
}
