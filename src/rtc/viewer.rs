//! One viewer's session, sans I/O: frames from the hub and datagrams from
//! the network go in; RTP, RTCP and the window of its next timer come out
//! (through an [`Outbox`] and [`Viewer::timers`]). It decides which
//! frames a viewer gets (the keyframe gate, a new publisher or codec, a
//! laggard skipped to the next keyframe) and replays the cached GOP, paced,
//! when it joins or asks for a keyframe. It never reads the clock: every
//! call takes `now`, so a test drives it on a manual clock (`tests/pair.rs`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use str0m::media::{Mid, Pt};
use str0m::net::{Protocol, Transmit};
use str0m::rtp::{Extension, RawPacket, RtpWrite, Ssrc};
use str0m::{Event, IceConnectionState, IceCreds, Input, Output, Rtc};
use tracing::{debug, info, warn};

use super::direct::{self, DirectOut, DirectTx, Names, Route, Span, TrackTx};
use super::dtls::SrtpKeys;
use super::due::{Due, REPORT_SLACK};
use super::ice_path::{self, IcePath};
use super::replay_policy::{ReplayPolicy, RtxCacheSize, Verdict};
use crate::hub::{Frame, Kind, Stream};
use crate::log_every::LogEvery;

/// A session that has not completed ICE and DTLS by then is dropped. Real
/// clients connect within a second or two (ICE-lite: no gathering on our
/// side); an offer that never connects costs a session only this long.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Offers that never connect are logged at most this often.
static NEVER_CONNECTED_LOG: LogEvery = LogEvery::new(Duration::from_secs(10));
/// Keyed sessions (`[webrtc] direct_send`) left on str0m's path are logged
/// at most this often: they cost more (see `direct::configure`).
static NOT_DIRECT_LOG: LogEvery = LogEvery::new(Duration::from_secs(60));
/// A connected viewer that sends nothing (no consent checks, no RTCP) for this long is gone.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// Retransmission cache per viewer: 128 packets are half a second of a
/// 2.5 Mbit/s stream, enough for NACKs from viewers up to ~300 ms away; each
/// entry costs str0m ~430 bytes, so this is most of a viewer's memory.
/// A GOP replay gets a larger one while it is retransmittable
/// (`replay_policy::RtxCacheSize::for_replay`).
pub const RTX_CACHE: RtxCacheSize = RtxCacheSize {
    max_packets: 128,
    max_age: Duration::from_millis(500),
};
/// A paced replay starts with this much at once (about 27 packets, an eighth
/// of a default 208 KB receive buffer, which holds ~92 datagrams whatever
/// their size) and then goes at the configured rate.
const REPLAY_BURST_BYTES: i64 = 32 * 1024;
/// What a packet costs a paced replay besides its payload (RTP, SRTP, UDP, IP).
const PACKET_OVERHEAD_BYTES: i64 = 60;
/// A replay out of credit waits until it has this much (a full packet).
const REPLAY_RESUME_BYTES: i64 = 1200 + PACKET_OVERHEAD_BYTES;
/// Live video frames that may queue behind a paced replay; beyond that (a
/// stream faster than the pace) the rest of the replay goes out at once.
const REPLAY_MAX_LIVE_FRAMES: usize = 120;

/// How fast a GOP replay is sent to one viewer: a token bucket refilled at
/// this rate. The replay otherwise leaves at the speed of the CPU (str0m
/// paces nothing without bandwidth estimation): a 2 s GOP at 4 Mbit/s is
/// ~800 datagrams within a few milliseconds, and a receiver whose socket
/// holds ~92 loses the rest.
#[derive(Clone, Copy, Debug)]
pub struct ReplayPace {
    /// 0: not paced.
    bytes_per_ms: i64,
}

impl ReplayPace {
    pub fn from_mbps(mbps: u64) -> ReplayPace {
        ReplayPace {
            bytes_per_ms: (mbps.min(1_000_000) * 1000 / 8) as i64,
        }
    }
}

/// A negotiated viewer, handed to its shard.
pub struct NewViewer {
    pub id: u64,
    pub rtc: Rtc,
    pub stream: Arc<Stream>,
    pub ufrag: String,
    pub video: Option<(Mid, Pt)>,
    /// The video codec negotiated ("H264", "VP8", …).
    pub video_codec: Option<&'static str>,
    pub audio: Option<(Mid, Pt)>,
    /// The session ends at this time (SignedPolicy `stream_expire`, webhook `lifetime`).
    pub expires_at: Option<Instant>,
    /// Dropped when the session ends (sends the admission webhook's "closing").
    pub guard: Option<Box<dyn Send>>,
    /// Its SRTP keys once DTLS is up: media then goes out on the direct
    /// path (`direct`). None: through str0m.
    pub srtp_keys: Option<SrtpKeys>,
}

