//! `Pair`: a str0m client and a [`Viewer`] wired together in memory on a
//! manual clock, in the style of quinn-proto's test pairs. The viewer is
//! negotiated by the same [`Negotiator`] as the engine's and fed frames by a
//! real hub stream (an RTMP-like publisher pushes them); its datagrams go
//! through an [`Outbox`] that can lose them or refuse them (a full ICE-TCP
//! queue). Nothing sleeps and no socket is opened: time moves only when a
//! test advances it, so each test runs in milliseconds and the same way
//! every time. `PAIR_TRACE=1` prints each step (timers, datagrams, the
//! client's events).

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use parking_lot::Mutex;
use str0m::change::SdpAnswer;
use str0m::media::{Direction, KeyframeRequestKind, MediaKind};
use str0m::net::{Protocol, Receive, Transmit};
use str0m::rtp::Ssrc;
use str0m::{Candidate, Event, Input, Output, Rtc};

use super::negotiate::Negotiator;
use super::viewer::{NewViewer, Outbox, ReplayPace, Viewer};
use super::{Transport, dtls, sdp};
use crate::hub::{
    AudioInfo, Frame, FrameSink, Hub, IngestProtocol, Kind, Publisher, Stream, VideoInfo,
};

const CLIENT: &str = "10.0.0.2:50000";
const SERVER: &str = "10.0.0.1:40000";
/// First byte of a test video payload: an IDR or a non-IDR H.264 NAL type.
const KEY: u8 = 0x65;
const DELTA: u8 = 0x41;
/// Video packets are this large (audio ones 60 bytes).
const VIDEO_PACKET: usize = 1000;
/// Longest the clock moves in one step: the pair's inputs are checked at
/// least this often.
const MAX_STEP: Duration = Duration::from_millis(5);

/// The frames the hub fans out to the viewer, queued as a shard's are.
#[derive(Default)]
struct Frames(Mutex<VecDeque<Arc<Frame>>>);

impl FrameSink for Frames {
    fn deliver(&self, _: &Arc<Stream>, frame: &Arc<Frame>) {
        self.0.lock().push_back(frame.clone());
    }
}

/// The viewer's side of the wire.
#[derive(Default)]
pub struct Wire {
    /// Datagrams and where they are sent.
    packets: VecDeque<(SocketAddr, Vec<u8>)>,
    /// The next this many datagrams are refused, as a full ICE-TCP queue does.
    pub refuse: usize,
    pub laggard_skips: u64,
}

impl Outbox for Wire {
    fn transmit(&mut self, t: Transmit) -> bool {
        if self.refuse > 0 {
            self.refuse -= 1;
            return false;
        }
        self.packets.push_back((t.destination, t.contents.into()));
        true
    }

    fn laggard_skipped(&mut self) {
        self.laggard_skips += 1;
    }
}

/// A video packet the client got, identified by what the test wrote in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Got {
    /// The frame's number (in push order over the test) and its packet.
    pub frame: u16,
    pub packet: u8,
    pub keyframe: bool,
    pub seq: u64,
}

/// Settings of a pair.
pub struct PairOpts {
    /// The GOP replay's pace in Mbit/s (0: unpaced).
    pub replay_mbps: u64,
    pub expires_in: Option<Duration>,
    /// Video packets per frame.
    pub packets_per_frame: usize,
    /// Media on the direct path (`[webrtc] direct_send`).
    pub direct: bool,
    /// The client offers RTX (str0m's default); false: H.264 and Opus only,
    /// no retransmission payload type.
    pub rtx: bool,
}

impl Default for PairOpts {
    fn default() -> Self {
        PairOpts {
            replay_mbps: 0,
            expires_in: None,
            packets_per_frame: 3,
            direct: true,
            rtx: true,
        }
    }
}

/// Decides which datagrams to the client are lost.
pub type Loss = Box<dyn FnMut(&[u8]) -> bool>;

