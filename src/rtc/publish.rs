//! A WebRTC publisher (WHIP) in a shard: its `Rtc` receives RTP, and the
//! payloads go to the hub as they arrived (no depacketizing): video packets are
//! grouped into whole frames by [`FrameAssembler`], Opus packets pass one by
//! one. RTP times are mapped onto the publisher's clock (both tracks anchored
//! at their first packet's arrival) and then, by the hub, onto the stream's.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use str0m::Rtc;
use str0m::media::{KeyframeRequestKind, Mid, Pt};
use str0m::net::Protocol;
use str0m::rtp::RtpPacket;
use tracing::{debug, info, warn};

use super::due::Due;
use crate::hub::{AudioInfo, Hub, IngestProtocol, Publisher, PushError, Stream, VideoInfo};
use crate::log_every::LogEvery;
use crate::media::h264;
use crate::media::rtp_video::{self, Assembled, FrameAssembler, VideoCodec};

/// Our own keyframe requests (after a loss) at most this often.
const OWN_PLI_INTERVAL: Duration = Duration::from_millis(500);
/// Publishers over the frame cap are logged at most this often (they reconnect).
static TOO_LARGE_LOG: LogEvery = LogEvery::new(Duration::from_secs(10));
static NEVER_CONNECTED_LOG: LogEvery = LogEvery::new(Duration::from_secs(10));

/// A negotiated publisher, handed to its shard.
pub struct NewPublisher {
    pub id: u64,
    pub rtc: Rtc,
    pub hub: Arc<Hub>,
    pub stream: Arc<Stream>,
    pub protocol: IngestProtocol,
    pub ufrag: String,
    pub video: Option<VideoTrack>,
    pub audio: Option<(Mid, Pt)>,
    /// The session ends at this time (SignedPolicy `stream_expire`, webhook `lifetime`).
    pub expires_at: Option<Instant>,
    /// Dropped when the session ends (sends the admission webhook's "closing").
    pub guard: Option<Box<dyn Send>>,
}

pub struct VideoTrack {
    pub mid: Mid,
    pub pt: Pt,
    pub codec: VideoCodec,
    pub fmtp: String,
}

struct VideoIn {
    track: VideoTrack,
    asm: FrameAssembler,
    /// Publisher-clock ticks = extended RTP time + offset.
    offset: Option<i64>,
    sps: Option<Arc<[u8]>>,
    pps: Option<Arc<[u8]>>,
    size: Option<(u32, u32)>,
    profile_level_id: Option<u32>,
}

struct AudioIn {
    pt: Pt,
    offset: Option<i64>,
    last_seq: Option<u64>,
}

pub struct PubPeer {
    pub id: u64,
    pub rtc: Rtc,
    hub: Arc<Hub>,
    pub stream: Arc<Stream>,
    protocol: IngestProtocol,
    pub ufrag: String,
    pub addrs: Vec<(Protocol, SocketAddr)>,
    video: Option<VideoIn>,
    audio: Option<AudioIn>,
    publisher: Option<Publisher>,
    pub connected: bool,
    pub created: Instant,
    pub last_input: Instant,
    /// str0m's next timer.
    pub(crate) next_timeout: Due,
    pub expires_at: Option<Instant>,
    pub dead: bool,
    /// A panic happened inside this session: its `Rtc` is not touched again.
    pub poisoned: bool,
    /// Arrival of the session's first RTP packet: time zero of the publisher clock.
    epoch: Option<Instant>,
    last_own_pli: Option<Instant>,
    taken_over_logged: bool,
    _guard: Option<Box<dyn Send>>,
    assembled: Vec<Assembled>,
}

impl PubPeer {
    pub fn new(np: NewPublisher, now: Instant) -> PubPeer {
        let max_frame_bytes = np.hub.limits().max_frame_bytes;
        PubPeer {
            id: np.id,
            rtc: np.rtc,
            hub: np.hub,
            stream: np.stream,
            protocol: np.protocol,
            ufrag: np.ufrag,
            addrs: Vec::new(),
            video: np.video.map(|track| VideoIn {
                asm: FrameAssembler::with_max_frame_bytes(track.codec, max_frame_bytes),
                track,
                offset: None,
                sps: None,
                pps: None,
                size: None,
                profile_level_id: None,
            }),
            audio: np.audio.map(|(_, pt)| AudioIn {
                pt,
                offset: None,
                last_seq: None,
            }),
            publisher: None,
            connected: false,
            created: now,
            last_input: now,
            next_timeout: Due::exact(now),
            expires_at: np.expires_at,
            dead: false,
            poisoned: false,
            epoch: None,
            last_own_pli: None,
            taken_over_logged: false,
            _guard: np.guard,
            assembled: Vec::new(),
        }
    }