/// Which of a stream's frames a viewer gets: each once, in order within its
/// kind; video from a keyframe of the current publisher on, and again from a
/// keyframe after lost video (frames dropped from a full queue: what follows
/// would not decode). Audio and video are counted apart (`Frame::kind_index`):
/// each audio packet decodes alone, so lost audio stops nothing.
#[derive(Debug, Default)]
pub(super) struct FrameGate {
    /// The last `kind_index` sent (or skipped) of video and of audio.
    last: [Option<u64>; 2],
    /// The publisher whose video is sent.
    publisher: u64,
    /// Video is sent only from a keyframe on.
    video_started: bool,
}

#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct Admit {
    pub send: bool,
    pub new_publisher: bool,
    /// Video frames were lost before this one.
    pub gap: bool,
}

impl FrameGate {
    pub(super) fn admit(&mut self, frame: &Frame) -> Admit {
        let mut a = Admit::default();
        let last = &mut self.last[frame.kind as usize];
        if last.is_some_and(|i| frame.kind_index <= i) {
            return a;
        }
        let gap = last.is_some_and(|i| frame.kind_index > i + 1);
        *last = Some(frame.kind_index);
        if frame.kind == Kind::Audio {
            a.send = true;
            return a;
        }
        if frame.publisher != self.publisher {
            // A new publisher: its P-frames mean nothing without its keyframe.
            self.publisher = frame.publisher;
            self.video_started = false;
            a.new_publisher = true;
        }
        if gap {
            a.gap = true;
            self.video_started = false;
        }
        a.send = self.video_started || frame.keyframe;
        self.video_started = a.send;
        a
    }

    /// Marks `frame` and those of its kind before it as sent (a replay
    /// brought them).
    fn sent_through(&mut self, frame: &Frame) {
        let last = &mut self.last[frame.kind as usize];
        *last = Some(last.map_or(frame.kind_index, |i| i.max(frame.kind_index)));
    }
}

/// Where a viewer's datagrams go: the shard's GSO batch, or a test's queue.
pub trait Outbox {
    /// Takes a datagram; false when the viewer's path is full (its ICE-TCP
    /// queue): the viewer cannot keep up.
    fn transmit(&mut self, t: Transmit) -> bool;
    /// The viewer was skipped ahead to the next keyframe (for metrics).
    fn laggard_skipped(&mut self) {}
    /// Takes a datagram of `len` bytes that `write` fills in place (the
    /// direct path); false as for `transmit`. By default through `transmit`.
    fn datagram(&mut self, route: &Route, len: usize, write: &mut dyn FnMut(&mut [u8])) -> bool {
        self.transmit(direct::transmit(route, len, write))
    }
}

/// An [`Outbox`] seen by the direct path.
struct Direct<'a, O>(&'a mut O);

impl<O: Outbox> DirectOut for Direct<'_, O> {
    fn datagram(&mut self, route: &Route, len: usize, write: &mut dyn FnMut(&mut [u8])) -> bool {
        self.0.datagram(route, len, write)
    }
}

struct TrackOut {
    mid: Mid,
    pt: Pt,
    /// Looked up once: finding a stream by SSRC is cheaper than by mid.
    ssrc: Option<Ssrc>,
    next_seq: u64,
}

/// A viewer's session. The shard owns it (`&mut`, no shared state) and
/// reads the fields it keeps routing and accounting by.
pub struct Viewer {
    pub(super) id: u64,
    pub(super) rtc: Rtc,
    pub(super) stream: Arc<Stream>,
    pub(super) ufrag: String,
    /// Source addresses learned for this session (for the demux to forget).
    pub(super) addrs: Vec<(Protocol, SocketAddr)>,
    /// Follows the client to a new address (`ice_path.rs`).
    path: IcePath,
    video: Option<TrackOut>,
    video_codec: Option<&'static str>,
    audio: Option<TrackOut>,
    connected: bool,
    /// Counted in the stream's viewers (from ICE/DTLS connected on).
    pub(super) counted: bool,
    /// A panic happened inside this session: its `Rtc` is not touched again.
    pub(super) poisoned: bool,
    gate: FrameGate,
    /// str0m's next timer, or a paced replay's.
    next_timeout: Due,
    created: Instant,
    pub(super) last_input: Instant,
    /// Whether this viewer gets a GOP replay for a keyframe request.
    replay_policy: ReplayPolicy,
    /// The RTX cache now: a replay's until the next live keyframe.
    rtx_cache: RtxCacheSize,
    replay: Option<Replay>,
    pace: ReplayPace,
    pub(super) dead: bool,
    expires_at: Option<Instant>,
    _guard: Option<Box<dyn Send>>,
    srtp_keys: Option<SrtpKeys>,
    /// The direct path, from DTLS on (with `srtp_keys`).
    direct: Option<DirectTx>,
    /// Where str0m's own datagrams went last (the nominated pair).
    route: Option<Route>,
    /// An instant and its wall-clock time (the direct path's sender reports).
    clock: (Instant, SystemTime),
    /// Staying on str0m's path although keyed was logged.
    not_direct_logged: bool,
}