pub struct Pair {
    pub now: Instant,
    start: Instant,
    /// The wall-clock time of `start`.
    wall_start: SystemTime,
    pub(super) client: Rtc,
    pub viewer: Viewer,
    pub hub: Arc<Hub>,
    pub stream: Arc<Stream>,
    pub publisher: Publisher,
    frames: Arc<Frames>,
    pub wire: Wire,
    to_server: VecDeque<Vec<u8>>,
    client_timeout: Instant,
    /// Video packets the client got, in arrival order.
    pub got: Vec<Got>,
    pub audio_packets: usize,
    pub client_connected: bool,
    /// Sender reports the client accepted.
    pub sender_reports: Vec<str0m::media::SenderFeedback>,
    /// Datagrams to the client for which this returns true are lost.
    pub lose: Loss,
    /// The client is gone: it sends nothing more.
    pub client_silent: bool,
    pub(super) video_ssrc: Option<Ssrc>,
    next_frame: u16,
    pts_ms: i64,
    packets_per_frame: usize,
    /// Where the client's datagrams come from, as the server sees them
    /// (a NAT may change it), and the client's own address.
    client_addr: SocketAddr,
    client_local: SocketAddr,
    server_addr: SocketAddr,
    /// The viewer's answer (a client's ICE restart reuses it).
    answer: String,
    /// Datagrams sent to an address the client is not at: lost.
    pub misdirected: usize,
}

impl Pair {
    /// A client whose offer the viewer answered; nothing has moved yet.
    pub fn new(opts: PairOpts) -> Pair {
        dtls::crypto_provider().install_process_default();
        let now = Instant::now();
        let wall_start = SystemTime::now();
        let (client_addr, server_addr) = (CLIENT.parse().unwrap(), SERVER.parse().unwrap());
        let hub = Arc::new(Hub::new());
        let stream = hub.ensure_stream("s", None);
        let publisher = publish_media(&hub, &stream, "H264", Some(0x42e01f));

        let mut config = Rtc::builder().set_rtp_mode(true);
        if !opts.rtx {
            config = config.clear_codecs().enable_opus(true, false);
            config
                .codec_config()
                .add_h264(102.into(), None, true, 0x42e01f);
        }
        let mut client = config.build(now);
        client.add_local_candidate(Candidate::host(client_addr, "udp").unwrap());
        let mut api = client.sdp_api();
        api.add_media(MediaKind::Video, Direction::RecvOnly, None, None, None);
        api.add_media(MediaKind::Audio, Direction::RecvOnly, None, None, None);
        let (offer, pending) = api.apply().unwrap();

        let negotiator = Negotiator {
            cert: dtls::crypto_provider()
                .dtls_provider
                .generate_certificate()
                .unwrap(),
            candidates: vec![Candidate::host(server_addr, "udp").unwrap()],
            tcp_force: false,
            strict_h264_profile: false,
            direct_send: opts.direct,
        };
        let offer = sdp::parse_offer(&offer.to_sdp_string()).unwrap();
        let v = negotiator
            .viewer(&stream, offer, Transport::All, now)
            .unwrap();
        client
            .sdp_api()
            .accept_answer(pending, SdpAnswer::from_sdp_string(&v.answer).unwrap())
            .unwrap();
        let viewer = Viewer::new(
            NewViewer {
                id: 1,
                rtc: v.rtc,
                stream: stream.clone(),
                ufrag: String::new(),
                video: v.video.map(|(mid, pt, _)| (mid, pt)),
                video_codec: v.video.map(|(_, _, codec)| codec.name()),
                audio: v.audio,
                expires_at: opts.expires_in.map(|d| now + d),
                guard: None,
                srtp_keys: v.srtp_keys,
            },
            now,
            wall_start,
            ReplayPace::from_mbps(opts.replay_mbps),
        );
        let frames = Arc::new(Frames::default());
        let sink: Arc<dyn FrameSink> = frames.clone();
        stream.attach_sink(1, &sink);
        Pair {
            now,
            start: now,
            wall_start,
            client,
            viewer,
            hub,
            stream,
            publisher,
            frames,
            wire: Wire::default(),
            to_server: VecDeque::new(),
            client_timeout: now,
            got: Vec::new(),
            audio_packets: 0,
            client_connected: false,
            sender_reports: Vec::new(),
            lose: Box::new(|_| false),
            client_silent: false,
            video_ssrc: None,
            next_frame: 0,
            pts_ms: 0,
            packets_per_frame: opts.packets_per_frame,
            client_addr,
            client_local: client_addr,
            server_addr,
            answer: v.answer,
            misdirected: 0,
        }
    }

    /// Time since the pair was made, on its clock.
    pub fn elapsed(&self) -> Duration {
        self.now - self.start
    }

    /// The wall-clock time of `t` on the pair's clock.
    pub fn wall_at(&self, t: Instant) -> SystemTime {
        self.wall_start + t.saturating_duration_since(self.start)
    }

