//! TLS for HTTPS, WSS and RTMPS (rustls with the aws-lc-rs provider). The
//! certificate and key are PEM files, checked for changes every
//! `tls.reload_interval_secs`: a renewed certificate (Caddy, certbot) is used
//! for new connections without a restart; a half-written or broken pair keeps
//! the old one in service and is logged.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use parking_lot::RwLock;
use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tracing::{debug, info, warn};

use crate::config::TlsConfig;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read the certificate {path}: {reason}")]
    Cert { path: String, reason: String },
    #[error("cannot read the private key {path}: {reason}")]
    Key { path: String, reason: String },
    #[error("the certificate {cert} and key {key} do not belong together: {reason}")]
    Mismatch {
        cert: String,
        key: String,
        reason: String,
    },
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// Reads a PEM certificate chain and key into what rustls serves.
pub fn load(cert: &Path, key: &Path) -> Result<CertifiedKey, TlsError> {
    let cert_err = |reason: String| TlsError::Cert {
        path: cert.display().to_string(),
        reason,
    };
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| cert_err(e.to_string()))?
        .collect::<Result<_, _>>()
        .map_err(|e| cert_err(e.to_string()))?;
    if chain.is_empty() {
        return Err(cert_err("no CERTIFICATE block in the file".into()));
    }
    let key_err = |reason: String| TlsError::Key {
        path: key.display().to_string(),
        reason,
    };
    let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| key_err(e.to_string()))?;
    let ck =
        CertifiedKey::from_der(chain, key_der, &provider()).map_err(|e| TlsError::Mismatch {
            cert: cert.display().to_string(),
            key: key.display().to_string(),
            reason: e.to_string(),
        })?;
    Ok(ck)
}

/// The certificate in service, swapped when the files change.
#[derive(Debug)]
pub struct CertStore {
    cert: PathBuf,
    key: PathBuf,
    current: RwLock<Arc<CertifiedKey>>,
    stamp: RwLock<Option<(SystemTime, SystemTime, u64, u64)>>,
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.read().clone())
    }
}

fn file_stamp(cert: &Path, key: &Path) -> Option<(SystemTime, SystemTime, u64, u64)> {
    let c = std::fs::metadata(cert).ok()?;
    let k = std::fs::metadata(key).ok()?;
    Some((c.modified().ok()?, k.modified().ok()?, c.len(), k.len()))
}

impl CertStore {
    pub fn open(cfg: &TlsConfig) -> Result<Arc<CertStore>, TlsError> {
        let stamp = file_stamp(&cfg.cert, &cfg.key);
        let ck = load(&cfg.cert, &cfg.key)?;
        Ok(Arc::new(CertStore {
            cert: cfg.cert.clone(),
            key: cfg.key.clone(),
            current: RwLock::new(Arc::new(ck)),
            stamp: RwLock::new(stamp),
        }))
    }

    /// Reloads when the files changed; true when a new certificate is in service.
    pub fn reload_if_changed(&self) -> bool {
        let stamp = file_stamp(&self.cert, &self.key);
        if stamp.is_none() || stamp == *self.stamp.read() {
            return false;
        }
        match load(&self.cert, &self.key) {
            Ok(ck) => {
                *self.current.write() = Arc::new(ck);
                *self.stamp.write() = stamp;
                info!(cert = %self.cert.display(), "tls certificate reloaded");
                true
            }
            Err(e) => {
                // Perhaps caught mid-write: keep the old one, try again next time.
                warn!(error = %e, "tls certificate changed but cannot be loaded; still serving the previous one");
                *self.stamp.write() = stamp;
                false
            }
        }
    }

    /// Checks the files every `interval`, forever.
    pub async fn watch(self: Arc<Self>, interval: Duration) {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            self.reload_if_changed();
        }
    }

    pub fn acceptor(self: &Arc<Self>, alpn: &[&[u8]]) -> TlsAcceptor {
        let mut config = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .expect("the aws-lc-rs provider supports the default TLS versions")
            .with_no_client_auth()
            .with_cert_resolver(self.clone());
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        TlsAcceptor::from(Arc::new(config))
    }
}

/// The TLS handshake on an accepted connection, dropped when it takes
/// longer than `timeout` (the listener's first-bytes timeout: a TLS client's
/// first bytes are its handshake). `None` (logged at debug: scanners do
/// this all day) when it fails.
pub async fn handshake<S: AsyncRead + AsyncWrite + Unpin>(
    acceptor: &TlsAcceptor,
    io: S,
    peer: SocketAddr,
    timeout: Duration,
) -> Option<TlsStream<S>> {
    match tokio::time::timeout(timeout, acceptor.accept(io)).await {
        Ok(Ok(tls)) => Some(tls),
        Ok(Err(e)) => {
            debug!(%peer, error = %e, "tls handshake failed");
            None
        }
        Err(_) => {
            debug!(%peer, "tls handshake timed out");
            None
        }
    }
}