/// A GOP being sent to one viewer, paced, followed by the live video frames
/// that arrived meanwhile (they must not overtake it).
struct Replay {
    frames: Vec<Arc<Frame>>,
    /// The first `gop` frames are the cached GOP, sent with RTP times just
    /// behind `newest_rtp_time`; the rest keep their live times.
    gop: usize,
    next: usize,
    /// The next packet of `frames[next]`.
    packet: usize,
    newest_rtp_time: u32,
    /// Bytes that may be sent now (may go one packet below zero).
    credit: i64,
    refilled: Instant,
    /// More live frames queued than allowed: the rest goes out at once.
    unpaced: bool,
}

impl Viewer {
    /// A viewer from a negotiated session (its tracks set up; nothing sent
    /// yet); `wall` is the wall-clock time of `now`.
    pub fn new(nv: NewViewer, now: Instant, wall: SystemTime, pace: ReplayPace) -> Viewer {
        let NewViewer {
            id,
            rtc,
            stream,
            ufrag,
            video,
            video_codec,
            audio,
            expires_at,
            guard,
            srtp_keys,
        } = nv;
        let mut rtc = rtc;
        let track = |rtc: &mut Rtc, (mid, pt): (Mid, Pt)| TrackOut {
            mid,
            pt,
            ssrc: rtc
                .direct_api()
                .stream_tx_by_mid(mid, None)
                .map(|s| s.ssrc()),
            // Below 2^15 so the SRTP rollover counter starts at zero.
            next_seq: u64::from(rand::random::<u16>() >> 1),
        };
        let video = video.map(|v| track(&mut rtc, v));
        if let Some(v) = video.as_ref() {
            let mut api = rtc.direct_api();
            if let Some(tx) = api.stream_tx_by_mid(v.mid, None) {
                // str0m's default (3 s, 2000 packets) costs ~300 KB per viewer
                // on its path; on the direct path str0m sends nothing, so the
                // cache stays empty, and a session that stays on str0m's path
                // (no key we can send) gets the small one too.
                tx.set_rtx_cache(RTX_CACHE.max_packets, RTX_CACHE.max_age, None);
            }
        }
        let audio = audio.map(|a| track(&mut rtc, a));
        Viewer {
            id,
            rtc,
            stream,
            ufrag,
            addrs: Vec::new(),
            path: IcePath::default(),
            video,
            video_codec,
            audio,
            connected: false,
            counted: false,
            poisoned: false,
            gate: FrameGate::default(),
            next_timeout: Due::exact(now),
            created: now,
            last_input: now,
            replay_policy: ReplayPolicy::new(now),
            rtx_cache: RTX_CACHE,
            replay: None,
            pace,
            dead: false,
            expires_at,
            _guard: guard,
            srtp_keys,
            direct: None,
            route: None,
            clock: (now, wall),
            not_direct_logged: false,
        }
    }

    pub fn id(&self) -> u64 {
        self.id
    }

    pub fn stream(&self) -> &Arc<Stream> {
        &self.stream
    }

    /// ICE and DTLS are up.
    pub fn is_connected(&self) -> bool {
        self.connected
    }

    /// The session is over (ended, failed, or closed by the peer): the
    /// shard reaps it.
    pub fn is_finished(&self) -> bool {
        self.dead || self.poisoned || !self.rtc.is_alive()
    }

    /// When [`Viewer::handle_timeout`] must run next (str0m's timers, a paced
    /// replay, our sender reports, the session's expiry), as a window:
    /// sender reports and str0m's reports and stats may wait for the
    /// worker's next wake-up (`rtc::due`).
    pub fn timers(&self) -> Due {
        let mut due = self.next_timeout;
        if let Some(sr) = self.direct.as_ref().and_then(DirectTx::next_timeout) {
            due = due.min(Due::lax(sr, REPORT_SLACK));
        }
        if let Some(e) = self.expires_at {
            due = due.min(Due::exact(e));
        }
        due
    }

    /// Whether media goes out on the direct path.
    pub fn is_direct(&self) -> bool {
        self.direct.is_some()
    }

