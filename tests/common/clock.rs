//! A wall clock that a test can step for one process. Stepping the real
//! clock is not an option on a shared machine (a time namespace,
//! `unshare --time`, virtualizes only the monotonic and boot clocks;
//! `date -s` in it still sets the host's CLOCK_REALTIME), so the server runs
//! with a small LD_PRELOAD library, compiled here with `cc`, that adds an
//! offset to CLOCK_REALTIME (`clock_gettime`, `gettimeofday`, `time`). The
//! offset lives in a file the library maps, so the test steps the clock of
//! the running server by rewriting 8 bytes. CLOCK_MONOTONIC (Rust's
//! `Instant`, tokio's timers) is left alone, as a real clock step leaves it.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::process::Command;

const SHIM: &str = r#"
#define _GNU_SOURCE
#include <dlfcn.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

static volatile int64_t *offset_ns;
static int (*real_clock_gettime)(clockid_t, struct timespec *);

static void init(void) {
    if (!real_clock_gettime)
        real_clock_gettime = dlsym(RTLD_NEXT, "clock_gettime");
    if (!offset_ns) {
        const char *f = getenv("STEPPED_CLOCK_OFFSET_FILE");
        if (!f) return;
        int fd = open(f, O_RDONLY);
        if (fd < 0) return;
        void *p = mmap(NULL, 8, PROT_READ, MAP_SHARED, fd, 0);
        close(fd);
        if (p != MAP_FAILED) offset_ns = p;
    }
}

int clock_gettime(clockid_t clk, struct timespec *ts) {
    init();
    int r = real_clock_gettime(clk, ts);
    if (r == 0 && offset_ns && (clk == CLOCK_REALTIME || clk == CLOCK_REALTIME_COARSE)) {
        int64_t ns = (int64_t)ts->tv_sec * 1000000000 + ts->tv_nsec + *offset_ns;
        ts->tv_sec = ns / 1000000000;
        ts->tv_nsec = ns % 1000000000;
    }
    return r;
}

int gettimeofday(struct timeval *tv, void *tz) {
    (void)tz;
    struct timespec ts;
    int r = clock_gettime(CLOCK_REALTIME, &ts);
    if (r == 0 && tv) {
        tv->tv_sec = ts.tv_sec;
        tv->tv_usec = ts.tv_nsec / 1000;
    }
    return r;
}

time_t time(time_t *t) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    if (t) *t = ts.tv_sec;
    return ts.tv_sec;
}
"#;

pub struct SteppedClock {
    dir: super::TempDir,
    offset: File,
}

impl SteppedClock {
    /// Compiles the library; the offset starts at 0.
    pub fn new() -> SteppedClock {
        let dir = super::TempDir::new("roomcast-clock");
        let src = dir.path().join("stepped_clock.c");
        std::fs::write(&src, SHIM).unwrap();
        let out = Command::new("cc")
            .args(["-shared", "-fPIC", "-O2", "-o"])
            .arg(dir.path().join("stepped_clock.so"))
            .arg(&src)
            .arg("-ldl")
            .output()
            .expect("run cc (a C compiler is needed to build the clock shim)");
        assert!(
            out.status.success(),
            "cc failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let offset = File::create(dir.path().join("offset")).unwrap();
        offset.write_all_at(&0i64.to_le_bytes(), 0).unwrap();
        SteppedClock { dir, offset }
    }

    /// `LD_PRELOAD` and the offset file, for [`super::ServerOpts::env`].
    pub fn env(&self) -> Vec<(String, String)> {
        vec![
            (
                "LD_PRELOAD".into(),
                self.library().to_string_lossy().into_owned(),
            ),
            (
                "STEPPED_CLOCK_OFFSET_FILE".into(),
                self.dir
                    .path()
                    .join("offset")
                    .to_string_lossy()
                    .into_owned(),
            ),
        ]
    }

    fn library(&self) -> PathBuf {
        self.dir.path().join("stepped_clock.so")
    }

    /// Sets the wall clock of the processes using it to real time + `secs`
    /// (in place: the mapping sees it at once).
    pub fn set_offset_secs(&self, secs: i64) {
        self.offset
            .write_all_at(&(secs * 1_000_000_000).to_le_bytes(), 0)
            .unwrap();
    }
}
