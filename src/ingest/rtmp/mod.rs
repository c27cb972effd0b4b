//! RTMP ingest driver: owns the TCP sockets and feeds the sans-I/O RTMP core.
//! `rtmp://HOST:1935/live` with the stream key as the key (OBS "Custom"), or
//! `rtmp://HOST:1935/live/KEY` (ffmpeg); RTMPS (`rtmps://`) on its own port.
//! Any application name is accepted. OME-style keys `STREAM?policy=…&signature=…`
//! (SignedPolicy) or `STREAM?…` (admission webhook) name the stream instead.

mod session;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tracing::{debug, info, warn};

use super::flv_pipeline::FlvPipeline;
use crate::auth::admission::Ticket;
use crate::auth::gate::{Attempt, Gate};
use crate::auth::keys::KeyRing;
use crate::hub::{Hub, IngestProtocol};
use crate::listener::{Conn, Limits, Shutdown};
pub use session::{RmlConnection, RtmpConnection, RtmpError, RtmpEvent};

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
        crate::listener::serve(listener, name, limits, shutdown, move |c: Conn| {
            let this = self.clone();
            let acceptor = acceptor.clone();
            async move {
                let (peer, local, stop) = (c.peer, Some(c.local), c.shutdown);
                let session = async {
                    match &acceptor {
                        None => this.connection(c.stream, peer, local, false).await,
                        Some(a) => match crate::tls::handshake(a, c.stream, peer).await {
                            Some(tls) => this.connection(tls, peer, local, true).await,
                            None => Ok(()),
                        },
                    }
                };
                // On shutdown the session ends at once: the publisher sees the
                // connection close and may reconnect to the restarted server.
                let result = tokio::select! {
                    r = session => r,
                    _ = stop.wait() => Err("server shutting down".to_string()),
                };
                match result {
                    Ok(()) => debug!(%peer, listener = name, "rtmp connection closed"),
                    Err(reason) => info!(%peer, listener = name, %reason, "rtmp connection closed"),
                }
            }
        })
        .await
    }

    async fn connection<S: AsyncRead + AsyncWrite + Unpin>(
        &self,
        mut sock: S,
        peer: SocketAddr,
        local: Option<SocketAddr>,
        tls: bool,
    ) -> Result<(), String> {
        let mut conn: Box<dyn RtmpConnection> = Box::new(RmlConnection::default());
        let mut events = Vec::new();
        let mut buf = vec![0u8; 64 * 1024];
        let mut pipeline: Option<FlvPipeline> = None;
        let mut authorized: Option<Authorized> = None;
        let mut app_name = String::new();
        let started = tokio::time::Instant::now();
        loop {
            let mut timeout = if pipeline.is_some() {
                IDLE_TIMEOUT
            } else {
                SETUP_TIMEOUT.saturating_sub(started.elapsed())
            };
            let expires = authorized.as_ref().and_then(|a| a.expires_at);
            if let Some(at) = expires {
                timeout = timeout.min(at.saturating_duration_since(tokio::time::Instant::now()));
            }
            let n = match tokio::time::timeout(timeout, sock.read(&mut buf)).await {
                Err(_) if expires.is_some_and(|at| at <= tokio::time::Instant::now()) => {
                    if let Some(p) = &pipeline {
                        info!(%peer, stream = %p.stream_name(), "rtmp session expired (signed URL stream_expire or admission lifetime)");
                    }
                    return Err("session expired".into());
                }
                Err(_) if pipeline.is_some() => {
                    return Err("publisher sent nothing for 20 s".into());
                }
                Err(_) => return Err("no publish within 10 s of connecting".into()),
                Ok(Err(e)) => return Err(format!("read error: {e}")),
                Ok(Ok(0)) => {
                    if let Some(p) = &pipeline {
                        info!(%peer, stream = %p.stream_name(), "rtmp publisher disconnected");
                    }
                    return Ok(());
                }
                Ok(Ok(n)) => n,
            };
            conn.receive(&buf[..n], &mut events)
                .map_err(|e| e.to_string())?;
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
                            .map_err(|e| format!("write error: {e}"))?;
                    }
                    RtmpEvent::Connect { request_id, app } => {
                        // Any application: OME's URLs name their own.
                        app_name = app;
                        conn.accept(request_id, &mut more)
                            .map_err(|e| e.to_string())?;
                    }
                    RtmpEvent::Publish {
                        request_id, key, ..
                    } => {
                        // OBS may append a query (SignedPolicy); the key is what precedes it.
                        let (key, query) = key.split_once('?').unwrap_or((key.as_str(), ""));
                        let keyed = self.keys.stream_for_key(key);
                        // Without a key, the key field is taken as a stream name only
                        // when it names a known stream or a signed URL covers it: a
                        // mistyped key is never sent to the webhook or logged.
                        let a_name = self.hub.get(key).is_some() || self.gate.has_policy(query);
                        let result = if keyed.is_none()
                            && !(a_name && self.gate.keyless_publish_possible(query))
                        {
                            Err("stream key rejected".to_string())
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
                            self.gate
                                .admit_publish(attempt)
                                .await
                                .map_err(|r| r.to_string())
                        };
                        let pass = match result {
                            Ok(p) => p,
                            Err(reason) => {
                                warn!(%peer, %reason, "rtmp publish refused");
                                conn.reject(request_id, &reason, &mut more)
                                    .map_err(|e| e.to_string())?;
                                flush(&mut sock, &mut more).await?;
                                return Err(reason);
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
                        conn.accept(request_id, &mut more)
                            .map_err(|e| e.to_string())?;
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
                            p.on_video(data, timestamp).map_err(|e| e.to_string())?;
                        }
                    }
                    RtmpEvent::Audio { data, timestamp } => {
                        if let Some(p) = pipeline.as_mut() {
                            p.on_audio(data, timestamp).map_err(|e| e.to_string())?;
                        }
                    }
                    RtmpEvent::Unsupported(what) => {
                        if !what.is_empty() {
                            return Err(format!(
                                "{what} is not supported; play over WebRTC or HLS"
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
) -> Result<(), String> {
    for ev in events.drain(..) {
        if let RtmpEvent::Send(bytes) = ev {
            sock.write_all(&bytes)
                .await
                .map_err(|e| format!("write error: {e}"))?;
        }
    }
    Ok(())
}
