//! Shared harness for roomcast's end-to-end tests: the real `roomcast` binary,
//! ffmpeg publishers, the aiortc WHEP viewer (`tests/py/whep_viewer.py`) and the
//! headless Chromium player (`tests/browser/play.mjs`), all on loopback.
//!
//! Rules kept here so every test follows them:
//! * never sleep to synchronise: wait on a condition with a deadline
//!   ([`wait_until`], [`Server::wait_for_log`], [`JsonTool::wait_for`]);
//! * every child process is killed when its handle drops, and on a failing
//!   test its output tail is printed so the failure can be read from the log;
//! * media tests take [`serial`] so that only one of them loads the 2 cores.

#![allow(dead_code)]

pub mod clock;
pub mod cluster;
pub mod control;
pub mod faults;
pub mod federation;
pub mod http;
pub mod images;
pub mod impair;
pub mod matrix;
pub mod nginx;
pub mod postgres;
pub mod publishers;
pub mod raw_rtmp;
pub mod restream;
pub mod rtc_client;
pub mod rtmp;
pub mod stop;
pub mod synapse;
pub mod tap;
pub mod tls;
pub mod ws;

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::Value;

pub use http::HttpResponse;

/// The stream every test publishes to and watches.
pub const STREAM: &str = "t1";
/// A second configured stream, for inputs that must not disturb [`STREAM`].
pub const STREAM2: &str = "t2";

/// Generous deadlines: the machine has 2 cores and runs ffmpeg, the server,
/// a browser or aiortc at once.
pub const START_TIMEOUT: Duration = Duration::from_secs(60);
pub const LIVE_TIMEOUT: Duration = Duration::from_secs(45);
pub const MEDIA_TIMEOUT: Duration = Duration::from_secs(60);

// ---------------------------------------------------------------------------
// Small utilities
// ---------------------------------------------------------------------------

/// Serialises the heavy media tests inside one test binary (cargo runs test
/// binaries one after another, so this makes them serial overall).
pub fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

pub fn manifest_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// An example's debug binary (`cargo test` builds the examples; a single
/// `--test` does not: then `cargo build --example NAME`).
pub fn example_bin(name: &str) -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map_or_else(|| manifest_dir().join("target"), PathBuf::from);
    let bin = target.join("debug/examples").join(name);
    assert!(
        bin.exists(),
        "{} not found: cargo build --example {name}",
        bin.display()
    );
    bin
}

/// Polls `f` every 50 ms until it returns `Some`, or panics after `timeout`
/// naming `what` was awaited.
pub fn wait_until<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        if Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        thread::sleep(Duration::from_millis(50));
    }
}

/// Like [`wait_until`] with a boolean condition; returns whether it became true.
pub fn poll_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(50));
    }
}

/// 128 random bits as hex, from the std hasher's per-process random keys.
pub fn random_hex() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut out = String::new();
    for _ in 0..2 {
        let mut h = RandomState::new().build_hasher();
        h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
        h.write_u128(
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap()
                .as_nanos(),
        );
        h.write_u32(std::process::id());
        out.push_str(&format!("{:016x}", h.finish()));
    }
    out
}

/// Random bytes (not cryptographic; for garbage input).
pub fn random_bytes(n: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(n + 16);
    while out.len() < n {
        let mut h = RandomState::new().build_hasher();
        h.write_usize(out.len());
        out.extend_from_slice(&h.finish().to_le_bytes());
    }
    out.truncate(n);
    out
}

/// A directory removed on drop (kept when the test fails, for inspection).
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    pub fn new(prefix: &str) -> TempDir {
        let path = std::env::temp_dir().join(format!("{prefix}-{}", &random_hex()[..12]));
        std::fs::create_dir_all(&path).expect("create temp dir");
        TempDir { path }
    }
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if thread::panicking() {
            eprintln!("[harness] kept {} for inspection", self.path.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

/// Removes terminal colour codes, in case a tool colours its output anyway.
pub fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            if chars.peek() == Some(&'[') {
                chars.next();
                for c in chars.by_ref() {
                    if c.is_ascii_alphabetic() {
                        break;
                    }
                }
            }
            continue;
        }
        out.push(c);
    }
    out
}

// ---------------------------------------------------------------------------
// Output capture
// ---------------------------------------------------------------------------

/// Lines of a child's output, appended by a drain thread, waitable.
#[derive(Default)]
pub struct Lines {
    inner: Mutex<LinesInner>,
    changed: Condvar,
}

#[derive(Default)]
struct LinesInner {
    lines: Vec<String>,
    /// Drain threads still reading into this buffer.
    open: usize,
    closed: bool,
}

