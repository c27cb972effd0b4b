//! A real PostgreSQL (Debian's `postgresql` package, installed by
//! scripts/test.sh) on loopback: a private cluster in a temp dir, password
//! authentication, started and stopped by the test. PostgreSQL refuses to run
//! as root, so under root the cluster belongs to the package's `postgres` user.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use super::synapse::free_port;
use super::{Lines, TempDir, drain, random_hex};

/// initdb + start-up take 1–5 s on a loaded 2-core machine.
const PG_START_TIMEOUT: Duration = Duration::from_secs(60);

/// The role roomcast connects as.
pub const PG_USER: &str = "roomcast";

pub struct Postgres {
    child: Option<Child>,
    dir: TempDir,
    bin: PathBuf,
    pub port: u16,
    password: String,
    owner: Option<(u32, u32)>,
    log: Arc<Lines>,
}

/// The newest `/usr/lib/postgresql/*/bin` (or `ROOMCAST_TEST_PG_BIN`).
fn pg_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("ROOMCAST_TEST_PG_BIN") {
        return PathBuf::from(p);
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("no /usr/lib/postgresql: run ./scripts/test.sh (installs the postgresql package)")
        .filter_map(|e| {
            let e = e.ok()?;
            let v = e.file_name().to_str()?.parse().ok()?;
            Some((v, e.path().join("bin")))
        })
        .collect();
    versions.sort();
    versions
        .pop()
        .expect("no PostgreSQL version under /usr/lib/postgresql")
        .1
}

/// Under root, the uid and gid of the package's `postgres` user, which the
/// server and initdb run as (PostgreSQL refuses root).
fn pg_owner() -> Option<(u32, u32)> {
    let id = |flag: &str, who: Option<&str>| -> Option<u32> {
        let out = Command::new("id").arg(flag).args(who).output().ok()?;
        String::from_utf8_lossy(&out.stdout).trim().parse().ok()
    };
    if id("-u", None)? != 0 {
        return None;
    }
    let owner = (id("-u", Some("postgres")), id("-g", Some("postgres")));
    match owner {
        (Some(u), Some(g)) => Some((u, g)),
        _ => panic!(
            "running as root and there is no `postgres` user: install the postgresql package"
        ),
    }
}

impl Postgres {
    /// Creates a cluster with the role [`PG_USER`] (a random password) and
    /// starts it on a free loopback port; returns once it accepts connections.
    pub fn start() -> Postgres {
        let dir = TempDir::new("roomcast-pg");
        let bin = pg_bin();
        let password = random_hex()[..16].to_string();
        let data = dir.path().join("data");
        let pwfile = dir.path().join("pw");
        std::fs::write(&pwfile, format!("{password}\n")).unwrap();
        let owner = pg_owner();
        if let Some((uid, gid)) = owner {
            // The server must own its files.
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid)).unwrap();
            std::os::unix::fs::chown(&pwfile, Some(uid), Some(gid)).unwrap();
        }
        let out = Self::command(&bin, "initdb", owner)
            .arg("-D")
            .arg(&data)
            .args([
                "-U",
                PG_USER,
                "--auth=scram-sha-256",
                "-E",
                "UTF8",
                "--no-sync",
            ])
            .arg(format!("--pwfile={}", pwfile.display()))
            .output()
            .expect("run initdb");
        assert!(
            out.status.success(),
            "initdb failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let mut pg = Postgres {
            child: None,
            dir,
            bin,
            port: free_port(),
            password,
            owner,
            log: Arc::new(Lines::default()),
        };
        pg.spawn();
        pg
    }

    fn command(bin: &std::path::Path, tool: &str, owner: Option<(u32, u32)>) -> Command {
        use std::os::unix::process::CommandExt;
        let mut c = Command::new(bin.join(tool));
        if let Some((uid, gid)) = owner {
            c.gid(gid).uid(uid);
        }
        c
    }

    fn spawn(&mut self) {
        let from = self.log.len();
        let mut child = Self::command(&self.bin, "postgres", self.owner)
            .arg("-D")
            .arg(self.dir.path().join("data"))
            .args(["-p", &self.port.to_string(), "-k"])
            .arg(self.dir.path())
            .args([
                "-c",
                "listen_addresses=127.0.0.1",
                "-c",
                "fsync=off",
                "-c",
                "full_page_writes=off",
                "-c",
                "logging_collector=off",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn postgres");
        drain(child.stdout.take().unwrap(), self.log.clone());
        drain(child.stderr.take().unwrap(), self.log.clone());
        self.child = Some(child);
        let ready = self.log.wait_from(from, PG_START_TIMEOUT, |l| {
            l.contains("database system is ready to accept connections")
        });
        assert!(
            ready.is_some(),
            "postgres exited or was not ready within {PG_START_TIMEOUT:?}; log:\n{}",
            self.log.tail(40)
        );
        eprintln!("[harness] postgres up on port {}", self.port);
    }

    /// A client tool (createdb, psql) pointed at this server as [`PG_USER`].
    fn client(&self, tool: &str) -> Command {
        let mut c = Command::new(self.bin.join(tool));
        c.args(["-h", "127.0.0.1", "-U", PG_USER, "-p"])
            .arg(self.port.to_string())
            .env("PGPASSWORD", &self.password);
        c
    }

    /// Runs a client tool and returns its output, failing the test if it fails.
    fn run_client(&self, tool: &str, args: &[&str]) -> String {
        let out = self
            .client(tool)
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("run {tool}: {e}"));
        assert!(
            out.status.success(),
            "{tool} {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// Creates a database and returns roomcast's `database_url` for it.
    pub fn create_database(&self, name: &str) -> String {
        self.run_client("createdb", &[name]);
        self.url(name)
    }

    pub fn url(&self, db: &str) -> String {
        format!(
            "postgres://{PG_USER}:{}@127.0.0.1:{}/{db}",
            self.password, self.port
        )
    }

    pub fn password(&self) -> &str {
        &self.password
    }

    /// Runs one SQL statement with psql and returns its unaligned output.
    pub fn psql(&self, db: &str, sql: &str) -> String {
        let args = [
            "-d",
            db,
            "-X",
            "-A",
            "-t",
            "-v",
            "ON_ERROR_STOP=1",
            "-c",
            sql,
        ];
        self.run_client("psql", &args)
    }

    /// Fast shutdown (SIGINT: clients are disconnected, nothing committed is lost).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            if let Ok(None) = c.try_wait() {
                let _ = Command::new("kill")
                    .args(["-INT", &c.id().to_string()])
                    .status();
            }
            if super::wait_exit(&mut c, Duration::from_secs(20)).is_none() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }

    /// Starts the same cluster again on the same port.
    pub fn start_again(&mut self) {
        assert!(self.child.is_none(), "postgres is still running");
        self.spawn();
    }

    pub fn log_tail(&self, n: usize) -> String {
        self.log.tail(n)
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        self.stop();
        if std::thread::panicking() {
            eprintln!("[harness] postgres log tail:\n{}", self.log.tail(30));
        }
    }
}
