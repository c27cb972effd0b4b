//! The engine: binds the shared sockets, starts the worker shards and the
//! UDP receiver, and places each negotiated session on a live shard (its
//! ICE ufrag routed there before the answer leaves). Negotiation itself is
//! `negotiate.rs`; the sessions run in `shard.rs`.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Instant;

use anyhow::Context;
use parking_lot::Mutex;
use str0m::net::{Protocol, TcpType};
use str0m::{Candidate, IceCreds, Rtc};
use tracing::info;

use super::ice_path::IceRestart;
use super::negotiate::{self, NegotiatedViewer, Negotiator, ServerOffer};
use super::net::{self, Demux, IceTcp, NetOut, Route, TcpConns};
use super::publish::NewPublisher;
use super::shard::{self, Registry, Shard, ShardMsg, ShardSink, ShardTx};
use super::viewer::{NewViewer, ReplayPace};
use super::{Answer, PublishError, SessionOpts, ViewerError, ViewerOffer, dtls, metrics, sdp};
use crate::config::WebrtcConfig;
use crate::hub::{FrameSink, Hub, IngestProtocol, Stream};

/// A server-made offer waiting for the viewer's answer (OME signalling).
struct PendingViewer {
    offer: ServerOffer,
    stream: Arc<Stream>,
    opts: SessionOpts,
    created: Instant,
}

/// How long an ICE restart waits for the viewer's shard (it answers within
/// a loop turn; a stalled worker makes the client retry).
const ICE_RESTART_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IceRestartError {
    #[error("no such session (it ended)")]
    NoSession,
    #[error("the session's worker did not answer in time; try again")]
    Busy,
}

/// Every worker is dead (they panicked over and over): nothing can be placed.
pub(super) const NO_WORKER: &str = "no WebRTC worker is available; try again later";

/// Offers not answered within this time are forgotten. A player answers
/// at once (OvenPlayer: within a second); an unanswered offer holds an `Rtc`
/// and a place under the viewer caps.
const PENDING_OFFER_TTL: std::time::Duration = std::time::Duration::from_secs(20);

pub struct Bound {
    pub udp: SocketAddr,
    pub tcp: SocketAddr,
    /// The ICE-TCP listener; ends after shutdown once its connections are gone.
    pub tcp_task: tokio::task::JoinHandle<()>,
}

pub struct Engine {
    pub(super) shards: Vec<ShardTx>,
    demux: Arc<Demux>,
    negotiator: Negotiator,
    pub(super) registry: Registry,
    publishers: Registry,
    pending: Mutex<HashMap<u64, PendingViewer>>,
    next_id: AtomicU64,
    next_shard: AtomicUsize,
    pub metrics: metrics::EngineMetrics,
    ice_tcp: Arc<IceTcp>,
}