impl Lines {
    pub fn push(&self, line: String) {
        self.inner.lock().unwrap().lines.push(line);
        self.changed.notify_all();
    }
    pub fn snapshot(&self) -> Vec<String> {
        self.inner.lock().unwrap().lines.clone()
    }
    pub fn len(&self) -> usize {
        self.inner.lock().unwrap().lines.len()
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    fn open_writer(&self) {
        let mut g = self.inner.lock().unwrap();
        g.open += 1;
        // A restarted process writes into the same buffer again.
        g.closed = false;
    }
    fn close(&self) {
        let mut g = self.inner.lock().unwrap();
        g.open = g.open.saturating_sub(1);
        g.closed = g.open == 0;
        drop(g);
        self.changed.notify_all();
    }
    /// True once the stream reached EOF (the process closed it or exited).
    pub fn is_closed(&self) -> bool {
        self.inner.lock().unwrap().closed
    }
    /// Waits until a line at index >= `from` satisfies `pred` and returns it;
    /// `None` at the deadline or when the stream ended without one.
    pub fn wait_from(
        &self,
        from: usize,
        timeout: Duration,
        mut pred: impl FnMut(&str) -> bool,
    ) -> Option<String> {
        let deadline = Instant::now() + timeout;
        let mut guard = self.inner.lock().unwrap();
        let mut checked = from;
        loop {
            while checked < guard.lines.len() {
                if pred(&guard.lines[checked]) {
                    return Some(guard.lines[checked].clone());
                }
                checked += 1;
            }
            let now = Instant::now();
            if now >= deadline || guard.closed {
                return None;
            }
            let wait = (deadline - now).min(Duration::from_millis(200));
            guard = self.changed.wait_timeout(guard, wait).unwrap().0;
        }
    }
    pub fn tail(&self, n: usize) -> String {
        let guard = self.inner.lock().unwrap();
        let start = guard.lines.len().saturating_sub(n);
        guard.lines[start..].join("\n")
    }
}

/// Spawns a thread that reads `reader` line by line into `lines`.
pub fn drain(reader: impl Read + Send + 'static, lines: Arc<Lines>) -> thread::JoinHandle<()> {
    lines.open_writer();
    thread::spawn(move || {
        let mut r = BufReader::new(reader);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match r.read_until(b'\n', &mut buf) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    let s = String::from_utf8_lossy(&buf);
                    lines.push(strip_ansi(s.trim_end_matches(['\r', '\n'])));
                }
            }
        }
        lines.close();
    })
}

fn kill_and_wait(child: &mut Child, grace: Duration) -> Option<ExitStatus> {
    if let Ok(Some(st)) = child.try_wait() {
        return Some(st);
    }
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if let Ok(Some(st)) = child.try_wait() {
            return Some(st);
        }
        thread::sleep(Duration::from_millis(25));
    }
    let _ = child.kill();
    child.wait().ok()
}

fn wait_exit(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(Some(st)) = child.try_wait() {
            return Some(st);
        }
        if Instant::now() >= deadline {
            return None;
        }
        thread::sleep(Duration::from_millis(25));
    }
}

// ---------------------------------------------------------------------------
// The roomcast server
// ---------------------------------------------------------------------------

pub struct ServerOpts {
    /// `[webrtc] tcp_force`.
    pub tcp_force: bool,
    /// Extra lines inside `[webrtc]`.
    pub webrtc_extra: String,
    /// `(name, key)` of the `[[streams]]`; default: t1 and t2 with random keys.
    pub streams: Vec<(String, String)>,
    /// Extra lines inside `[http]`, `[rtmp]` and `[ome]` (e.g. `tls_listen = …`).
    pub http_extra: String,
    pub rtmp_extra: String,
    pub ome_extra: String,
    /// Appended at the end of the file (new tables only).
    pub extra_toml: String,
    /// `http.listen` (default `127.0.0.1:0`): a fixed address the homeserver
    /// can be told about before roomcast starts.
    pub http_listen: Option<String>,
    /// Keep config and database here instead of a fresh temp dir, so a
    /// restarted server finds its state (the caller owns the directory).
    pub state_dir: Option<PathBuf>,
    /// `public_url` (default `http://127.0.0.1:8080`, which nothing listens on):
    /// set it to the server's real address when a browser must open the links
    /// roomcast writes (the widget URL in a room, go-live links).
    pub public_url: Option<String>,
    /// `storage.database_url` (default: SQLite in the state directory).
    pub database_url: Option<String>,
    /// Extra environment for the server process (e.g. `LD_PRELOAD`).
    pub env: Vec<(String, String)>,
}

impl Default for ServerOpts {
    fn default() -> Self {
        ServerOpts {
            tcp_force: false,
            webrtc_extra: String::new(),
            streams: vec![
                (STREAM.to_string(), random_hex()),
                (STREAM2.to_string(), random_hex()),
            ],
            http_extra: String::new(),
            rtmp_extra: String::new(),
            ome_extra: String::new(),
            extra_toml: String::new(),
            http_listen: None,
            state_dir: None,
            public_url: None,
            database_url: None,
            env: Vec::new(),
        }
    }
}

pub struct Server {
    child: Child,
    /// None when the caller owns the state directory.
    _dir: Option<TempDir>,
    pub state_dir: PathBuf,
    pub config_path: PathBuf,
    pub http: SocketAddr,
    pub rtmp: SocketAddr,
    pub webrtc_udp: Option<SocketAddr>,
    pub webrtc_tcp: Option<SocketAddr>,
    /// Every `listening service=… addr=…` line: "ome", "ome-tls", "https", "rtmps", …
    pub listening: std::collections::HashMap<String, SocketAddr>,
    /// `(name, key)` of the configured streams.
    pub streams: Vec<(String, String)>,
    /// stderr and stdout lines (stderr is where the logs go).
    log: Arc<Lines>,
}

/// `roomcast` with the test's own ROOMCAST_* variables (ROOMCAST_TEST_…) removed:
/// the server reads every ROOMCAST_<SECTION>__<KEY> as a config override.
pub fn roomcast_cmd() -> Command {
    let mut cmd = Command::new(roomcast_bin());
    for (k, _) in std::env::vars_os() {
        let k_str = k.to_string_lossy();
        if k_str.starts_with("ROOMCAST_") && k_str != "ROOMCAST_LOG" {
            cmd.env_remove(k);
        }
    }
    cmd
}

/// The binary under test: `$ROOMCAST_TEST_BIN`, else the one cargo built for this
/// test (a copy in the environment keeps a shared target dir's rebuilds out of a run).
pub fn roomcast_bin() -> PathBuf {
    std::env::var_os("ROOMCAST_TEST_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_roomcast")))
}

