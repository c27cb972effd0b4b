//! WebRTC engine on str0m: ICE-lite, one UDP socket and one ICE-TCP listener for
//! every peer, viewers sharded over worker threads.

mod dtls;
pub mod metrics;
// Public for the fuzz targets (fuzz/): the ICE-TCP framing, the demux and
// the WHIP frame path.
#[doc(hidden)]
pub mod net;
#[doc(hidden)]
pub mod publish;
mod replay_policy;
pub mod sdp;
mod shard;
#[cfg(test)]
mod tests;
// Public for the in-memory tests and benches: one viewer, sans I/O.
#[doc(hidden)]
pub mod viewer;

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use parking_lot::Mutex;
use str0m::change::{SdpAnswer, SdpPendingOffer};
use str0m::config::DtlsCert;
use str0m::format::{Codec, FormatParams};
use str0m::media::{Direction, Frequency, MediaKind, Mid, Pt};
use str0m::net::{Protocol, TcpType};
use str0m::rtp::{Extension, ExtensionMap};
use str0m::{Candidate, Rtc, RtcConfig};
use tracing::info;

use crate::config::WebrtcConfig;
use crate::hub::{FrameSink, Hub, IngestProtocol, Stream};
use crate::log_every::LogEvery;
use crate::media::rtp_video::VideoCodec;
pub use net::IceTcp;
use net::{Demux, NetOut, Route, TcpConns};
pub use publish::NewPublisher;
use publish::VideoTrack;
use shard::{Registry, Shard, ShardMsg, ShardSink, ShardTx};
use viewer::{NewViewer, ReplayPace};

#[derive(Debug, thiserror::Error)]
pub enum ViewerError {
    #[error("malformed SDP offer: {0}")]
    BadOffer(String),
    #[error(
        "offer has no {wanted} codec the stream can use (offered: {offered}); stream '{stream}' sends {sends}"
    )]
    NoCodec {
        stream: String,
        wanted: String,
        offered: String,
        sends: String,
    },
    #[error(
        "offer asks to receive nothing this server sends (it needs a recvonly or sendrecv video or audio section)"
    )]
    NothingToReceive,
    #[error(
        "this browser offers only H.264 {offered}; stream '{stream}' is H.264 {profile}, which it may not play"
    )]
    H264Profile {
        stream: String,
        offered: String,
        profile: String,
    },
    #[error("WebRTC negotiation failed: {0}")]
    Negotiation(String),
    #[error("malformed SDP answer: {0}")]
    BadAnswer(String),
    #[error("no pending offer {0} (it was answered already, or timed out)")]
    NoPendingOffer(u64),
}

#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("malformed SDP offer: {0}")]
    BadOffer(String),
    #[error(
        "offer has no codec roomcast can forward (offered: {offered}); send H.264 (packetization-mode=1), VP8, VP9 or AV1 video and/or Opus audio"
    )]
    NoCodec { offered: String },
    #[error(
        "offer sends nothing (a WHIP offer needs a sendonly or sendrecv audio or video section)"
    )]
    NothingToSend,
    #[error("WebRTC negotiation failed: {0}")]
    Negotiation(String),
}

impl From<sdp::OfferError> for ViewerError {
    fn from(e: sdp::OfferError) -> Self {
        ViewerError::BadOffer(e.to_string())
    }
}

impl From<sdp::OfferError> for PublishError {
    fn from(e: sdp::OfferError) -> Self {
        PublishError::BadOffer(e.to_string())
    }
}

/// Viewers sent H.264 in a profile their offer did not list.
static H264_MISMATCH_LOG: LogEvery = LogEvery::new(Duration::from_secs(60));

pub struct Answer {
    pub id: u64,
    pub sdp: String,
}

/// Which of the server's candidates a session is offered (OME's `?transport=`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Transport {
    /// Every candidate (UDP and ICE-TCP, or TCP only with `tcp_force`).
    #[default]
    All,
    Udp,
    Tcp,
}