impl Engine {
    /// Binds the sockets and starts the worker threads.
    /// ICE-TCP is served through the shared listener core with `limits` until `shutdown`.
    pub async fn start(
        cfg: &WebrtcConfig,
        limits: crate::listener::Limits,
        shutdown: crate::listener::Shutdown,
    ) -> anyhow::Result<(Arc<Engine>, Bound)> {
        dtls::crypto_provider().install_process_default();
        shard::throttle_worker_panic_output();
        let cert = dtls::crypto_provider()
            .dtls_provider
            .generate_certificate()
            .context("generating the DTLS certificate")?;

        let udp =
            UdpSocket::bind(cfg.udp).with_context(|| format!("binding webrtc.udp {}", cfg.udp))?;
        let udp_addr = udp.local_addr()?;
        let receive_buffer = net::grow_receive_buffer(&udp, net::UDP_RECEIVE_BUFFER);
        if let Some(n) = receive_buffer.filter(|&n| n < net::UDP_RECEIVE_BUFFER) {
            info!(
                bytes = n,
                wanted = net::UDP_RECEIVE_BUFFER,
                "the webrtc UDP socket's receive buffer is capped by net.core.rmem_max; \
                 raising that to `wanted` (sysctl -w net.core.rmem_max=...) keeps bursts \
                 that arrive while a worker is busy from being dropped"
            );
        }
        let udp = Arc::new(udp);
        let tcp = crate::listener::bind(cfg.tcp)
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
        let netout = Arc::new(NetOut::new(udp.clone(), tcp_conns.clone())?);
        let registry: Registry = Arc::new(Mutex::new(HashMap::new()));
        let publishers: Registry = Arc::new(Mutex::new(HashMap::new()));
        let mut engine_metrics = metrics::EngineMetrics::default();
        let mut queues = Vec::new();
        for _ in 0..workers {
            let shard_metrics = Arc::new(metrics::ShardMetrics::default());
            engine_metrics.shards.push(shard_metrics.clone());
            let (tx, rx) = shard::shard_queues(
                shard_metrics.clone(),
                shard::DATA_QUEUE,
                shard::DATA_QUEUE_FRAME_BYTES,
            )?;
            queues.push((tx, rx, shard_metrics));
        }
        let senders: Vec<ShardTx> = queues.iter().map(|(tx, _, _)| tx.clone()).collect();
        // A lone shard reads the UDP socket itself, between its other work:
        // each burst of datagrams then wakes one thread, not a receiver and
        // then the shard. Several shards get a receiver thread, so that no
        // shard's work (a keyframe to hundreds of viewers) delays another
        // shard's packets.
        let shard_reads_udp = workers == 1;
        for (index, (tx, rx, shard_metrics)) in queues.into_iter().enumerate() {
            let sink: Arc<dyn FrameSink> = Arc::new(ShardSink { tx: tx.clone() });
            let shard = Shard {
                index,
                rx,
                tx,
                publishers: publishers.clone(),
                sink,
                net: netout.clone(),
                demux: demux.clone(),
                registry: registry.clone(),
                metrics: shard_metrics,
                replay_pace: ReplayPace::from_mbps(cfg.replay_pace_mbps),
                udp: shard_reads_udp.then(|| (udp.clone(), udp_local)),
            };
            std::thread::Builder::new()
                .name(format!("rtc-{index}"))
                .spawn(move || shard.run())?;
        }
        if !shard_reads_udp {
            let reader = net::UdpReader::new(udp.clone(), udp_local, demux.clone());
            let inbound = Arc::new(senders.clone());
            std::thread::Builder::new()
                .name("rtc-udp-rx".into())
                .spawn(move || reader.run(inbound))?;
        }
        let ice_tcp = Arc::new(IceTcp {
            local: tcp_local,
            demux: demux.clone(),
            conns: tcp_conns,
            inbound: Arc::new(senders.clone()),
        });
        let tcp_task = tokio::spawn(net::run_tcp_listener(
            tcp,
            ice_tcp.clone(),
            limits,
            shutdown,
        ));
        info!(
            workers,
            gso_segments = netout.max_segments(),
            udp_receive_buffer = receive_buffer.unwrap_or(0),
            candidates = %candidates.iter().map(|c| c.to_sdp_string()).collect::<Vec<_>>().join(" | "),
            "webrtc engine started"
        );
        let engine = Engine {
            shards: senders,
            demux,
            negotiator: Negotiator {
                cert,
                candidates,
                tcp_force: cfg.tcp_force,
                strict_h264_profile: cfg.strict_h264_profile,
                direct_send: cfg.direct_send,
            },
            registry,
            publishers,
            pending: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            next_shard: AtomicUsize::new(0),
            metrics: engine_metrics,
            ice_tcp,
        };
        Ok((
            Arc::new(engine),
            Bound {
                udp: udp_addr,
                tcp: tcp_addr,
                tcp_task,
            },
        ))
    }

    /// Negotiates a viewer for `stream` and hands it to a worker. The answer
    /// carries every candidate (ICE-lite, no trickle needed).
    pub fn add_viewer(&self, stream: &Arc<Stream>, offer: &str) -> Result<Answer, ViewerError> {
        self.add_viewer_with(stream, offer, SessionOpts::default())
    }

