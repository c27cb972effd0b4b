//! A worker thread that runs the WebRTC sessions (str0m `Rtc`s) of its viewers.
//!
//! Each shard owns its peers outright (no locks around an `Rtc`): network input,
//! frames from the hub, and timers all arrive as messages on one channel. A frame
//! reaches a shard once however many of its viewers watch the stream, and each
//! viewer writes the shared payloads with its own SSRC and sequence numbers; only
//! SRTP and the send are per viewer.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use parking_lot::Mutex;
use str0m::media::{Mid, Pt};
use str0m::net::{Protocol, Receive};
use str0m::rtp::{RtpWrite, Ssrc};
use str0m::{Event, IceConnectionState, Input, Output, Rtc};
use tracing::{debug, info, warn};

use super::metrics::ShardMetrics;
use super::net::{Demux, NetOut, SendBatch};
use super::publish::{NewPublisher, PubPeer};
use crate::hub::{Frame, FrameSink, Kind, Stream};

/// A viewer that has not completed ICE and DTLS by then is dropped.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// A connected viewer that sends nothing (no consent checks, no RTCP) for this long is gone.
const IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// A publisher sends media all the time: this much silence means it is gone
/// (killed, network lost) and the stream goes offline.
const PUBLISHER_IDLE_TIMEOUT: Duration = Duration::from_secs(10);
/// Retransmission cache per viewer: 128 packets are half a second of a
/// 2.5 Mbit/s stream, enough for NACKs from viewers up to ~300 ms away; each
/// entry costs str0m ~430 bytes, so this is most of a viewer's memory.
const RTX_CACHE_PACKETS: usize = 128;
const RTX_CACHE_AGE: Duration = Duration::from_millis(500);
/// Shortest time between two passes over every peer's timers.
const SCAN_INTERVAL: Duration = Duration::from_millis(2);
/// At most one GOP replay per viewer in this period, however often it asks.
const REPLAY_MIN_INTERVAL: Duration = Duration::from_millis(1000);

pub enum ShardMsg {
    Add(Box<NewPeer>),
    Remove(u64),
    AddPublisher(Box<NewPublisher>),
    RemovePublisher(u64),
    /// A viewer of the publisher's stream asked for a keyframe.
    PublisherKeyframe(u64),
    Net {
        peer: u64,
        proto: Protocol,
        source: SocketAddr,
        destination: SocketAddr,
        data: Vec<u8>,
        at: Instant,
        new_addr: bool,
    },
    Frame {
        stream: usize,
        frame: Arc<Frame>,
    },
}

/// A datagram for a viewer or a publisher of this shard.
struct NetInput<'a> {
    proto: Protocol,
    source: SocketAddr,
    destination: SocketAddr,
    data: &'a [u8],
    at: Instant,
    new_addr: bool,
}

impl NetInput<'_> {
    /// Hands the datagram to the session, remembering a new source address
    /// (for the demux to forget when the session ends).
    fn feed(
        &self,
        rtc: &mut Rtc,
        addrs: &mut Vec<(Protocol, SocketAddr)>,
        last_input: &mut Instant,
    ) {
        if self.new_addr {
            addrs.push((self.proto, self.source));
        }
        let Ok(recv) = Receive::new(self.proto, self.source, self.destination, self.data) else {
            return;
        };
        *last_input = self.at;
        if let Err(e) = rtc.handle_input(Input::Receive(self.at, recv)) {
            debug!(error = %e, "rtc rejected input");
        }
    }
}

/// A negotiated viewer, handed to its shard.
pub struct NewPeer {
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
}

/// Where the engine finds a peer for `DELETE`.
pub type Registry = Arc<Mutex<HashMap<u64, (usize, String)>>>;

/// The hub's view of a shard: a queue.
pub struct ShardSink {
    pub tx: Sender<ShardMsg>,
}

impl FrameSink for ShardSink {
    fn deliver(&self, stream: &Arc<Stream>, frame: &Arc<Frame>) {
        let _ = self.tx.send(ShardMsg::Frame {
            stream: stream_key(stream),
            frame: frame.clone(),
        });
    }
}

fn stream_key(s: &Arc<Stream>) -> usize {
    Arc::as_ptr(s) as usize
}

