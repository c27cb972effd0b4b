//! Rate-limited logging: bad input from the network is logged at most once per
//! interval, with how many occurrences were not logged since. One type for
//! every area (media, listeners, ingest drivers).

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// Allows one log line per `interval`; lock-free, usable from any thread and
/// in a `static` (`new` is `const`).
pub struct LogEvery {
    interval_ms: u64,
    /// Milliseconds since the process epoch of the last allowed line, +1 (0 = never).
    last: AtomicU64,
    suppressed: AtomicU64,
}

fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

impl LogEvery {
    pub const fn new(interval: Duration) -> LogEvery {
        LogEvery {
            interval_ms: interval.as_millis() as u64,
            last: AtomicU64::new(0),
            suppressed: AtomicU64::new(0),
        }
    }

    /// `Some(n)` when a line may be logged now (`n` lines were suppressed
    /// since the last one), `None` when it must be dropped.
    pub fn allow(&self) -> Option<u64> {
        let now = epoch().elapsed().as_millis() as u64 + 1;
        let last = self.last.load(Ordering::Relaxed);
        if last != 0 && now < last + self.interval_ms
            || self
                .last
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_err()
        {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        Some(self.suppressed.swap(0, Ordering::Relaxed))
    }
}

/// A [`LogEvery`] per kind of event, for a fixed set of literal kinds (so it
/// stays a few entries long). The lock is taken only when something is to be
/// logged, never on a hot path.
pub struct LogEveryKind {
    interval: Duration,
    kinds: Mutex<Vec<(&'static str, LogEvery)>>,
}

impl LogEveryKind {
    pub const fn new(interval: Duration) -> LogEveryKind {
        LogEveryKind {
            interval,
            kinds: Mutex::new(Vec::new()),
        }
    }

    /// [`LogEvery::allow`] for `kind`.
    pub fn allow(&self, kind: &'static str) -> Option<u64> {
        let mut kinds = self.kinds.lock();
        if let Some((_, log)) = kinds.iter().find(|(k, _)| *k == kind) {
            return log.allow();
        }
        let log = LogEvery::new(self.interval);
        let allowed = log.allow();
        kinds.push((kind, log));
        allowed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allows_one_per_interval_and_counts_the_rest() {
        let t = LogEvery::new(Duration::from_secs(3600));
        assert_eq!(t.allow(), Some(0));
        assert_eq!(t.allow(), None);
        assert_eq!(t.allow(), None);
        let t0 = LogEvery::new(Duration::ZERO);
        assert_eq!(t0.allow(), Some(0));
        assert!(t0.allow().is_some());
    }

    #[test]
    fn each_kind_is_logged_once_per_interval() {
        let t = LogEveryKind::new(Duration::from_secs(3600));
        assert_eq!(t.allow("a"), Some(0));
        assert_eq!(t.allow("a"), None);
        assert_eq!(t.allow("b"), Some(0));
        assert_eq!(t.allow("a"), None);
    }
}
