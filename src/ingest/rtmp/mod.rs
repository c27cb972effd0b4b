//! RTMP ingest driver: owns the TCP sockets and feeds the sans-I/O RTMP core.
//! `rtmp://HOST:1935/live` with the stream key as the key (OBS "Custom"), or
//! `rtmp://HOST:1935/live/KEY` (ffmpeg); RTMPS (`rtmps://`) on its own port.
//! Any application name is accepted. OME-style keys `STREAM?policy=…&signature=…`
//! (SignedPolicy) or `STREAM?…` (admission webhook) name the stream instead.

pub mod core;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tracing::{debug, info, warn};

pub use self::core::{RtmpError, RtmpEvent, ServerCore};
use super::flv_pipeline::FlvPipeline;
use crate::auth::admission::Ticket;
use crate::auth::gate::{Attempt, Gate};
use crate::auth::keys::KeyRing;
use crate::hub::{Hub, IngestProtocol};
use crate::listener::{Conn, Limits, Shutdown};
use crate::log_every::LogEveryKind;

/// The handshake and `publish` must happen within this time.
const SETUP_TIMEOUT: Duration = Duration::from_secs(10);
/// A publisher that sends nothing for this long is gone.
const IDLE_TIMEOUT: Duration = Duration::from_secs(20);

pub struct RtmpIngest {
    pub hub: Arc<Hub>,
    pub keys: Arc<KeyRing>,
    pub gate: Arc<Gate>,
    /// Host names a signed RTMP URL may name besides the address connected to.
    pub sign_hosts: Vec<String>,
    /// `[rtmp] max_message_bytes`: the longest audio/video message accepted.
    pub max_message_bytes: u32,
}

/// A publishing session's extras from authorization.
struct Authorized {
    expires_at: Option<tokio::time::Instant>,
    _ticket: Option<Ticket>,
}

impl RtmpIngest {
    /// RTMP on `listener` (through the shared listener core) until `shutdown`.
    pub async fn serve(self: Arc<Self>, listener: TcpListener, limits: Limits, shutdown: Shutdown) {
        self.serve_on(listener, "rtmp", None, limits, shutdown)
            .await
    }

    /// RTMPS: RTMP inside TLS on its own port.
    pub async fn serve_tls(
        self: Arc<Self>,
        listener: TcpListener,
        acceptor: TlsAcceptor,
        limits: Limits,
        shutdown: Shutdown,
    ) {
        self.serve_on(listener, "rtmps", Some(acceptor), limits, shutdown)
            .await
    }

    async fn serve_on(
        self: Arc<Self>,
        listener: TcpListener,
        name: &'static str,
        acceptor: Option<TlsAcceptor>,
        limits: Limits,
        shutdown: Shutdown,
    ) {
        // A TLS client's first bytes are its handshake.
        let handshake_timeout = limits.first_bytes_timeout;
        crate::listener::serve(listener, name, limits, shutdown, move |c: Conn| {
            let this = self.clone();
            let acceptor = acceptor.clone();
            async move {
                let (peer, local, stop) = (c.peer, Some(c.local), c.shutdown);
                let session = async {
                    match &acceptor {
                        None => {
                            this.handle(c.stream, peer, local, false, SETUP_TIMEOUT)
                                .await
                        }
                        Some(a) => {
                            let tls = crate::tls::handshake(a, c.stream, peer, handshake_timeout);
                            if let Some(tls) = tls.await {
                                // The ClientHello was the listener's first
                                // bytes; RTMP's own get the same timeout.
                                this.handle(tls, peer, local, true, handshake_timeout)
                                    .await
                            }
                        }
                    }
                };
                // On shutdown the session ends at once: the publisher sees the
                // connection close and may reconnect to the restarted server.
                tokio::select! {
                    () = session => {}
                    _ = stop.wait() => debug!(%peer, listener = name, "rtmp connection closed: server shutting down"),
                }
            }
        })
        .await
    }