    /// Sets up the direct path once DTLS exported the keys (a profile we
    /// cannot send, or no keys: str0m's path stays).
    fn start_direct(&mut self) {
        if self.direct.is_some() {
            return;
        }
        let Some(keys) = &self.srtp_keys else {
            return;
        };
        let Some(key) = keys.get() else {
            if keys.exported() {
                self.not_direct("DTLS chose an SRTP profile we do not send");
            }
            return;
        };
        let rtc = &mut self.rtc;
        let mid_of = |t: &Option<TrackOut>| t.as_ref().map(|t| t.mid);
        let any_mid = mid_of(&self.video).or(mid_of(&self.audio));
        let Some(media) = any_mid.and_then(|m| rtc.media(m)) else {
            self.not_direct("no media in the session");
            return;
        };
        let mid_ext = media.remote_extmap().id_of(Extension::RtpMid);
        let cname = media.cname().to_string();
        let video_mid = mid_of(&self.video)
            .map(|m| m.to_string())
            .unwrap_or_default();
        let audio_mid = mid_of(&self.audio)
            .map(|m| m.to_string())
            .unwrap_or_default();
        let mut d = DirectTx::new(
            key,
            Names {
                mid_ext,
                video_mid: &video_mid,
                audio_mid: &audio_mid,
                cname: &cname,
            },
            self.clock,
        );
        d.route = self.route;
        if let Some(v) = &self.video {
            let rtx_pt = rtc
                .codec_config()
                .find(|p| p.pt() == v.pt)
                .and_then(|p| p.resend());
            let tx = rtc
                .direct_api()
                .stream_tx_by_mid(v.mid, None)
                .map(|s| (s.ssrc(), s.rtx()));
            if let Some((ssrc, rtx)) = tx {
                let rtx = rtx.zip(rtx_pt).map(|(s, p)| (*s, *p));
                d.video = Some(TrackTx::new(*ssrc, *v.pt, 90_000, rtx));
            }
        }
        if let Some(a) = &self.audio {
            let tx = rtc
                .direct_api()
                .stream_tx_by_mid(a.mid, None)
                .map(|s| s.ssrc());
            if let Some(ssrc) = tx {
                d.audio = Some(TrackTx::new(*ssrc, *a.pt, 48_000, None));
            }
        }
        debug!(stream = %self.stream.name, profile = ?key.profile(), "viewer on the direct path");
        self.direct = Some(d);
    }

    /// Packets the viewer NACKed on the direct path (tests).
    #[cfg(test)]
    pub(super) fn direct_nacked(&self) -> u64 {
        self.direct.as_ref().map_or(0, |d| d.nacked)
    }

    /// A keyed session stays on str0m's path (logged once per session, at
    /// most once a minute overall).
    fn not_direct(&mut self, why: &str) {
        if self.not_direct_logged {
            return;
        }
        self.not_direct_logged = true;
        if let Some(suppressed) = NOT_DIRECT_LOG.allow() {
            warn!(stream = %self.stream.name, why, suppressed, "viewer stays on str0m's path although direct_send is on");
        }
    }

    /// Numbers the next packets from `seq` (video, audio and the RTX stream;
    /// tests: a rollover of the SRTP index).
    #[cfg(test)]
    pub(super) fn start_seq_at(&mut self, seq: u64) {
        for t in [self.video.as_mut(), self.audio.as_mut()]
            .into_iter()
            .flatten()
        {
            t.next_seq = seq;
        }
        if let Some(v) = self.direct.as_mut().and_then(|d| d.video.as_mut()) {
            v.start_rtx_seq_at(seq);
        }
    }

    /// Restarts the direct path with `key` (tests: a profile DTLS would not pick).
    #[cfg(test)]
    pub(super) fn use_direct_key(&mut self, key: super::srtp::MasterKey) {
        self.srtp_keys = Some(SrtpKeys::with(key));
        self.direct = None;
        self.start_direct();
    }

    /// Writes what the direct path queued; a refused datagram makes the
    /// viewer a laggard.
    fn flush_direct(&mut self, now: Instant, out: &mut impl Outbox) {
        let Some(d) = self.direct.as_mut() else {
            return;
        };
        if !d.flush(now, &mut Direct(out)) {
            self.lagging(out);
        }
    }

    /// The viewer's path is full: what it missed breaks its picture anyway,
    /// so it resumes at the next keyframe instead.
    fn lagging(&mut self, out: &mut impl Outbox) {
        if self.gate.video_started {
            self.gate.video_started = false;
            out.laggard_skipped();
            debug!(stream = %self.stream.name, "viewer cannot keep up, skipping to the next keyframe");
        }
    }

    /// Notes where a datagram from the peer came from, before it is fed
    /// (for following the client to a new address, `ice_path.rs`).
    pub fn heard(&mut self, now: Instant, proto: Protocol, source: SocketAddr, data: &[u8]) {
        self.path.heard(now, proto, source, data);
    }

    /// An ICE restart (WHEP `PATCH`): the session answers checks with the
    /// `local` credentials and expects the client's new `remote` ones; media
    /// goes on over the old path until the client nominates a new one, and
    /// DTLS and SRTP carry on. Returns the ufrag it replaced.
    pub fn restart_ice(&mut self, local: IceCreds, remote: IceCreds) -> String {
        let mut api = self.rtc.direct_api();
        api.set_local_ice_credentials(local.clone());
        api.set_remote_ice_credentials(remote);
        self.path.restarted();
        std::mem::replace(&mut self.ufrag, local.ufrag)
    }

    /// Feeds a datagram from the peer (routed to this session); the caller
    /// then calls [`Viewer::drive`].
    pub fn handle_receive(&mut self, now: Instant, recv: str0m::net::Receive) {
        self.last_input = now;
        if let Err(e) = self.rtc.handle_input(Input::Receive(now, recv)) {
            debug!(error = %e, "rtc rejected input");
        }
    }