/// Parses `... listening service="http" addr=127.0.0.1:PORT ...`.
pub fn parse_listening(line: &str) -> Option<(String, SocketAddr)> {
    let at = line.find("listening")?;
    let rest = &line[at..];
    let field = |name: &str| -> Option<String> {
        let i = rest.find(&format!("{name}="))? + name.len() + 1;
        let v = &rest[i..];
        let v = v.trim_start_matches('"');
        let end = v
            .find(|c: char| c == '"' || c == ',' || c.is_whitespace())
            .unwrap_or(v.len());
        Some(v[..end].to_string())
    };
    let service = field("service")?;
    let addr = field("addr")?.parse().ok()?;
    Some((service, addr))
}

impl Server {
    /// Starts roomcast with the default streams (t1, t2) and `extra_toml`
    /// appended to the configuration file.
    pub fn start(extra_toml: &str) -> Server {
        Server::start_with(ServerOpts {
            extra_toml: extra_toml.to_string(),
            ..ServerOpts::default()
        })
    }

    pub fn start_with(opts: ServerOpts) -> Server {
        let (owned_dir, state_dir) = match &opts.state_dir {
            Some(p) => (None, p.clone()),
            None => {
                let d = TempDir::new("roomcast-test");
                let p = d.path().to_path_buf();
                (Some(d), p)
            }
        };
        let db = opts
            .database_url
            .clone()
            .unwrap_or_else(|| format!("sqlite://{}", state_dir.join("roomcast.db").display()));
        let mut toml = format!(
            "public_url = \"{}\"\n\
             [http]\nlisten = \"{}\"\n{}\n\
             [rtmp]\nlisten = \"127.0.0.1:0\"\n{}\n\
             [ome]\nlisten = \"127.0.0.1:0\"\n{}\n\
             [webrtc]\nudp = \"127.0.0.1:0\"\ntcp = \"127.0.0.1:0\"\n{}\
             tcp_force = {}\n{}\n\
             [storage]\ndatabase_url = \"{}\"\n",
            opts.public_url
                .as_deref()
                .unwrap_or("http://127.0.0.1:8080"),
            opts.http_listen.as_deref().unwrap_or("127.0.0.1:0"),
            opts.http_extra,
            opts.rtmp_extra,
            opts.ome_extra,
            // webrtc_extra may set its own (e.g. an unreachable address).
            if opts.webrtc_extra.contains("public_ips") {
                ""
            } else {
                "public_ips = []\n"
            },
            opts.tcp_force,
            opts.webrtc_extra,
            db
        );
        for (name, key) in &opts.streams {
            toml.push_str(&format!(
                "[[streams]]\nname = \"{name}\"\nkey = \"{key}\"\n"
            ));
        }
        toml.push_str(&opts.extra_toml);
        toml.push('\n');
        let config_path = state_dir.join("roomcast.toml");
        std::fs::write(&config_path, &toml).expect("write config");

        let mut cmd = Command::new(roomcast_bin());
        cmd.arg("serve")
            .arg("--config")
            .arg(&config_path)
            .current_dir(&state_dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .env("NO_COLOR", "1");
        // The server reads ROOMCAST_<SECTION>__<KEY> overrides: keep the
        // test's own settings (and a developer's shell) out of its config.
        // ROOMCAST_LOG (the log filter) passes, to debug a test.
        for (k, _) in std::env::vars_os() {
            let k_str = k.to_string_lossy();
            if k_str.starts_with("ROOMCAST_") && k_str != "ROOMCAST_LOG" {
                cmd.env_remove(k);
            }
        }
        for (k, v) in &opts.env {
            cmd.env(k, v);
        }
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", roomcast_bin().display()));
        let log = Arc::new(Lines::default());
        drain(child.stderr.take().unwrap(), log.clone());
        drain(child.stdout.take().unwrap(), log.clone());

        let mut server = Server {
            child,
            _dir: owned_dir,
            state_dir,
            config_path,
            http: "0.0.0.0:0".parse().unwrap(),
            rtmp: "0.0.0.0:0".parse().unwrap(),
            webrtc_udp: None,
            webrtc_tcp: None,
            listening: Default::default(),
            streams: opts.streams,
            log,
        };
        let ready = server
            .log
            .wait_from(0, START_TIMEOUT, |l| l.contains("roomcast ready"));
        if ready.is_none() {
            let status = server.child.try_wait().ok().flatten();
            panic!(
                "roomcast did not log 'roomcast ready' within {START_TIMEOUT:?} (exit status: {status:?}).\n\
                 config:\n{toml}\nlog:\n{}",
                server.log.tail(80)
            );
        }
        let mut seen = std::collections::HashMap::new();
        for line in server.log.snapshot() {
            if let Some((service, addr)) = parse_listening(&line) {
                seen.insert(service, addr);
            }
        }
        let need = |s: &str| -> SocketAddr {
            *seen.get(s).unwrap_or_else(|| {
                panic!(
                    "no 'listening service=\"{s}\" addr=...' line before 'roomcast ready'; log:\n{}",
                    server.log.tail(80)
                )
            })
        };
        server.http = need("http");
        server.rtmp = need("rtmp");
        server.webrtc_udp = seen.get("webrtc-udp").copied();
        server.webrtc_tcp = seen.get("webrtc-tcp").copied();
        server.listening = seen;
        server
    }

    pub fn key(&self, stream: &str) -> &str {
        &self
            .streams
            .iter()
            .find(|(n, _)| n == stream)
            .unwrap_or_else(|| panic!("no stream {stream} configured"))
            .1
    }

    pub fn base_url(&self) -> String {
        format!("http://{}", self.http)
    }
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.http, path)
    }
    pub fn whep_url(&self, stream: &str) -> String {
        self.url(&format!("/whep/{stream}"))
    }
    pub fn whip_url(&self, stream: &str) -> String {
        self.url(&format!("/whip/{stream}"))
    }
    /// The address of a `listening service=…` line; panics naming it.
    pub fn service(&self, name: &str) -> SocketAddr {
        *self
            .listening
            .get(name)
            .unwrap_or_else(|| panic!("no 'listening service=\"{name}\"' log line"))
    }
    pub fn rtmp_url(&self, key: &str) -> String {
        format!("rtmp://{}/live/{key}", self.rtmp)
    }
    /// The RTMP URL with the right key of `stream`.
    pub fn publish_url(&self, stream: &str) -> String {
        self.rtmp_url(self.key(stream))
    }

    pub fn log_lines(&self) -> Vec<String> {
        self.log.snapshot()
    }
    /// The "whep viewer negotiated" lines: one per WHEP POST the server took.
    pub fn whep_negotiated(&self) -> Vec<String> {
        self.log_lines()
            .into_iter()
            .filter(|l| l.contains("whep viewer negotiated"))
            .collect()
    }
    /// Waits for the server's "WHEP viewer restarted ICE" and checks that the
    /// restart was of the one WHEP session it negotiated (a page that kept
    /// its session, not one that made a new one).
    pub fn wait_whep_restart_of_the_only_session(&self) {
        let line = self.wait_for_log("WHEP viewer restarted ICE", Duration::from_secs(5));
        let posts = self.whep_negotiated();
        assert_eq!(posts.len(), 1, "WHEP sessions negotiated: {posts:?}");
        assert_eq!(
            log_field(&line, "session"),
            log_field(&posts[0], "viewer"),
            "the restarted session is not the one the page made: {line} / {}",
            posts[0]
        );
    }
    pub fn log_len(&self) -> usize {
        self.log.len()
    }
    pub fn log_tail(&self, n: usize) -> String {
        self.log.tail(n)
    }
    /// Waits for a log line containing `pattern`; panics with the log tail.
    pub fn wait_for_log(&self, pattern: &str, timeout: Duration) -> String {
        self.wait_for_log_from(0, pattern, timeout)
    }
    /// Same, only looking at lines from index `from` on (see [`Server::log_len`]).
    pub fn wait_for_log_from(&self, from: usize, pattern: &str, timeout: Duration) -> String {
        self.log
            .wait_from(from, timeout, |l| l.contains(pattern))
            .unwrap_or_else(|| {
                panic!(
                    "no server log line containing {pattern:?} within {timeout:?}; log tail:\n{}",
                    self.log.tail(60)
                )
            })
    }

    /// The server's process id (for /proc: RSS, CPU time).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    pub fn get(&self, path: &str) -> HttpResponse {
        http::request("GET", &self.url(path), &[], None)
            .unwrap_or_else(|e| panic!("GET {path}: {e}"))
    }

    /// The value of an unlabelled counter or gauge in `/metrics`.
    pub fn metric(&self, name: &str) -> u64 {
        self.get("/metrics")
            .text()
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("{name} not in /metrics"))
    }

    pub fn post_sdp(&self, path: &str, body: &[u8]) -> HttpResponse {
        http::request(
            "POST",
            &self.url(path),
            &[("Content-Type", "application/sdp")],
            Some(body),
        )
        .unwrap_or_else(|e| panic!("POST {path}: {e}"))
    }

    /// `GET /api/v1/streams/{name}` as JSON, if it answers 200.
    pub fn api_stream(&self, name: &str) -> Option<Value> {
        let r = http::request(
            "GET",
            &self.url(&format!("/api/v1/streams/{name}")),
            &[],
            None,
        )
        .ok()?;
        if r.status != 200 {
            return None;
        }
        r.json().ok()
    }

    /// Waits until the API reports the stream live; returns the stream object.
    pub fn wait_live(&self, name: &str, timeout: Duration) -> Value {
        let mut last = None;
        let deadline = Instant::now() + timeout;
        loop {
            let v = self.api_stream(name);
            if let Some(v) = &v
                && v["live"] == Value::Bool(true)
            {
                return v.clone();
            }
            last = v.or(last);
            if Instant::now() >= deadline {
                panic!(
                    "stream {name} not live within {timeout:?}; last API answer {last:?}; log tail:\n{}",
                    self.log.tail(60)
                );
            }
            thread::sleep(Duration::from_millis(100));
        }
    }

    /// Asserts the process runs and `/healthz` answers 200.
    pub fn assert_healthy(&mut self, context: &str) {
        if let Ok(Some(st)) = self.child.try_wait() {
            panic!(
                "roomcast exited ({st}) {context}; log tail:\n{}",
                self.log.tail(80)
            );
        }
        match http::request("GET", &self.url("/healthz"), &[], None) {
            Ok(r) if r.status == 200 => {}
            Ok(r) => panic!("/healthz answered {} {context}: {}", r.status, r.text()),
            Err(e) => panic!(
                "/healthz failed {context}: {e}; log tail:\n{}",
                self.log.tail(60)
            ),
        }
    }

    /// Asserts no log line contains any configured stream key.
    pub fn assert_no_key_logged(&self) {
        for line in self.log.snapshot() {
            for (name, key) in &self.streams {
                assert!(
                    !line.contains(key.as_str()),
                    "the key of stream {name} appears in the log: {line}"
                );
            }
        }
    }
}