    /// DTLS is up: the publish starts (taking the stream over from any other
    /// publisher) and viewers' keyframe requests reach this session.
    pub fn on_connected(&mut self, requester: crate::hub::KeyframeRequester) {
        self.connected = true;
        if self.stream.is_live() {
            info!(stream = %self.stream.name, "new publisher takes the stream over");
        }
        let publisher = self.hub.publish(&self.stream, self.protocol);
        let video = self.video.as_ref().map(|v| VideoInfo {
            codec: v.track.codec.name(),
            profile_level_id: None,
            fmtp: Some(v.track.fmtp.clone()),
            width: None,
            height: None,
        });
        let audio = self.audio.as_ref().map(|_| AudioInfo {
            codec: "opus",
            sample_rate: 48_000,
            channels: 2,
            source_codec: None,
        });
        let _ = publisher.set_media(|m| {
            m.video = video;
            m.audio = audio;
        });
        let _ = publisher.set_keyframe_requester(requester);
        info!(
            stream = %self.stream.name,
            video = self.video.as_ref().map_or("none", |v| v.track.codec.name()),
            audio = if self.audio.is_some() { "opus" } else { "none" },
            elapsed_ms = self.created.elapsed().as_millis() as u64,
            "whip publish started"
        );
        self.publisher = Some(publisher);
        // Viewers start at a keyframe: ask for one now rather than wait for it.
        self.request_keyframe(Instant::now());
    }

    /// Sends a PLI to the publisher (viewers asked, or a frame was lost).
    pub fn request_keyframe(&mut self, now: Instant) {
        let Some(v) = &self.video else { return };
        if let Some(rx) = self.rtc.direct_api().stream_rx_by_mid(v.track.mid, None) {
            rx.request_keyframe(KeyframeRequestKind::Pli);
            self.last_own_pli = Some(now);
        }
    }

    /// The window the shard must run [`PubPeer`]'s timers in: str0m's
    /// (its reports, NACK and TWCC checks may wait for the next packet,
    /// `rtc::due`), the frame assembler's and the session's expiry (exact).
    pub(crate) fn timers(&self) -> Due {
        [self.deadline(), self.expires_at]
            .into_iter()
            .flatten()
            .map(Due::exact)
            .fold(self.next_timeout, Due::min)
    }

    /// The next time the frame assembler needs a look (a pending loss).
    pub fn deadline(&self) -> Option<Instant> {
        self.video.as_ref().and_then(|v| v.asm.deadline())
    }

    pub fn poll_assembler(&mut self, now: Instant) {
        if let Some(v) = &mut self.video {
            let mut out = std::mem::take(&mut self.assembled);
            v.asm.poll(now, &mut out);
            self.assembled = out;
            self.flush_assembled(now);
        }
    }

    pub fn on_rtp(&mut self, pkt: RtpPacket) {
        // The fuzz seeds' capture (fuzz/capture/whip_rtp_seed.py) reads a
        // browser's RTP after SRTP from this line; off unless asked for with
        // ROOMCAST_LOG=rtp_capture=trace.
        tracing::trace!(
            target: "rtp_capture",
            pt = *pkt.header.payload_type,
            seq = *pkt.seq_no,
            time = pkt.header.timestamp,
            marker = pkt.header.marker,
            payload = %Hex(&pkt.payload),
        );
        self.on_rtp_parts(
            pkt.header.payload_type,
            *pkt.seq_no,
            pkt.time.numer(),
            pkt.header.marker,
            pkt.timestamp,
            pkt.payload,
        );
    }

    /// [`PubPeer::on_rtp`] on the packet's fields (the fuzz target's entry:
    /// str0m's `RtpPacket` cannot be built outside str0m). `seq` is the
    /// extended sequence number, `time` the extended RTP time, `arrival`
    /// the packet's receive time.
    #[doc(hidden)]
    pub fn on_rtp_parts(
        &mut self,
        pt: Pt,
        seq: u64,
        time: u64,
        marker: bool,
        arrival: Instant,
        payload: Arc<[u8]>,
    ) {
        let now = Instant::now();
        let epoch = *self.epoch.get_or_insert(arrival);
        if let Some(v) = self.video.as_mut().filter(|v| v.track.pt == pt) {
            let ticks = time as i64;
            v.offset.get_or_insert_with(|| {
                let since = arrival.saturating_duration_since(epoch);
                since.as_micros() as i64 * 90 / 1000 - ticks
            });
            let mut out = std::mem::take(&mut self.assembled);
            v.asm.push(seq, time, marker, payload, now, &mut out);
            self.assembled = out;
            self.flush_assembled(now);
        } else if let Some(a) = self.audio.as_mut().filter(|a| a.pt == pt) {
            if a.last_seq.is_some_and(|l| seq <= l) {
                return; // late: the viewers' clock has moved past it
            }
            a.last_seq = Some(seq);
            let ticks = time as i64;
            let offset = *a.offset.get_or_insert_with(|| {
                let since = arrival.saturating_duration_since(epoch);
                since.as_micros() as i64 * 48 / 1000 - ticks
            });
            if let Some(p) = &self.publisher {
                match p.push_audio(ticks + offset, payload) {
                    Ok(()) => {}
                    Err(PushError::TakenOver(_)) => self.taken_over(),
                    Err(PushError::FrameTooLarge { .. }) => {
                        self.end("an audio packet over limits.max_frame_bytes")
                    }
                }
            }
        }
    }