    /// After [`Viewer::on_frame`]: on the direct path the frame went around
    /// str0m, so str0m has nothing new to say and only the frame's packets
    /// are written. Polling str0m for every viewer at every frame cost more
    /// than writing an audio frame; its timers run in the timer pass. A
    /// replay under way, or str0m's own path, takes the whole drive.
    pub fn drive_after_frame(&mut self, now: Instant, out: &mut impl Outbox) {
        if self.dead {
            return;
        }
        if self.direct.is_some() && self.replay.is_none() {
            self.flush_direct(now, out);
        } else {
            self.drive(now, out);
        }
    }

    /// Runs the session's state machine until it waits for time or input:
    /// what it sends goes to `out`, and [`Viewer::timers`] says when
    /// to come back.
    pub fn drive(&mut self, now: Instant, out: &mut impl Outbox) {
        if self.dead {
            return;
        }
        // str0m sends written RTP on its next timer input, so a due timeout is
        // fed at once rather than at the next timer pass; bounded, in case
        // str0m keeps asking without making progress.
        let mut idle_feeds = 0;
        self.flush_direct(now, out);
        loop {
            match self.rtc.poll_output() {
                Ok(Output::Timeout(t)) => {
                    self.flush_direct(now, out);
                    if t <= now && idle_feeds < 2 {
                        idle_feeds += 1;
                        if let Err(e) = self.rtc.handle_input(Input::Timeout(now)) {
                            debug!(error = %e, "rtc timeout input failed");
                            self.dead = true;
                            return;
                        }
                        continue;
                    }
                    if self.replay.is_some() && self.continue_replay(now) {
                        idle_feeds = 0;
                        self.flush_direct(now, out);
                        continue;
                    }
                    if self.replay_policy.due().is_some_and(|d| d <= now) {
                        // A keyframe request that waited for replay credit.
                        self.replay_gop(now, false);
                        if self.replay.is_some() {
                            idle_feeds = 0;
                            continue;
                        }
                    }
                    self.flush_direct(now, out);
                    // A paced replay waits for credit on the shard's timer
                    // pass, like str0m's own timers (at most every 2 ms).
                    let str0m_due = Due::of_str0m(t, self.rtc.last_timeout_reason());
                    self.next_timeout = [self.replay_due(), self.replay_policy.due()]
                        .into_iter()
                        .flatten()
                        .map(Due::exact)
                        .fold(str0m_due, Due::min);
                    return;
                }
                Ok(Output::Transmit(t)) => {
                    idle_feeds = 0;
                    let stale = self.path.sent(now, &t);
                    // `t` answers the check that moved the client (IcePath):
                    // it goes to the new path, and so does our media.
                    let moved = stale.is_some();
                    if self.srtp_keys.is_some()
                        && (moved || direct::follows_nominated_pair(&t.contents))
                    {
                        let route = Route {
                            proto: t.proto,
                            source: t.source,
                            destination: t.destination,
                        };
                        self.route = Some(route);
                        if let Some(d) = self.direct.as_mut() {
                            d.route = Some(route);
                            if !moved && direct::is_str0m_sender_report(&t.contents) {
                                // It knows nothing of what we sent.
                                continue;
                            }
                        }
                    }
                    if !out.transmit(t) {
                        self.lagging(out);
                    }
                    if let Some(stale) = stale {
                        let dropped = ice_path::drop_stale(&mut self.rtc, now, &stale);
                        debug!(stream = %self.stream.name, dropped, "the client moved; media follows it");
                    }
                }
                Ok(Output::Event(e)) => match e {
                    Event::Connected => {
                        self.start_direct();
                        self.connected = true;
                        if !self.counted {
                            // Offers that never connect are not viewers.
                            self.counted = true;
                            self.stream.viewer_joined();
                        }
                        let elapsed_ms =
                            now.saturating_duration_since(self.created).as_millis() as u64;
                        info!(stream = %self.stream.name, elapsed_ms, "viewer connected");
                        if self.video.is_some() && !self.stream.has_cached_keyframe() {
                            // Nothing to replay (a publisher that sends keyframes
                            // only when asked): ask for one.
                            self.stream.request_keyframe();
                        }
                        self.replay_gop(now, true);
                    }
                    Event::IceConnectionStateChange(IceConnectionState::Disconnected) => {
                        self.dead = true;
                    }
                    Event::KeyframeRequest(req)
                        if self.video.as_ref().is_some_and(|v| v.mid == req.mid) =>
                    {
                        // WebRTC publishers are asked too (rate-limited per
                        // stream); the replay serves the viewer meanwhile.
                        self.stream.request_keyframe();
                        self.replay_gop(now, false);
                    }
                    Event::Closed => self.dead = true,
                    Event::RawPacket(raw) => {
                        if let (RawPacket::RtcpRx(rtcp), Some(d)) = (&*raw, self.direct.as_mut()) {
                            d.on_rtcp(rtcp, now);
                        }
                    }
                    Event::PeerStats(s) => {
                        if let (Some(p), Some(d)) =
                            (s.selected_candidate_pair, self.direct.as_mut())
                        {
                            let route = Route {
                                proto: p.protocol,
                                source: p.local.addr,
                                destination: p.remote.addr,
                            };
                            self.route = Some(route);
                            d.route = Some(route);
                        }
                    }
                    _ => {}
                },
                Err(e) => {
                    warn!(stream = %self.stream.name, error = %e, "webrtc session failed");
                    self.dead = true;
                    return;
                }
            }
            if !self.rtc.is_alive() {
                self.dead = true;
                return;
            }
        }
    }