    /// A pair whose ICE and DTLS are up (the join's replay delivered).
    pub fn connected(opts: PairOpts) -> Pair {
        let mut p = Pair::new(opts);
        p.run_until(Duration::from_secs(5), |p| {
            p.client_connected && p.viewer.is_connected()
        });
        p.settle();
        p
    }

    /// A pair that joined a stream whose GOP is a keyframe and `deltas`
    /// frames: connected, with the join's replay of that GOP delivered.
    pub fn joined_gop(opts: PairOpts, deltas: usize) -> (Pair, Vec<u16>) {
        let mut p = Pair::new(opts);
        let gop = p.push_gop(deltas);
        p.run_until(Duration::from_secs(5), |p| {
            p.frames_got().len() >= gop.len()
        });
        (p, gop)
    }

    /// Pushes a video frame (and an audio packet) from the current
    /// publisher and delivers it; returns the frame's number.
    pub fn push(&mut self, keyframe: bool) -> u16 {
        self.push_frame(keyframe, false)
    }

    /// As `push`, but the audio packet is lost on its way to the viewer (as
    /// from a shard's full queue).
    pub fn push_losing_audio(&mut self, keyframe: bool) -> u16 {
        self.push_frame(keyframe, true)
    }

    fn push_frame(&mut self, keyframe: bool, lose_audio: bool) -> u16 {
        let n = self.next_frame;
        self.next_frame += 1;
        let payloads: Vec<Arc<[u8]>> = (0..self.packets_per_frame)
            .map(|i| {
                let mut p = vec![0u8; VIDEO_PACKET];
                p[0] = if keyframe { KEY } else { DELTA };
                p[1..3].copy_from_slice(&n.to_be_bytes());
                p[3] = i as u8;
                Arc::from(p)
            })
            .collect();
        self.publisher
            .push_video(self.pts_ms, keyframe, payloads.into_boxed_slice())
            .unwrap();
        self.publisher
            .push_audio(self.pts_ms * 48, Arc::from(vec![0xfcu8; 60]))
            .unwrap();
        if lose_audio {
            let lost = self.frames.0.lock().pop_back();
            assert!(lost.is_some_and(|f| f.kind == Kind::Audio));
        }
        self.pts_ms += 33;
        self.settle();
        n
    }

    /// A GOP: a keyframe and `deltas` frames after it; returns their numbers.
    pub fn push_gop(&mut self, deltas: usize) -> Vec<u16> {
        let mut v = vec![self.push(true)];
        for _ in 0..deltas {
            v.push(self.push(false));
        }
        v
    }

    /// A new publisher takes the stream over, sending `codec`.
    pub fn take_over(&mut self, codec: &'static str) {
        let plid = (codec == "H264").then_some(0x42e01f);
        self.publisher = publish_media(&self.hub, &self.stream, codec, plid);
    }

    /// The client asks for a keyframe (an RTCP PLI); 20 ms pass (its
    /// feedback goes out on its next timer).
    pub fn request_keyframe(&mut self) {
        let ssrc = self.video_ssrc.expect("video received before a PLI");
        let mut api = self.client.direct_api();
        api.stream_rx(&ssrc)
            .expect("the client's video stream")
            .request_keyframe(KeyframeRequestKind::Pli);
        self.advance(Duration::from_millis(20));
    }

    /// Frame numbers the client got whole (every packet), in order of
    /// their first packet; repeats (replays) included once per arrival of
    /// their first packet.
    pub fn frames_got(&self) -> Vec<u16> {
        self.got
            .iter()
            .filter(|g| g.packet == 0)
            .map(|g| g.frame)
            .collect()
    }

    /// Moves everything that can move without time passing.
    pub fn settle(&mut self) {
        for _ in 0..10_000 {
            if !self.step() {
                return;
            }
        }
        panic!("the pair never settled");
    }

    /// Advances the clock by `d`, stopping at every timer on the way. At
    /// each stop the viewer's timers run, as a shard's timer pass runs every
    /// session's (at least once a second, at most every 2 ms).
    pub fn advance(&mut self, d: Duration) {
        let end = self.now + d;
        self.settle();
        while self.now < end {
            let next = self
                .client_timeout
                .min(self.viewer.timers().at)
                .min(self.now + MAX_STEP)
                // Not `clamp`: a timer may be due less than 1 µs before `end`.
                .max(self.now + Duration::from_micros(1))
                .min(end);
            self.now = next;
            if !self.viewer.is_finished() {
                self.viewer.handle_timeout(self.now, &mut self.wire);
            }
            self.settle();
        }
    }