    /// One RTMP(S) connection from `peer`, from its first byte to its close,
    /// for any accept loop: logs why it ended, each kind of failure at most
    /// once per [`LOG_INTERVAL`] (the rest at debug), never a stream key.
    /// The first RTMP bytes must come within `first_bytes` (inside TLS the
    /// listener's first bytes were the ClientHello).
    pub async fn handle<S: AsyncRead + AsyncWrite + Unpin>(
        &self,
        sock: S,
        peer: SocketAddr,
        local: Option<SocketAddr>,
        tls: bool,
        first_bytes: Duration,
    ) {
        match self.connection(sock, peer, local, tls, first_bytes).await {
            Ok(()) => debug!(%peer, tls, "rtmp connection closed"),
            Err(c) => {
                if log_allowed(c.kind) {
                    let note = format!(
                        "further \"{}\" closes are logged at debug for {} s",
                        c.kind,
                        LOG_INTERVAL.as_secs()
                    );
                    if c.violation {
                        warn!(%peer, tls, reason = %c.detail, note, "rtmp connection closed");
                    } else {
                        info!(%peer, tls, reason = %c.detail, note, "rtmp connection closed");
                    }
                } else {
                    debug!(%peer, tls, reason = %c.detail, "rtmp connection closed");
                }
            }
        }
    }