    /// Runs what is due at `now`: str0m's timers, the connect and idle
    /// timeouts, the session's expiry.
    pub fn handle_timeout(&mut self, now: Instant, out: &mut impl Outbox) {
        if let Some(d) = self.direct.as_mut()
            && !self.dead
            && d.next_timeout().is_some_and(|t| t <= now)
        {
            d.handle_timeout(now, &mut Direct(out));
        }
        if self.next_timeout.is_due(now) {
            if let Err(e) = self.rtc.handle_input(Input::Timeout(now)) {
                debug!(error = %e, "rtc timeout input failed");
                self.dead = true;
            }
            self.drive(now, out);
        }
        if !self.connected && now.duration_since(self.created) > CONNECT_TIMEOUT {
            // Anyone can make offers that never connect: logged once per interval.
            if let Some(suppressed) = NEVER_CONNECTED_LOG.allow() {
                info!(stream = %self.stream.name, suppressed, "viewer never connected (ICE/DTLS), dropping");
            }
            self.dead = true;
        } else if self.connected && now.duration_since(self.last_input) > IDLE_TIMEOUT {
            info!(stream = %self.stream.name, "viewer went silent, dropping");
            self.dead = true;
        } else if self.expires_at.is_some_and(|t| t <= now) {
            info!(stream = %self.stream.name, "viewer session expired (signed URL or admission lifetime)");
            self.close(now, out);
        }
    }

    /// Ends the session, telling the peer (DTLS close alert).
    pub fn close(&mut self, now: Instant, out: &mut impl Outbox) {
        if !self.dead {
            self.rtc.disconnect();
            self.drive(now, out);
        }
        self.dead = true;
    }

    /// Takes a live frame of its stream that reached the shard at `now`,
    /// writing it if the viewer gets it; returns how many RTP packets that
    /// was. The caller then calls [`Viewer::drive_after_frame`].
    pub fn on_frame(&mut self, frame: &Arc<Frame>, now: Instant) -> usize {
        if !self.connected {
            return 0;
        }
        let admit = self.gate.admit(frame);
        if frame.kind == Kind::Video {
            self.replay_policy
                .live_video(now, admit.send, frame.keyframe);
        }
        if admit.new_publisher {
            let now_sends = self.stream.media_info().video.map(|v| v.codec);
            if let (Some(had), Some(now)) = (self.video_codec, now_sends)
                && had != now
            {
                // This session cannot decode the new codec: end it, so the
                // player reconnects and negotiates the new one.
                info!(stream = %self.stream.name, from = had, to = now, "the new publisher sends another video codec; ending the viewer's session");
                self.rtc.disconnect();
                self.dead = true;
                return 0;
            }
        }
        if admit.gap && self.video.is_some() {
            // Frames were dropped (a full queue): video resumes at the next
            // keyframe; a WebRTC publisher is asked for one (rate-limited).
            self.stream.request_keyframe();
        }
        if !admit.send {
            return 0;
        }
        if frame.kind == Kind::Video
            && let Some(r) = self.replay.as_mut()
        {
            if r.frames.len() == r.frames.capacity() {
                r.unpaced = true;
            }
            r.frames.push(Arc::clone(frame));
            return frame.payloads.len();
        }
        if frame.kind == Kind::Video && frame.keyframe {
            // A live keyframe: what came before it needs no retransmission,
            // so a replay's large RTX cache goes back to the live one.
            self.replay_policy.keyframe_sent();
            match self.direct.as_mut() {
                Some(d) => d.live_history(),
                None if self.rtx_cache != RTX_CACHE => self.set_rtx_cache(RTX_CACHE),
                None => {}
            }
        }
        if self.direct.is_none() && self.srtp_keys.is_some() {
            // The keys may have come after the Connected event.
            self.start_direct();
        }
        let (track, video) = match frame.kind {
            Kind::Video => (self.video.as_mut(), true),
            Kind::Audio => (self.audio.as_mut(), false),
        };
        let Some(t) = track else {
            return 0;
        };
        match self.direct.as_mut() {
            Some(d) => {
                let n = frame.payloads.len();
                let span = Span {
                    first: 0,
                    count: n,
                    first_seq: t.next_seq,
                    rtp_time: frame.rtp_time,
                    live: true,
                };
                d.queue(video, frame, span);
                t.next_seq += n as u64;
                n
            }
            None => write_frame(&mut self.rtc, t, frame, frame.rtp_time, video),
        }
    }

