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

/// A size-limited tmpfs mounted on a fresh temp directory (needs root, as
/// the tests run on CI); unmounted on drop.
pub struct SmallFs {
    pub dir: std::path::PathBuf,
}

impl SmallFs {
    /// Mounts `size_kib` KiB of tmpfs; `Err` says why not (not root…).
    pub fn mount(size_kib: u64) -> Result<SmallFs, String> {
        let dir = std::env::temp_dir().join(format!("roomcast-smallfs-{}", super::random_hex()));
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        let out = std::process::Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size_kib}k,mode=0755"),
                "tmpfs",
            ])
            .arg(&dir)
            .output()
            .map_err(|e| format!("mount: {e}"))?;
        if !out.status.success() {
            let _ = std::fs::remove_dir(&dir);
            return Err(format!(
                "mount -t tmpfs failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(SmallFs { dir })
    }

    /// Writes a file until the filesystem is full; returns its path.
    pub fn fill(&self) -> std::path::PathBuf {
        use std::io::Write;
        let path = self.dir.join("filler");
        let mut f = std::fs::File::create(&path).expect("create the filler");
        let block = vec![0x5au8; 64 * 1024];
        loop {
            match f.write(&block) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => break,
                Err(e) => panic!("filling {}: {e}", path.display()),
            }
        }
        // Whatever is left below one block.
        let _ = f.write_all(&block[..4096]);
        let _ = f.flush();
        path
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.dir)
            .status();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