    /// Advances the clock until `cond` holds; panics after `limit`.
    pub fn run_until(&mut self, limit: Duration, mut cond: impl FnMut(&Pair) -> bool) {
        let end = self.now + limit;
        self.settle();
        while !cond(self) {
            assert!(self.now < end, "condition not met within {limit:?}");
            self.advance(MAX_STEP);
        }
    }

    /// One round: the client's output, the frames, the viewer's timers and
    /// output, the datagrams each way. Whether anything happened.
    fn step(&mut self) -> bool {
        let trace = std::env::var("PAIR_TRACE").is_ok();
        if trace {
            eprintln!(
                "step t={:?} client_to={:?} viewer_to={:?} to_server={} wire={} got={} audio={}",
                self.now - self.start,
                self.client_timeout.saturating_duration_since(self.now),
                self.viewer.timers().at.saturating_duration_since(self.now),
                self.to_server.len(),
                self.wire.packets.len(),
                self.got.len(),
                self.audio_packets
            );
        }
        let mut moved = false;
        // The client.
        if self.client_timeout <= self.now && self.client.is_alive() {
            let _ = self.client.handle_input(Input::Timeout(self.now));
        }
        moved |= self.poll_client(trace);
        // The viewer: network input, frames, timers.
        while let Some(d) = self.to_server.pop_front() {
            let (from, to) = (self.client_addr, self.server_addr);
            self.viewer.heard(self.now, Protocol::Udp, from, &d);
            let recv = Receive::new(Protocol::Udp, from, to, &d).unwrap();
            self.viewer.handle_receive(self.now, recv);
            self.viewer.drive(self.now, &mut self.wire);
            moved = true;
        }
        loop {
            let Some(f) = self.frames.0.lock().pop_front() else {
                break;
            };
            if !self.viewer.is_finished() {
                // As the shard does.
                self.viewer.on_frame(&f, self.now);
                self.viewer.drive_after_frame(self.now, &mut self.wire);
            }
            moved = true;
        }
        // The client's input.
        while let Some((to, d)) = self.wire.packets.pop_front() {
            if trace {
                eprintln!("  viewer sends {} bytes to {to}", d.len());
            }
            moved = true;
            if to != self.client_addr {
                self.misdirected += 1;
                continue;
            }
            if (self.lose)(&d) || !self.client.is_alive() {
                continue;
            }
            // A NAT in between hands it to the client's own address.
            let recv =
                Receive::new(Protocol::Udp, self.server_addr, self.client_local, &d).unwrap();
            let _ = self.client.handle_input(Input::Receive(self.now, recv));
            // A client polls after each input, as its event loop does (the
            // DTLS keys it derives apply to the next datagram).
            self.poll_client(trace);
        }
        moved
    }

    /// Takes the client's output until it waits; whether there was any.
    fn poll_client(&mut self, trace: bool) -> bool {
        let mut moved = false;
        while self.client.is_alive() {
            match self.client.poll_output() {
                Ok(Output::Timeout(t)) => {
                    self.client_timeout = t;
                    break;
                }
                Ok(Output::Transmit(t)) => {
                    if trace {
                        eprintln!("  client sends {} bytes", t.contents.len());
                    }
                    if !self.client_silent {
                        self.to_server.push_back(t.contents.into());
                    }
                    moved = true;
                }
                Ok(Output::Event(e)) => {
                    if trace {
                        eprintln!("  client event {e:?}");
                    }
                    moved = true;
                    self.client_event(e);
                }
                Err(e) => panic!("client failed: {e}"),
            }
        }
        moved
    }

    fn client_event(&mut self, e: Event) {
        match e {
            Event::Connected => self.client_connected = true,
            Event::SenderFeedback(f) => self.sender_reports.push(f),
            Event::RtpPacket(p) => match p.payload.first() {
                Some(&b) if (b == KEY || b == DELTA) && p.payload.len() == VIDEO_PACKET => {
                    self.video_ssrc = Some(p.header.ssrc);
                    self.got.push(Got {
                        frame: u16::from_be_bytes([p.payload[1], p.payload[2]]),
                        packet: p.payload[3],
                        keyframe: b == KEY,
                        seq: *p.seq_no,
                    });
                }
                _ => self.audio_packets += 1,
            },
            _ => {}
        }
    }
}