    fn flush_assembled(&mut self, now: Instant) {
        let mut out = std::mem::take(&mut self.assembled);
        let mut need_keyframe = false;
        for a in out.drain(..) {
            match a {
                Assembled::NeedKeyframe => need_keyframe = true,
                Assembled::Frame(f) => self.push_frame(f),
                Assembled::TooLarge { bytes, max } => {
                    if let Some(suppressed) = TOO_LARGE_LOG.allow() {
                        warn!(stream = %self.stream.name, bytes, max_frame_bytes = max, suppressed, "whip video frame over limits.max_frame_bytes (no RTP marker bit?); dropping the publisher");
                    }
                    self.end("a video frame over limits.max_frame_bytes");
                }
            }
        }
        if self.dead {
            self.assembled = out;
            return;
        }
        self.assembled = out;
        if need_keyframe
            && self.connected
            && self
                .last_own_pli
                .is_none_or(|t| now.duration_since(t) >= OWN_PLI_INTERVAL)
        {
            debug!(stream = %self.stream.name, "video packets lost, asking the publisher for a keyframe");
            self.request_keyframe(now);
        }
    }

    fn push_frame(&mut self, f: rtp_video::AssembledFrame) {
        let (Some(v), Some(publisher)) = (self.video.as_mut(), self.publisher.as_ref()) else {
            return;
        };
        let mut payloads = f.payloads;
        let mut new_size = None;
        if v.track.codec == VideoCodec::H264 {
            let mut has_sps = false;
            let mut sps_changed = false;
            for p in &payloads {
                for nal in rtp_video::h264_parameter_sets(p) {
                    match h264::nal_type(nal) {
                        h264::NAL_SPS => {
                            has_sps = true;
                            if v.sps.as_deref() != Some(nal) {
                                v.sps = Some(Arc::from(nal));
                                sps_changed = true;
                            }
                        }
                        _ => v.pps = Some(Arc::from(nal)),
                    }
                }
            }
            if sps_changed
                && let Some(sps) = v.sps.as_deref()
                && let Ok(parsed) = h264::parse_sps(sps)
            {
                new_size = Some((parsed.width, parsed.height));
                v.profile_level_id = Some(parsed.profile_level_id());
            }
            // A joining viewer starts at this keyframe: it must carry the
            // parameter sets even if the publisher sent them only once.
            if f.keyframe
                && !has_sps
                && let (Some(sps), Some(pps)) = (&v.sps, &v.pps)
            {
                payloads.insert(0, Arc::from(rtp_video::h264_stap_a(&[sps, pps])));
            }
        } else if f.keyframe
            && let Some(first) = payloads.first()
            && let Some(size) = rtp_video::keyframe_dimensions(v.track.codec, first)
            && v.size != Some(size)
        {
            new_size = Some(size);
        }
        if let Some((w, h)) = new_size {
            v.size = Some((w, h));
            let plid = v.profile_level_id;
            info!(stream = %self.stream.name, codec = v.track.codec.name(), width = w, height = h, "whip video size");
            let _ = publisher.set_media(|m| {
                if let Some(video) = m.video.as_mut() {
                    video.width = Some(w);
                    video.height = Some(h);
                    if plid.is_some() {
                        video.profile_level_id = plid;
                    }
                }
            });
        }
        let ticks = f.rtp_time as i64 + v.offset.unwrap_or(0);
        match publisher.push_video_90k(ticks, f.keyframe, payloads.into_boxed_slice()) {
            Ok(_) => {}
            Err(PushError::TakenOver(_)) => self.taken_over(),
            // The hub logged it (rate-limited).
            Err(PushError::FrameTooLarge { .. }) => {
                self.end("a video frame over limits.max_frame_bytes")
            }
        }
    }

    /// Another publisher took the stream: this session ends.
    fn taken_over(&mut self) {
        if !self.taken_over_logged {
            self.taken_over_logged = true;
            info!(stream = %self.stream.name, "whip publisher was taken over, ending its session");
        }
        self.dead = true;
    }

    pub fn end(&mut self, reason: &str) {
        if !self.dead {
            if self.connected {
                info!(stream = %self.stream.name, %reason, "whip publish ended");
            } else {
                if let Some(suppressed) = NEVER_CONNECTED_LOG.allow() {
                    warn!(stream = %self.stream.name, %reason, suppressed, "whip publisher never connected");
                }
            }
        }
        self.dead = true;
    }
}

/// Bytes as lowercase hex, formatted only when the log line is written.
struct Hex<'a>(&'a [u8]);

impl std::fmt::Display for Hex<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}
