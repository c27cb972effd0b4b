//! Synapses federating on loopback. Each has a TLS federation listener with
//! a certificate from a test CA made with `openssl` (SAN `IP:127.0.0.1`,
//! `DNS:localhost`), and a server name the spec's resolution finds: an IP
//! literal with the port (`127.0.0.1:<port>`, straight there), or `localhost`
//! delegated by a [`WellKnown`] on 127.0.0.1:443. The Synapses do not
//! verify each other's certificates (`federation_verify_certificates: false`:
//! Synapse's checker does not match IP SANs) and may call loopback
//! (`ip_range_whitelist`); roomcast trusts the test CA
//! (`matrix.federation_ca_file`) and verifies.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use super::synapse::{Synapse, SynapseOpts, free_port};
use super::{Lines, TempDir, drain, python, wait_until};

/// A CA and one server certificate it signed, for 127.0.0.1 and localhost.
pub struct TestCa {
    pub dir: TempDir,
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run openssl");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl TestCa {
    pub fn new() -> TestCa {
        let dir = TempDir::new("roomcast-fed-ca");
        let d = dir.path();
        let ec = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
        ];
        let mut ca = vec!["req", "-x509"];
        ca.extend(ec);
        ca.extend([
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "2",
            "-subj",
            "/CN=roomcast test federation CA",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ]);
        openssl(d, &ca);
        let mut csr = vec!["req"];
        csr.extend(ec);
        csr.extend([
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=127.0.0.1",
        ]);
        openssl(d, &csr);
        std::fs::write(
            d.join("ext.cnf"),
            "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n\
             keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n",
        )
        .unwrap();
        openssl(
            d,
            &[
                "x509",
                "-req",
                "-in",
                "server.csr",
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                "server.pem",
                "-days",
                "2",
                "-extfile",
                "ext.cnf",
            ],
        );
        TestCa { dir }
    }

    pub fn ca_pem(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    pub fn cert(&self) -> PathBuf {
        self.dir.path().join("server.pem")
    }

    pub fn key(&self) -> PathBuf {
        self.dir.path().join("server.key")
    }
}

impl Default for TestCa {
    fn default() -> Self {
        TestCa::new()
    }
}

/// A Synapse with a federation TLS listener; its server name is
/// `127.0.0.1:<federation port>`.
pub struct FedSynapse {
    pub synapse: Synapse,
    pub server_name: String,
    pub federation_port: u16,
}

impl FedSynapse {
    pub fn start(ca: &TestCa, registration: Option<&Path>) -> FedSynapse {
        let federation_port = free_port();
        FedSynapse::start_on(ca, registration, federation_port)
    }

    /// On a federation port chosen beforehand (the appservice registration
    /// names the server, so it is written before Synapse starts).
    pub fn start_on(ca: &TestCa, registration: Option<&Path>, federation_port: u16) -> FedSynapse {
        let server_name = format!("127.0.0.1:{federation_port}");
        FedSynapse::start_named(ca, registration, federation_port, &server_name)
    }

    /// Named `server_name` (e.g. `localhost`, delegated by a [`WellKnown`]),
    /// its federation listener on `federation_port`.
    pub fn start_named(
        ca: &TestCa,
        registration: Option<&Path>,
        federation_port: u16,
        server_name: &str,
    ) -> FedSynapse {
        let server_name = server_name.to_string();
        let synapse = Synapse::start_with(SynapseOpts {
            server_name: server_name.clone(),
            registration,
            extra_listeners: vec![format!(
                "{{port: {federation_port}, bind_addresses: ['127.0.0.1'], type: http, tls: true, \
                 x_forwarded: false, resources: [{{names: [federation], compress: false}}]}}"
            )],
            extra_yaml: format!(
                "tls_certificate_path: \"{}\"\ntls_private_key_path: \"{}\"\n\
                 federation_verify_certificates: false\n\
                 ip_range_blacklist: []\nip_range_whitelist: ['127.0.0.1']\n\
                 rc_federation: {{window_size: 1000, sleep_limit: 1000, sleep_delay: 1, \
                 reject_limit: 1000, concurrent: 100}}\n",
                ca.cert().display(),
                ca.key().display(),
            ),
        });
        FedSynapse {
            synapse,
            server_name,
            federation_port,
        }
    }
}

/// Python's HTTPS server on 127.0.0.1:443 answering
/// `/.well-known/matrix/server` with a delegation, as a homeserver's web
/// server would (port 443 is the spec's; binding it needs root, as CI is).
/// Each request's path and User-Agent are kept.
pub struct WellKnown {
    child: Child,
    log: Arc<Lines>,
}

const WELL_KNOWN_PY: &str = r#"
import http.server, ssl, sys
body = sys.argv[3].encode()
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        print("GET", self.path, self.headers.get("User-Agent", "-"), flush=True)
        if self.path == "/.well-known/matrix/server":
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Cache-Control", "max-age=600")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        else:
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()
    def log_message(self, *a):
        pass
srv = http.server.ThreadingHTTPServer(("127.0.0.1", 443), H)
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(sys.argv[1], sys.argv[2])
srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
print("ready", flush=True)
srv.serve_forever()
"#;

impl WellKnown {
    /// Delegates to `m_server` (`{"m.server": m_server}`, max-age 600).
    pub fn start(ca: &TestCa, m_server: &str) -> WellKnown {
        let body = serde_json::json!({ "m.server": m_server }).to_string();
        let mut child = Command::new(python())
            .args(["-c", WELL_KNOWN_PY])
            .arg(ca.cert())
            .arg(ca.key())
            .arg(body)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn the well-known server");
        let log = Arc::new(Lines::default());
        drain(child.stdout.take().unwrap(), log.clone());
        drain(child.stderr.take().unwrap(), log.clone());
        let mut w = WellKnown { child, log };
        wait_until(
            "the well-known server on 127.0.0.1:443",
            Duration::from_secs(20),
            || {
                if let Ok(Some(st)) = w.child.try_wait() {
                    panic!(
                        "the well-known server exited ({st}); it binds port 443 and needs root: {}",
                        w.log.snapshot().join("\n")
                    );
                }
                w.log.snapshot().iter().any(|l| l == "ready").then_some(())
            },
        );
        w
    }

    /// Requests so far: `GET <path> <User-Agent>` lines.
    pub fn requests(&self) -> Vec<String> {
        self.log
            .snapshot()
            .into_iter()
            .filter(|l| l.starts_with("GET "))
            .collect()
    }
}

impl Drop for WellKnown {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
