//! The edge relay: a node without a stream's publisher pulls the stream from
//! its origin node once, as a WHEP client, and publishes it into its own hub
//! (ingest → hub → egress, as if published here). Local viewers of every
//! surface then share that one pull; it ends when the last one has gone.
//!
//! The WebRTC side is our own str0m engine's publisher core
//! ([`PubPeer`]: every codec the hub carries, keyframe requests sent
//! upstream as PLI), driven here by a thin tokio loop on its own UDP socket:
//! the pull is an ICE-controlling client, which the ICE-lite shards are not.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use str0m::media::{Direction, MediaKind, Mid, Pt};
use str0m::net::{Protocol, Receive};
use str0m::{Candidate, Event, IceConnectionState, Input, Output, Rtc};
use tokio::net::UdpSocket;
use tokio::sync::{Notify, watch};
use tracing::{debug, info, warn};

use crate::hub::{Hub, IngestProtocol, Stream};
use crate::log_every::LogEvery;
use crate::rtc::publish::{NewPublisher, PubPeer, VideoTrack};
use crate::rtc::sdp;

use super::auth::{self, NodeAuth};

/// Connecting to the origin, and its DELETE, within this.
const HTTP_TIMEOUT: Duration = Duration::from_secs(5);
/// The node pulled from must answer the WHEP POST within this: an upstream
/// (`cluster.upstream`) may first pull the stream itself, waiting up to 5 s
/// for its keyframe.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(12);
/// Largest WHEP answer read from an origin (answers are a few KB).
const MAX_ANSWER_BYTES: usize = 64 * 1024;
/// ICE + DTLS with the origin within this, or the pull is given up.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Nothing from the origin for this long: it is gone.
const SILENCE_TIMEOUT: Duration = Duration::from_secs(5);
/// The pull stays this long after its last local viewer left (a page
/// reload or the next viewer should not cost a new pull).
pub const IDLE_GRACE: Duration = Duration::from_secs(5);

static PULL_FAILED_LOG: LogEvery = LogEvery::new(Duration::from_secs(10));

/// Where to pull a stream from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OriginTarget {
    pub node_id: String,
    pub internal_url: String,
    /// The origin's publish session: a new one means a new pull.
    pub session: String,
}

/// Whether a stream has local demand besides WebRTC viewers (LL-HLS requests).
pub type Demand = Box<dyn Fn(&str) -> bool + Send + Sync>;

/// Whether `stream` has anyone to serve on this node: WebRTC viewers (WHEP,
/// OvenPlayer) or other demand.
pub fn wanted(stream: &Stream, demand: &std::sync::OnceLock<Demand>) -> bool {
    stream.viewers() > 0 || demand.get().is_some_and(|d| d(&stream.name))
}

struct Running {
    origin: OriginTarget,
    generation: u64,
    stop: watch::Sender<bool>,
}

/// The pulls of this node, at most one per stream.
pub struct Relays {
    hub: Arc<Hub>,
    auth: Arc<NodeAuth>,
    http: reqwest::Client,
    running: Arc<Mutex<HashMap<String, Running>>>,
    pub(super) demand: Arc<std::sync::OnceLock<Demand>>,
    next_generation: AtomicU64,
    next_id: AtomicU64,
}

impl Relays {
    pub fn new(hub: Arc<Hub>, auth: Arc<NodeAuth>) -> Relays {
        let http = reqwest::Client::builder()
            .timeout(HTTP_TIMEOUT)
            .connect_timeout(HTTP_TIMEOUT)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .expect("a plain HTTP client builds");
        Relays {
            hub,
            auth,
            http,
            running: Arc::default(),
            demand: Arc::default(),
            next_generation: AtomicU64::new(1),
            // Far from the engine's session ids, for log lines only.
            next_id: AtomicU64::new(1 << 48),
        }
    }