/// `ROOMCAST_TEST_SHOW_LOG=1`: print the server's whole log when a test ends,
/// even when it passed (with `-- --nocapture` to see it).
fn show_log() -> bool {
    std::env::var_os("ROOMCAST_TEST_SHOW_LOG").is_some_and(|v| v != "0" && !v.is_empty())
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if show_log() && !thread::panicking() {
            eprintln!("[harness] roomcast log:\n{}", self.log.tail(usize::MAX));
        }
        if thread::panicking() {
            eprintln!(
                "[harness] roomcast log tail ({}):\n{}",
                self.config_path.display(),
                self.log.tail(150)
            );
        }
    }
}

// ---------------------------------------------------------------------------
// ffmpeg publisher
// ---------------------------------------------------------------------------

#[derive(Clone, Debug)]
pub struct FfmpegOpts {
    /// `-bf`: 0 adds `-tune zerolatency`; more leaves the tune out (it forces 0).
    pub bframes: u32,
    pub width: u32,
    pub height: u32,
    pub fps: u32,
    /// `-g` (keyframe interval in frames).
    pub gop: u32,
    pub sample_rate: u32,
    pub audio: bool,
    /// `-t`: stop after this many seconds.
    pub duration_s: Option<f64>,
    /// `-profile:v` (baseline, main, high); None: x264's choice (high).
    pub profile: Option<&'static str>,
}