struct TrackOut {
    mid: Mid,
    pt: Pt,
    /// Looked up once: finding a stream by SSRC is cheaper than by mid.
    ssrc: Option<Ssrc>,
    next_seq: u64,
}

struct Peer {
    id: u64,
    rtc: Rtc,
    stream: Arc<Stream>,
    ufrag: String,
    addrs: Vec<(Protocol, SocketAddr)>,
    video: Option<TrackOut>,
    video_codec: Option<&'static str>,
    audio: Option<TrackOut>,
    connected: bool,
    /// Video is sent only from a keyframe of the current publisher on.
    video_started: bool,
    publisher: u64,
    /// Frames up to this index were sent (or skipped) already.
    last_index: Option<u64>,
    next_timeout: Instant,
    created: Instant,
    last_input: Instant,
    last_replay: Option<Instant>,
    replay: Option<Replay>,
    dead: bool,
    expires_at: Option<Instant>,
    _guard: Option<Box<dyn Send>>,
}

/// A GOP being sent to one viewer, a frame at a time.
struct Replay {
    frames: Vec<Arc<Frame>>,
    next: usize,
    newest_rtp_time: u32,
}

/// The shard's peers in slots, so the per-frame fan-out walks a list of slot
/// numbers instead of hashing an id per viewer.
#[derive(Default)]
struct Peers {
    slots: Vec<Option<Peer>>,
    free: Vec<usize>,
    by_id: HashMap<u64, usize>,
    /// Stream (by address) → slots of its viewers.
    by_stream: HashMap<usize, Vec<usize>>,
}

impl Peers {
    fn insert(&mut self, id: u64, peer: Peer) {
        let key = stream_key(&peer.stream);
        let slot = match self.free.pop() {
            Some(i) => {
                self.slots[i] = Some(peer);
                i
            }
            None => {
                self.slots.push(Some(peer));
                self.slots.len() - 1
            }
        };
        self.by_id.insert(id, slot);
        self.by_stream.entry(key).or_default().push(slot);
    }

    fn get_mut(&mut self, id: u64) -> Option<&mut Peer> {
        let slot = *self.by_id.get(&id)?;
        self.slots[slot].as_mut()
    }

    fn iter_mut(&mut self) -> impl Iterator<Item = &mut Peer> {
        self.slots.iter_mut().flatten()
    }

    fn remove_dead(&mut self) -> Vec<Peer> {
        let dead: Vec<u64> = self
            .by_id
            .iter()
            .filter(|(_, slot)| {
                self.slots[**slot]
                    .as_ref()
                    .is_some_and(|p| p.dead || !p.rtc.is_alive())
            })
            .map(|(id, _)| *id)
            .collect();
        let mut out = Vec::with_capacity(dead.len());
        for id in dead {
            let Some(slot) = self.by_id.remove(&id) else {
                continue;
            };
            let Some(p) = self.slots[slot].take() else {
                continue;
            };
            self.free.push(slot);
            let key = stream_key(&p.stream);
            if let Some(v) = self.by_stream.get_mut(&key) {
                v.retain(|s| *s != slot);
                if v.is_empty() {
                    self.by_stream.remove(&key);
                }
            }
            out.push(p);
        }
        out
    }
}

pub struct Shard {
    pub index: usize,
    pub rx: Receiver<ShardMsg>,
    /// This shard's own queue, for publishers' keyframe requesters.
    pub tx: Sender<ShardMsg>,
    /// Where the engine finds a publisher for `DELETE`.
    pub publishers: Registry,
    pub sink: Arc<dyn FrameSink>,
    pub net: Arc<NetOut>,
    pub demux: Arc<Demux>,
    pub registry: Registry,
    pub metrics: Arc<ShardMetrics>,
    /// Datagrams of the peer being driven, sent together at the end.
    pub batch: std::cell::RefCell<SendBatch>,
    /// The earliest time any peer needs its timers run (or a dead peer reaped).
    pub earliest: std::cell::Cell<Instant>,
}