    /// Streams pulled now, with their origins.
    pub fn list(&self) -> Vec<(String, OriginTarget)> {
        let mut v: Vec<_> = self
            .running
            .lock()
            .iter()
            .map(|(s, r)| (s.clone(), r.origin.clone()))
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    pub fn len(&self) -> usize {
        self.running.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The origin a running pull of `stream` reads from.
    pub fn origin_of(&self, stream: &str) -> Option<OriginTarget> {
        self.running.lock().get(stream).map(|r| r.origin.clone())
    }

    /// Ends the pull of `stream`, if any.
    pub fn stop(&self, stream: &str) {
        if let Some(r) = self.running.lock().remove(stream) {
            let _ = r.stop.send(true);
        }
    }

    /// Ends every pull (shutdown).
    pub fn stop_all(&self) {
        for (_, r) in self.running.lock().drain() {
            let _ = r.stop.send(true);
        }
    }

    /// Pulls `stream` from `origin` unless a pull from that publish session
    /// runs already (deduplicated: one pull per stream, whatever the viewers).
    pub fn ensure(&self, stream: &Arc<Stream>, origin: &OriginTarget) {
        let mut running = self.running.lock();
        if let Some(r) = running.get(&stream.name) {
            if r.origin == *origin {
                return;
            }
            let _ = r.stop.send(true);
        }
        let generation = self.next_generation.fetch_add(1, Ordering::Relaxed);
        let (stop, stop_rx) = watch::channel(false);
        running.insert(
            stream.name.clone(),
            Running {
                origin: origin.clone(),
                generation,
                stop,
            },
        );
        drop(running);
        let pull = Pull {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            hub: self.hub.clone(),
            stream: stream.clone(),
            origin: origin.clone(),
            auth: self.auth.clone(),
            http: self.http.clone(),
            demand: self.demand.clone(),
        };
        let registry = self.running.clone();
        let name = stream.name.clone();
        tokio::spawn(async move {
            let started = Instant::now();
            match pull.run(stop_rx).await {
                Ok(reason) => {
                    info!(stream = %name, origin = %pull.origin.node_id, %reason, secs = started.elapsed().as_secs(), "cluster relay ended")
                }
                Err(e) => {
                    if let Some(suppressed) = PULL_FAILED_LOG.allow() {
                        warn!(stream = %name, origin = %pull.origin.node_id, error = %e, suppressed, "cluster relay failed");
                    }
                }
            }
            let mut running = registry.lock();
            if running
                .get(&name)
                .is_some_and(|r| r.generation == generation)
            {
                running.remove(&name);
            }
        });
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PullError {
    #[error("origin {0}")]
    Http(String),
    #[error("origin answered {status}: {body}")]
    Refused { status: u16, body: String },
    #[error("{0}")]
    Answer(String),
    #[error("socket: {0}")]
    Io(#[from] std::io::Error),
}

/// The offer of a pull: receive-only audio and video in every codec the hub
/// carries (H.264 in several profiles, VP8, VP9, AV1; Opus), so the origin
/// answers with whatever its publisher sends.
pub fn pull_offer_rtc(now: Instant) -> Rtc {
    Rtc::builder()
        .set_rtp_mode(true)
        // The hub does not carry H.265 or H.266.
        .enable_h265(false)
        .enable_h266(false)
        .build(now)
}

/// The video track and the Opus (mid, payload type) of a pull.
pub type Tracks = (Option<VideoTrack>, Option<(Mid, Pt)>);

/// What the origin's answer says it will send: the video track (the first
/// format of the answer roomcast forwards) and the Opus payload type.
pub fn tracks_from_answer(answer: &str) -> Result<Tracks, String> {
    let summary = sdp::summarize_offer(answer).map_err(|e| format!("malformed answer: {e}"))?;
    let video = sdp::choose_publisher_video(&summary).and_then(|v| {
        let mid = summary.video_mid.as_deref()?;
        Some(VideoTrack {
            mid: Mid::from(mid),
            pt: Pt::from(v.pt),
            codec: v.codec,
            fmtp: v.fmtp.clone(),
        })
    });
    let audio = summary
        .opus
        .zip(summary.audio_mid.as_deref())
        .map(|(pt, mid)| (Mid::from(mid), Pt::from(pt)));
    if video.is_none() && audio.is_none() {
        return Err(format!(
            "the answer sends nothing the hub carries (offered: {})",
            summary.offered()
        ));
    }
    Ok((video, audio))
}

/// The local address that reaches `host` (no packet is sent).
fn local_ip_towards(host: &str, port: u16) -> std::io::Result<IpAddr> {
    let target = std::net::ToSocketAddrs::to_socket_addrs(&(host, port))?
        .next()
        .ok_or_else(|| std::io::Error::other(format!("cannot resolve {host}")))?;
    let probe = std::net::UdpSocket::bind(match target {
        SocketAddr::V4(_) => "0.0.0.0:0",
        SocketAddr::V6(_) => "[::]:0",
    })?;
    probe.connect(target)?;
    Ok(probe.local_addr()?.ip())
}

fn unix_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

struct Pull {
    id: u64,
    hub: Arc<Hub>,
    stream: Arc<Stream>,
    origin: OriginTarget,
    auth: Arc<NodeAuth>,
    http: reqwest::Client,
    demand: Arc<std::sync::OnceLock<Demand>>,
}

impl Pull {
    /// Negotiates with the origin, then drives the session until told to
    /// stop, the origin goes away, or no local viewer is left. Returns why it ended.
    async fn run(&self, mut stop: watch::Receiver<bool>) -> Result<&'static str, PullError> {
        let base = self.origin.internal_url.trim_end_matches('/');
        let url = reqwest::Url::parse(&format!("{base}/whep/{}", self.stream.name))
            .map_err(|e| PullError::Http(format!("bad internal_url: {e}")))?;
        let host = url.host_str().unwrap_or("127.0.0.1").to_string();
        let port = url.port_or_known_default().unwrap_or(80);
        let ip = local_ip_towards(&host, port)?;
        let socket = UdpSocket::bind(SocketAddr::new(ip, 0)).await?;
        let local = socket.local_addr()?;

        let now = Instant::now();
        let mut rtc = pull_offer_rtc(now);
        let candidate =
            Candidate::host(local, "udp").map_err(|e| PullError::Answer(e.to_string()))?;
        rtc.add_local_candidate(candidate);
        let mut api = rtc.sdp_api();
        api.add_media(MediaKind::Video, Direction::RecvOnly, None, None, None);
        api.add_media(MediaKind::Audio, Direction::RecvOnly, None, None, None);
        let (offer, pending) = api
            .apply()
            .ok_or_else(|| PullError::Answer("no offer was made".into()))?;

        let offer = offer.to_sdp_string();
        let token = self.auth.sign(
            auth::Request {
                method: "POST",
                path: url.path(),
                body: offer.as_bytes(),
            },
            unix_secs(),
        );
        let resp = self
            .http
            .post(url.clone())
            .timeout(ANSWER_TIMEOUT)
            .header("content-type", "application/sdp")
            .header(auth::HEADER, token)
            .body(offer)
            .send()
            .await
            .map_err(|e| PullError::Http(e.to_string()))?;
        let status = resp.status().as_u16();
        let location = resp
            .headers()
            .get("location")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        // The answer is read with a byte cap, like every body from the network.
        let mut resp = resp;
        let mut bytes = Vec::new();
        while let Some(chunk) = resp
            .chunk()
            .await
            .map_err(|e| PullError::Http(e.to_string()))?
        {
            if bytes.len() + chunk.len() > MAX_ANSWER_BYTES {
                return Err(PullError::Http(format!(
                    "answer over {MAX_ANSWER_BYTES} bytes"
                )));
            }
            bytes.extend_from_slice(&chunk);
        }
        let body = String::from_utf8_lossy(&bytes).into_owned();
        if status != 201 {
            return Err(PullError::Refused {
                status,
                body: body.chars().take(300).collect(),
            });
        }
        let resource = location.and_then(|l| url.join(&l).ok());
        let outcome = self
            .drive(rtc, pending, &body, socket, local, &mut stop)
            .await;
        // Frees the origin's session at once rather than at its ICE timeout.
        if let Some(resource) = resource {
            let token = self.auth.sign(
                auth::Request {
                    method: "DELETE",
                    path: resource.path(),
                    body: b"",
                },
                unix_secs(),
            );
            let _ = self
                .http
                .delete(resource)
                .header(auth::HEADER, token)
                .timeout(Duration::from_secs(2))
                .send()
                .await;
        }
        outcome
    }

    async fn drive(
        &self,
        mut rtc: Rtc,
        pending: str0m::change::SdpPendingOffer,
        answer: &str,
        socket: UdpSocket,
        local: SocketAddr,
        stop: &mut watch::Receiver<bool>,
    ) -> Result<&'static str, PullError> {
        let (video, audio) = tracks_from_answer(answer).map_err(PullError::Answer)?;
        let parsed = str0m::change::SdpAnswer::from_sdp_string(answer)
            .map_err(|e| PullError::Answer(e.to_string()))?;
        rtc.sdp_api()
            .accept_answer(pending, parsed)
            .map_err(|e| PullError::Answer(e.to_string()))?;
        let mut p = PubPeer::new(
            NewPublisher {
                id: self.id,
                rtc,
                hub: self.hub.clone(),
                stream: self.stream.clone(),
                protocol: IngestProtocol::Relay,
                ufrag: String::new(),
                video,
                audio,
                expires_at: None,
                guard: None,
            },
            Instant::now(),
        );
        let keyframe = Arc::new(Notify::new());
        let created = Instant::now();
        let mut last_input = created;
        let mut last_viewer = created;
        let mut check = tokio::time::interval(Duration::from_millis(500));
        let mut buf = vec![0u8; 2048];
        let reason = loop {
            // Run the state machine until it waits for time or input.
            let mut timeout = Instant::now();
            loop {
                match p.rtc.poll_output() {
                    Ok(Output::Timeout(t)) => {
                        timeout = t;
                        break;
                    }
                    Ok(Output::Transmit(t)) => {
                        let _ = socket.send_to(&t.contents, t.destination).await;
                    }
                    Ok(Output::Event(e)) => match e {
                        Event::Connected => {
                            let k = keyframe.clone();
                            p.on_connected(Arc::new(move || k.notify_one()));
                            info!(stream = %self.stream.name, origin = %self.origin.node_id, elapsed_ms = created.elapsed().as_millis() as u64, "cluster relay connected");
                        }
                        Event::RtpPacket(pkt) => p.on_rtp(pkt),
                        Event::IceConnectionStateChange(IceConnectionState::Disconnected) => {
                            p.end("ICE disconnected")
                        }
                        _ => {}
                    },
                    Err(e) => {
                        debug!(error = %e, "relay rtc failed");
                        p.end("webrtc failure");
                        break;
                    }
                }
            }
            if p.dead || !p.rtc.is_alive() {
                break "the origin ended the session";
            }
            let due = p.deadline().map_or(timeout, |d| d.min(timeout));
            tokio::select! {
                _ = stop.changed() => break "stopped",
                _ = keyframe.notified() => p.request_keyframe(Instant::now()),
                r = socket.recv_from(&mut buf) => {
                    let (n, source) = r?;
                    let now = Instant::now();
                    last_input = now;
                    if let Ok(recv) = Receive::new(Protocol::Udp, source, local, &buf[..n])
                        && let Err(e) = p.rtc.handle_input(Input::Receive(now, recv))
                    {
                        debug!(error = %e, "relay input refused");
                    }
                }
                _ = tokio::time::sleep_until(due.into()) => {
                    let now = Instant::now();
                    if let Err(e) = p.rtc.handle_input(Input::Timeout(now)) {
                        debug!(error = %e, "relay timeout input failed");
                        p.end("webrtc failure");
                    }
                    p.poll_assembler(now);
                }
                _ = check.tick() => {
                    let now = Instant::now();
                    if !p.connected && now.duration_since(created) > CONNECT_TIMEOUT {
                        break "no ICE/DTLS connection with the origin within 10 s";
                    }
                    if p.connected && now.duration_since(last_input) > SILENCE_TIMEOUT {
                        break "the origin went silent";
                    }
                    if wanted(&self.stream, &self.demand) {
                        last_viewer = now;
                    } else if now.duration_since(last_viewer) > IDLE_GRACE {
                        break "no local viewer left";
                    }
                }
            }
        };
        p.rtc.disconnect();
        // Sends the DTLS close.
        while let Ok(Output::Transmit(t)) = p.rtc.poll_output() {
            let _ = socket.send_to(&t.contents, t.destination).await;
        }
        Ok(reason)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pull_offer_lists_every_codec_the_hub_carries_and_the_answer_picks_one() {
        let mut rtc = pull_offer_rtc(Instant::now());
        rtc.add_local_candidate(Candidate::host("127.0.0.1:5000".parse().unwrap(), "udp").unwrap());
        let mut api = rtc.sdp_api();
        api.add_media(MediaKind::Video, Direction::RecvOnly, None, None, None);
        api.add_media(MediaKind::Audio, Direction::RecvOnly, None, None, None);
        let (offer, _) = api.apply().unwrap();
        let offer = offer.to_sdp_string();
        let summary = sdp::summarize_offer(&offer).unwrap();
        let names = summary.offered().to_ascii_uppercase();
        for codec in ["H264", "VP8", "VP9", "AV1", "OPUS"] {
            assert!(names.contains(codec), "{codec} missing from {names}");
        }
        assert!(!names.contains("H265"), "{names}");
        assert!(!summary.sends(true) && !summary.sends(false));

        // An answer as the origin writes it: VP8 and Opus, sendonly.
        let answer = "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n\
m=video 9 UDP/TLS/RTP/SAVPF 96\r\na=mid:0\r\na=sendonly\r\na=rtpmap:96 VP8/90000\r\n\
m=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:1\r\na=sendonly\r\na=rtpmap:111 opus/48000/2\r\n";
        let (video, audio) = tracks_from_answer(answer).unwrap();
        let video = video.unwrap();
        assert_eq!(video.codec.name(), "VP8");
        assert_eq!(*video.pt, 96);
        assert_eq!(video.mid, Mid::from("0"));
        assert_eq!(audio, Some((Mid::from("1"), Pt::from(111))));
        assert!(tracks_from_answer("v=0\r\n").is_err());
    }
}