/// A publisher of `codec` video (`profile_level_id` for H.264) and Opus
/// audio on `stream`.
pub(super) fn publish_media(
    hub: &Arc<Hub>,
    stream: &Arc<Stream>,
    codec: &'static str,
    profile_level_id: Option<u32>,
) -> Publisher {
    let p = hub.publish(stream, IngestProtocol::Rtmp);
    p.set_media(|m| {
        m.video = Some(VideoInfo {
            codec,
            profile_level_id,
            ..Default::default()
        });
        m.audio = Some(AudioInfo {
            codec: "opus",
            sample_rate: 48_000,
            channels: 2,
            source_codec: None,
        });
    })
    .unwrap();
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs `test` on str0m's path and on the direct path.
    fn on_both_paths(test: impl Fn(PairOpts)) {
        for direct in [false, true] {
            eprintln!("on the {} path", if direct { "direct" } else { "str0m" });
            test(PairOpts {
                direct,
                ..Default::default()
            });
        }
    }

    /// How many times the client got frame `n`'s first packet.
    fn arrivals(p: &Pair, n: u16) -> usize {
        p.frames_got().iter().filter(|f| **f == n).count()
    }

    #[test]
    fn a_joining_viewer_gets_the_gop_from_its_keyframe_then_live_frames() {
        on_both_paths(|opts| {
            let (mut p, gop) = Pair::joined_gop(opts, 4);
            assert!(p.viewer.is_connected());
            assert_eq!(p.frames_got(), gop, "the cached GOP, in order");
            assert!(p.got[0].keyframe);
            assert_eq!(p.got.len(), gop.len() * 3, "every packet of it");
            let live = p.push(false);
            assert_eq!(p.frames_got().last(), Some(&live));
            assert!(
                p.got.windows(2).all(|w| w[1].seq == w[0].seq + 1),
                "one sequence from the replay into the live frames"
            );
            assert_eq!(p.stream.viewers(), 1);
        });
    }

    #[test]
    fn a_new_publisher_is_sent_from_its_first_keyframe() {
        on_both_paths(|opts| {
            let mut p = Pair::connected(opts);
            let first = p.push_gop(2);
            assert_eq!(p.frames_got(), first);
            p.take_over("H264");
            // Its P-frames mean nothing without its keyframe.
            p.push(false);
            p.push(false);
            assert_eq!(p.frames_got(), first);
            let audio = p.audio_packets;
            let key = p.push(true);
            let delta = p.push(false);
            assert_eq!(p.frames_got()[first.len()..], [key, delta]);
            assert!(p.audio_packets > audio, "audio goes on");
            assert!(!p.viewer.is_finished());
        });
    }

    #[test]
    fn lost_audio_does_not_stop_the_video() {
        on_both_paths(|opts| {
            let mut p = Pair::connected(opts);
            let first = p.push_gop(1);
            let audio = p.audio_packets;
            let delta = p.push_losing_audio(false);
            let next = p.push(false);
            // Only lost video makes the viewer wait for a keyframe.
            assert_eq!(p.frames_got()[first.len()..], [delta, next]);
            assert_eq!(p.audio_packets, audio + 1);
        });
    }

    #[test]
    fn a_new_publisher_with_another_codec_ends_the_session() {
        on_both_paths(|opts| {
            let mut p = Pair::connected(opts);
            p.push_gop(1);
            assert!(!p.viewer.is_finished());
            p.take_over("VP8");
            p.push(true);
            assert!(
                p.viewer.is_finished(),
                "the player must reconnect to negotiate VP8"
            );
        });
    }

    #[test]
    fn a_lost_video_packet_is_retransmitted_on_nack() {
        on_both_paths(|opts| {
            let mut p = Pair::connected(opts);
            p.push_gop(1);
            let mut video = 0;
            // The second video datagram from now on is lost, once.
            p.lose = Box::new(move |d| {
                video += usize::from(d.len() > VIDEO_PACKET / 2);
                d.len() > VIDEO_PACKET / 2 && video == 2
            });
            let f = p.push(false);
            p.push(false);
            let has = |p: &Pair| p.got.iter().any(|g| g.frame == f && g.packet == 1);
            assert!(!has(&p), "the packet was lost");
            p.run_until(Duration::from_millis(500), has);
            assert_eq!(arrivals(&p, f), 1, "a repair, not a replay");
        });
    }

    #[test]
    fn keyframe_requests_get_replays_from_a_small_bucket() {
        on_both_paths(|opts| {
            let (mut p, gop) = Pair::joined_gop(opts, 2);
            let joined = p.now;
            let key = gop[0];
            assert_eq!(arrivals(&p, key), 1, "the join's replay");
            // The join's replay may have reached a browser before its SRTP keys:
            // the first PLI after it gets another at once.
            p.request_keyframe();
            assert_eq!(arrivals(&p, key), 2);
            // That replay's keyframe can be repaired by NACKs: no replay.
            p.advance(Duration::from_millis(100));
            p.request_keyframe();
            p.advance(Duration::from_millis(100));
            assert_eq!(arrivals(&p, key), 2);
            // Out of credit (two back to back): the request waits for the refill.
            p.advance(Duration::from_millis(500));
            p.request_keyframe();
            assert!(p.now - joined < Duration::from_millis(900));
            p.advance(joined + Duration::from_millis(950) - p.now);
            assert_eq!(arrivals(&p, key), 2, "no replay before the refill");
            p.run_until(Duration::from_millis(500), |p| arrivals(p, key) == 3);
            let waited = p.now - joined;
            assert!(
                waited >= Duration::from_millis(990) && waited <= Duration::from_millis(1010),
                "served at the refill, {waited:?} after the join"
            );
            // A repaired or refused request is not kept: nothing more comes.
            p.advance(Duration::from_secs(2));
            assert_eq!(arrivals(&p, key), 3);
        });
    }

    /// A publisher that pauses: the browser's keyframe requests (Chromium
    /// asks every 3 s while no frame comes) get no replay once the viewer has
    /// the newest frame, so it keeps its last picture instead of seeing the
    /// last GOP loop; right after the join's replay, or once frames come
    /// again, a request is served as before.
    #[test]
    fn a_still_stream_is_not_replayed_to_a_viewer_that_has_its_newest_frame() {
        on_both_paths(|opts| {
            // Joined into a stream that then stops.
            let (mut p, gop) = Pair::joined_gop(opts, 2);
            // A request soon after the join's replay may be a browser that
            // got none of it: served.
            p.advance(Duration::from_millis(300));
            p.request_keyframe();
            assert_eq!(arrivals(&p, gop[0]), 2, "a request after the join's replay");
            // From now on the requests are the browser's timer.
            for _ in 0..3 {
                p.advance(Duration::from_secs(3));
                p.request_keyframe();
                p.advance(Duration::from_millis(500));
            }
            assert_eq!(arrivals(&p, gop[0]), 2, "the still stream looped");
            // The publisher goes on; a request right after a frame is a failed
            // decode and gets its replay.
            let next = p.push(false);
            assert_eq!(p.frames_got().last(), Some(&next));
            p.request_keyframe();
            assert_eq!(arrivals(&p, gop[0]), 3, "a request while frames come");
        });
    }

    /// A viewer that joins a stream whose publisher has paused gets the
    /// GOP once (the join's replay), not again on the browser's timer.
    #[test]
    fn a_viewer_joining_a_still_stream_sees_its_gop_once() {
        on_both_paths(|opts| {
            let (mut p, gop) = Pair::joined_gop(opts, 2);
            for _ in 0..3 {
                p.advance(Duration::from_secs(3));
                p.request_keyframe();
            }
            assert_eq!(arrivals(&p, gop[0]), 1, "the join's replay only");
        });
    }

    #[test]
    fn a_laggard_skips_to_the_next_keyframe() {
        on_both_paths(|opts| {
            let mut p = Pair::connected(opts);
            p.push_gop(1);
            // Its path refuses a datagram (a full ICE-TCP queue).
            p.wire.refuse = 1;
            p.push(false);
            assert_eq!(p.wire.laggard_skips, 1);
            let skipped = p.push(false);
            assert_eq!(arrivals(&p, skipped), 0, "what follows would not decode");
            let key = p.push(true);
            let delta = p.push(false);
            assert!(p.frames_got().ends_with(&[key, delta]));
            assert_eq!(p.wire.laggard_skips, 1);
        });
    }

    #[test]
    fn an_offer_that_never_connects_ends_after_the_connect_timeout() {
        on_both_paths(|opts| {
            let mut p = Pair::new(opts);
            p.client_silent = true;
            p.advance(super::super::viewer::CONNECT_TIMEOUT - Duration::from_millis(100));
            assert!(!p.viewer.is_finished());
            p.advance(Duration::from_millis(200));
            assert!(p.viewer.is_finished());
            assert_eq!(p.stream.viewers(), 0, "never counted");
        });
    }

    #[test]
    fn a_silent_viewer_is_dropped() {
        on_both_paths(|opts| {
            let mut p = Pair::connected(opts);
            p.push_gop(1);
            p.advance(Duration::from_secs(5));
            assert!(!p.viewer.is_finished(), "consent checks keep it");
            p.client_silent = true;
            let silent = p.now;
            p.run_until(
                super::super::viewer::IDLE_TIMEOUT + Duration::from_secs(1),
                |p| p.viewer.is_finished(),
            );
            assert!(p.now - silent > Duration::from_secs(2), "not at once");
        });
    }

    /// str0m's `disconnect` only marks the session closed (no DTLS alert
    /// leaves): the client learns it from the silence.
    #[test]
    fn a_session_ends_at_its_expiry() {
        on_both_paths(|opts| {
            let mut p = Pair::connected(PairOpts {
                expires_in: Some(Duration::from_secs(2)),
                ..opts
            });
            p.push_gop(1);
            p.advance(Duration::from_secs(2) - p.elapsed() - Duration::from_millis(10));
            assert!(!p.viewer.is_finished());
            p.advance(Duration::from_millis(20));
            assert!(p.viewer.is_finished());
        });
    }
}