impl Shard {
    pub fn run(self) {
        let mut peers = Peers::default();
        let mut pubs: HashMap<u64, PubPeer> = HashMap::new();
        let mut last_scan = Instant::now();
        loop {
            // Timers run at most every SCAN_INTERVAL: str0m's timers tolerate
            // that, and a busy shard does not rescan every peer per packet.
            let deadline = self.earliest.get().max(last_scan + SCAN_INTERVAL);
            let first = if deadline <= Instant::now() {
                self.rx.try_recv().map_err(|e| match e {
                    crossbeam_channel::TryRecvError::Empty => RecvTimeoutError::Timeout,
                    crossbeam_channel::TryRecvError::Disconnected => RecvTimeoutError::Disconnected,
                })
            } else {
                self.rx.recv_deadline(deadline)
            };
            match first {
                Ok(msg) => self.handle(msg, &mut peers, &mut pubs),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return,
            }
            // Take what else is queued before running timers.
            for _ in 0..1024 {
                match self.rx.try_recv() {
                    Ok(msg) => self.handle(msg, &mut peers, &mut pubs),
                    Err(_) => break,
                }
            }
            let now = Instant::now();
            if now < self.earliest.get().max(last_scan + SCAN_INTERVAL) {
                continue;
            }
            last_scan = now;
            let mut earliest = now + Duration::from_secs(1);
            let mut any_dead = false;
            for p in peers.iter_mut() {
                if p.next_timeout <= now {
                    if let Err(e) = p.rtc.handle_input(Input::Timeout(now)) {
                        debug!(error = %e, "rtc timeout input failed");
                        p.dead = true;
                    }
                    self.drive(p);
                }
                if !p.connected && now.duration_since(p.created) > CONNECT_TIMEOUT {
                    info!(stream = %p.stream.name, "viewer never connected (ICE/DTLS), dropping");
                    p.dead = true;
                } else if p.connected && now.duration_since(p.last_input) > IDLE_TIMEOUT {
                    info!(stream = %p.stream.name, "viewer went silent, dropping");
                    p.dead = true;
                } else if p.expires_at.is_some_and(|t| t <= now) {
                    info!(stream = %p.stream.name, "viewer session expired (signed URL or admission lifetime)");
                    p.rtc.disconnect();
                    self.drive(p);
                    p.dead = true;
                }
                earliest = earliest.min(p.next_timeout);
                if let Some(t) = p.expires_at {
                    earliest = earliest.min(t);
                }
                any_dead |= p.dead || !p.rtc.is_alive();
            }
            for p in pubs.values_mut() {
                if p.next_timeout <= now {
                    if let Err(e) = p.rtc.handle_input(Input::Timeout(now)) {
                        debug!(error = %e, "rtc timeout input failed");
                        p.end("webrtc failure");
                    }
                    self.drive_pub(p);
                }
                if p.deadline().is_some_and(|t| t <= now) {
                    p.poll_assembler(now);
                    self.drive_pub(p);
                }
                if !p.connected && now.duration_since(p.created) > CONNECT_TIMEOUT {
                    p.end("no ICE/DTLS connection within 30 s");
                } else if p.connected && now.duration_since(p.last_input) > PUBLISHER_IDLE_TIMEOUT {
                    p.end("the publisher went silent for 10 s");
                } else if p.expires_at.is_some_and(|t| t <= now) {
                    p.rtc.disconnect();
                    self.drive_pub(p);
                    p.end("session expired (signed URL stream_expire or admission lifetime)");
                }
                earliest = earliest.min(p.next_timeout);
                for t in [p.deadline(), p.expires_at].into_iter().flatten() {
                    earliest = earliest.min(t);
                }
                any_dead |= p.dead || !p.rtc.is_alive();
            }
            if any_dead {
                self.reap(&mut peers);
                self.reap_publishers(&mut pubs);
            }
            self.earliest.set(earliest);
        }
    }