    async fn connection<S: AsyncRead + AsyncWrite + Unpin>(
        &self,
        mut sock: S,
        peer: SocketAddr,
        local: Option<SocketAddr>,
        tls: bool,
        first_bytes: Duration,
    ) -> Result<(), Close> {
        let mut conn = ServerCore::new(self.max_message_bytes);
        let mut events = Vec::new();
        // Small until a publish is accepted: idle and refused connections
        // should cost little.
        let mut buf = vec![0u8; 4096];
        let mut pipeline: Option<FlvPipeline> = None;
        let mut authorized: Option<Authorized> = None;
        let mut app_name = String::new();
        let started = tokio::time::Instant::now();
        let mut received = false;
        loop {
            let mut timeout = if pipeline.is_some() {
                IDLE_TIMEOUT
            } else {
                SETUP_TIMEOUT.saturating_sub(started.elapsed())
            };
            if !received {
                timeout = timeout.min(first_bytes.saturating_sub(started.elapsed()));
            }
            let expires = authorized.as_ref().and_then(|a| a.expires_at);
            if let Some(at) = expires {
                timeout = timeout.min(at.saturating_duration_since(tokio::time::Instant::now()));
            }
            let n = match tokio::time::timeout(timeout, sock.read(&mut buf)).await {
                Err(_) if expires.is_some_and(|at| at <= tokio::time::Instant::now()) => {
                    if let Some(p) = &pipeline {
                        info!(%peer, stream = %p.stream_name(), "rtmp session expired (signed URL stream_expire or admission lifetime)");
                    }
                    return Err(Close::new("session expired", "session expired"));
                }
                Err(_) if pipeline.is_some() => {
                    return Err(Close::new("idle", "publisher sent nothing for 20 s"));
                }
                Err(_) if !received => {
                    return Err(Close::new(
                        "silent",
                        "nothing received within the first-bytes timeout",
                    ));
                }
                Err(_) => {
                    return Err(Close::new(
                        "no publish in time",
                        "no publish within 10 s of connecting",
                    ));
                }
                Ok(Err(e)) => return Err(Close::new("read error", format!("read error: {e}"))),
                Ok(Ok(0)) => {
                    if let Some(p) = &pipeline {
                        info!(%peer, stream = %p.stream_name(), "rtmp publisher disconnected");
                    }
                    return Ok(());
                }
                Ok(Ok(n)) => {
                    received = true;
                    n
                }
            };
            conn.receive(&buf[..n], &mut events)
                .map_err(Close::violation)?;
            // Handling an event may produce more (accept → responses).
            let mut i = 0;
            while i < events.len() {
                let ev = std::mem::replace(&mut events[i], RtmpEvent::Unsupported(""));
                i += 1;
                let mut more = Vec::new();
                match ev {
                    RtmpEvent::Send(bytes) => {
                        sock.write_all(&bytes)
                            .await
                            .map_err(|e| Close::new("write error", format!("write error: {e}")))?;
                    }
                    RtmpEvent::Connect { request_id, app } => {
                        // Any application: OME's URLs name their own.
                        app_name = app;
                        conn.accept(request_id, &mut more)
                            .map_err(Close::violation)?;
                    }
                    RtmpEvent::Publish {
                        request_id, key, ..
                    } => {
                        // OBS may append a query (SignedPolicy); the key is what precedes it.
                        let (key, query) = key.split_once('?').unwrap_or((key.as_str(), ""));
                        let keyed = self.keys.stream_for_key(key);
                        // Without a key, the key field is the stream name, as in OME:
                        // for a known stream, under a signed URL, or when the admission
                        // webhook decides publishing (the operator's own control server
                        // creates streams on demand, e.g. the guide's
                        // `slot-1?password=…`). Such a name is never logged: it may be
                        // a mistyped key.
                        let a_name = self.hub.get(key).is_some()
                            || self.gate.has_policy(query)
                            || self.gate.webhook_decides_publish();
                        let result = if keyed.is_none()
                            && !(a_name && self.gate.keyless_publish_possible(query))
                        {
                            let reason = "stream key rejected".to_string();
                            Err((reason.clone(), reason))
                        } else {
                            let attempt = self.attempt(
                                &app_name,
                                key,
                                keyed.as_deref(),
                                query,
                                peer,
                                local,
                                tls,
                            );
                            self.gate.admit_publish(attempt).await.map_err(|r| {
                                // Without a matching key the "name" may be a
                                // mistyped key: log only the refusal's code.
                                let code = r.status_code().1;
                                let log = match &keyed {
                                    Some(stream) => format!("{stream}: {r}"),
                                    None if matches!(
                                        code,
                                        "stream_key_required" | "bad_stream_name"
                                    ) =>
                                    {
                                        code.to_string()
                                    }
                                    None => r.to_string(),
                                };
                                (r.to_string(), log)
                            })
                        };
                        let pass = match result {
                            Ok(p) => p,
                            Err((reason, log)) => {
                                conn.reject(request_id, &reason, &mut more)
                                    .map_err(Close::violation)?;
                                if log_allowed("publish refused") {
                                    warn!(%peer, reason = %log, note = "further refusals are logged at debug for 10 s", "rtmp publish refused");
                                } else {
                                    debug!(%peer, reason = %log, "rtmp publish refused");
                                }
                                flush(&mut sock, &mut more).await?;
                                return Ok(());
                            }
                        };
                        let name = pass.stream;
                        let stream = self.hub.ensure_stream(&name, None);
                        if stream.is_live() {
                            info!(%peer, stream = %name, "new publisher takes the stream over");
                        }
                        let protocol = if tls {
                            IngestProtocol::Rtmps
                        } else {
                            IngestProtocol::Rtmp
                        };
                        let publisher = self.hub.publish(&stream, protocol);
                        info!(%peer, stream = %name, tls, "rtmp publish started");
                        pipeline = Some(FlvPipeline::new(publisher));
                        authorized = Some(Authorized {
                            expires_at: pass.expires_at.map(tokio::time::Instant::from_std),
                            _ticket: pass.ticket,
                        });
                        buf.resize(64 * 1024, 0);
                        conn.accept(request_id, &mut more)
                            .map_err(Close::violation)?;
                    }
                    RtmpEvent::Unpublish => {
                        if let Some(p) = pipeline.take() {
                            info!(%peer, stream = %p.stream_name(), "rtmp publisher unpublished");
                        }
                    }
                    RtmpEvent::Metadata(m) => {
                        if let Some(p) = pipeline.as_mut() {
                            p.on_metadata(&m);
                        }
                    }
                    RtmpEvent::Video { data, timestamp } => {
                        if let Some(p) = pipeline.as_mut() {
                            p.on_video(data, timestamp)
                                .map_err(|e| Close::new("taken over", e.to_string()))?;
                        }
                    }
                    RtmpEvent::Audio { data, timestamp } => {
                        if let Some(p) = pipeline.as_mut() {
                            p.on_audio(data, timestamp)
                                .map_err(|e| Close::new("taken over", e.to_string()))?;
                        }
                    }
                    RtmpEvent::Unsupported(what) => {
                        if !what.is_empty() {
                            return Err(Close::new(
                                what,
                                format!("{what} is not supported; play over WebRTC or HLS"),
                            ));
                        }
                    }
                }
                events.extend(more);
            }
            events.clear();
        }
    }
}