    /// [`Engine::add_viewer`] with session settings (expiry, a guard).
    pub fn add_viewer_with(
        &self,
        stream: &Arc<Stream>,
        offer: &str,
        opts: SessionOpts,
    ) -> Result<Answer, ViewerError> {
        let offer = sdp::parse_offer(offer).map_err(|e| ViewerError::BadOffer(e.to_string()))?;
        self.add_viewer_parsed(stream, offer, opts)
    }

    /// [`Engine::add_viewer_with`] for an offer parsed beforehand with
    /// [`sdp::parse_offer`] (outside any shared lock: parsing is the costly part).
    pub fn add_viewer_parsed(
        &self,
        stream: &Arc<Stream>,
        offer: sdp::ParsedOffer,
        opts: SessionOpts,
    ) -> Result<Answer, ViewerError> {
        let v = self
            .negotiator
            .viewer(stream, offer, opts.transport, Instant::now())?;
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let sdp = v.answer.clone();
        self.hand_viewer(id, v, stream, opts)?;
        Ok(Answer { id, sdp })
    }

    /// Registers a negotiated viewer and hands it to a worker.
    fn hand_viewer(
        &self,
        id: u64,
        v: NegotiatedViewer,
        stream: &Arc<Stream>,
        opts: SessionOpts,
    ) -> Result<(), ViewerError> {
        let NegotiatedViewer {
            mut rtc,
            video,
            audio,
            srtp_keys,
            ..
        } = v;
        let (shard, ufrag) = self
            .place(&mut rtc, &self.registry, stream, id)
            .ok_or(ViewerError::Negotiation(NO_WORKER.into()))?;
        let sent = self.shards[shard].control(ShardMsg::Add(Box::new(NewViewer {
            id,
            rtc,
            stream: stream.clone(),
            ufrag: ufrag.clone(),
            video: video.map(|(mid, pt, _)| (mid, pt)),
            video_codec: video.map(|(_, _, c)| c.name()),
            audio,
            expires_at: opts.expires_at,
            guard: opts.guard,
            srtp_keys,
        })));
        if !sent {
            // The worker died between placement and now.
            self.unplace(&self.registry, &ufrag, id);
            return Err(ViewerError::Negotiation(NO_WORKER.into()));
        }
        Ok(())
    }

    /// Makes an offer for a viewer of `stream` (OvenPlayer's signalling has the
    /// server offer): the stream's video codec and Opus, sendonly, with the
    /// candidates of `opts.transport`. [`Engine::answer_viewer`] completes it.
    pub fn offer_viewer(
        &self,
        stream: &Arc<Stream>,
        opts: SessionOpts,
    ) -> Result<ViewerOffer, ViewerError> {
        self.expire_pending();
        let offer = self
            .negotiator
            .viewer_offer(stream, opts.transport, Instant::now())?;
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let made = ViewerOffer {
            id,
            sdp: offer.sdp.clone(),
            candidates: offer.candidates.clone(),
            mid: offer.mid.clone(),
        };
        self.pending.lock().insert(
            id,
            PendingViewer {
                offer,
                stream: stream.clone(),
                opts,
                created: Instant::now(),
            },
        );
        Ok(made)
    }

    /// Applies the viewer's answer to an offer from [`Engine::offer_viewer`] and
    /// starts the session.
    pub fn answer_viewer(&self, id: u64, answer: &str) -> Result<(), ViewerError> {
        let p = self
            .pending
            .lock()
            .remove(&id)
            .ok_or(ViewerError::NoPendingOffer(id))?;
        let v = negotiate::accept_viewer_answer(p.offer, answer)?;
        // The viewer keeps the offer's id.
        self.hand_viewer(id, v, &p.stream, p.opts)
    }

    /// Forgets an unanswered offer.
    pub fn cancel_offer(&self, id: u64) {
        self.pending.lock().remove(&id);
    }