    fn handle(&self, msg: ShardMsg, peers: &mut Peers, pubs: &mut HashMap<u64, PubPeer>) {
        match msg {
            ShardMsg::AddPublisher(np) => {
                let mut p = PubPeer::new(*np, Instant::now());
                self.drive_pub(&mut p);
                pubs.insert(p.id, p);
            }
            ShardMsg::RemovePublisher(id) => {
                if let Some(p) = pubs.get_mut(&id) {
                    p.rtc.disconnect();
                    self.drive_pub(p);
                    p.end("ended by DELETE");
                    self.earliest.set(Instant::now());
                }
            }
            ShardMsg::PublisherKeyframe(id) => {
                if let Some(p) = pubs.get_mut(&id) {
                    p.request_keyframe(Instant::now());
                    self.drive_pub(p);
                }
            }
            ShardMsg::Add(np) => {
                let NewPeer {
                    id,
                    rtc,
                    stream,
                    ufrag,
                    video,
                    video_codec,
                    audio,
                    expires_at,
                    guard,
                } = *np;
                let now = Instant::now();
                stream.attach_sink(self.index as u64, &self.sink);
                stream.viewer_joined();
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
                if let Some(v) = &video {
                    let mut api = rtc.direct_api();
                    if let Some(tx) = api.stream_tx_by_mid(v.mid, None) {
                        // str0m's default (3 s, 2000 packets) costs ~300 KB per viewer.
                        tx.set_rtx_cache(RTX_CACHE_PACKETS, RTX_CACHE_AGE, None);
                    }
                }
                let audio = audio.map(|a| track(&mut rtc, a));
                let mut peer = Peer {
                    id,
                    rtc,
                    stream,
                    ufrag,
                    addrs: Vec::new(),
                    video,
                    video_codec,
                    audio,
                    connected: false,
                    video_started: false,
                    publisher: 0,
                    last_index: None,
                    next_timeout: now,
                    created: now,
                    last_input: now,
                    last_replay: None,
                    replay: None,
                    dead: false,
                    expires_at,
                    _guard: guard,
                };
                self.drive(&mut peer);
                peers.insert(id, peer);
            }
            ShardMsg::Remove(id) => {
                if let Some(p) = peers.get_mut(id) {
                    p.rtc.disconnect();
                    self.drive(p);
                    p.dead = true;
                    self.earliest.set(Instant::now());
                }
            }
            ShardMsg::Net {
                peer,
                proto,
                source,
                destination,
                data,
                at,
                new_addr,
            } => {
                let input = NetInput {
                    proto,
                    source,
                    destination,
                    data: &data,
                    at,
                    new_addr,
                };
                if let Some(p) = peers.get_mut(peer) {
                    input.feed(&mut p.rtc, &mut p.addrs, &mut p.last_input);
                    self.drive(p);
                } else if let Some(p) = pubs.get_mut(&peer) {
                    input.feed(&mut p.rtc, &mut p.addrs, &mut p.last_input);
                    self.drive_pub(p);
                }
            }
            ShardMsg::Frame { stream, frame } => {
                let Peers {
                    slots, by_stream, ..
                } = peers;
                let Some(viewers) = by_stream.get(&stream) else {
                    return;
                };
                for &slot in viewers {
                    let Some(p) = slots[slot].as_mut() else {
                        continue;
                    };
                    let sent = p.on_frame(&frame);
                    self.drive(p);
                    if sent > 0 {
                        self.metrics.rtp_packets.fetch_add(sent as u64, Relaxed);
                        self.metrics
                            .rtp_bytes
                            .fetch_add(frame.bytes() as u64, Relaxed);
                        self.metrics.observe_transit(frame.received.elapsed());
                    }
                }
            }
        }
    }

    /// Runs the peer's state machine until it waits for time or input.
    fn drive(&self, p: &mut Peer) {
        if p.dead {
            return;
        }
        let mut batch = self.batch.borrow_mut();
        self.poll_peer(p, &mut batch);
        self.net.flush(&mut batch);
        let due = if p.dead {
            Instant::now()
        } else {
            p.next_timeout
        };
        self.earliest.set(self.earliest.get().min(due));
    }