/// The client moves: a NAT rebinding, and ICE restarts as a WHEP client
/// makes them (`ice_path.rs`, `sdpfrag.rs`).
#[cfg(test)]
mod moves {
    use std::cell::Cell;
    use std::rc::Rc;

    use str0m::IceCreds;

    use super::*;
    use crate::rtc::ice_path::{IceRestart, REBIND_SILENCE};
    use crate::rtc::net::{Demux, Route};
    use crate::rtc::sdpfrag;

    const MOVED: &str = "10.0.0.3:50001";

    /// `sdp` with its ICE credentials replaced, as a WHEP client applies a
    /// restart's answer fragment to its remote description (the candidates
    /// name the ufrag too).
    fn with_ice_creds(sdp: &str, ufrag: &str, pwd: &str) -> String {
        let old = |attr: &str| {
            sdp.lines()
                .find_map(|l| l.strip_prefix(attr))
                .unwrap()
                .trim_end()
                .to_string()
        };
        sdp.replace(&old("a=ice-ufrag:"), ufrag)
            .replace(&old("a=ice-pwd:"), pwd)
    }

    /// Applies an ICE restart the way the engine's message does; whether
    /// the session took it.
    fn restart(viewer: Option<&mut Viewer>, remote: IceCreds, local: &IceCreds) -> bool {
        let demux = Demux::default();
        demux.add_ufrag(&local.ufrag, &local.pass, Route { shard: 0, peer: 1 });
        let (done, mut applied) = tokio::sync::oneshot::channel();
        let r = IceRestart {
            id: 1,
            local: local.clone(),
            remote,
            done,
        };
        super::super::shard::apply_ice_restart(r, viewer, &demux);
        applied.try_recv() == Ok(true)
    }

