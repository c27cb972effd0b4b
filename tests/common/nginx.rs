//! Debian's nginx as a test's own child process (temp prefix, free port):
//! a load balancer in front of several roomcast nodes. `ROOMCAST_TEST_NGINX`
//! points at another binary.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::{TempDir, poll_until, wait_until};

pub struct Nginx {
    child: Child,
    dir: TempDir,
    pub port: u16,
}

pub fn nginx_bin() -> PathBuf {
    std::env::var_os("ROOMCAST_TEST_NGINX")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/sbin/nginx"))
}

/// Runs nginx in the foreground on `prefix/nginx.conf` (its logs there too);
/// `hint` says what to install when it cannot start.
pub fn spawn(prefix: &Path, hint: &str) -> Child {
    Command::new(nginx_bin())
        .arg("-p")
        .arg(prefix)
        .arg("-e")
        .arg(prefix.join("error.log"))
        .arg("-c")
        .arg(prefix.join("nginx.conf"))
        .args(["-g", "daemon off;"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect(hint)
}

impl Nginx {
    /// nginx with `http_conf` inside `http {}`, where `{listen}` is replaced
    /// by its `127.0.0.1:PORT`. The access log records each request's
    /// upstream (`$upstream_addr $status $request_uri`).
    pub fn start(http_conf: &str) -> Nginx {
        assert!(
            nginx_bin().exists(),
            "{} not found: apt-get install -y nginx (or set ROOMCAST_TEST_NGINX)",
            nginx_bin().display()
        );
        let dir = TempDir::new("nginx");
        let p = dir.path();
        let port = super::synapse::free_port();
        let d = p.display();
        let conf = http_conf.replace("{listen}", &format!("127.0.0.1:{port}"));
        std::fs::write(
            p.join("nginx.conf"),
            format!(
                "worker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/error.log warn;\n\
                 events {{ worker_connections 1024; }}\n\
                 http {{\n  client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n\
                   fastcgi_temp_path {d}/fastcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n\
                   log_format up '$upstream_addr $status $request_uri';\n\
                   access_log {d}/access.log up;\n{conf}\n}}\n"
            ),
        )
        .unwrap();
        let child = spawn(p, "run nginx (apt-get install -y nginx)");
        let mut n = Nginx { child, dir, port };
        wait_until("nginx listening", Duration::from_secs(20), || {
            if let Ok(Some(s)) = n.child.try_wait() {
                panic!("nginx exited ({s}): {}", n.error_log());
            }
            std::net::TcpStream::connect(("127.0.0.1", n.port))
                .ok()
                .map(|_| ())
        });
        n
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    pub fn error_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("error.log")).unwrap_or_default()
    }

    /// The access log's lines (`$upstream_addr $status $request_uri`).
    pub fn access_log(&self) -> Vec<String> {
        std::fs::read_to_string(self.dir.path().join("access.log"))
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // SIGTERM: the master stops its workers (SIGKILL would orphan them).
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        if !poll_until(Duration::from_secs(10), || {
            matches!(self.child.try_wait(), Ok(Some(_)))
        }) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
