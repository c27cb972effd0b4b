//! WebRTC engine on str0m: ICE-lite, one UDP socket and one ICE-TCP listener for
//! every peer, viewers sharded over worker threads.

mod net;
pub mod sdp;
mod shard;

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Instant;

use anyhow::Context;
use parking_lot::Mutex;
use str0m::change::SdpOffer;
use str0m::config::DtlsCert;
use str0m::media::{Direction, Mid};
use str0m::net::{Protocol, TcpType};
use str0m::{Candidate, Rtc};
use tracing::info;

use crate::config::WebrtcConfig;
use crate::hub::{FrameSink, Stream};
use net::{Demux, NetOut, Route, TcpConns};
use shard::{NewPeer, Registry, Shard, ShardMsg, ShardSink};

#[derive(Debug, thiserror::Error)]
pub enum ViewerError {
    #[error("malformed SDP offer: {0}")]
    BadOffer(String),
    #[error(
        "offer has no {wanted} codec the stream can use (offered: {offered}); stream '{stream}' sends {sends}"
    )]
    NoCodec {
        stream: String,
        wanted: &'static str,
        offered: String,
        sends: String,
    },
    #[error(
        "offer asks to receive nothing this server sends (it needs a recvonly or sendrecv video or audio section)"
    )]
    NothingToReceive,
    #[error("WebRTC negotiation failed: {0}")]
    Negotiation(String),
}

pub struct Answer {
    pub id: u64,
    pub sdp: String,
}

pub struct Bound {
    pub udp: SocketAddr,
    pub tcp: SocketAddr,
}

pub struct Engine {
    shards: Vec<crossbeam_channel::Sender<ShardMsg>>,
    demux: Arc<Demux>,
    candidates: Vec<Candidate>,
    cert: DtlsCert,
    registry: Registry,
    next_id: AtomicU64,
    next_shard: AtomicUsize,
}

impl Engine {
    /// Binds the sockets and starts the worker threads.
    pub async fn start(cfg: &WebrtcConfig) -> anyhow::Result<(Arc<Engine>, Bound)> {
        str0m::crypto::from_feature_flags().install_process_default();
        let cert = str0m::crypto::from_feature_flags()
            .dtls_provider
            .generate_certificate()
            .context("generating the DTLS certificate")?;

        let udp =
            UdpSocket::bind(cfg.udp).with_context(|| format!("binding webrtc.udp {}", cfg.udp))?;
        let udp_addr = udp.local_addr()?;
        let udp = Arc::new(udp);
        let tcp = tokio::net::TcpListener::bind(cfg.tcp)
            .await
            .with_context(|| format!("binding webrtc.tcp {}", cfg.tcp))?;
        let tcp_addr = tcp.local_addr()?;

        let ips = advertised_ips(udp_addr.ip(), &cfg.public_ips);
        let mut candidates = Vec::new();
        for ip in &ips {
            if !cfg.tcp_force {
                candidates.push(Candidate::host(
                    SocketAddr::new(*ip, udp_addr.port()),
                    "udp",
                )?);
            }
            candidates.push(
                Candidate::builder()
                    .tcp()
                    .host(SocketAddr::new(*ip, tcp_addr.port()))
                    .tcptype(TcpType::Passive)
                    .build()?,
            );
        }
        // Packets arrive on sockets bound to the listen address; str0m matches
        // them to the candidate they were sent to.
        let udp_local = SocketAddr::new(ips[0], udp_addr.port());
        let tcp_local = SocketAddr::new(ips[0], tcp_addr.port());

        let workers = if cfg.workers == 0 {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        } else {
            cfg.workers
        };
        let demux = Arc::new(Demux::default());
        let tcp_conns = Arc::new(TcpConns::default());
        let netout = Arc::new(NetOut {
            udp: udp.clone(),
            tcp: tcp_conns.clone(),
        });
        let registry: Registry = Arc::new(Mutex::new(HashMap::new()));
        let mut senders = Vec::new();
        for index in 0..workers {
            let (tx, rx) = crossbeam_channel::unbounded();
            let sink: Arc<dyn FrameSink> = Arc::new(ShardSink { tx: tx.clone() });
            let shard = Shard {
                index,
                rx,
                sink,
                net: netout.clone(),
                demux: demux.clone(),
                registry: registry.clone(),
            };
            std::thread::Builder::new()
                .name(format!("rtc-{index}"))
                .spawn(move || shard.run())?;
            senders.push(tx);
        }
        {
            let (udp, demux, senders) = (udp.clone(), demux.clone(), senders.clone());
            std::thread::Builder::new()
                .name("rtc-udp-rx".into())
                .spawn(move || net::run_udp_receiver(udp, udp_local, demux, senders))?;
        }
        tokio::spawn(net::run_tcp_listener(
            tcp,
            tcp_local,
            demux.clone(),
            tcp_conns,
            senders.clone(),
        ));
        info!(
            workers,
            candidates = %candidates.iter().map(|c| c.to_sdp_string()).collect::<Vec<_>>().join(" | "),
            "webrtc engine started"
        );
        let engine = Engine {
            shards: senders,
            demux,
            candidates,
            cert,
            registry,
            next_id: AtomicU64::new(1),
            next_shard: AtomicUsize::new(0),
        };
        Ok((
            Arc::new(engine),
            Bound {
                udp: udp_addr,
                tcp: tcp_addr,
            },
        ))
    }

