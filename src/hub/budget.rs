//! Frame queues are bounded in bytes, not only in frames: a thousand of a
//! high-bitrate publisher's keyframes (each up to `limits.max_frame_bytes`)
//! are far more memory than a consumer needs to ride out a stall. The bytes
//! are reserved by the publisher's task when it enqueues a frame and
//! released by the consumer when it takes it: one atomic each way, no lock
//! on the per-frame path. Used by the recorder, LL-HLS and the WebRTC
//! workers' data queues.

use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

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

    pub fn max(&self) -> usize {
        self.max
    }

    pub fn used(&self) -> usize {
        self.used.load(Relaxed)
    }

    /// Queues `msg`, `n` bytes, if both the budget and the channel have
    /// room; false (nothing reserved) if either is full.
    pub fn try_send<T>(&self, tx: &tokio::sync::mpsc::Sender<T>, msg: T, n: usize) -> bool {
        if !self.reserve(n) {
            return false;
        }
        if tx.try_send(msg).is_err() {
            self.release(n);
            return false;
        }
        true
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

    #[test]
    fn a_send_takes_bytes_only_when_the_channel_has_room() {
        let b = ByteBudget::new(100);
        let (tx, mut rx) = tokio::sync::mpsc::channel(1);
        assert!(b.try_send(&tx, 1, 60));
        assert!(!b.try_send(&tx, 2, 10), "channel full");
        assert_eq!(b.used(), 60, "the refused message reserved nothing");
        assert_eq!(rx.try_recv(), Ok(1));
        assert!(!b.try_send(&tx, 3, 41), "budget full");
        assert!(b.try_send(&tx, 4, 40));
    }
}