    fn poll_peer(&self, p: &mut Peer, batch: &mut SendBatch) {
        // str0m sends written RTP on its next timer input, so a due timeout is
        // fed at once rather than at the next timer pass; bounded, in case
        // str0m keeps asking without making progress.
        let mut idle_feeds = 0;
        loop {
            match p.rtc.poll_output() {
                Ok(Output::Timeout(t)) => {
                    let now = Instant::now();
                    if t <= now && idle_feeds < 2 {
                        idle_feeds += 1;
                        if let Err(e) = p.rtc.handle_input(Input::Timeout(now)) {
                            debug!(error = %e, "rtc timeout input failed");
                            p.dead = true;
                            return;
                        }
                        continue;
                    }
                    if p.replay.is_some() && p.continue_replay() {
                        idle_feeds = 0;
                        continue;
                    }
                    p.next_timeout = t;
                    return;
                }
                Ok(Output::Transmit(t)) => {
                    idle_feeds = 0;
                    self.metrics.datagrams.fetch_add(1, Relaxed);
                    if !self.net.queue(batch, t) && p.video_started {
                        // A laggard: what it missed breaks its picture anyway,
                        // so it resumes at the next keyframe instead.
                        p.video_started = false;
                        self.metrics.laggard_skips.fetch_add(1, Relaxed);
                        debug!(stream = %p.stream.name, "viewer cannot keep up, skipping to the next keyframe");
                    }
                }
                Ok(Output::Event(e)) => match e {
                    Event::Connected => {
                        p.connected = true;
                        info!(stream = %p.stream.name, elapsed_ms = p.created.elapsed().as_millis() as u64, "viewer connected");
                        if p.video.is_some() && !p.stream.has_cached_keyframe() {
                            // Nothing to replay (a publisher that sends keyframes
                            // only when asked): ask for one.
                            p.stream.request_keyframe();
                        }
                        p.replay_gop();
                    }
                    Event::IceConnectionStateChange(IceConnectionState::Disconnected) => {
                        p.dead = true;
                    }
                    Event::KeyframeRequest(req)
                        if p.video.as_ref().is_some_and(|v| v.mid == req.mid) =>
                    {
                        // WebRTC publishers are asked too (rate-limited per
                        // stream); the replay serves the viewer meanwhile.
                        p.stream.request_keyframe();
                        p.replay_gop();
                    }
                    Event::Closed => p.dead = true,
                    _ => {}
                },
                Err(e) => {
                    warn!(stream = %p.stream.name, error = %e, "webrtc session failed");
                    p.dead = true;
                    return;
                }
            }
            if !p.rtc.is_alive() {
                p.dead = true;
                return;
            }
        }
    }

    /// Runs a publisher's state machine until it waits for time or input.
    fn drive_pub(&self, p: &mut PubPeer) {
        if p.dead {
            return;
        }
        let mut batch = self.batch.borrow_mut();
        let mut idle_feeds = 0;
        loop {
            match p.rtc.poll_output() {
                Ok(Output::Timeout(t)) => {
                    let now = Instant::now();
                    if t <= now && idle_feeds < 2 {
                        idle_feeds += 1;
                        if let Err(e) = p.rtc.handle_input(Input::Timeout(now)) {
                            debug!(error = %e, "rtc timeout input failed");
                            p.end("webrtc failure");
                            break;
                        }
                        continue;
                    }
                    p.next_timeout = t;
                    break;
                }
                Ok(Output::Transmit(t)) => {
                    idle_feeds = 0;
                    self.net.queue(&mut batch, t);
                }
                Ok(Output::Event(e)) => match e {
                    Event::Connected => {
                        let tx = self.tx.clone();
                        let id = p.id;
                        p.on_connected(Arc::new(move || {
                            let _ = tx.send(ShardMsg::PublisherKeyframe(id));
                        }));
                    }
                    Event::RtpPacket(pkt) => p.on_rtp(pkt),
                    Event::IceConnectionStateChange(IceConnectionState::Disconnected) => {
                        p.end("ICE disconnected");
                    }
                    Event::Closed => p.end("DTLS closed"),
                    _ => {}
                },
                Err(e) => {
                    warn!(stream = %p.stream.name, error = %e, "whip session failed");
                    p.end("webrtc failure");
                    break;
                }
            }
            if !p.rtc.is_alive() {
                p.end("the publisher closed the session");
                break;
            }
        }
        self.net.flush(&mut batch);
        let mut due = if p.dead {
            Instant::now()
        } else {
            p.next_timeout
        };
        if let Some(t) = p.deadline() {
            due = due.min(t);
        }
        self.earliest.set(self.earliest.get().min(due));
    }