    /// Negotiates a viewer for `stream` and hands it to a worker. The answer
    /// carries every candidate (ICE-lite, no trickle needed).
    pub fn add_viewer(&self, stream: &Arc<Stream>, offer: &str) -> Result<Answer, ViewerError> {
        let summary =
            sdp::summarize_offer(offer).map_err(|e| ViewerError::BadOffer(e.to_string()))?;
        let parsed =
            SdpOffer::from_sdp_string(offer).map_err(|e| ViewerError::BadOffer(e.to_string()))?;
        let media = stream.media_info();
        let profile = media.video.as_ref().and_then(|v| v.profile_level_id);
        let sends = "H.264 video and Opus audio".to_string();
        let offered = || summary.codec_names.join(", ");

        let h264 = if summary.has_video {
            match sdp::choose_h264(&summary, profile) {
                Some(h) => Some(h.clone()),
                None => {
                    return Err(ViewerError::NoCodec {
                        stream: stream.name.clone(),
                        wanted: "H.264 (packetization-mode=1)",
                        offered: offered(),
                        sends,
                    });
                }
            }
        } else {
            None
        };
        let opus = summary.opus;
        if summary.has_audio && opus.is_none() && h264.is_none() {
            return Err(ViewerError::NoCodec {
                stream: stream.name.clone(),
                wanted: "Opus",
                offered: offered(),
                sends,
            });
        }

        let mut config = Rtc::builder()
            .set_ice_lite(true)
            .set_rtp_mode(true)
            .set_dtls_cert(self.cert.clone())
            .clear_codecs();
        if let Some(h) = &h264 {
            config.codec_config().add_h264(
                h.pt.into(),
                h.rtx.map(Into::into),
                true,
                h.profile_level_id.unwrap_or(0x42e01f),
            );
        }
        if opus.is_some() {
            config = config.enable_opus(true, false);
        }
        let mut rtc = config.build(Instant::now());
        for c in &self.candidates {
            rtc.add_local_candidate(c.clone());
        }
        let answer = rtc
            .sdp_api()
            .accept_offer(parsed)
            .map_err(|e| ViewerError::Negotiation(e.to_string()))?;

        let sending = |rtc: &Rtc, mid: &Option<String>| -> Option<Mid> {
            let mid = Mid::from(mid.as_deref()?);
            let m = rtc.media(mid)?;
            matches!(m.direction(), Direction::SendOnly | Direction::SendRecv).then_some(mid)
        };
        let video = h264
            .as_ref()
            .and_then(|h| sending(&rtc, &summary.video_mid).map(|mid| (mid, h.pt.into())));
        let audio =
            opus.and_then(|pt| sending(&rtc, &summary.audio_mid).map(|mid| (mid, pt.into())));
        if video.is_none() && audio.is_none() {
            return Err(ViewerError::NothingToReceive);
        }

        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let shard = self.next_shard.fetch_add(1, Ordering::Relaxed) % self.shards.len();
        let ufrag = rtc.direct_api().local_ice_credentials().ufrag;
        // Route before answering: the first STUN check may follow the answer at once.
        self.demux.add_ufrag(&ufrag, Route { shard, peer: id });
        self.registry
            .lock()
            .insert(id, (shard, stream.name.clone()));
        let _ = self.shards[shard].send(ShardMsg::Add(Box::new(NewPeer {
            id,
            rtc,
            stream: stream.clone(),
            ufrag,
            video,
            audio,
        })));
        Ok(Answer {
            id,
            sdp: answer.to_sdp_string(),
        })
    }

    /// Ends a viewer's session; false if it does not exist (or is of another stream).
    pub fn remove_viewer(&self, stream: &str, id: u64) -> bool {
        let Some((shard, s)) = self.registry.lock().get(&id).cloned() else {
            return false;
        };
        if s != stream {
            return false;
        }
        let _ = self.shards[shard].send(ShardMsg::Remove(id));
        true
    }

    pub fn has_viewer(&self, stream: &str, id: u64) -> bool {
        self.registry
            .lock()
            .get(&id)
            .is_some_and(|(_, s)| s == stream)
    }

    pub fn uses_protocol(&self, proto: Protocol) -> bool {
        self.candidates.iter().any(|c| c.proto() == proto)
    }
}

/// Addresses to put in candidates: configured public IPs, else the listen address,
/// else (listening on 0.0.0.0) the address this host uses to reach the internet,
/// found without sending anything; loopback as a last resort.
fn advertised_ips(listen: IpAddr, public_ips: &[IpAddr]) -> Vec<IpAddr> {
    if !public_ips.is_empty() {
        return public_ips.to_vec();
    }
    if !listen.is_unspecified() {
        return vec![listen];
    }
    let outward = UdpSocket::bind("0.0.0.0:0")
        .and_then(|s| {
            s.connect("192.0.2.1:9")?; // TEST-NET-1: routing lookup only
            s.local_addr()
        })
        .map(|a| a.ip())
        .ok()
        .filter(|ip| !ip.is_unspecified());
    vec![outward.unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST))]
}