    /// Sends the stream's cached GOP so the viewer can decode now instead of at
    /// the next keyframe, paced (`continue_replay`). The frames get RTP times
    /// just before the newest one: they are decoded (later frames reference
    /// them) but the jitter buffer sees them as due now, so playback starts at
    /// the live edge, not a GOP behind.
    /// `join`: the replay right after DTLS (see `replay_policy`).
    fn replay_gop(&mut self, now: Instant, join: bool) {
        let gop = self.stream.gop_snapshot();
        let video = gop.iter().filter(|f| f.kind == Kind::Video);
        let mut frames = Vec::with_capacity(video.clone().count() + REPLAY_MAX_LIVE_FRAMES);
        frames.extend(video.cloned());
        let last_audio = gop.iter().rev().find(|f| f.kind == Kind::Audio);
        let (Some(newest), Some(next_seq), None) = (
            frames.last().cloned(),
            self.video.as_ref().map(|v| v.next_seq),
            self.replay.as_ref(),
        ) else {
            // Nothing to replay (no GOP, no video track), or a replay under
            // way brings a keyframe already: a waiting request is answered.
            self.replay_policy.keyframe_sent();
            return;
        };
        let retransmittable = match &self.direct {
            Some(d) => d.history_packets(),
            None => self.rtx_cache.max_packets,
        };
        match self.replay_policy.request(now, next_seq, retransmittable) {
            Verdict::Replay => {}
            Verdict::Repair | Verdict::Later(_) => return,
            Verdict::Still => {
                debug!(stream = %self.stream.name, "keyframe request while the stream is still: no replay");
                return;
            }
        }
        // The replay's packets stay retransmittable for its duration and a
        // second of round trips (until the next live keyframe makes them moot).
        let packets = frames.iter().map(|f| f.payloads.len()).sum();
        match self.direct.as_mut() {
            // The direct path's history indexes the shared frames.
            Some(d) => d.replay_history(packets, frames.len()),
            None => {
                let bytes = frames
                    .iter()
                    .flat_map(|f| f.payloads.iter())
                    .map(|p| p.len())
                    .sum();
                self.set_rtx_cache(RtxCacheSize::for_replay(
                    packets,
                    bytes,
                    self.pace.bytes_per_ms as u64,
                    RTX_CACHE,
                ));
            }
        }
        self.replay = Some(Replay {
            newest_rtp_time: newest.rtp_time,
            gop: frames.len(),
            frames,
            next: 0,
            packet: 0,
            credit: REPLAY_BURST_BYTES,
            refilled: now,
            unpaced: false,
        });
        self.gate.publisher = newest.publisher;
        self.gate.video_started = true;
        self.gate.sent_through(&newest);
        // Audio queued for this viewer from before the snapshot is behind
        // the replay: it is skipped.
        if let Some(audio) = last_audio {
            self.gate.sent_through(audio);
        }
        self.replay_policy.replayed(now, next_seq, !join);
    }

    /// Replaces the video track's RTX cache (str0m starts it empty).
    fn set_rtx_cache(&mut self, size: RtxCacheSize) {
        let Some(v) = &self.video else {
            return;
        };
        let mut api = self.rtc.direct_api();
        let tx = match &v.ssrc {
            Some(ssrc) => api.stream_tx(ssrc),
            None => api.stream_tx_by_mid(v.mid, None),
        };
        if let Some(tx) = tx {
            tx.set_rtx_cache(size.max_packets, size.max_age, None);
            self.rtx_cache = size;
        }
    }

    /// Writes what the pace allows of a pending replay, at most the rest of one
    /// frame; false when it is done or waits for credit (see `replay_due`).
    /// Called when str0m's queue is empty, so str0m never holds more than one
    /// frame of it.
    fn continue_replay(&mut self, now: Instant) -> bool {
        let pace = self.pace;
        let (Some(r), Some(track)) = (self.replay.as_mut(), self.video.as_mut()) else {
            self.replay = None;
            return false;
        };
        let Some(f) = r.frames.get(r.next) else {
            self.replay = None;
            return false;
        };
        let paced = pace.bytes_per_ms > 0 && !r.unpaced;
        let mut budget = if paced {
            let elapsed_us = now.saturating_duration_since(r.refilled).as_micros() as i64;
            let earned = elapsed_us.saturating_mul(pace.bytes_per_ms) / 1000;
            r.credit = r.credit.saturating_add(earned).min(REPLAY_BURST_BYTES);
            r.refilled = now;
            r.credit
        } else {
            i64::MAX
        };
        if budget <= 0 {
            return false;
        }
        let rtp_time = if r.next < r.gop {
            r.newest_rtp_time.wrapping_sub((r.gop - 1 - r.next) as u32)
        } else {
            f.rtp_time
        };
        let written = match self.direct.as_mut() {
            Some(d) => {
                let mut count = 0;
                for p in &f.payloads[r.packet..] {
                    if budget <= 0 {
                        break;
                    }
                    budget = budget.saturating_sub(p.len() as i64 + PACKET_OVERHEAD_BYTES);
                    count += 1;
                }
                // Live frames queued behind the replay keep their times.
                let live = r.next >= r.gop;
                let span = Span {
                    first: r.packet,
                    count,
                    first_seq: track.next_seq,
                    rtp_time,
                    live,
                };
                d.queue(true, f, span);
                track.next_seq += count as u64;
                count
            }
            None => write_packets(
                &mut self.rtc,
                track,
                f,
                r.packet,
                &mut budget,
                rtp_time,
                true,
            ),
        };
        if paced {
            r.credit = budget;
        }
        r.packet += written;
        if r.packet >= f.payloads.len() {
            r.next += 1;
            r.packet = 0;
        } else if written == 0 {
            // Credit but nothing written: the track is gone.
            self.replay = None;
            return false;
        }
        if r.next >= r.frames.len() {
            self.replay = None;
        }
        true
    }