/// Per-session settings from authorization (SignedPolicy, admission webhook).
#[derive(Default)]
pub struct SessionOpts {
    pub transport: Transport,
    /// The session ends at this time.
    pub expires_at: Option<Instant>,
    /// Dropped when the session ends.
    pub guard: Option<Box<dyn Send>>,
}

/// A server-made offer waiting for the viewer's answer (OME signalling).
pub struct ViewerOffer {
    pub id: u64,
    pub sdp: String,
    /// `a=candidate` values (without `a=`), with the mid of the first section.
    pub candidates: Vec<String>,
    pub mid: String,
}

struct PendingViewer {
    rtc: Rtc,
    pending: SdpPendingOffer,
    stream: Arc<Stream>,
    /// The video section and the payload types offered for it, preferred first.
    video: Option<(Mid, Vec<Pt>, VideoCodec)>,
    audio: Option<(Mid, Pt)>,
    opts: SessionOpts,
    created: Instant,
}

/// Every worker is dead (they panicked over and over): nothing can be placed.
const NO_WORKER: &str = "no WebRTC worker is available; try again later";

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
    shards: Vec<ShardTx>,
    demux: Arc<Demux>,
    candidates: Vec<Candidate>,
    tcp_force: bool,
    /// Refuse viewers whose offer lacks the stream's H.264 profile.
    strict_h264_profile: bool,
    cert: DtlsCert,
    registry: Registry,
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
        let mut senders = Vec::new();
        let mut engine_metrics = metrics::EngineMetrics::default();
        for index in 0..workers {
            let shard_metrics = Arc::new(metrics::ShardMetrics::default());
            engine_metrics.shards.push(shard_metrics.clone());
            let (tx, rx) = shard::shard_queues(shard_metrics.clone(), shard::DATA_QUEUE);
            let sink: Arc<dyn FrameSink> = Arc::new(ShardSink { tx: tx.clone() });
            let shard = Shard {
                index,
                rx,
                tx: tx.clone(),
                publishers: publishers.clone(),
                sink,
                net: netout.clone(),
                demux: demux.clone(),
                registry: registry.clone(),
                metrics: shard_metrics,
                replay_pace: ReplayPace::from_mbps(cfg.replay_pace_mbps),
            };
            std::thread::Builder::new()
                .name(format!("rtc-{index}"))
                .spawn(move || shard.run())?;
            senders.push(tx);
        }
        {
            let (udp, demux, inbound) = (udp.clone(), demux.clone(), Arc::new(senders.clone()));
            std::thread::Builder::new()
                .name("rtc-udp-rx".into())
                .spawn(move || net::run_udp_receiver(udp, udp_local, demux, inbound))?;
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
            candidates = %candidates.iter().map(|c| c.to_sdp_string()).collect::<Vec<_>>().join(" | "),
            "webrtc engine started"
        );
        let engine = Engine {
            shards: senders,
            demux,
            candidates,
            tcp_force: cfg.tcp_force,
            strict_h264_profile: cfg.strict_h264_profile,
            cert,
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
        let sdp::ParsedOffer {
            summary,
            sdp: parsed,
        } = offer;
        let media = stream.media_info();
        let stream_video = stream_video(&media);
        let sends = sends_description(&stream_video, media.audio.is_some());
        let offered = || summary.offered();

        let video = if summary.has_video {
            let sv = stream_video.clone().unwrap_or(sdp::StreamVideo {
                // Not known yet (no frame received): H.264, RTMP's codec.
                codec: VideoCodec::H264,
                profile_level_id: None,
                fmtp: String::new(),
            });
            match sdp::choose_video(&summary, &sv) {
                Some(pick) => {
                    if pick.fit == sdp::H264Fit::Mismatch {
                        self.h264_mismatch(stream, &summary, sv.profile_level_id)?;
                    }
                    Some((pick.offer.clone(), pick.answer_fmtp))
                }
                None => {
                    return Err(ViewerError::NoCodec {
                        stream: stream.name.clone(),
                        wanted: match sv.codec {
                            VideoCodec::H264 => "H.264 (packetization-mode=1)".into(),
                            _ => sv.describe(),
                        },
                        offered: offered(),
                        sends,
                    });
                }
            }
        } else {
            None
        };
        let opus = summary.opus;
        if summary.has_audio && opus.is_none() && video.is_none() {
            return Err(ViewerError::NoCodec {
                stream: stream.name.clone(),
                wanted: "Opus".into(),
                offered: offered(),
                sends,
            });
        }

        let mut config = self.viewer_config();
        if let Some((v, _)) = &video {
            config.codec_config().add_config(
                v.pt.into(),
                v.rtx.map(Into::into),
                codec_of(v.codec),
                Frequency::NINETY_KHZ,
                None,
                FormatParams::parse_line(&v.fmtp),
            );
        }
        if opus.is_some() {
            config = config.enable_opus(true, false);
        }
        let mut rtc = config.build(Instant::now());
        for c in self.candidates_for(opts.transport) {
            rtc.add_local_candidate(c.clone());
        }
        let answer =
            no_panic(|| rtc.sdp_api().accept_offer(parsed)).map_err(ViewerError::Negotiation)?;

        let mut answer = answer.to_sdp_string();
        if let Some((v, Some(fmtp))) = &video {
            answer = sdp::set_answer_fmtp(&answer, v.pt, fmtp);
        }
        let video = video.as_ref().and_then(|(v, _)| {
            sending(&rtc, &summary.video_mid).map(|mid| (mid, v.pt.into(), v.codec))
        });
        let audio =
            opus.and_then(|pt| sending(&rtc, &summary.audio_mid).map(|mid| (mid, pt.into())));
        if video.is_none() && audio.is_none() {
            return Err(ViewerError::NothingToReceive);
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.hand_viewer(id, rtc, stream, video, audio, opts)?;
        Ok(Answer { id, sdp: answer })
    }

    /// An offer whose H.264 profiles do not include the stream's: refused with
    /// `strict_h264_profile`, else sent the closest offered profile (logged),
    /// since the offerers that list only Constrained Baseline in practice
    /// (Firefox, aiortc/libavcodec, Safari's Constrained High) decode more.
    fn h264_mismatch(
        &self,
        stream: &Stream,
        offer: &sdp::OfferSummary,
        stream_plid: Option<u32>,
    ) -> Result<(), ViewerError> {
        let plid = stream_plid.unwrap_or_default();
        let offered = sdp::offered_h264_profiles(offer);
        let profile = sdp::h264_profile_name(plid);
        if self.strict_h264_profile {
            return Err(ViewerError::H264Profile {
                stream: stream.name.clone(),
                offered,
                profile,
            });
        }
        if let Some(suppressed) = H264_MISMATCH_LOG.allow() {
            info!(
                stream = %stream.name,
                stream_profile = %format!("{profile} ({plid:06x})"),
                offered = %offered,
                suppressed,
                "viewer offers no H.264 profile containing the stream's; sending it in the closest offered one"
            );
        }
        Ok(())
    }

    fn viewer_config(&self) -> RtcConfig {
        // No transport-wide congestion control: without bandwidth estimation it
        // only costs str0m a 1000-entry send history per viewer.
        let mut exts = ExtensionMap::empty();
        exts.set(2, Extension::AbsoluteSendTime);
        exts.set(4, Extension::RtpMid);
        Rtc::builder()
            .set_ice_lite(true)
            .set_rtp_mode(true)
            .set_dtls_cert(self.cert.clone())
            .set_extension_map(exts)
            .clear_codecs()
    }

    /// Registers a negotiated viewer and hands it to a worker.
    fn hand_viewer(
        &self,
        id: u64,
        rtc: Rtc,
        stream: &Arc<Stream>,
        video: Option<(Mid, Pt, VideoCodec)>,
        audio: Option<(Mid, Pt)>,
        opts: SessionOpts,
    ) -> Result<(), ViewerError> {
        let mut rtc = rtc;
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
        let media = stream.media_info();
        let sv = stream_video(&media);
        let mut config = self.viewer_config();
        let video_codec = sv.as_ref().map(|v| v.codec);
        let video_pt: Option<Vec<Pt>> = sv.as_ref().map(|v| {
            let mut pts = Vec::new();
            for (pt, rtx, fmtp) in offer_formats(v) {
                config.codec_config().add_config(
                    pt,
                    Some(rtx),
                    codec_of(v.codec),
                    Frequency::NINETY_KHZ,
                    None,
                    fmtp,
                );
                pts.push(pt);
            }
            pts
        });
        if video_pt.is_none() && media.audio.is_none() {
            return Err(ViewerError::Negotiation(format!(
                "stream '{}' has no media yet; try again in a moment",
                stream.name
            )));
        }
        config = config.enable_opus(true, false);
        let mut rtc = config.build(Instant::now());
        let mut candidates = Vec::new();
        for c in self.candidates_for(opts.transport) {
            candidates.push(c.to_sdp_string());
            rtc.add_local_candidate(c.clone());
        }
        let mut api = rtc.sdp_api();
        let msid = Some("roomcast".to_string());
        let video_mid = video_pt.as_ref().map(|_| {
            api.add_media(
                MediaKind::Video,
                Direction::SendOnly,
                msid.clone(),
                Some("video".into()),
                None,
            )
        });
        let audio_mid = api.add_media(
            MediaKind::Audio,
            Direction::SendOnly,
            msid,
            Some("audio".into()),
            None,
        );
        let Some((offer, pending)) = api.apply() else {
            return Err(ViewerError::Negotiation("no offer was made".into()));
        };
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mid = video_mid.unwrap_or(audio_mid).to_string();
        let video_pt = video_pt.unwrap_or_default();
        let opus_pt = Pt::from(111);
        self.pending.lock().insert(
            id,
            PendingViewer {
                rtc,
                pending,
                stream: stream.clone(),
                video: video_mid.zip(video_codec).map(|(m, c)| (m, video_pt, c)),
                audio: Some((audio_mid, opus_pt)),
                opts,
                created: Instant::now(),
            },
        );
        Ok(ViewerOffer {
            id,
            sdp: offer.to_sdp_string(),
            candidates,
            mid,
        })
    }

    /// Applies the viewer's answer to an offer from [`Engine::offer_viewer`] and
    /// starts the session.
    pub fn answer_viewer(&self, id: u64, answer: &str) -> Result<(), ViewerError> {
        let p = self
            .pending
            .lock()
            .remove(&id)
            .ok_or(ViewerError::NoPendingOffer(id))?;
        // The same caps as an offer, before str0m reads it.
        sdp::summarize_offer(answer).map_err(|e| ViewerError::BadAnswer(e.to_string()))?;
        let parsed = SdpAnswer::from_sdp_string(answer)
            .map_err(|e| ViewerError::BadAnswer(e.to_string()))?;
        let PendingViewer {
            mut rtc,
            pending,
            stream,
            video,
            audio,
            opts,
            ..
        } = p;
        no_panic(|| rtc.sdp_api().accept_answer(pending, parsed))
            .map_err(ViewerError::Negotiation)?;
        // The first of our formats in the answer (the viewer's preference).
        let video = video.and_then(|(mid, offered, codec)| {
            if !sending_mid(&rtc, mid) {
                return None;
            }
            let answered = rtc.media(mid)?.remote_pts();
            let pt = answered.iter().find(|p| offered.contains(p))?;
            Some((mid, *pt, codec))
        });
        let audio = audio.filter(|(mid, _)| sending_mid(&rtc, *mid));
        if video.is_none() && audio.is_none() {
            return Err(ViewerError::NothingToReceive);
        }
        // The viewer keeps the offer's id.
        self.hand_viewer(id, rtc, &stream, video, audio, opts)
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

    fn candidates_for(&self, t: Transport) -> impl Iterator<Item = &Candidate> {
        let only = match t {
            Transport::All => None,
            Transport::Udp => Some(Protocol::Udp),
            Transport::Tcp => Some(Protocol::Tcp),
        };
        let any_of = |p: Protocol| self.candidates.iter().any(|c| c.proto() == p);
        // A transport the server does not offer (UDP with tcp_force): all it has.
        let only = only.filter(|p| any_of(*p));
        self.candidates
            .iter()
            .filter(move |c| only.is_none_or(|p| c.proto() == p))
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
        let sdp::ParsedOffer {
            summary,
            sdp: parsed,
        } = offer;
        let video = if summary.has_video && summary.sends(true) {
            sdp::choose_publisher_video(&summary).cloned()
        } else {
            None
        };
        let opus = summary
            .opus
            .filter(|_| summary.has_audio && summary.sends(false));
        let video_unusable = summary.has_video && summary.sends(true) && video.is_none();
        if video_unusable || (video.is_none() && opus.is_none()) {
            if !summary.sends(true) && !summary.sends(false) {
                return Err(PublishError::NothingToSend);
            }
            return Err(PublishError::NoCodec {
                offered: summary.offered(),
            });
        }
        let mut config = Rtc::builder()
            .set_ice_lite(true)
            .set_rtp_mode(true)
            .set_dtls_cert(self.cert.clone())
            .set_extension_map(ExtensionMap::standard())
            .clear_codecs();
        if let Some(v) = &video {
            config.codec_config().add_config(
                v.pt.into(),
                v.rtx.map(Into::into),
                codec_of(v.codec),
                Frequency::NINETY_KHZ,
                None,
                FormatParams::parse_line(&v.fmtp),
            );
        }
        if let Some(pt) = opus {
            config.codec_config().add_config(
                pt.into(),
                None,
                Codec::Opus,
                Frequency::FORTY_EIGHT_KHZ,
                Some(2),
                FormatParams {
                    min_p_time: Some(10),
                    use_inband_fec: Some(true),
                    ..Default::default()
                },
            );
        }
        let mut rtc = config.build(Instant::now());
        let transport = if self.tcp_force {
            Transport::Tcp
        } else {
            Transport::Udp
        };
        for c in self.candidates_for(transport) {
            rtc.add_local_candidate(c.clone());
        }
        let answer =
            no_panic(|| rtc.sdp_api().accept_offer(parsed)).map_err(PublishError::Negotiation)?;
        let receiving = |rtc: &Rtc, mid: &Option<String>| -> Option<Mid> {
            let mid = Mid::from(mid.as_deref()?);
            let m = rtc.media(mid)?;
            matches!(m.direction(), Direction::RecvOnly | Direction::SendRecv).then_some(mid)
        };
        let video = video.and_then(|v| {
            receiving(&rtc, &summary.video_mid).map(|mid| VideoTrack {
                mid,
                pt: v.pt.into(),
                codec: v.codec,
                fmtp: v.fmtp.clone(),
            })
        });
        let audio = opus.and_then(|pt| receiving(&rtc, &summary.audio_mid).map(|m| (m, pt.into())));
        if video.is_none() && audio.is_none() {
            return Err(PublishError::NothingToSend);
        }
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
            video,
            audio,
            expires_at: opts.expires_at,
            guard: opts.guard,
        })));
        if !sent {
            self.unplace(&self.publishers, &ufrag, id);
            return Err(PublishError::Negotiation(NO_WORKER.into()));
        }
        Ok(Answer {
            id,
            sdp: answer.to_sdp_string(),
        })
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
        self.candidates.iter().any(|c| c.proto() == proto)
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

