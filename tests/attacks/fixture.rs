//! The attack fixture: one server with a live public stream (ffmpeg over RTMP,
//! H.264+AAC) and an aiortc viewer decoding it, plus the checks every attack
//! ends with (alive, fast /healthz, viewer still decoding, RSS back, log quiet).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use crate::common::*;

/// RSS may end this much above the pre-attack baseline.
pub const RSS_SLACK: f64 = 0.20;
/// How long the server gets to give memory back after an attack.
pub const RSS_SETTLE: Duration = Duration::from_secs(30);

pub fn video_frames(v: &serde_json::Value) -> u64 {
    v["video_frames"].as_u64().unwrap_or(0)
}

/// VmRSS of `pid` in KiB (0 if the process is gone).
pub fn rss_kib(pid: u32) -> u64 {
    let Ok(s) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
        return 0;
    };
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// User + system CPU time of `pid`, from /proc/PID/stat.
pub fn cpu_time(pid: u32) -> Duration {
    let Ok(s) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return Duration::ZERO;
    };
    // Fields after the command name (which may hold spaces) start at state.
    let rest = &s[s.rfind(')').map(|i| i + 2).unwrap_or(0)..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0)
        + f.get(12).and_then(|v| v.parse().ok()).unwrap_or(0);
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Duration::from_millis(ticks * 1000 / hz)
}

/// Raises this process's open-file limit to its hard limit (the attacks open
/// thousands of sockets; children such as the server inherit it).
pub fn raise_nofile() -> u64 {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain syscalls on a local struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) == 0 && r.rlim_cur < r.rlim_max {
            r.rlim_cur = r.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &r);
        }
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut r);
    }
    r.rlim_cur
}

/// Samples the server's RSS every 100 ms in the background and keeps the peak.
pub struct RssSampler {
    peak: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<()>>,
}

impl RssSampler {
    pub fn start(pid: u32) -> RssSampler {
        let peak = Arc::new(AtomicU64::new(rss_kib(pid)));
        let stop = Arc::new(AtomicBool::new(false));
        let (p, s) = (peak.clone(), stop.clone());
        let thread = thread::spawn(move || {
            while !s.load(Ordering::SeqCst) {
                p.fetch_max(rss_kib(pid), Ordering::SeqCst);
                thread::sleep(Duration::from_millis(100));
            }
        });
        RssSampler {
            peak,
            stop,
            thread: Some(thread),
        }
    }
    pub fn peak_kib(&self) -> u64 {
        self.peak.load(Ordering::SeqCst)
    }
}

impl Drop for RssSampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

pub struct Fixture {
    pub server: Server,
    pub _ffmpeg: Publisher,
    pub viewer: JsonTool,
    /// RSS (KiB) with the stream live and the viewer decoding, settled.
    pub baseline_kib: u64,
    _serial: MutexGuard<'static, ()>,
}

/// Where an attack started: log position, viewer frames, CPU time.
pub struct Mark {
    pub attack: String,
    pub log: usize,
    pub frames: u64,
    pub cpu: Duration,
    pub at: Instant,
    pub rss: RssSampler,
}

impl Fixture {
    pub fn start() -> Fixture {
        Fixture::start_with(ServerOpts::default())
    }

    pub fn start_with(opts: ServerOpts) -> Fixture {
        let serial = serial();
        raise_nofile();
        let server = Server::start_with(opts);
        let ffmpeg = Publisher::ffmpeg(&server.publish_url(STREAM), FfmpegOpts::default());
        server.wait_live(STREAM, LIVE_TIMEOUT);
        let viewer = aiortc_viewer(
            &server.whep_url(STREAM),
            ViewerOpts {
                duration_s: Some(600.0),
                timeout_s: 600.0,
                ..ViewerOpts::default()
            },
        );
        viewer.wait_for("the viewer to decode 30 frames", MEDIA_TIMEOUT, |v| {
            v["type"] == "progress" && video_frames(v) >= 30
        });
        let baseline_kib = settled_rss(server.pid());
        println!("fixture: baseline RSS {} KiB", baseline_kib);
        Fixture {
            server,
            _ffmpeg: ffmpeg,
            viewer,
            baseline_kib,
            _serial: serial,
        }
    }

    pub fn pid(&self) -> u32 {
        self.server.pid()
    }

    pub fn frames(&self) -> u64 {
        self.viewer
            .last_of("progress")
            .map(|v| video_frames(&v))
            .unwrap_or(0)
    }

    /// Notes where `attack` starts (and starts sampling the peak RSS).
    pub fn mark(&self, attack: &str) -> Mark {
        println!("attack: {attack}");
        Mark {
            attack: attack.to_string(),
            log: self.server.log_len(),
            frames: self.frames(),
            cpu: cpu_time(self.pid()),
            at: Instant::now(),
            rss: RssSampler::start(self.pid()),
        }
    }

    /// The server's log lines since `m`.
    pub fn log_since(&self, m: &Mark) -> Vec<String> {
        self.server.log_lines().split_off(m.log)
    }

