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
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use parking_lot::Mutex;
use str0m::media::{Mid, Pt};
use str0m::net::{Protocol, Receive};
use str0m::rtp::RtpWrite;
use str0m::{Event, IceConnectionState, Input, Output, Rtc};
use tracing::{debug, info, warn};

use super::net::{Demux, NetOut};
use crate::hub::{Frame, FrameSink, Kind, Stream};

/// A viewer that has not completed ICE and DTLS by then is dropped.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// A connected viewer that sends nothing (no consent checks, no RTCP) for this long is gone.
const IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// At most one GOP replay per viewer in this period, however often it asks.
const REPLAY_MIN_INTERVAL: Duration = Duration::from_millis(1000);

pub enum ShardMsg {
    Add(Box<NewPeer>),
    Remove(u64),
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

/// A negotiated viewer, handed to its shard.
pub struct NewPeer {
    pub id: u64,
    pub rtc: Rtc,
    pub stream: Arc<Stream>,
    pub ufrag: String,
    pub video: Option<(Mid, Pt)>,
    pub audio: Option<(Mid, Pt)>,
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
    next_seq: u64,
}

struct Peer {
    rtc: Rtc,
    stream: Arc<Stream>,
    ufrag: String,
    addrs: Vec<(Protocol, SocketAddr)>,
    video: Option<TrackOut>,
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
    dead: bool,
}

pub struct Shard {
    pub index: usize,
    pub rx: Receiver<ShardMsg>,
    pub sink: Arc<dyn FrameSink>,
    pub net: Arc<NetOut>,
    pub demux: Arc<Demux>,
    pub registry: Registry,
}

impl Shard {
    pub fn run(self) {
        let mut peers: HashMap<u64, Peer> = HashMap::new();
        let mut by_stream: HashMap<usize, Vec<u64>> = HashMap::new();
        loop {
            let now = Instant::now();
            let deadline = peers
                .values()
                .map(|p| p.next_timeout)
                .min()
                .unwrap_or(now + Duration::from_secs(1));
            let first = if deadline <= now {
                self.rx.try_recv().map_err(|e| match e {
                    crossbeam_channel::TryRecvError::Empty => RecvTimeoutError::Timeout,
                    crossbeam_channel::TryRecvError::Disconnected => RecvTimeoutError::Disconnected,
                })
            } else {
                self.rx.recv_deadline(deadline)
            };
            match first {
                Ok(msg) => self.handle(msg, &mut peers, &mut by_stream),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return,
            }
            // Take what else is queued before running timers.
            for _ in 0..1024 {
                match self.rx.try_recv() {
                    Ok(msg) => self.handle(msg, &mut peers, &mut by_stream),
                    Err(_) => break,
                }
            }
            let now = Instant::now();
            for p in peers.values_mut() {
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
                }
            }
            self.reap(&mut peers, &mut by_stream);
        }
    }

