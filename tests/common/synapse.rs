//! A real Synapse (from the test venv, `matrix-synapse` in
//! tests/py/requirements.txt) on loopback, with SQLite, started and stopped by
//! the tests. Rate limits are lifted so a loaded machine does not trip them.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{Lines, TempDir, drain, http, python, random_bytes};

/// Synapse's start-up takes 2–10 s on a loaded 2-core machine.
pub const SYNAPSE_START_TIMEOUT: Duration = Duration::from_secs(120);

/// Server name of the test homeserver.
pub const SERVER_NAME: &str = "localhost";

/// A free TCP port on 127.0.0.1, for a process that must be told its port
/// (Synapse, nginx, PostgreSQL, a cluster node's peers' addresses).
///
/// Taken below the kernel's ephemeral range: a port from `bind(0)` is free
/// only until someone else binds it, and every outgoing connection and
/// port-0 listener of the tests and the server draws from that range, so
/// one could take it before the process that was told it starts. Below the
/// range only this function hands ports out: each call takes the next one
/// (per test binary, from an offset of the process id, as test binaries may
/// run side by side) that binds now.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let (low, high) = outside_ephemeral_range();
    let span = u32::from(high - low);
    let base = std::process::id().wrapping_mul(7919) % span;
    for _ in 0..span {
        let i = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = low + ((base + i) % span) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port in {low}..{high}");
}

/// Ports `low..high` that the kernel does not hand out on its own: below its
/// ephemeral range (32768–60999 by default) when there is room, else above.
fn outside_ephemeral_range() -> (u16, u16) {
    let range =
        std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").unwrap_or_default();
    let mut it = range.split_whitespace().map(|v| v.parse::<u16>().ok());
    let (first, last) = match (it.next().flatten(), it.next().flatten()) {
        (Some(a), Some(b)) => (a, b),
        _ => (32768, 60999),
    };
    if first >= 12_000 {
        (first - 10_000, first)
    } else {
        assert!(
            last < 63_000,
            "no ports outside the ephemeral range {range}"
        );
        (last + 1, 65_535)
    }
}

fn base64_unpadded(data: &[u8]) -> String {
    const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..=chunk.len() {
            out.push(A[((n >> (18 - 6 * i)) & 63) as usize] as char);
        }
    }
    out
}

pub struct Synapse {
    child: Option<Child>,
    dir: TempDir,
    pub port: u16,
    log: Arc<Lines>,
}

/// How a [`Synapse`] differs from the single test homeserver.
pub struct SynapseOpts<'a> {
    pub server_name: String,
    /// The appservice registration to load, if any.
    pub registration: Option<&'a Path>,
    /// More `listeners:` items (YAML flow mappings, one per line).
    pub extra_listeners: Vec<String>,
    /// More top-level YAML lines.
    pub extra_yaml: String,
}

impl Synapse {
    /// Writes a config registering the appservice at `registration` and starts
    /// Synapse; returns once `/_matrix/client/versions` answers.
    pub fn start(registration: &Path) -> Synapse {
        Synapse::start_with(SynapseOpts {
            server_name: SERVER_NAME.to_string(),
            registration: Some(registration),
            extra_listeners: vec![],
            extra_yaml: String::new(),
        })
    }