    /// The checks after every attack. `max_log_lines`: how many log lines
    /// the whole attack may cause (its refusals logged at most once per
    /// interval, not once per connection or message).
    pub fn after(&mut self, m: Mark, max_log_lines: usize) {
        let attack = m.attack.clone();
        // 1. Alive.
        if !self.server.is_running() {
            panic!(
                "[{attack}] roomcast is no longer running; log tail:\n{}",
                self.server.log_tail(60)
            );
        }
        // 2. /healthz in under a second.
        let t = Instant::now();
        let r = http::request_timeout(
            "GET",
            &self.server.url("/healthz"),
            &[],
            None,
            Duration::from_secs(1),
        );
        let took = t.elapsed();
        match r {
            Ok(r) if r.status == 200 && took < Duration::from_secs(1) => {}
            Ok(r) => panic!(
                "[{attack}] /healthz answered {} in {took:?}: {}",
                r.status,
                r.text()
            ),
            Err(e) => panic!("[{attack}] /healthz failed after {took:?}: {e}"),
        }
        // 3. The viewer kept decoding: 15 more frames than before the attack
        //    and than right now.
        let need = self.frames().max(m.frames) + 15;
        let cursor = self.viewer.cursor();
        self.viewer.wait_for_from(
            cursor,
            &format!("[{attack}] the viewer to keep decoding (to {need} frames)"),
            Duration::from_secs(30),
            |v| v["type"] == "progress" && video_frames(v) >= need,
        );
        let pid = self.pid();
        // 4. Logged at most once per interval; never a panic.
        let lines = self.log_since(&m);
        for l in &lines {
            assert!(
                !l.contains("panicked") && !l.contains("overflowed its stack"),
                "[{attack}] the server panicked: {l}"
            );
        }
        assert!(
            lines.len() <= max_log_lines,
            "[{attack}] {} log lines during the attack (at most {max_log_lines} allowed: \
             a refusal is logged at most once per interval); first ones:\n{}",
            lines.len(),
            lines
                .iter()
                .take(25)
                .cloned()
                .collect::<Vec<_>>()
                .join("\n")
        );
        // 5. RSS back within 20 % of the baseline.
        let limit = (self.baseline_kib as f64 * (1.0 + RSS_SLACK)) as u64;
        let peak = m.rss.peak_kib();
        let t = Instant::now();
        let back = poll_until(RSS_SETTLE, || rss_kib(pid) <= limit);
        let now = rss_kib(pid);
        println!(
            "[{attack}] RSS baseline {} KiB, peak {peak} KiB, after {now} KiB (limit {limit} KiB, waited {:.1?})",
            self.baseline_kib,
            t.elapsed()
        );
        if !back {
            let trimmed = rss_after_malloc_trim(pid);
            panic!(
                "[{attack}] RSS not back within {:.0} % of the baseline after {RSS_SETTLE:?}: \
                 baseline {} KiB, peak {peak} KiB, now {now} KiB; {}",
                RSS_SLACK * 100.0,
                self.baseline_kib,
                match trimmed {
                    Some(t) if t <= limit => format!(
                        "after malloc_trim(0) in the server {t} KiB: glibc keeps the freed \
                         memory, the server should give it back (malloc_trim or another allocator)"
                    ),
                    Some(t) =>
                        format!("after malloc_trim(0) in the server still {t} KiB: held, not freed"),
                    None => "(no gdb to try malloc_trim)".to_string(),
                }
            );
        }
        for l in lines.iter().take(5) {
            println!("[{attack}] log: {}", truncate(l, 300));
        }
        println!(
            "[{attack}] ok: {} log lines, {:.2?} server CPU, {:.1?} wall",
            lines.len(),
            cpu_time(pid).saturating_sub(m.cpu),
            m.at.elapsed()
        );
    }
}

/// Diagnosis only, when RSS did not come back: makes the server call glibc's
/// `malloc_trim(0)` (through gdb, if installed) and returns its RSS after.
/// If that brings RSS back, the memory was freed but kept by the allocator.
fn rss_after_malloc_trim(pid: u32) -> Option<u64> {
    let out = std::process::Command::new("gdb")
        .args([
            "-p",
            &pid.to_string(),
            "-batch",
            "-ex",
            "call (int)malloc_trim(0)",
        ])
        .stdin(std::process::Stdio::null())
        .output()
        .ok()?;
    out.status.success().then(|| rss_kib(pid))
}

/// RSS once it stops moving: two samples a second apart within 2 % (10 s at most).
fn settled_rss(pid: u32) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut last = rss_kib(pid);
    loop {
        let t = Instant::now();
        poll_until(Duration::from_secs(1), || {
            t.elapsed() >= Duration::from_secs(1)
        });
        let now = rss_kib(pid);
        let diff = now.abs_diff(last) as f64 / last.max(1) as f64;
        if diff < 0.02 || Instant::now() >= deadline {
            return now.max(last);
        }
        last = now;
    }
}

/// `[connections]` timeouts in [`hardened_opts`]: nothing sent, an HTTP
/// head not complete, and no byte either way (the server's minimum is 30 s).
pub const FIRST_BYTES_TIMEOUT: Duration = Duration::from_secs(2);
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(2);
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// A 1 MiB body limit, so a 450 KB offer is within it.
pub fn big_body_opts() -> ServerOpts {
    ServerOpts {
        http_extra: "max_body_bytes = 1048576".into(),
        ..ServerOpts::default()
    }
}

/// The server with short connection timeouts, so the connection floods end quickly.
pub fn hardened_opts() -> ServerOpts {
    ServerOpts {
        extra_toml: format!(
            "[connections]\nfirst_bytes_timeout_secs = {}\nhttp_header_timeout_secs = {}\nidle_timeout_secs = {}\n",
            FIRST_BYTES_TIMEOUT.as_secs(),
            HEADER_TIMEOUT.as_secs(),
            IDLE_TIMEOUT.as_secs()
        ),
        ..ServerOpts::default()
    }
}

/// The runtime the connection floods run their clients on.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// Source address `127.0.0.(2 + i % 100)`: a flood comes from 100
/// addresses, so per-address caps alone do not end it; the timeouts must.
pub fn source(i: usize) -> std::net::SocketAddr {
    use std::net::{IpAddr, Ipv4Addr, SocketAddr};
    SocketAddr::new(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2 + (i % 100) as u8)), 0)
}