/// Runs a str0m negotiation step, turning an assertion inside str0m (a
/// remote SDP it did not expect) into an error instead of a crash.
fn no_panic<T>(f: impl FnOnce() -> Result<T, str0m::RtcError>) -> Result<T, String> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(r) => r.map_err(|e| e.to_string()),
        Err(_) => Err("the SDP could not be negotiated (rejected by the WebRTC library)".into()),
    }
}

fn sending(rtc: &Rtc, mid: &Option<String>) -> Option<Mid> {
    let mid = Mid::from(mid.as_deref()?);
    sending_mid(rtc, mid).then_some(mid)
}

fn sending_mid(rtc: &Rtc, mid: Mid) -> bool {
    rtc.media(mid)
        .is_some_and(|m| matches!(m.direction(), Direction::SendOnly | Direction::SendRecv))
}

fn codec_of(c: VideoCodec) -> Codec {
    match c {
        VideoCodec::H264 => Codec::H264,
        VideoCodec::Vp8 => Codec::Vp8,
        VideoCodec::Vp9 => Codec::Vp9,
        VideoCodec::Av1 => Codec::Av1,
    }
}

/// The video formats of a server-made offer: (payload type, RTX, fmtp). H.264
/// is offered in the stream's profile and in the profiles browsers list (a
/// browser may not list High, yet its decoder plays it): the viewer's answer
/// picks one, and the payloads are the same whichever it is.
fn offer_formats(v: &sdp::StreamVideo) -> Vec<(Pt, Pt, FormatParams)> {
    let h264 = |plid: u32| FormatParams {
        level_asymmetry_allowed: Some(true),
        packetization_mode: Some(1),
        profile_level_id: Some(plid),
        ..Default::default()
    };
    match v.codec {
        VideoCodec::H264 => {
            // The stream's profile first, as its SPS says when browsers can
            // read it, else its profile_idc at level 3.1 (levels are
            // asymmetric); one entry per profile_idc, or str0m maps two to one
            // answered PT.
            let own = v.profile_level_id.map(|p| {
                if sdp::H264Profile::of(p).is_some() {
                    p
                } else {
                    (p & 0xff_0000) | 0x1f
                }
            });
            let mut profiles: Vec<u32> = own.into_iter().collect();
            for p in [0x42e01f, 0x4d001f, 0x64001f] {
                if !profiles.iter().any(|q| q >> 16 == p >> 16) {
                    profiles.push(p);
                }
            }
            profiles
                .into_iter()
                .zip([
                    (102u8, 103u8),
                    (104, 105),
                    (106, 107),
                    (108, 109),
                    (112, 113),
                ])
                .map(|(p, (pt, rtx))| (pt.into(), rtx.into(), h264(p)))
                .collect()
        }
        codec => {
            let (pt, rtx) = match codec {
                VideoCodec::Vp8 => (96, 97),
                VideoCodec::Vp9 => (98, 99),
                _ => (45, 46),
            };
            vec![(pt.into(), rtx.into(), FormatParams::parse_line(&v.fmtp))]
        }
    }
}

/// The stream's video as negotiation needs it; None before its first frame.
fn stream_video(media: &crate::hub::MediaInfo) -> Option<sdp::StreamVideo> {
    let v = media.video.as_ref()?;
    Some(sdp::StreamVideo {
        codec: VideoCodec::from_name(v.codec)?,
        profile_level_id: v.profile_level_id,
        fmtp: v.fmtp.clone().unwrap_or_default(),
    })
}

fn sends_description(video: &Option<sdp::StreamVideo>, audio: bool) -> String {
    let v = video
        .as_ref()
        .map_or("H.264".to_string(), sdp::StreamVideo::describe);
    if audio {
        format!("{v} video and Opus audio")
    } else {
        format!("{v} video")
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
fn shard_of(registry: &Registry, stream: &str, id: u64) -> Option<usize> {
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