    /// When a replay waiting for credit can send its next packet.
    fn replay_due(&self) -> Option<Instant> {
        let pace = self.pace;
        let r = self.replay.as_ref()?;
        let missing = REPLAY_RESUME_BYTES - r.credit;
        if pace.bytes_per_ms == 0 || missing <= 0 {
            return Some(r.refilled);
        }
        let us = (missing * 1000 + pace.bytes_per_ms - 1) / pace.bytes_per_ms;
        Some(r.refilled + Duration::from_micros(us as u64))
    }
}

fn write_frame(
    rtc: &mut Rtc,
    track: &mut TrackOut,
    frame: &Frame,
    rtp_time: u32,
    video: bool,
) -> usize {
    let mut unlimited = i64::MAX;
    write_packets(rtc, track, frame, 0, &mut unlimited, rtp_time, video)
}

/// Writes the frame's packets from `first` on while `budget` (bytes) is
/// positive, taking each packet's size from it; returns how many it wrote.
fn write_packets(
    rtc: &mut Rtc,
    track: &mut TrackOut,
    frame: &Frame,
    first: usize,
    budget: &mut i64,
    rtp_time: u32,
    video: bool,
) -> usize {
    let mut api = rtc.direct_api();
    let tx = match &track.ssrc {
        Some(ssrc) => api.stream_tx(ssrc),
        None => api.stream_tx_by_mid(track.mid, None),
    };
    let Some(tx) = tx else {
        return 0;
    };
    let last = frame.payloads.len().saturating_sub(1);
    let mut written = 0;
    for (i, payload) in frame.payloads.iter().enumerate().skip(first) {
        if *budget <= 0 {
            break;
        }
        *budget = budget.saturating_sub(payload.len() as i64 + PACKET_OVERHEAD_BYTES);
        let w = RtpWrite::new(
            track.pt,
            track.next_seq.into(),
            rtp_time,
            frame.wallclock,
            payload.clone(),
        )
        .marker(video && i == last)
        .nackable(video);
        tx.write_rtp(w);
        track.next_seq += 1;
        written += 1;
    }
    written
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    /// A frame of publisher 1 with one 4-byte payload, `index` its position
    /// both in the stream and among its kind.
    pub(in super::super) fn frame(index: u64, kind: Kind, keyframe: bool) -> Arc<Frame> {
        frame_of(index, kind, keyframe, 1)
    }

    fn frame_of(index: u64, kind: Kind, keyframe: bool, publisher: u64) -> Arc<Frame> {
        let now = Instant::now();
        Arc::new(Frame {
            kind,
            index,
            kind_index: index,
            rtp_time: index as u32,
            wallclock: now,
            received: now,
            keyframe,
            publisher,
            payloads: Box::new([Arc::from(vec![0u8; 4])]),
        })
    }

    #[test]
    fn the_gate_sends_each_frame_once_and_restarts_video_for_a_new_publisher() {
        use Kind::{Audio, Video};
        let mut g = FrameGate::default();
        // Video and audio count their frames apart.
        assert!(!g.admit(&frame(0, Video, false)).send, "before a keyframe");
        assert!(g.admit(&frame(0, Audio, false)).send);
        assert!(g.admit(&frame(1, Video, true)).send);
        assert!(!g.admit(&frame(1, Video, true)).send, "a duplicate");
        assert!(!g.admit(&frame(0, Audio, false)).send, "a duplicate");
        assert!(g.admit(&frame(2, Video, false)).send);
        let a = g.admit(&frame_of(3, Video, false, 2));
        assert!(a.new_publisher && !a.send && !a.gap);
        // Lost audio is no gap: audio goes on, and video is not stopped.
        let a = g.admit(&frame_of(5, Audio, false, 2));
        assert!(a.send && !a.gap);
        assert!(g.admit(&frame_of(4, Video, true, 2)).send);
        assert!(g.admit(&frame_of(5, Video, false, 2)).send);
        // Lost video: what follows waits for a keyframe.
        let a = g.admit(&frame_of(8, Video, false, 2));
        assert!(a.gap && !a.send);
        assert!(!g.admit(&frame_of(9, Video, false, 2)).send);
        assert!(g.admit(&frame_of(10, Video, true, 2)).send);
    }
}