    fn expire_pending(&self) {
        let now = Instant::now();
        self.pending
            .lock()
            .retain(|_, p| now.duration_since(p.created) < PENDING_OFFER_TTL);
    }
    /// Negotiates a WHIP publisher for `stream` and hands it to a worker. The
    /// publish starts (taking the stream over) once ICE and DTLS are up. The
    /// answer carries the UDP host candidates only (OBS breaks on several
    /// candidate kinds), or the TCP ones with `tcp_force`.
    pub fn add_publisher(
        &self,
        hub: &Arc<Hub>,
        stream: &Arc<Stream>,
        protocol: IngestProtocol,
        offer: &str,
        opts: SessionOpts,
    ) -> Result<Answer, PublishError> {
        let offer = sdp::parse_offer(offer).map_err(|e| PublishError::BadOffer(e.to_string()))?;
        self.add_publisher_parsed(hub, stream, protocol, offer, opts)
    }

    /// [`Engine::add_publisher`] for an offer parsed beforehand with
    /// [`sdp::parse_offer`].
    pub fn add_publisher_parsed(
        &self,
        hub: &Arc<Hub>,
        stream: &Arc<Stream>,
        protocol: IngestProtocol,
        offer: sdp::ParsedOffer,
        opts: SessionOpts,
    ) -> Result<Answer, PublishError> {
        let p = self.negotiator.publisher(offer, Instant::now())?;
        let mut rtc = p.rtc;
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (shard, ufrag) = self
            .place(&mut rtc, &self.publishers, stream, id)
            .ok_or(PublishError::Negotiation(NO_WORKER.into()))?;
        let sent = self.shards[shard].control(ShardMsg::AddPublisher(Box::new(NewPublisher {
            id,
            rtc,
            hub: hub.clone(),
            stream: stream.clone(),
            protocol,
            ufrag: ufrag.clone(),
            video: p.video,
            audio: p.audio,
            expires_at: opts.expires_at,
            guard: opts.guard,
        })));
        if !sent {
            self.unplace(&self.publishers, &ufrag, id);
            return Err(PublishError::Negotiation(NO_WORKER.into()));
        }
        Ok(Answer { id, sdp: p.answer })
    }

    /// Ends a publisher's session (WHIP `DELETE`); false if it does not exist.
    pub fn remove_publisher(&self, stream: &str, id: u64) -> bool {
        let Some(shard) = shard_of(&self.publishers, stream, id) else {
            return false;
        };
        self.shards[shard].control(ShardMsg::RemovePublisher(id))
    }

    pub fn has_publisher(&self, stream: &str, id: u64) -> bool {
        shard_of(&self.publishers, stream, id).is_some()
    }

    /// Ends a viewer's session; false if it does not exist (or is of another stream).
    pub fn remove_viewer(&self, stream: &str, id: u64) -> bool {
        let Some(shard) = shard_of(&self.registry, stream, id) else {
            return false;
        };
        self.shards[shard].control(ShardMsg::Remove(id))
    }

    /// Restarts ICE for viewer `id` of `stream` with the client's new
    /// `remote` credentials (WHEP `PATCH`, RFC 9725 §4.3.2) and returns the
    /// server's new ones. The new ufrag is routed to the viewer's shard
    /// before the shard applies it; the session keeps its DTLS and SRTP.
    pub async fn restart_viewer_ice(
        &self,
        stream: &str,
        id: u64,
        remote: IceCreds,
    ) -> Result<IceCreds, IceRestartError> {
        let shard = shard_of(&self.registry, stream, id).ok_or(IceRestartError::NoSession)?;
        let local = IceCreds::new();
        self.demux
            .add_ufrag(&local.ufrag, &local.pass, Route { shard, peer: id });
        let (done, applied) = tokio::sync::oneshot::channel();
        let msg = ShardMsg::IceRestart(Box::new(IceRestart {
            id,
            local: local.clone(),
            remote,
            done,
        }));
        let result = if self.shards[shard].control(msg) {
            match tokio::time::timeout(ICE_RESTART_WAIT, applied).await {
                Ok(Ok(true)) => Ok(local.clone()),
                Ok(_) => Err(IceRestartError::NoSession),
                Err(_) => Err(IceRestartError::Busy),
            }
        } else {
            Err(IceRestartError::Busy)
        };
        if result.is_err() {
            self.demux.remove(&local.ufrag, &[]);
        }
        result
    }