impl Default for FfmpegOpts {
    fn default() -> Self {
        FfmpegOpts {
            bframes: 0,
            width: 1280,
            height: 720,
            fps: 30,
            gop: 30,
            sample_rate: 44100,
            audio: true,
            duration_s: None,
            profile: None,
        }
    }
}

impl FfmpegOpts {
    /// 640×360: for tests whose figures should be the server's or the
    /// network's, not a 2-core machine's encoder's and software decoder's.
    pub fn small() -> Self {
        FfmpegOpts {
            width: 640,
            height: 360,
            ..FfmpegOpts::default()
        }
    }
}

pub struct Publisher {
    child: Child,
    stdin: Option<ChildStdin>,
    pub url: String,
    log: Arc<Lines>,
    pub started: Instant,
}

impl Publisher {
    /// `ffmpeg -re` testsrc2 (+ sine) → H.264/AAC → FLV over RTMP to `url`.
    pub fn ffmpeg(url: &str, o: FfmpegOpts) -> Publisher {
        let mut cmd = Command::new("ffmpeg");
        cmd.args(["-hide_banner", "-nostats", "-loglevel", "info", "-re"]);
        cmd.args(["-f", "lavfi", "-i"]).arg(format!(
            "testsrc2=size={}x{}:rate={}",
            o.width, o.height, o.fps
        ));
        if o.audio {
            cmd.args(["-f", "lavfi", "-i"])
                .arg(format!("sine=frequency=440:sample_rate={}", o.sample_rate));
        }
        if let Some(t) = o.duration_s {
            cmd.arg("-t").arg(format!("{t}"));
        }
        cmd.args(["-c:v", "libx264", "-preset", "veryfast"]);
        if o.bframes == 0 {
            cmd.args(["-tune", "zerolatency"]);
        }
        cmd.arg("-bf").arg(o.bframes.to_string());
        cmd.arg("-g").arg(o.gop.to_string());
        if let Some(p) = o.profile {
            cmd.args(["-profile:v", p]);
        }
        cmd.args(["-pix_fmt", "yuv420p"]);
        if o.audio {
            cmd.args(["-c:a", "aac", "-b:a", "128k", "-ar"])
                .arg(o.sample_rate.to_string());
        }
        cmd.args(["-f", "flv"]).arg(url);
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().unwrap_or_else(|e| {
            panic!("spawn ffmpeg: {e} (install it with: apt-get install ffmpeg)")
        });
        let log = Arc::new(Lines::default());
        drain(child.stderr.take().unwrap(), log.clone());
        Publisher {
            stdin: child.stdin.take(),
            child,
            url: url.to_string(),
            log,
            started: Instant::now(),
        }
    }

    /// Exit status if ffmpeg has exited.
    pub fn try_status(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        wait_exit(&mut self.child, timeout)
    }

    /// Stops ffmpeg the way a person does ('q'), so it unpublishes and closes
    /// the connection cleanly; killed if it does not exit in `timeout`.
    pub fn stop(&mut self, timeout: Duration) -> Option<ExitStatus> {
        if let Some(mut stdin) = self.stdin.take() {
            let _ = stdin.write_all(b"q");
            let _ = stdin.flush();
        }
        kill_and_wait(&mut self.child, timeout)
    }

    /// Stops ffmpeg where it is (SIGSTOP) or lets it go on (SIGCONT): a
    /// publisher that pauses with its connection open, as one whose uplink
    /// stalls does.
    pub fn pause(&self, paused: bool) {
        let sig = if paused { libc::SIGSTOP } else { libc::SIGCONT };
        // SAFETY: a signal to our own child, which has not been waited for.
        let r = unsafe { libc::kill(self.child.id() as i32, sig) };
        assert_eq!(
            r,
            0,
            "kill({sig}) ffmpeg: {}",
            std::io::Error::last_os_error()
        );
    }

    /// Kills ffmpeg abruptly (no unpublish).
    pub fn kill(&mut self) -> Option<ExitStatus> {
        self.stdin = None;
        kill_and_wait(&mut self.child, Duration::ZERO)
    }

    pub fn log_tail(&self, n: usize) -> String {
        self.log.tail(n)
    }
}

impl Drop for Publisher {
    fn drop(&mut self) {
        self.stdin = None;
        let _ = self.child.kill();
        let _ = self.child.wait();
        if thread::panicking() {
            eprintln!(
                "[harness] ffmpeg ({}) output tail:\n{}",
                self.url,
                self.log.tail(30)
            );
        }
    }
}

// ---------------------------------------------------------------------------
// JSON-line tools: the aiortc viewer and the Chromium player
// ---------------------------------------------------------------------------

/// A child process that prints one JSON object per stdout line.
pub struct JsonTool {
    name: String,
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: Arc<Lines>,
    stderr: Arc<Lines>,
}

