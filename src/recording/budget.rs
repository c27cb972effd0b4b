//! The recorder's queue is bounded in bytes, not only in frames: 1024 frames
//! of a high-bitrate publisher's keyframes are far more memory than a
//! recording needs to ride out a slow disk. Reserved by the publisher's task
//! when it enqueues a frame, released by the recording's task when it takes
//! it: one atomic each way, no lock on the per-frame path.

use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

/// Bytes of frames one recording may have queued (a few seconds of any
/// sane bitrate; a frame over it is dropped and recording resumes at the
/// next keyframe).
pub const QUEUE_MAX_BYTES: usize = 64 << 20;

#[derive(Debug)]
pub struct ByteBudget {
    used: AtomicUsize,
    max: usize,
}

impl ByteBudget {
    pub fn new(max: usize) -> ByteBudget {
        ByteBudget {
            used: AtomicUsize::new(0),
            max,
        }
    }

    /// Takes `n` bytes if they fit.
    pub fn reserve(&self, n: usize) -> bool {
        self.used
            .fetch_update(Relaxed, Relaxed, |used| {
                used.checked_add(n).filter(|&total| total <= self.max)
            })
            .is_ok()
    }

    pub fn release(&self, n: usize) {
        let _ = self
            .used
            .fetch_update(Relaxed, Relaxed, |used| Some(used.saturating_sub(n)));
    }

    pub fn used(&self) -> usize {
        self.used.load(Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_over_the_budget_are_refused_until_released() {
        let b = ByteBudget::new(100);
        assert!(b.reserve(60));
        assert!(b.reserve(40));
        assert!(!b.reserve(1), "full");
        b.release(40);
        assert!(!b.reserve(41));
        assert!(b.reserve(40));
        assert_eq!(b.used(), 100);
        b.release(1000);
        assert_eq!(b.used(), 0, "never below zero");
        assert!(!b.reserve(usize::MAX), "no overflow");
    }
}