/// Why a connection ended: a fixed kind for rate limiting, and the details.
struct Close {
    kind: &'static str,
    detail: String,
    /// The client broke the protocol or was refused (logged as a warning).
    violation: bool,
}

impl Close {
    fn new(kind: &'static str, detail: impl Into<String>) -> Self {
        Close {
            kind,
            detail: detail.into(),
            violation: false,
        }
    }

    fn violation(e: RtmpError) -> Self {
        Close {
            kind: e.kind(),
            detail: e.to_string(),
            violation: true,
        }
    }
}

/// Each kind of connection failure is logged at most once per interval.
const LOG_INTERVAL: Duration = Duration::from_secs(10);

/// When each kind was last logged.
static LOGGED: LogEveryKind = LogEveryKind::new(LOG_INTERVAL);

fn log_allowed(kind: &'static str) -> bool {
    LOGGED.allow(kind).is_some()
}

impl RtmpIngest {
    /// The gate's view of a publish: the URL as OME would sign it
    /// (`rtmp://host:port/app/stream?query`) for each host the publisher may
    /// have used, and for the webhook the URL with the stream's name in place
    /// of a key.
    #[allow(clippy::too_many_arguments)]
    fn attempt(
        &self,
        app: &str,
        key: &str,
        keyed: Option<&str>,
        query: &str,
        peer: SocketAddr,
        local: Option<SocketAddr>,
        tls: bool,
    ) -> Attempt {
        let scheme = if tls { "rtmps" } else { "rtmp" };
        let port = local.map_or(1935, |l| l.port());
        let mut hosts: Vec<String> = self.sign_hosts.clone();
        if let Some(l) = local {
            let ip = l.ip().to_canonical();
            hosts.push(if ip.is_ipv6() {
                format!("[{ip}]")
            } else {
                ip.to_string()
            });
        }
        let bases = hosts
            .iter()
            .map(|h| format!("{scheme}://{h}:{port}/{app}/{key}"))
            .collect();
        let stream = keyed.unwrap_or(key).to_string();
        let host = hosts.last().cloned().unwrap_or_else(|| "localhost".into());
        let mut url = format!("{scheme}://{host}:{port}/{app}/{stream}");
        if !query.is_empty() {
            url.push('?');
            url.push_str(query);
        }
        Attempt {
            stream,
            keyed: keyed.is_some(),
            query: query.to_string(),
            bases,
            protocol: "rtmp",
            url,
            client: peer,
            real_ip: None,
            user_agent: None,
        }
    }
}

async fn flush<S: AsyncWrite + Unpin>(
    sock: &mut S,
    events: &mut Vec<RtmpEvent>,
) -> Result<(), Close> {
    for ev in events.drain(..) {
        if let RtmpEvent::Send(bytes) = ev {
            sock.write_all(&bytes)
                .await
                .map_err(|e| Close::new("write error", format!("write error: {e}")))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_kind_is_logged_once_per_interval() {
        assert!(log_allowed("test kind a"));
        assert!(!log_allowed("test kind a"));
        assert!(log_allowed("test kind b"));
        assert!(!log_allowed("test kind a"));
    }
}
