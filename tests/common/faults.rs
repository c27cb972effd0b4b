//! Helpers for the soak and fault tests (`tests/soak_*.rs`, `tests/faults*.rs`):
//! the server's RSS and open file descriptors from /proc, settled.

use std::time::{Duration, Instant};

use super::poll_until;

/// VmRSS of `pid` in KiB (0 if the process is gone).
pub fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or(0)
}

/// Open file descriptors of `pid`.
pub fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

/// RSS (KiB) and fds once RSS stops moving: two samples a second apart
/// within 2 % (15 s at most).
pub fn settled_usage(pid: u32) -> (u64, usize) {
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut last = rss_kib(pid);
    loop {
        let t = Instant::now();
        poll_until(Duration::from_secs(1), || {
            t.elapsed() >= Duration::from_secs(1)
        });
        let now = rss_kib(pid);
        let diff = now.abs_diff(last) as f64 / last.max(1) as f64;
        if diff < 0.02 || Instant::now() >= deadline {
            return (now, fd_count(pid));
        }
        last = now;
    }
}

/// A count from the environment (a bench script runs a test longer), else `default`.
pub fn env_count(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}