impl JsonTool {
    pub fn spawn(name: &str, mut cmd: Command) -> JsonTool {
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {name} ({cmd:?}): {e}"));
        let stdout = Arc::new(Lines::default());
        let stderr = Arc::new(Lines::default());
        drain(child.stdout.take().unwrap(), stdout.clone());
        drain(child.stderr.take().unwrap(), stderr.clone());
        JsonTool {
            name: name.to_string(),
            stdin: child.stdin.take(),
            child,
            stdout,
            stderr,
        }
    }

    /// Every JSON line printed so far (other lines are skipped).
    pub fn events(&self) -> Vec<Value> {
        self.stdout
            .snapshot()
            .iter()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    pub fn events_of(&self, kind: &str) -> Vec<Value> {
        self.events()
            .into_iter()
            .filter(|v| v["type"] == kind)
            .collect()
    }

    pub fn last_of(&self, kind: &str) -> Option<Value> {
        self.events_of(kind).pop()
    }

    /// Number of stdout lines so far (a cursor for [`JsonTool::wait_for_from`]).
    pub fn cursor(&self) -> usize {
        self.stdout.len()
    }

    /// Waits for a JSON line satisfying `pred`, or panics describing `what`
    /// with the tool's output. Fails early if the tool exits without one.
    pub fn wait_for(
        &self,
        what: &str,
        timeout: Duration,
        pred: impl FnMut(&Value) -> bool,
    ) -> Value {
        self.wait_for_from(0, what, timeout, pred)
    }

    pub fn wait_for_from(
        &self,
        from: usize,
        what: &str,
        timeout: Duration,
        mut pred: impl FnMut(&Value) -> bool,
    ) -> Value {
        let started = Instant::now();
        let mut hit = false;
        let found = self.stdout.wait_from(from, timeout, |line| {
            match serde_json::from_str::<Value>(line) {
                Ok(v) if pred(&v) => {
                    hit = true;
                    true
                }
                // The result line is the last one: stop waiting there.
                Ok(v) => v["type"] == "result",
                Err(_) => false,
            }
        });
        match found {
            Some(line) if hit => serde_json::from_str(&line).unwrap(),
            other => panic!(
                "{}: no line for '{what}' after {:.1?} (timeout {timeout:?}; {}); stderr tail:\n{}\nstdout tail:\n{}",
                self.name,
                started.elapsed(),
                match other {
                    Some(result) => format!("the tool finished with {result}"),
                    None if self.stdout.is_closed() => "the tool exited".to_string(),
                    None => "still running".to_string(),
                },
                self.stderr.tail(30),
                self.stdout.tail(15)
            ),
        }
    }

    /// Writes a command line to the tool's stdin.
    pub fn send_line(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("the tool's stdin is open");
        stdin
            .write_all(format!("{line}\n").as_bytes())
            .and_then(|()| stdin.flush())
            .expect("writing to the tool's stdin");
    }

    /// Asks the tool to finish (stdin "stop" and EOF) and returns its result line.
    pub fn stop(&mut self, timeout: Duration) -> Value {
        if let Some(mut stdin) = self.stdin.take() {
            let _ = stdin.write_all(b"stop\n");
            let _ = stdin.flush();
        }
        self.result(timeout)
    }

    /// Waits for the `result` line and the process exit.
    pub fn result(&mut self, timeout: Duration) -> Value {
        let v = self.wait_for("result", timeout, |v| v["type"] == "result");
        if wait_exit(&mut self.child, Duration::from_secs(15)).is_none() {
            let _ = self.child.kill();
        }
        v
    }

    pub fn exit_status(&mut self, timeout: Duration) -> Option<ExitStatus> {
        wait_exit(&mut self.child, timeout)
    }

    /// Kills the tool at once (no clean shutdown: a network loss to the server).
    pub fn kill(&mut self) {
        // SIGKILL before closing stdin: EOF on stdin asks the tool to stop
        // cleanly (a WHIP DELETE), which would race the kill.
        kill_and_wait(&mut self.child, Duration::ZERO);
        self.stdin = None;
    }

    pub fn stderr_tail(&self, n: usize) -> String {
        self.stderr.tail(n)
    }
}

impl Drop for JsonTool {
    fn drop(&mut self) {
        // Closing stdin asks the tool to stop; Chromium is closed by the player.
        self.stdin = None;
        kill_and_wait(&mut self.child, Duration::from_secs(10));
        if thread::panicking() {
            eprintln!(
                "[harness] {} stderr tail:\n{}\n[harness] {} stdout tail:\n{}",
                self.name,
                self.stderr.tail(30),
                self.name,
                self.stdout.tail(10)
            );
        }
    }
}

/// The Python interpreter with aiortc: `$ROOMCAST_TEST_PYTHON`, else `.venv/bin/python`.
pub fn python() -> PathBuf {
    let p = std::env::var_os("ROOMCAST_TEST_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| manifest_dir().join(".venv/bin/python"));
    assert!(
        p.exists(),
        "{} not found: run ./scripts/test.sh (it creates .venv with aiortc), or set ROOMCAST_TEST_PYTHON",
        p.display()
    );
    p
}

/// `node pages.mjs SCENARIO --base … --artifacts tests/artifacts/ARTIFACTS ARGS`:
/// one page scenario of tests/browser/pages.mjs, screenshots under ARTIFACTS.
pub fn pages_scenario(server: &Server, artifacts: &str, scenario: &str, args: &[&str]) -> JsonTool {
    let dir = node_dir();
    let mut cmd =
        Command::new(std::env::var_os("ROOMCAST_TEST_NODE").unwrap_or_else(|| "node".into()));
    cmd.current_dir(&dir)
        .arg(dir.join("pages.mjs"))
        .arg(scenario)
        .arg("--base")
        .arg(server.base_url())
        .arg("--artifacts")
        .arg(manifest_dir().join("tests/artifacts").join(artifacts))
        .args(args);
    JsonTool::spawn(&format!("pages.mjs {scenario}"), cmd)
}

/// Waits for a page scenario's result line and asserts it is ok; returns it.
/// The value of `key=` in a server log line (`viewer=`, `session=`, …).
pub fn log_field(line: &str, key: &str) -> String {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(&format!("{key}=")))
        .unwrap_or_else(|| panic!("no {key}= in {line}"))
        .to_string()
}

pub fn finish_scenario(tool: &mut JsonTool, what: &str, timeout: Duration) -> Value {
    let r = tool.result(timeout);
    println!("{what}: {r}");
    for shot in tool.events_of("shot") {
        println!("{what}: screenshot {}", shot["path"]);
    }
    assert_eq!(r["ok"], true, "{what} failed: {}", r["reason"]);
    r
}

/// The directory with play.mjs and node_modules: `$ROOMCAST_TEST_NODE_DIR`, else tests/browser.
pub fn node_dir() -> PathBuf {
    let d = std::env::var_os("ROOMCAST_TEST_NODE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| manifest_dir().join("tests/browser"));
    assert!(
        d.join("node_modules/playwright-core").exists(),
        "{}/node_modules/playwright-core not found: run ./scripts/test.sh (npm ci in tests/browser), \
         or set ROOMCAST_TEST_NODE_DIR",
        d.display()
    );
    d
}

#[derive(Clone, Debug)]
pub struct ViewerOpts {
    /// Count mode: stop at this many decoded video frames…
    pub frames: u32,
    /// …and this many decoded audio frames (20 ms each).
    pub audio_frames: u32,
    /// Duration mode instead: watch this long, with progress lines.
    pub duration_s: Option<f64>,
    pub timeout_s: f64,
}

impl Default for ViewerOpts {
    fn default() -> Self {
        ViewerOpts {
            frames: 150,
            audio_frames: 50,
            duration_s: None,
            timeout_s: 60.0,
        }
    }
}

/// The aiortc WHEP viewer (`tests/py/whep_viewer.py`), always with progress lines.
pub fn aiortc_viewer(whep_url: &str, o: ViewerOpts) -> JsonTool {
    let mut cmd = Command::new(python());
    cmd.arg(manifest_dir().join("tests/py/whep_viewer.py"))
        .arg(whep_url)
        .arg("--progress")
        .arg("--stdin-control")
        .arg("--frames")
        .arg(o.frames.to_string())
        .arg("--audio-frames")
        .arg(o.audio_frames.to_string())
        .arg("--timeout")
        .arg(o.timeout_s.to_string())
        .env("PYTHONUNBUFFERED", "1");
    if let Some(d) = o.duration_s {
        cmd.arg("--duration").arg(d.to_string());
    }
    JsonTool::spawn("aiortc viewer", cmd)
}

#[derive(Clone, Debug)]
pub struct BrowserOpts {
    pub stream: String,
    /// Stop once framesDecoded reaches this (unless `duration_s` is set).
    pub frames: Option<u64>,
    pub audio_packets: u64,
    pub duration_s: Option<f64>,
    pub timeout_s: f64,
    pub interval_ms: u64,
}

impl Default for BrowserOpts {
    fn default() -> Self {
        BrowserOpts {
            stream: STREAM.to_string(),
            frames: Some(90),
            audio_packets: 50,
            duration_s: None,
            timeout_s: 60.0,
            interval_ms: 250,
        }
    }
}

/// Headless Chromium playing `stream` over WHEP (`tests/browser/play.mjs`).
pub fn chromium_player(server: &Server, o: BrowserOpts) -> JsonTool {
    let dir = node_dir();
    let mut cmd =
        Command::new(std::env::var_os("ROOMCAST_TEST_NODE").unwrap_or_else(|| "node".into()));
    cmd.current_dir(&dir)
        .arg(dir.join("play.mjs"))
        .arg("--base")
        .arg(server.base_url())
        .arg("--stream")
        .arg(&o.stream)
        .arg("--timeout")
        .arg(o.timeout_s.to_string())
        .arg("--interval")
        .arg(o.interval_ms.to_string())
        .arg("--audio-packets")
        .arg(o.audio_packets.to_string())
        .arg("--stdin-control");
    if let Some(d) = o.duration_s {
        cmd.arg("--duration").arg(d.to_string());
    } else if let Some(f) = o.frames {
        cmd.arg("--frames").arg(f.to_string());
    }
    JsonTool::spawn("chromium player", cmd)
}

/// `framesDecoded` of a play.mjs `sample` line (0 when absent).
pub fn frames_decoded(sample: &Value) -> u64 {
    sample["video"]["framesDecoded"].as_u64().unwrap_or(0)
}

/// `packetsReceived` of the audio inbound-rtp in a play.mjs `sample` line.
pub fn audio_packets(sample: &Value) -> u64 {
    sample["audio"]["packetsReceived"].as_u64().unwrap_or(0)
}

/// Lower-case alphanumerics only: "H.264" and "video/H264" both give "h264"-ish.
pub fn norm(s: &str) -> String {
    s.chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .map(|c| c.to_ascii_lowercase())
        .collect()
}

// ---------------------------------------------------------------------------
// SDP
// ---------------------------------------------------------------------------

/// A browser-like recvonly video+audio WHEP offer (what Chromium sends, trimmed),
/// with the given video codecs: "H264" (packetization-mode 1, baseline and high),
/// "VP8", "VP9", "AV1".
pub fn offer_sdp(video_codecs: &[&str]) -> String {
    offer_sdp_h264(video_codecs, &["42e01f", "640c1f"])
}

/// [`offer_sdp`] with these H.264 `profile-level-id`s (packetization-mode 1,
/// payload types 102, 104, …), e.g. Chromium's 42001f, 42e01f, 4d001f,
/// 64001f, or aiortc's 42001f, 42e01f.
pub fn offer_sdp_h264(video_codecs: &[&str], h264_profiles: &[&str]) -> String {
    let mut pts = Vec::new();
    let mut lines = Vec::new();
    let fb = |pt: u32, lines: &mut Vec<String>| {
        for f in ["goog-remb", "transport-cc", "ccm fir", "nack", "nack pli"] {
            lines.push(format!("a=rtcp-fb:{pt} {f}"));
        }
    };
    for codec in video_codecs {
        match *codec {
            "H264" => {
                let pts_h264 = [
                    (102u32, 103u32),
                    (108, 109),
                    (104, 105),
                    (106, 107),
                    (112, 113),
                ];
                assert!(
                    h264_profiles.len() <= pts_h264.len(),
                    "offer_sdp_h264: too many"
                );
                for (&(pt, rtx), plid) in pts_h264.iter().zip(h264_profiles) {
                    pts.extend([pt, rtx]);
                    lines.push(format!("a=rtpmap:{pt} H264/90000"));
                    fb(pt, &mut lines);
                    lines.push(format!(
                        "a=fmtp:{pt} level-asymmetry-allowed=1;packetization-mode=1;profile-level-id={plid}"
                    ));
                    lines.push(format!("a=rtpmap:{rtx} rtx/90000"));
                    lines.push(format!("a=fmtp:{rtx} apt={pt}"));
                }
            }
            "VP8" | "VP9" | "AV1" => {
                let (pt, rtx) = match *codec {
                    "VP8" => (96u32, 97u32),
                    "VP9" => (98, 99),
                    _ => (45, 46),
                };
                pts.extend([pt, rtx]);
                lines.push(format!("a=rtpmap:{pt} {codec}/90000"));
                fb(pt, &mut lines);
                lines.push(format!("a=rtpmap:{rtx} rtx/90000"));
                lines.push(format!("a=fmtp:{rtx} apt={pt}"));
            }
            other => panic!("offer_sdp: unknown codec {other}"),
        }
    }
    let pt_list: Vec<String> = pts.iter().map(u32::to_string).collect();
    let ice = "a=ice-ufrag:Rc8x\r\na=ice-pwd:9Ja0mXb1vYbC2m5q0J6UoZ8d\r\na=ice-options:trickle\r\n\
               a=fingerprint:sha-256 D6:68:1A:13:E8:DA:23:56:A6:B7:9D:E4:09:AB:31:E3:3C:63:96:D3:ED:95:40:DE:3B:56:06:7C:B1:23:B1:50\r\n\
               a=setup:actpass\r\n";
    let mut sdp = String::new();
    sdp.push_str("v=0\r\no=- 4611731400430051336 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n");
    sdp.push_str("a=group:BUNDLE 0 1\r\na=extmap-allow-mixed\r\na=msid-semantic: WMS\r\n");
    sdp.push_str(&format!(
        "m=video 9 UDP/TLS/RTP/SAVPF {}\r\nc=IN IP4 0.0.0.0\r\na=rtcp:9 IN IP4 0.0.0.0\r\n",
        pt_list.join(" ")
    ));
    sdp.push_str(ice);
    sdp.push_str(
        "a=mid:0\r\na=extmap:4 http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01\r\n\
         a=extmap:9 urn:ietf:params:rtp-hdrext:sdes:mid\r\na=recvonly\r\na=rtcp-mux\r\na=rtcp-rsize\r\n",
    );
    for l in lines {
        sdp.push_str(&l);
        sdp.push_str("\r\n");
    }
    sdp.push_str(
        "m=audio 9 UDP/TLS/RTP/SAVPF 111\r\nc=IN IP4 0.0.0.0\r\na=rtcp:9 IN IP4 0.0.0.0\r\n",
    );
    sdp.push_str(ice);
    sdp.push_str(
        "a=mid:1\r\na=extmap:9 urn:ietf:params:rtp-hdrext:sdes:mid\r\na=recvonly\r\na=rtcp-mux\r\na=rtcp-rsize\r\n\
         a=rtpmap:111 opus/48000/2\r\na=rtcp-fb:111 transport-cc\r\na=fmtp:111 minptime=10;useinbandfec=1\r\n",
    );
    sdp
}

/// Asserts a JSON error answer per the contract: `status`, a JSON content
/// type, and non-empty `error` and `code` strings. Returns the body.
pub fn assert_json_error(r: &HttpResponse, status: u16, what: &str) -> Value {
    assert_eq!(
        r.status,
        status,
        "{what}: expected {status}, got {} with body {:?}",
        r.status,
        truncate(&r.text(), 500)
    );
    assert!(
        r.content_type().contains("json"),
        "{what}: expected a JSON error, got Content-Type {:?} and body {:?}",
        r.header("content-type"),
        truncate(&r.text(), 500)
    );
    let v: Value = r.json().unwrap_or_else(|e| {
        panic!(
            "{what}: body is not JSON ({e}): {:?}",
            truncate(&r.text(), 500)
        )
    });
    assert!(
        v["error"].as_str().is_some_and(|s| !s.trim().is_empty()),
        "{what}: no non-empty \"error\" string in {v}"
    );
    assert!(
        v["code"].as_str().is_some_and(|s| !s.trim().is_empty()),
        "{what}: no non-empty \"code\" string in {v}"
    );
    v
}

pub fn truncate(s: &str, n: usize) -> String {
    if s.len() <= n {
        s.to_string()
    } else {
        let mut end = n;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        format!("{}… ({} bytes)", &s[..end], s.len())
    }
}