    impl Pair {
        /// The client restarts ICE (from `moved_to`, if given): its new
        /// credentials go in a PATCH's fragment, the server's come back in
        /// the 200's, and it applies them to the answer it has.
        fn restart_ice(&mut self, moved_to: Option<SocketAddr>) {
            let mut api = self.client.sdp_api();
            let creds = api.ice_restart(moved_to.is_none());
            let (_, pending) = api.apply().expect("a restart offer");
            let patch = format!(
                "a=ice-ufrag:{}\r\na=ice-pwd:{}\r\n",
                creds.ufrag, creds.pass
            );
            let frag = sdpfrag::parse(patch.as_bytes()).unwrap();
            let remote = IceCreds {
                ufrag: frag.ufrag.unwrap(),
                pass: frag.pwd.unwrap(),
            };
            let local = IceCreds::new();
            assert!(restart(Some(&mut self.viewer), remote, &local));
            let reply =
                sdpfrag::parse(sdpfrag::answer(&local.ufrag, &local.pass, None, &[]).as_bytes())
                    .unwrap();
            let answer = with_ice_creds(
                &self.answer,
                reply.ufrag.as_deref().unwrap(),
                reply.pwd.as_deref().unwrap(),
            );
            self.client
                .sdp_api()
                .accept_answer(pending, SdpAnswer::from_sdp_string(&answer).unwrap())
                .unwrap();
            if let Some(addr) = moved_to {
                self.client
                    .add_local_candidate(Candidate::host(addr, "udp").unwrap());
                self.client_addr = addr;
                self.client_local = addr;
            }
            self.answer = answer;
        }

