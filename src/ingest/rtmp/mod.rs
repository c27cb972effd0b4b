//! RTMP ingest driver: owns the TCP sockets and feeds the sans-I/O RTMP core.
//! `rtmp://HOST:1935/live` with the stream key as the key (OBS "Custom"), or
//! `rtmp://HOST:1935/live/KEY` (ffmpeg).

mod session;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tracing::{debug, info, warn};

use super::flv_pipeline::FlvPipeline;
use crate::auth::keys::KeyRing;
use crate::hub::{Hub, IngestProtocol};
pub use session::{RmlConnection, RtmpConnection, RtmpError, RtmpEvent};

/// The handshake and `publish` must happen within this time.
const SETUP_TIMEOUT: Duration = Duration::from_secs(10);
/// A publisher that sends nothing for this long is gone.
const IDLE_TIMEOUT: Duration = Duration::from_secs(20);

pub struct RtmpIngest {
    pub hub: Arc<Hub>,
    pub keys: Arc<KeyRing>,
    pub app: String,
}

impl RtmpIngest {
    pub async fn serve(self: Arc<Self>, listener: TcpListener) {
        loop {
            let (sock, peer) = match listener.accept().await {
                Ok(s) => s,
                Err(e) => {
                    warn!(error = %e, "rtmp accept failed");
                    continue;
                }
            };
            let _ = sock.set_nodelay(true);
            let this = self.clone();
            tokio::spawn(async move {
                match this.connection(sock, peer).await {
                    Ok(()) => debug!(%peer, "rtmp connection closed"),
                    Err(reason) => info!(%peer, %reason, "rtmp connection closed"),
                }
            });
        }
    }

    async fn connection(&self, mut sock: TcpStream, peer: SocketAddr) -> Result<(), String> {
        let mut conn: Box<dyn RtmpConnection> = Box::new(RmlConnection::default());
        let mut events = Vec::new();
        let mut buf = vec![0u8; 64 * 1024];
        let mut pipeline: Option<FlvPipeline> = None;
        let started = tokio::time::Instant::now();
        loop {
            let timeout = if pipeline.is_some() {
                IDLE_TIMEOUT
            } else {
                SETUP_TIMEOUT.saturating_sub(started.elapsed())
            };
            let n = match tokio::time::timeout(timeout, sock.read(&mut buf)).await {
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
                        if app != self.app {
                            warn!(%peer, app = %app, expected = %self.app, "rtmp connect to an unknown application refused");
                            return Err(format!(
                                "unknown application '{app}': publish to rtmp://HOST/{}",
                                self.app
                            ));
                        }
                        conn.accept(request_id, &mut more)
                            .map_err(|e| e.to_string())?;
                    }
                    RtmpEvent::Publish {
                        request_id, key, ..
                    } => {
                        // OBS may append a query (SignedPolicy); the key is what precedes it.
                        let key = key.split('?').next().unwrap_or("");
                        let Some(name) = self.keys.stream_for_key(key) else {
                            warn!(%peer, "stream key rejected");
                            conn.reject(request_id, "stream key rejected", &mut more)
                                .map_err(|e| e.to_string())?;
                            flush(&mut sock, &mut more).await?;
                            return Err("stream key rejected".into());
                        };
                        let stream = self.hub.ensure_stream(&name, None);
                        if stream.is_live() {
                            info!(%peer, stream = %name, "new publisher takes the stream over");
                        }
                        let publisher = self.hub.publish(&stream, IngestProtocol::Rtmp);
                        info!(%peer, stream = %name, "rtmp publish started");
                        pipeline = Some(FlvPipeline::new(publisher));
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

async fn flush(sock: &mut TcpStream, events: &mut Vec<RtmpEvent>) -> Result<(), String> {
    for ev in events.drain(..) {
        if let RtmpEvent::Send(bytes) = ev {
            sock.write_all(&bytes)
                .await
                .map_err(|e| format!("write error: {e}"))?;
        }
    }
    Ok(())
}