    fn reap_publishers(&self, pubs: &mut HashMap<u64, PubPeer>) {
        let dead: Vec<u64> = pubs
            .values()
            .filter(|p| p.dead || !p.rtc.is_alive())
            .map(|p| p.id)
            .collect();
        for id in dead {
            if let Some(mut p) = pubs.remove(&id) {
                p.end("session closed");
                // Tell the publisher (DTLS close alert) rather than go silent.
                p.rtc.disconnect();
                let mut batch = self.batch.borrow_mut();
                while let Ok(Output::Transmit(t)) = p.rtc.poll_output() {
                    self.net.queue(&mut batch, t);
                }
                self.net.flush(&mut batch);
                self.demux.remove(&p.ufrag, &p.addrs);
                self.publishers.lock().remove(&p.id);
                debug!(stream = %p.stream.name, "whip publisher removed");
                // Dropping it ends the publish (the hub's Publisher handle).
            }
        }
    }

    fn reap(&self, peers: &mut Peers) {
        for p in peers.remove_dead() {
            self.demux.remove(&p.ufrag, &p.addrs);
            self.registry.lock().remove(&p.id);
            p.stream.detach_sink(self.index as u64);
            p.stream.viewer_left();
            info!(stream = %p.stream.name, "viewer left");
        }
    }
}

impl Peer {
    /// Writes a live frame; returns how many RTP packets that was.
    fn on_frame(&mut self, frame: &Frame) -> usize {
        if !self.connected || self.last_index.is_some_and(|i| frame.index <= i) {
            return 0;
        }
        self.last_index = Some(frame.index);
        if frame.publisher != self.publisher {
            // A new publisher: its P-frames mean nothing without its keyframe.
            self.publisher = frame.publisher;
            self.video_started = false;
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
        let (track, video) = match frame.kind {
            Kind::Video => {
                if !self.video_started {
                    if !frame.keyframe {
                        return 0;
                    }
                    self.video_started = true;
                }
                (self.video.as_mut(), true)
            }
            Kind::Audio => (self.audio.as_mut(), false),
        };
        match track {
            Some(t) => write_frame(&mut self.rtc, t, frame, frame.rtp_time, video),
            None => 0,
        }
    }

    /// Sends the stream's cached GOP at once so the viewer can decode now instead
    /// of at the next keyframe. The frames get RTP times just before the newest
    /// one: they are decoded (later frames reference them) but the jitter buffer
    /// sees them as due now, so playback starts at the live edge, not a GOP behind.
    fn replay_gop(&mut self) {
        let now = Instant::now();
        if self
            .last_replay
            .is_some_and(|t| now.duration_since(t) < REPLAY_MIN_INTERVAL)
        {
            return;
        }
        let gop = self.stream.gop_snapshot();
        let Some(last) = gop.last() else {
            return;
        };
        let frames: Vec<Arc<Frame>> = gop
            .iter()
            .filter(|f| f.kind == Kind::Video)
            .cloned()
            .collect();
        let Some(newest) = frames.last() else {
            return;
        };
        if self.video.is_none() {
            return;
        }
        self.replay = Some(Replay {
            newest_rtp_time: newest.rtp_time,
            frames,
            next: 0,
        });
        self.publisher = last.publisher;
        self.video_started = true;
        self.last_index = Some(self.last_index.map_or(last.index, |i| i.max(last.index)));
        self.last_replay = Some(now);
    }

    /// Writes the next frame of a pending GOP replay; false when done. Called
    /// when str0m's queue is empty, so it never holds more than one frame.
    fn continue_replay(&mut self) -> bool {
        let (Some(r), Some(track)) = (self.replay.as_mut(), self.video.as_mut()) else {
            self.replay = None;
            return false;
        };
        let Some(f) = r.frames.get(r.next) else {
            self.replay = None;
            return false;
        };
        let behind = (r.frames.len() - 1 - r.next) as u32;
        write_frame(
            &mut self.rtc,
            track,
            f,
            r.newest_rtp_time.wrapping_sub(behind),
            true,
        );
        r.next += 1;
        true
    }
}

fn write_frame(
    rtc: &mut Rtc,
    track: &mut TrackOut,
    frame: &Frame,
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
    for (i, payload) in frame.payloads.iter().enumerate() {
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
    }
    frame.payloads.len()
}