    /// [`Synapse::start`] with another server name, listeners and settings
    /// (two federating homeservers: `common::federation`).
    pub fn start_with(o: SynapseOpts<'_>) -> Synapse {
        let dir = TempDir::new("roomcast-synapse");
        let port = free_port();
        let d = dir.path().display().to_string();
        // A fresh ed25519 signing key (saves Synapse's --generate-keys run).
        let seed = random_bytes(32);
        std::fs::write(
            dir.path().join("signing.key"),
            format!("ed25519 a_test {}\n", base64_unpadded(&seed)),
        )
        .unwrap();
        let rc = "{per_second: 9999, burst_count: 9999}";
        let extra_listeners: String = o
            .extra_listeners
            .iter()
            .map(|l| format!("  - {l}\n"))
            .collect();
        let app_services = o
            .registration
            .map(|r| format!("app_service_config_files: [\"{}\"]", r.display()))
            .unwrap_or_default();
        let config = format!(
            r#"server_name: "{server_name}"
pid_file: {d}/homeserver.pid
listeners:
  - {{port: {port}, bind_addresses: ['127.0.0.1'], type: http, tls: false, x_forwarded: false,
     resources: [{{names: [client, openid], compress: false}}]}}
{extra_listeners}database: {{name: sqlite3, args: {{database: {d}/homeserver.db}}}}
media_store_path: {d}/media_store
signing_key_path: "{d}/signing.key"
registration_shared_secret: "test-shared-secret"
macaroon_secret_key: "test-macaroon"
form_secret: "test-form"
report_stats: false
trusted_key_servers: []
suppress_key_server_warning: true
enable_registration: true
enable_registration_without_verification: true
bcrypt_rounds: 4
{app_services}
presence: {{enabled: false}}
rc_message: {rc}
rc_registration: {rc}
rc_login: {{address: {rc}, account: {rc}, failed_attempts: {rc}}}
rc_joins: {{local: {rc}, remote: {rc}}}
rc_joins_per_room: {rc}
rc_room_creation: {rc}
rc_invites: {{per_room: {rc}, per_user: {rc}, per_issuer: {rc}}}
rc_admin_redaction: {rc}
{extra_yaml}
"#,
            server_name = o.server_name,
            extra_yaml = o.extra_yaml,
        );
        std::fs::write(dir.path().join("homeserver.yaml"), config).unwrap();
        let mut s = Synapse {
            child: None,
            dir,
            port,
            log: Arc::new(Lines::default()),
        };
        s.spawn();
        s
    }

    pub fn base_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("homeserver.yaml")
    }

    fn spawn(&mut self) {
        let mut cmd = Command::new(python());
        cmd.args(["-m", "synapse.app.homeserver", "--config-path"])
            .arg(self.config_path())
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .env("PYTHONUNBUFFERED", "1");
        let mut child = cmd.spawn().unwrap_or_else(|e| {
            panic!("spawn synapse: {e} (run ./scripts/test.sh to create .venv)")
        });
        drain(child.stdout.take().unwrap(), self.log.clone());
        drain(child.stderr.take().unwrap(), self.log.clone());
        self.child = Some(child);
        let started = Instant::now();
        let url = format!("{}/_matrix/client/versions", self.base_url());
        loop {
            if let Ok(r) = http::request_timeout("GET", &url, &[], None, Duration::from_secs(5))
                && r.status == 200
            {
                eprintln!(
                    "[harness] synapse up on port {} in {:.1?}",
                    self.port,
                    started.elapsed()
                );
                return;
            }
            if let Some(c) = self.child.as_mut()
                && let Ok(Some(st)) = c.try_wait()
            {
                panic!(
                    "synapse exited ({st}) during start-up; log:\n{}",
                    self.log.tail(60)
                );
            }
            if started.elapsed() > SYNAPSE_START_TIMEOUT {
                panic!(
                    "synapse did not answer within {SYNAPSE_START_TIMEOUT:?}; log:\n{}",
                    self.log.tail(60)
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Stops Synapse (kill; SQLite keeps what was committed).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same port with the same database.
    pub fn start_again(&mut self) {
        assert!(self.child.is_none(), "synapse is still running");
        self.spawn();
    }

    pub fn log_tail(&self, n: usize) -> String {
        self.log.tail(n)
    }
}

impl Drop for Synapse {
    fn drop(&mut self) {
        self.stop();
        if std::thread::panicking() {
            eprintln!("[harness] synapse log tail:\n{}", self.log.tail(40));
        }
    }
}