        /// Pushes a frame every 33 ms until the client gets one; how long
        /// that took.
        fn frames_until_received(&mut self, limit: Duration) -> Duration {
            let start = self.now;
            loop {
                let n = self.push(false);
                self.advance(Duration::from_millis(33));
                if self.frames_got().contains(&n) {
                    return self.now - start;
                }
                assert!(self.now - start < limit, "no frame within {limit:?}");
            }
        }

        /// Counts DTLS records sent to the client (a new handshake).
        fn count_dtls(&mut self) -> Rc<Cell<usize>> {
            let n = Rc::new(Cell::new(0));
            let counter = n.clone();
            self.lose = Box::new(move |d| {
                if (20..64).contains(&d[0]) {
                    counter.set(counter.get() + 1);
                }
                false
            });
            n
        }
    }

    /// A GOP after a move: every frame arrives, in one sequence, and nothing
    /// is sent where the client was.
    fn media_follows(p: &mut Pair) {
        p.misdirected = 0;
        let from = p.got.len();
        let gop = p.push_gop(3);
        p.advance(Duration::from_millis(100));
        assert_eq!(p.frames_got()[p.frames_got().len() - gop.len()..], gop);
        assert!(
            p.got[from..].windows(2).all(|w| w[1].seq == w[0].seq + 1),
            "one RTP sequence, nothing lost"
        );
        assert_eq!(p.misdirected, 0, "nothing goes to the old address");
    }

    #[test]
    fn an_ice_restart_from_a_new_address_moves_media_there_without_a_new_handshake() {
        let mut p = Pair::connected(PairOpts::default());
        p.push_gop(1);
        let dtls = p.count_dtls();
        let seq_before = p.got.last().unwrap().seq;
        p.restart_ice(Some(MOVED.parse().unwrap()));
        let took = p.frames_until_received(Duration::from_secs(2));
        assert!(took < Duration::from_millis(500), "moved in {took:?}");
        media_follows(&mut p);
        assert_eq!(dtls.get(), 0, "DTLS is not redone");
        assert!(
            p.got.last().unwrap().seq > seq_before,
            "the same SRTP session"
        );
        assert!(!p.viewer.is_finished());
        // And it stays: the old path's pair expiring changes nothing.
        p.advance(Duration::from_secs(20));
        media_follows(&mut p);
    }

    #[test]
    fn an_ice_restart_at_the_same_address_keeps_the_session() {
        let mut p = Pair::connected(PairOpts::default());
        p.push_gop(1);
        let dtls = p.count_dtls();
        p.restart_ice(None);
        p.frames_until_received(Duration::from_millis(200));
        media_follows(&mut p);
        p.advance(Duration::from_secs(20));
        media_follows(&mut p);
        assert_eq!(dtls.get(), 0);
    }

    /// The client's NAT maps it to a new address; its credentials stay.
    /// Without `ice_path`, str0m sent to the old address until the old
    /// pair expired, 15 s after its last check.
    #[test]
    fn after_a_nat_rebinding_media_follows_the_client() {
        let mut p = Pair::connected(PairOpts::default());
        p.push_gop(1);
        p.client_addr = MOVED.parse().unwrap();
        let took = p.frames_until_received(Duration::from_secs(20));
        assert!(
            took < REBIND_SILENCE + Duration::from_secs(3),
            "media followed after {took:?}"
        );
        media_follows(&mut p);
        p.advance(Duration::from_secs(20));
        media_follows(&mut p);
        assert!(!p.viewer.is_finished());
    }

    #[test]
    fn an_ice_restart_for_an_unknown_or_ended_session_changes_nothing() {
        let creds = || IceCreds::new();
        assert!(!restart(None, creds(), &creds()), "unknown session");
        let mut p = Pair::connected(PairOpts::default());
        p.push_gop(1);
        // The engine stopped waiting (its client got an error): not applied.
        let (done, applied) = tokio::sync::oneshot::channel();
        drop(applied);
        let r = IceRestart {
            id: 1,
            local: creds(),
            remote: creds(),
            done,
        };
        super::super::shard::apply_ice_restart(r, Some(&mut p.viewer), &Demux::default());
        media_follows(&mut p);
        let now = p.now;
        p.viewer.close(now, &mut p.wire);
        assert!(
            !restart(Some(&mut p.viewer), creds(), &creds()),
            "ended session"
        );
    }
}