    fn handle(
        &self,
        msg: ShardMsg,
        peers: &mut HashMap<u64, Peer>,
        by_stream: &mut HashMap<usize, Vec<u64>>,
    ) {
        match msg {
            ShardMsg::Add(np) => {
                let NewPeer {
                    id,
                    rtc,
                    stream,
                    ufrag,
                    video,
                    audio,
                } = *np;
                let now = Instant::now();
                stream.attach_sink(self.index as u64, &self.sink);
                stream.viewer_joined();
                by_stream.entry(stream_key(&stream)).or_default().push(id);
                let track = |(mid, pt): (Mid, Pt)| TrackOut {
                    mid,
                    pt,
                    // Below 2^15 so the SRTP rollover counter starts at zero.
                    next_seq: u64::from(rand::random::<u16>() >> 1),
                };
                let mut peer = Peer {
                    rtc,
                    stream,
                    ufrag,
                    addrs: Vec::new(),
                    video: video.map(track),
                    audio: audio.map(track),
                    connected: false,
                    video_started: false,
                    publisher: 0,
                    last_index: None,
                    next_timeout: now,
                    created: now,
                    last_input: now,
                    last_replay: None,
                    dead: false,
                };
                self.drive(&mut peer);
                peers.insert(id, peer);
            }
            ShardMsg::Remove(id) => {
                if let Some(p) = peers.get_mut(&id) {
                    p.rtc.disconnect();
                    self.drive(p);
                    p.dead = true;
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
                let Some(p) = peers.get_mut(&peer) else {
                    return;
                };
                if new_addr {
                    p.addrs.push((proto, source));
                }
                let Ok(recv) = Receive::new(proto, source, destination, &data) else {
                    return;
                };
                p.last_input = at;
                if let Err(e) = p.rtc.handle_input(Input::Receive(at, recv)) {
                    debug!(error = %e, "rtc rejected input");
                }
                self.drive(p);
            }
            ShardMsg::Frame { stream, frame } => {
                let Some(ids) = by_stream.get(&stream) else {
                    return;
                };
                for id in ids {
                    if let Some(p) = peers.get_mut(id) {
                        p.on_frame(&frame);
                        self.drive(p);
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
        loop {
            match p.rtc.poll_output() {
                Ok(Output::Timeout(t)) => {
                    p.next_timeout = t;
                    return;
                }
                Ok(Output::Transmit(t)) => self.net.send(t),
                Ok(Output::Event(e)) => match e {
                    Event::Connected => {
                        p.connected = true;
                        info!(stream = %p.stream.name, elapsed_ms = p.created.elapsed().as_millis() as u64, "viewer connected");
                        p.replay_gop();
                    }
                    Event::IceConnectionStateChange(IceConnectionState::Disconnected) => {
                        p.dead = true;
                    }
                    Event::KeyframeRequest(req)
                        if p.video.as_ref().is_some_and(|v| v.mid == req.mid) =>
                    {
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

    fn reap(&self, peers: &mut HashMap<u64, Peer>, by_stream: &mut HashMap<usize, Vec<u64>>) {
        let dead: Vec<u64> = peers
            .iter()
            .filter(|(_, p)| p.dead || !p.rtc.is_alive())
            .map(|(id, _)| *id)
            .collect();
        for id in dead {
            let Some(p) = peers.remove(&id) else { continue };
            self.demux.remove(&p.ufrag, &p.addrs);
            self.registry.lock().remove(&id);
            let key = stream_key(&p.stream);
            if let Some(ids) = by_stream.get_mut(&key) {
                ids.retain(|x| *x != id);
                if ids.is_empty() {
                    by_stream.remove(&key);
                }
            }
            p.stream.detach_sink(self.index as u64);
            p.stream.viewer_left();
            info!(stream = %p.stream.name, "viewer left");
        }
    }
}

impl Peer {
    fn on_frame(&mut self, frame: &Frame) {
        if !self.connected || self.last_index.is_some_and(|i| frame.index <= i) {
            return;
        }
        self.last_index = Some(frame.index);
        if frame.publisher != self.publisher {
            // A new publisher: its P-frames mean nothing without its keyframe.
            self.publisher = frame.publisher;
            self.video_started = false;
        }
        match frame.kind {
            Kind::Video => {
                if !self.video_started {
                    if !frame.keyframe {
                        return;
                    }
                    self.video_started = true;
                }
                if let Some(t) = self.video.as_mut() {
                    write_frame(&mut self.rtc, t, frame, frame.rtp_time, true);
                }
            }
            Kind::Audio => {
                if let Some(t) = self.audio.as_mut() {
                    write_frame(&mut self.rtc, t, frame, frame.rtp_time, false);
                }
            }
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
        let newest = gop.iter().rev().find(|f| f.kind == Kind::Video);
        let (Some(track), Some(newest)) = (self.video.as_mut(), newest) else {
            return;
        };
        let n = gop.iter().filter(|f| f.kind == Kind::Video).count() as u32;
        let mut i = 0u32;
        for f in gop.iter().filter(|f| f.kind == Kind::Video) {
            i += 1;
            let ts = newest.rtp_time.wrapping_sub(n - i);
            write_frame(&mut self.rtc, track, f, ts, true);
        }
        self.publisher = last.publisher;
        self.video_started = true;
        self.last_index = Some(self.last_index.map_or(last.index, |i| i.max(last.index)));
        self.last_replay = Some(now);
    }
}

fn write_frame(rtc: &mut Rtc, track: &mut TrackOut, frame: &Frame, rtp_time: u32, video: bool) {
    let mut api = rtc.direct_api();
    let Some(tx) = api.stream_tx_by_mid(track.mid, None) else {
        return;
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
}
