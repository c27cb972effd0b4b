//! Whether the database still takes writes. roomcast keeps serving when it
//! does not (the live streams need no database; Matrix notices wait in
//! `queue_durably` and the homeserver retries its transactions), but an
//! operator must learn of it: a log line when writes start failing and when
//! they work again, `storage` in `/healthz` and `roomcast_storage_ok` in
//! `/metrics`. A probe writes one settings row every few seconds (a full disk,
//! a read-only filesystem and a PostgreSQL that is away all fail it); for
//! SQLite the free space of the database's filesystem is read too, because a
//! small write can still land in space the WAL already holds.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::time::Duration;

use parking_lot::Mutex;
use tracing::{error, info};

/// How often the probe runs.
pub const PROBE_INTERVAL: Duration = Duration::from_secs(5);
/// SQLite's filesystem counts as full below this many free bytes.
pub const MIN_FREE_BYTES: u64 = 1 << 20;

#[derive(Debug)]
pub struct StorageHealth {
    ok: AtomicBool,
    reason: Mutex<Option<String>>,
}

impl Default for StorageHealth {
    fn default() -> Self {
        StorageHealth {
            ok: AtomicBool::new(true),
            reason: Mutex::new(None),
        }
    }
}

impl StorageHealth {
    pub fn is_ok(&self) -> bool {
        self.ok.load(Relaxed)
    }

    /// Why writes fail (None while they work); the log says it to operators.
    #[cfg(test)]
    fn reason(&self) -> Option<String> {
        self.reason.lock().clone()
    }

    /// Records a probe's outcome; logs only when the state changes.
    pub fn record(&self, outcome: Result<(), String>) {
        match outcome {
            Ok(()) => {
                if !self.ok.swap(true, Relaxed) {
                    *self.reason.lock() = None;
                    info!("storage: writes work again");
                }
            }
            Err(reason) => {
                let was_ok = self.ok.swap(false, Relaxed);
                let mut r = self.reason.lock();
                if was_ok || r.as_deref() != Some(reason.as_str()) {
                    error!(
                        reason = %reason,
                        "storage: the database cannot take writes; live streams go on, \
                         Matrix notices and chat wait until it can"
                    );
                }
                *r = Some(reason);
            }
        }
    }
}

/// The file of a `sqlite://PATH[?…]` URL.
pub fn sqlite_path(url: &str) -> Option<PathBuf> {
    let rest = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))?;
    let path = rest.split('?').next()?;
    (!path.is_empty() && path != ":memory:").then(|| PathBuf::from(path))
}

/// Bytes available to this process on the filesystem holding `path`.
pub fn free_bytes(path: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty())?;
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a NUL-terminated path and `st` a valid statvfs to fill.
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return None;
    }
    Some(st.f_bavail as u64 * st.f_frsize as u64)
}

/// The verdict on a filesystem with `free` bytes left, if it is full.
pub fn full_disk(free: Option<u64>) -> Result<(), String> {
    match free {
        Some(b) if b < MIN_FREE_BYTES => Err(format!(
            "the database's filesystem is full ({b} bytes free)"
        )),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlite_paths() {
        assert_eq!(
            sqlite_path("sqlite:///var/lib/roomcast/roomcast.db?mode=rwc"),
            Some(PathBuf::from("/var/lib/roomcast/roomcast.db"))
        );
        assert_eq!(
            sqlite_path("sqlite:roomcast.db"),
            Some(PathBuf::from("roomcast.db"))
        );
        assert_eq!(sqlite_path("sqlite::memory:"), None);
        assert_eq!(sqlite_path("postgres://u:p@h/db"), None);
    }

    #[test]
    fn full_below_one_mebibyte() {
        assert!(full_disk(Some(0)).is_err());
        assert!(full_disk(Some(MIN_FREE_BYTES - 1)).is_err());
        assert!(full_disk(Some(MIN_FREE_BYTES)).is_ok());
        assert!(full_disk(None).is_ok());
        assert!(free_bytes(Path::new("/tmp/x.db")).is_some_and(|b| b > 0));
    }

    #[test]
    fn state_changes_once() {
        let h = StorageHealth::default();
        assert!(h.is_ok());
        h.record(Err("disk full".into()));
        assert!(!h.is_ok());
        assert_eq!(h.reason().as_deref(), Some("disk full"));
        h.record(Ok(()));
        assert!(h.is_ok());
        assert_eq!(h.reason(), None);
    }
}
