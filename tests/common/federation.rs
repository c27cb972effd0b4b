//! Two Synapses federating on loopback. Each has an IP-literal server name
//! with an explicit port (`127.0.0.1:<port>`), so the spec's resolution goes
//! straight to that port, and a TLS listener there with a certificate from a
//! test CA made with `openssl` (SAN `IP:127.0.0.1`). The Synapses do not
//! verify each other's certificates (`federation_verify_certificates: false`:
//! Synapse's checker does not match IP SANs) and may call loopback
//! (`ip_range_whitelist`); roomcast trusts the test CA
//! (`matrix.federation_ca_file`) and verifies.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::TempDir;
use super::synapse::{Synapse, SynapseOpts, free_port};

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

    fn cert(&self) -> PathBuf {
        self.dir.path().join("server.pem")
    }

    fn key(&self) -> PathBuf {
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