    /// The server's ICE candidates for a restart's answer (`a=candidate`
    /// values without `a=`): every one, as in a WHEP answer.
    pub fn viewer_candidates(&self) -> Vec<String> {
        self.negotiator
            .candidates
            .iter()
            .map(|c| c.to_sdp_string().trim_start_matches("a=").to_string())
            .collect()
    }

    pub fn has_viewer(&self, stream: &str, id: u64) -> bool {
        shard_of(&self.registry, stream, id).is_some()
    }

    /// Viewer sessions in total and of `stream` (negotiated ones included, so
    /// admission control counts a viewer from its first moment).
    pub fn viewer_counts(&self, stream: &str) -> (usize, usize) {
        self.expire_pending();
        let reg = self.registry.lock();
        let pending = self.pending.lock();
        let of_stream = reg.values().filter(|(_, s)| s == stream).count()
            + pending.values().filter(|p| p.stream.name == stream).count();
        (reg.len() + pending.len(), of_stream)
    }

    /// Ends every viewer and publisher session (shutdown); their shards
    /// disconnect them. Returns how many there were.
    pub fn close_all(&self) -> usize {
        let mut n = 0;
        for (reg, viewers) in [(&self.registry, true), (&self.publishers, false)] {
            let sessions: Vec<(u64, usize)> = reg
                .lock()
                .iter()
                .map(|(id, (shard, _))| (*id, *shard))
                .collect();
            n += sessions.len();
            for (id, shard) in sessions {
                let msg = if viewers {
                    ShardMsg::Remove(id)
                } else {
                    ShardMsg::RemovePublisher(id)
                };
                self.shards[shard].control(msg);
            }
        }
        self.pending.lock().clear();
        n
    }

    /// Viewer and publisher sessions still registered.
    pub fn session_count(&self) -> usize {
        self.registry.lock().len() + self.publishers.lock().len()
    }

    pub fn uses_protocol(&self, proto: Protocol) -> bool {
        self.negotiator
            .candidates
            .iter()
            .any(|c| c.proto() == proto)
    }

    /// The ICE-TCP connection handler, for an accept loop to call with
    /// each accepted `(TcpStream, peer)`.
    pub fn ice_tcp(&self) -> Arc<IceTcp> {
        self.ice_tcp.clone()
    }

    /// Workers able to take sessions.
    pub fn live_workers(&self) -> usize {
        self.shards.iter().filter(|s| s.is_alive()).count()
    }
}

impl Engine {
    /// Picks a live shard for a new session (round robin, skipping dead
    /// ones) and routes its ICE username there. Done before answering: the
    /// first STUN check may follow the answer at once. None if every
    /// worker is dead.
    fn place(
        &self,
        rtc: &mut Rtc,
        registry: &Registry,
        stream: &Stream,
        id: u64,
    ) -> Option<(usize, String)> {
        let n = self.shards.len();
        let start = self.next_shard.fetch_add(1, Ordering::Relaxed);
        let shard = (0..n)
            .map(|i| (start + i) % n)
            .find(|&i| self.shards[i].is_alive())?;
        let creds = rtc.direct_api().local_ice_credentials();
        self.demux
            .add_ufrag(&creds.ufrag, &creds.pass, Route { shard, peer: id });
        registry.lock().insert(id, (shard, stream.name.clone()));
        Some((shard, creds.ufrag))
    }

    fn unplace(&self, registry: &Registry, ufrag: &str, id: u64) {
        self.demux.remove(ufrag, &[]);
        registry.lock().remove(&id);
    }
}

/// The shard running session `id`, if the session belongs to `stream`.
pub(super) fn shard_of(registry: &Registry, stream: &str, id: u64) -> Option<usize> {
    registry
        .lock()
        .get(&id)
        .filter(|(_, s)| s == stream)
        .map(|(shard, _)| *shard)
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
