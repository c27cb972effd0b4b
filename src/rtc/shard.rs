//! A worker thread that runs the WebRTC sessions (str0m `Rtc`s) of its viewers.
//!
//! Each shard owns its peers outright (no locks around an `Rtc`): network input,
//! frames from the hub, and timers all arrive as messages on one channel. A frame
//! reaches a shard once however many of its viewers watch the stream, and each
//! viewer writes the shared payloads with its own SSRC and sequence numbers; only
//! SRTP and the send are per viewer.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Select, Sender, TryRecvError, TrySendError};
use parking_lot::Mutex;
use str0m::media::{Mid, Pt};
use str0m::net::{Protocol, Receive};
use str0m::rtp::{RtpWrite, Ssrc};
use str0m::{Event, IceConnectionState, Input, Output, Rtc};
use tracing::{debug, error, info, warn};

use super::metrics::ShardMetrics;
use super::net::{Datagram, Demux, Inbound, NetOut, SendBatch};
use super::publish::{NewPublisher, PubPeer};
use super::replay_policy::{ReplayPolicy, RtxCacheSize, Verdict};
use crate::hub::{Frame, FrameSink, Kind, Stream};
use crate::log_every::LogEvery;

/// A session that has not completed ICE and DTLS by then is dropped. Real
/// clients connect within a second or two (ICE-lite: no gathering on our
/// side); an offer that never connects costs a session only this long.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Media and network input queued for one shard at most (~6 MB of datagrams).
/// When full the oldest is dropped: viewers resume at the next keyframe, lost
/// datagrams are what UDP does anyway. Nothing waits for room.
pub const DATA_QUEUE: usize = 4096;
/// Source addresses one session may use (ICE candidates it checks from,
/// and their changes over its life).
const MAX_ADDRS_PER_SESSION: usize = 32;
/// Panics in a shard's loop (outside any one session) tolerated per minute;
/// beyond that the shard is marked dead and gets no new sessions.
const MAX_RESTARTS_PER_MINUTE: usize = 5;
/// Session panics and queue overflows are logged at most this often.
static PANIC_LOG: LogEvery = LogEvery::new(Duration::from_secs(10));
static DROP_LOG: LogEvery = LogEvery::new(Duration::from_secs(10));
static NEVER_CONNECTED_LOG: LogEvery = LogEvery::new(Duration::from_secs(10));
/// A connected viewer that sends nothing (no consent checks, no RTCP) for this long is gone.
const IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// A publisher sends media all the time: this much silence means it is gone
/// (killed, network lost) and the stream goes offline.
const PUBLISHER_IDLE_TIMEOUT: Duration = Duration::from_secs(10);
/// Retransmission cache per viewer: 128 packets are half a second of a
/// 2.5 Mbit/s stream, enough for NACKs from viewers up to ~300 ms away; each
/// entry costs str0m ~430 bytes, so this is most of a viewer's memory.
/// A GOP replay gets a larger one while it is retransmittable
/// (`replay_policy::RtxCacheSize::for_replay`).
const RTX_CACHE: RtxCacheSize = RtxCacheSize {
    max_packets: 128,
    max_age: Duration::from_millis(500),
};
/// Shortest time between two passes over every peer's timers.
const SCAN_INTERVAL: Duration = Duration::from_millis(2);
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

/// What a shard is sent. `Add`/`Remove`/publisher messages are control
/// messages (their own queue, never dropped); `Net` and `Frame` are data.
pub enum ShardMsg {
    Add(Box<NewPeer>),
    Remove(u64),
    AddPublisher(Box<NewPublisher>),
    RemovePublisher(u64),
    /// A viewer of the publisher's stream asked for a keyframe.
    PublisherKeyframe(u64),
    Net(Datagram),
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

/// What feeding network input needs of a session, viewer or publisher.
trait NetSession {
    /// For fault injection in tests.
    #[cfg(test)]
    fn id(&self) -> u64;
    fn net_parts(&mut self) -> (&mut Rtc, &mut Vec<(Protocol, SocketAddr)>, &mut Instant);
}

/// Both session types keep these under the same field names.
macro_rules! impl_net_session {
    ($($t:ty),*) => {$(
        impl NetSession for $t {
            #[cfg(test)]
            fn id(&self) -> u64 {
                self.id
            }
            fn net_parts(&mut self) -> (&mut Rtc, &mut Vec<(Protocol, SocketAddr)>, &mut Instant) {
                (&mut self.rtc, &mut self.addrs, &mut self.last_input)
            }
        }
    )*};
}
impl_net_session!(Peer, PubPeer);

impl NetInput<'_> {
    /// Hands the datagram to the session, remembering a new source address
    /// (for the demux to forget when the session ends).
    fn feed(
        &self,
        demux: &Demux,
        net: &NetOut,
        rtc: &mut Rtc,
        addrs: &mut Vec<(Protocol, SocketAddr)>,
        last_input: &mut Instant,
    ) {
        if self.new_addr {
            if addrs.len() >= MAX_ADDRS_PER_SESSION {
                // The peer knows its ICE password and could sign checks from
                // any number of addresses: routes per session are capped.
                let addr = [(self.proto, self.source)];
                demux.forget(&addr);
                net.close_tcp(&addr);
                return;
            }
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

/// The way into a shard. Control messages have their own unbounded queue:
/// they are never lost, and their number is bounded by the sessions admitted
/// (and, for keyframe requests, by the hub's per-stream rate limit). Media
/// and network input share a bounded queue that drops its oldest entry when
/// full, so neither a publisher nor the UDP receiver ever waits.
#[derive(Clone)]
pub struct ShardTx {
    ctl: Sender<ShardMsg>,
    data: Sender<ShardMsg>,
    /// The data queue's receiving end, to drop its oldest entry.
    data_rx: Receiver<ShardMsg>,
    /// False once the shard's thread is gone: it gets no new sessions.
    pub alive: Arc<AtomicBool>,
    metrics: Arc<ShardMetrics>,
}

/// The shard's ends of its queues.
pub struct ShardRx {
    ctl: Receiver<ShardMsg>,
    data: Receiver<ShardMsg>,
}

pub fn shard_queues(metrics: Arc<ShardMetrics>, capacity: usize) -> (ShardTx, ShardRx) {
    let (ctl, ctl_rx) = crossbeam_channel::unbounded();
    let (data, data_rx) = crossbeam_channel::bounded(capacity);
    let tx = ShardTx {
        ctl,
        data,
        data_rx: data_rx.clone(),
        alive: Arc::new(AtomicBool::new(true)),
        metrics,
    };
    (
        tx,
        ShardRx {
            ctl: ctl_rx,
            data: data_rx,
        },
    )
}

impl ShardTx {
    pub fn is_alive(&self) -> bool {
        self.alive.load(Relaxed)
    }

    /// Queues a control message; false if the shard is dead (the caller
    /// must undo what it registered for the session).
    pub fn control(&self, msg: ShardMsg) -> bool {
        self.is_alive() && self.ctl.send(msg).is_ok()
    }

    /// Queues media or network input, dropping the oldest entry when full.
    pub fn data(&self, msg: ShardMsg) {
        match self.data.try_send(msg) {
            Ok(()) => {}
            Err(TrySendError::Full(msg)) => {
                let _ = self.data_rx.try_recv();
                self.metrics.queue_drops.fetch_add(1, Relaxed);
                if let Some(suppressed) = DROP_LOG.allow() {
                    warn!(
                        capacity = DATA_QUEUE,
                        suppressed,
                        "webrtc worker queue full, dropping its oldest input (viewers resume at the next keyframe)"
                    );
                }
                // Another producer may have taken the slot: then this one is dropped.
                let _ = self.data.try_send(msg);
            }
            Err(TrySendError::Disconnected(_)) => {}
        }
    }
}

/// The network's view of the shards: their data queues, by index.
impl Inbound for Vec<ShardTx> {
    fn deliver(&self, shard: usize, d: Datagram) {
        if let Some(tx) = self.get(shard) {
            tx.data(ShardMsg::Net(d));
        }
    }
}

/// The hub's view of a shard: a queue.
pub struct ShardSink {
    pub tx: ShardTx,
}

impl FrameSink for ShardSink {
    fn deliver(&self, stream: &Arc<Stream>, frame: &Arc<Frame>) {
        self.tx.data(ShardMsg::Frame {
            stream: stream_key(stream),
            frame: frame.clone(),
        });
    }
}

/// Which of a stream's frames a viewer gets: each once, in order; video from
/// a keyframe of the current publisher on, and again from a keyframe after a
/// gap (frames dropped from a full queue: what follows would not decode).
#[derive(Debug, Default)]
struct FrameGate {
    /// Frames up to this index were sent (or skipped) already.
    last_index: Option<u64>,
    publisher: u64,
    /// Video is sent only from a keyframe on.
    video_started: bool,
}

#[derive(Debug, Default, PartialEq, Eq)]
struct Admit {
    send: bool,
    new_publisher: bool,
    gap: bool,
}

impl FrameGate {
    fn admit(&mut self, frame: &Frame) -> Admit {
        let mut a = Admit::default();
        if self.last_index.is_some_and(|i| frame.index <= i) {
            return a;
        }
        a.gap = self.last_index.is_some_and(|i| frame.index > i + 1);
        self.last_index = Some(frame.index);
        if frame.publisher != self.publisher {
            // A new publisher: its P-frames mean nothing without its keyframe.
            self.publisher = frame.publisher;
            self.video_started = false;
            a.new_publisher = true;
        }
        if a.gap {
            self.video_started = false;
        }
        a.send = match frame.kind {
            Kind::Audio => true,
            Kind::Video if self.video_started => true,
            Kind::Video => {
                self.video_started = frame.keyframe;
                frame.keyframe
            }
        };
        a
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
    /// Counted in the stream's viewers (from ICE/DTLS connected on).
    counted: bool,
    /// A panic happened inside this session: its `Rtc` is not touched again.
    poisoned: bool,
    gate: FrameGate,
    next_timeout: Instant,
    created: Instant,
    last_input: Instant,
    /// Whether this viewer gets a GOP replay for a keyframe request.
    replay_policy: ReplayPolicy,
    /// The RTX cache now: a replay's until the next live keyframe.
    rtx_cache: RtxCacheSize,
    replay: Option<Replay>,
    dead: bool,
    expires_at: Option<Instant>,
    _guard: Option<Box<dyn Send>>,
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
                    .is_some_and(|p| p.dead || p.poisoned || !p.rtc.is_alive())
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
    pub rx: ShardRx,
    /// This shard's own queues, for publishers' keyframe requesters.
    pub tx: ShardTx,
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
    pub replay_pace: ReplayPace,
}

/// A shard's sessions. Dropped when the loop ends, normally or by a panic:
/// whatever is left is unregistered (routes, DELETE registry, stream sinks,
/// viewer counts) so nothing points at sessions that no longer run.
struct Sessions<'a> {
    shard: &'a Shard,
    peers: Peers,
    pubs: HashMap<u64, PubPeer>,
}

impl Drop for Sessions<'_> {
    fn drop(&mut self) {
        for p in self.peers.slots.iter_mut().flatten() {
            p.dead = true;
            p.poisoned = true;
        }
        for p in self.pubs.values_mut() {
            p.dead = true;
            p.poisoned = true;
        }
        self.shard.reap(&mut self.peers);
        self.shard.reap_publishers(&mut self.pubs);
    }
}

/// Test-only fault injection: makes chosen sessions' input, or a shard's
/// loop, panic. Not compiled into non-test builds.
/// Test-only fault injection: makes chosen sessions' input, or a shard's
/// loop, panic. Keyed by the shard (its metrics) so engines of tests
/// running in parallel do not take each other's faults. Not compiled into
/// non-test builds.
#[cfg(test)]
pub mod fault {
    use parking_lot::Mutex;
    use std::sync::Arc;

    use super::ShardMetrics;

    static PANIC_ON_INPUT: Mutex<Vec<(usize, u64)>> = Mutex::new(Vec::new());
    static PANIC_LOOP_ONCE: Mutex<Vec<usize>> = Mutex::new(Vec::new());

    fn key(shard: &Arc<ShardMetrics>) -> usize {
        Arc::as_ptr(shard) as usize
    }

    /// The next network input of session `id` on `shard` panics.
    pub fn panic_on_input(shard: &Arc<ShardMetrics>, id: u64) {
        PANIC_ON_INPUT.lock().push((key(shard), id));
    }

    /// The next pass of `shard`'s loop panics (outside any session).
    pub fn panic_loop_once(shard: &Arc<ShardMetrics>) {
        PANIC_LOOP_ONCE.lock().push(key(shard));
    }

    fn take<T: PartialEq>(v: &Mutex<Vec<T>>, x: T) -> bool {
        let mut v = v.lock();
        let hit = v.contains(&x);
        v.retain(|y| *y != x);
        hit
    }

    pub(super) fn check_input(shard: &Arc<ShardMetrics>, id: u64) {
        if take(&PANIC_ON_INPUT, (key(shard), id)) {
            panic!("injected fault in session {id}");
        }
    }

    pub(super) fn check_loop(shard: &Arc<ShardMetrics>) {
        if take(&PANIC_LOOP_ONCE, key(shard)) {
            panic!("injected fault in a shard loop");
        }
    }
}

/// The default panic hook prints every panic to stderr: for a panic that
/// network input can cause in a worker (caught per session), that would be
/// an unthrottled log. Worker threads' panics print at most once per
/// interval (the shard's own error line says which session it ended).
pub fn throttle_worker_panic_output() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    static HOOK_LOG: LogEvery = LogEvery::new(Duration::from_secs(10));
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let worker = std::thread::current()
                .name()
                .is_some_and(|n| n.starts_with("rtc-"));
            if !worker || HOOK_LOG.allow().is_some() {
                previous(info);
            }
        }));
    });
}

/// Runs `f`, turning a panic into `Err` with its message.
fn isolate(f: impl FnOnce()) -> Result<(), String> {
    catch_unwind(AssertUnwindSafe(f)).map_err(|e| {
        e.downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| e.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown panic".into())
    })
}

impl Shard {
    /// Runs the loop; a panic outside any one session (those are caught
    /// per session) restarts it with the shard's queues, its sessions lost
    /// and unregistered. A shard panicking over and over is marked dead.
    pub fn run(self) {
        let alive = self.tx.alive.clone();
        // Marks the shard dead however the thread ends.
        struct Dead(Arc<AtomicBool>);
        impl Drop for Dead {
            fn drop(&mut self) {
                self.0.store(false, Relaxed);
            }
        }
        let _dead = Dead(alive);
        let mut restarts: Vec<Instant> = Vec::new();
        loop {
            match isolate(|| self.run_loop()) {
                Ok(()) => return,
                Err(msg) => {
                    self.metrics.restarts.fetch_add(1, Relaxed);
                    *self.batch.borrow_mut() = SendBatch::default();
                    let now = Instant::now();
                    restarts.retain(|t| now.duration_since(*t) < Duration::from_secs(60));
                    restarts.push(now);
                    if restarts.len() > MAX_RESTARTS_PER_MINUTE {
                        error!(shard = self.index, panic = %msg, "webrtc worker keeps panicking; it gets no new sessions");
                        return;
                    }
                    error!(shard = self.index, panic = %msg, "webrtc worker panicked; its sessions ended, restarting it");
                }
            }
        }
    }

    /// Handles every queued control message; false when the engine is gone.
    fn drain_control(&self, peers: &mut Peers, pubs: &mut HashMap<u64, PubPeer>) -> bool {
        loop {
            match self.rx.ctl.try_recv() {
                Ok(msg) => self.handle(msg, peers, pubs),
                Err(TryRecvError::Empty) => return true,
                Err(TryRecvError::Disconnected) => return false,
            }
        }
    }

    fn run_loop(&self) {
        let mut s = Sessions {
            shard: self,
            peers: Peers::default(),
            pubs: HashMap::new(),
        };
        let (peers, pubs) = (&mut s.peers, &mut s.pubs);
        let mut sel = Select::new();
        sel.recv(&self.rx.ctl);
        sel.recv(&self.rx.data);
        let mut last_scan = Instant::now();
        self.earliest.set(last_scan);
        loop {
            // Timers run at most every SCAN_INTERVAL: str0m's timers tolerate
            // that, and a busy shard does not rescan every peer per packet.
            let deadline = self.earliest.get().max(last_scan + SCAN_INTERVAL);
            if deadline > Instant::now() {
                let _ = sel.ready_deadline(deadline);
            }
            // Control first: a session is added before its first packet.
            if !self.drain_control(peers, pubs) {
                return;
            }
            for _ in 0..1024 {
                match self.rx.data.try_recv() {
                    Ok(msg) => {
                        // A packet from a new address is a new session's first
                        // STUN check, sent as soon as its answer was. Its Add
                        // may have come in while this loop ran: take it first,
                        // or the check is dropped and the client retries only
                        // 250 ms later (that was every join's TTFF under load).
                        if matches!(&msg, ShardMsg::Net(d) if d.new_addr)
                            && !self.drain_control(peers, pubs)
                        {
                            return;
                        }
                        self.handle(msg, peers, pubs)
                    }
                    Err(_) => break,
                }
            }
            #[cfg(test)]
            fault::check_loop(&self.metrics);
            let now = Instant::now();
            if now < self.earliest.get().max(last_scan + SCAN_INTERVAL) {
                continue;
            }
            last_scan = now;
            let mut earliest = now + Duration::from_secs(1);
            let mut any_dead = false;
            for p in peers.iter_mut() {
                if !p.dead
                    && let Err(msg) = isolate(|| self.viewer_timers(p, now))
                {
                    self.session_panicked(&p.stream.name, p.id, "timers", &msg);
                    p.dead = true;
                    p.poisoned = true;
                }
                earliest = earliest.min(p.next_timeout);
                if let Some(t) = p.expires_at {
                    earliest = earliest.min(t);
                }
                any_dead |= p.dead || p.poisoned || !p.rtc.is_alive();
            }
            for p in pubs.values_mut() {
                if !p.dead
                    && let Err(msg) = isolate(|| self.publisher_timers(p, now))
                {
                    self.session_panicked(&p.stream.name, p.id, "timers", &msg);
                    p.dead = true;
                    p.poisoned = true;
                }
                earliest = earliest.min(p.next_timeout);
                for t in [p.deadline(), p.expires_at].into_iter().flatten() {
                    earliest = earliest.min(t);
                }
                any_dead |= p.dead || p.poisoned || !p.rtc.is_alive();
            }
            if any_dead {
                self.reap(peers);
                self.reap_publishers(pubs);
            }
            self.earliest.set(earliest);
        }
    }

    fn viewer_timers(&self, p: &mut Peer, now: Instant) {
        if p.next_timeout <= now {
            if let Err(e) = p.rtc.handle_input(Input::Timeout(now)) {
                debug!(error = %e, "rtc timeout input failed");
                p.dead = true;
            }
            self.drive(p);
        }
        if !p.connected && now.duration_since(p.created) > CONNECT_TIMEOUT {
            // Anyone can make offers that never connect: logged once per interval.
            if let Some(suppressed) = NEVER_CONNECTED_LOG.allow() {
                info!(stream = %p.stream.name, suppressed, "viewer never connected (ICE/DTLS), dropping");
            }
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
    }

    fn publisher_timers(&self, p: &mut PubPeer, now: Instant) {
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
            p.end("no ICE/DTLS connection within 10 s");
        } else if p.connected && now.duration_since(p.last_input) > PUBLISHER_IDLE_TIMEOUT {
            p.end("the publisher went silent for 10 s");
        } else if p.expires_at.is_some_and(|t| t <= now) {
            p.rtc.disconnect();
            self.drive_pub(p);
            p.end("session expired (signed URL stream_expire or admission lifetime)");
        }
    }

    /// Feeds `input` to session `p` and drives it, a panic in either caught
    /// (`Err` carries its message).
    fn feed_isolated<P: NetSession>(
        &self,
        p: &mut P,
        input: &NetInput,
        drive: impl FnOnce(&Self, &mut P),
    ) -> Result<(), String> {
        isolate(|| {
            #[cfg(test)]
            fault::check_input(&self.metrics, p.id());
            let (rtc, addrs, last_input) = p.net_parts();
            input.feed(&self.demux, &self.net, rtc, addrs, last_input);
            drive(self, p);
        })
    }

    /// A session's input panicked: it ends (the caller marks it), the others
    /// go on. Logged at most once per interval.
    fn session_panicked(&self, stream: &str, id: u64, during: &str, msg: &str) {
        self.metrics.session_panics.fetch_add(1, Relaxed);
        // A panic may leave a half-built batch behind.
        *self.batch.borrow_mut() = SendBatch::default();
        self.earliest.set(Instant::now());
        if let Some(suppressed) = PANIC_LOG.allow() {
            error!(%stream, session = id, during, panic = %msg, suppressed, "webrtc session panicked; ending that session only");
        }
    }

    /// Makes a viewer from a negotiated session (its tracks and first output).
    fn new_viewer(&self, np: NewPeer, now: Instant) -> Peer {
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
        } = np;
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
                tx.set_rtx_cache(RTX_CACHE.max_packets, RTX_CACHE.max_age, None);
            }
        }
        let audio = audio.map(|a| track(&mut rtc, a));
        Peer {
            id,
            rtc,
            stream,
            ufrag,
            addrs: Vec::new(),
            video,
            video_codec,
            audio,
            connected: false,
            counted: false,
            poisoned: false,
            gate: FrameGate::default(),
            next_timeout: now,
            created: now,
            last_input: now,
            replay_policy: ReplayPolicy::new(now),
            rtx_cache: RTX_CACHE,
            replay: None,
            dead: false,
            expires_at,
            _guard: guard,
        }
    }

    fn handle(&self, msg: ShardMsg, peers: &mut Peers, pubs: &mut HashMap<u64, PubPeer>) {
        match msg {
            ShardMsg::AddPublisher(np) => {
                let (id, ufrag, stream) = (np.id, np.ufrag.clone(), np.stream.name.clone());
                let mut made = None;
                let r = isolate(|| {
                    let mut p = PubPeer::new(*np, Instant::now());
                    self.drive_pub(&mut p);
                    made = Some(p);
                });
                match (r, made) {
                    (Ok(()), Some(p)) => {
                        pubs.insert(p.id, p);
                    }
                    (r, _) => {
                        let msg = r.err().unwrap_or_default();
                        self.session_panicked(&stream, id, "setup", &msg);
                        self.demux.remove(&ufrag, &[]);
                        self.publishers.lock().remove(&id);
                    }
                }
            }
            ShardMsg::RemovePublisher(id) => {
                if let Some(p) = pubs.get_mut(&id) {
                    if !p.poisoned
                        && let Err(msg) = isolate(|| {
                            p.rtc.disconnect();
                            self.drive_pub(p);
                        })
                    {
                        self.session_panicked(&p.stream.name, id, "DELETE", &msg);
                        p.poisoned = true;
                    }
                    p.end("ended by DELETE");
                    self.earliest.set(Instant::now());
                }
            }
            ShardMsg::PublisherKeyframe(id) => {
                if let Some(p) = pubs.get_mut(&id).filter(|p| !p.dead)
                    && let Err(msg) = isolate(|| {
                        p.request_keyframe(Instant::now());
                        self.drive_pub(p);
                    })
                {
                    self.session_panicked(&p.stream.name, id, "keyframe request", &msg);
                    p.poisoned = true;
                    p.end("internal error");
                }
            }
            ShardMsg::Add(np) => {
                let (id, ufrag, stream) = (np.id, np.ufrag.clone(), np.stream.clone());
                let mut made = None;
                let r = isolate(|| {
                    let mut peer = self.new_viewer(*np, Instant::now());
                    self.drive(&mut peer);
                    made = Some(peer);
                });
                match (r, made) {
                    (Ok(()), Some(peer)) => {
                        // Counted in the stream's viewers once connected.
                        stream.attach_sink(self.index as u64, &self.sink);
                        peers.insert(id, peer);
                    }
                    (r, _) => {
                        let msg = r.err().unwrap_or_default();
                        self.session_panicked(&stream.name, id, "setup", &msg);
                        self.demux.remove(&ufrag, &[]);
                        self.registry.lock().remove(&id);
                    }
                }
            }
            ShardMsg::Remove(id) => {
                if let Some(p) = peers.get_mut(id) {
                    if !p.poisoned
                        && !p.dead
                        && let Err(msg) = isolate(|| {
                            p.rtc.disconnect();
                            self.drive(p);
                        })
                    {
                        self.session_panicked(&p.stream.name, id, "DELETE", &msg);
                        p.poisoned = true;
                    }
                    p.dead = true;
                    self.earliest.set(Instant::now());
                }
            }
            ShardMsg::Net(d) => {
                let peer = d.peer;
                let input = NetInput {
                    proto: d.proto,
                    source: d.source,
                    destination: d.destination,
                    data: &d.data,
                    at: d.at,
                    new_addr: d.new_addr,
                };
                if let Some(p) = peers.get_mut(peer) {
                    if p.dead {
                        return;
                    }
                    if let Err(msg) = self.feed_isolated(p, &input, Shard::drive) {
                        self.session_panicked(&p.stream.name, p.id, "network input", &msg);
                        p.dead = true;
                        p.poisoned = true;
                    }
                } else if let Some(p) = pubs.get_mut(&peer) {
                    if p.dead {
                        return;
                    }
                    if let Err(msg) = self.feed_isolated(p, &input, Shard::drive_pub) {
                        self.session_panicked(&p.stream.name, p.id, "network input", &msg);
                        p.poisoned = true;
                        p.end("internal error");
                    }
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
                    if p.dead {
                        continue;
                    }
                    let mut sent = 0;
                    if let Err(msg) = isolate(|| {
                        sent = p.on_frame(&frame);
                        self.drive(p);
                    }) {
                        self.session_panicked(&p.stream.name, p.id, "media write", &msg);
                        p.dead = true;
                        p.poisoned = true;
                        continue;
                    }
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
                    if p.replay.is_some() && p.continue_replay(now, self.replay_pace) {
                        idle_feeds = 0;
                        continue;
                    }
                    if p.replay_policy.due().is_some_and(|d| d <= now) {
                        // A keyframe request that waited for replay credit.
                        p.replay_gop(self.replay_pace, false);
                        if p.replay.is_some() {
                            idle_feeds = 0;
                            continue;
                        }
                    }
                    // A paced replay waits for credit on the shard's timer
                    // pass, like str0m's own timers (at most every 2 ms).
                    p.next_timeout = [p.replay_due(self.replay_pace), p.replay_policy.due()]
                        .into_iter()
                        .flatten()
                        .fold(t, Instant::min);
                    return;
                }
                Ok(Output::Transmit(t)) => {
                    idle_feeds = 0;
                    self.metrics.datagrams.fetch_add(1, Relaxed);
                    if !self.net.queue(batch, t) && p.gate.video_started {
                        // A laggard: what it missed breaks its picture anyway,
                        // so it resumes at the next keyframe instead.
                        p.gate.video_started = false;
                        self.metrics.laggard_skips.fetch_add(1, Relaxed);
                        debug!(stream = %p.stream.name, "viewer cannot keep up, skipping to the next keyframe");
                    }
                }
                Ok(Output::Event(e)) => match e {
                    Event::Connected => {
                        p.connected = true;
                        if !p.counted {
                            // Offers that never connect are not viewers.
                            p.counted = true;
                            p.stream.viewer_joined();
                        }
                        info!(stream = %p.stream.name, elapsed_ms = p.created.elapsed().as_millis() as u64, "viewer connected");
                        if p.video.is_some() && !p.stream.has_cached_keyframe() {
                            // Nothing to replay (a publisher that sends keyframes
                            // only when asked): ask for one.
                            p.stream.request_keyframe();
                        }
                        p.replay_gop(self.replay_pace, true);
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
                        p.replay_gop(self.replay_pace, false);
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
                            tx.control(ShardMsg::PublisherKeyframe(id));
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
            .filter(|p| p.dead || p.poisoned || !p.rtc.is_alive())
            .map(|p| p.id)
            .collect();
        for id in dead {
            if let Some(mut p) = pubs.remove(&id) {
                p.end("session closed");
                // Tell the publisher (DTLS close alert) rather than go silent;
                // not a session that panicked (its state is suspect).
                if !p.poisoned
                    && let Err(msg) = isolate(|| {
                        p.rtc.disconnect();
                        let mut batch = self.batch.borrow_mut();
                        while let Ok(Output::Transmit(t)) = p.rtc.poll_output() {
                            self.net.queue(&mut batch, t);
                        }
                        self.net.flush(&mut batch);
                    })
                {
                    self.session_panicked(&p.stream.name, id, "close", &msg);
                }
                self.demux.remove(&p.ufrag, &p.addrs);
                self.net.close_tcp(&p.addrs);
                self.publishers.lock().remove(&p.id);
                debug!(stream = %p.stream.name, "whip publisher removed");
                // Dropping it ends the publish (the hub's Publisher handle).
            }
        }
    }

    fn reap(&self, peers: &mut Peers) {
        for p in peers.remove_dead() {
            self.demux.remove(&p.ufrag, &p.addrs);
            self.net.close_tcp(&p.addrs);
            self.registry.lock().remove(&p.id);
            p.stream.detach_sink(self.index as u64);
            if p.counted {
                p.stream.viewer_left();
                info!(stream = %p.stream.name, "viewer left");
            } else {
                debug!(stream = %p.stream.name, "unconnected viewer session removed");
            }
        }
    }
}

impl Peer {
    /// Writes a live frame; returns how many RTP packets that was.
    fn on_frame(&mut self, frame: &Arc<Frame>) -> usize {
        if !self.connected {
            return 0;
        }
        let admit = self.gate.admit(frame);
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
            if self.rtx_cache != RTX_CACHE {
                self.set_rtx_cache(RTX_CACHE);
            }
        }
        let (track, video) = match frame.kind {
            Kind::Video => (self.video.as_mut(), true),
            Kind::Audio => (self.audio.as_mut(), false),
        };
        match track {
            Some(t) => write_frame(&mut self.rtc, t, frame, frame.rtp_time, video),
            None => 0,
        }
    }

    /// Sends the stream's cached GOP so the viewer can decode now instead of at
    /// the next keyframe, paced (`continue_replay`). The frames get RTP times
    /// just before the newest one: they are decoded (later frames reference
    /// them) but the jitter buffer sees them as due now, so playback starts at
    /// the live edge, not a GOP behind.
    /// `join`: the replay right after DTLS (see `replay_policy`).
    fn replay_gop(&mut self, pace: ReplayPace, join: bool) {
        let gop = self.stream.gop_snapshot();
        let video = gop.iter().filter(|f| f.kind == Kind::Video);
        let mut frames = Vec::with_capacity(video.clone().count() + REPLAY_MAX_LIVE_FRAMES);
        frames.extend(video.cloned());
        let (Some(last), Some(newest), Some(next_seq), None) = (
            gop.last(),
            frames.last(),
            self.video.as_ref().map(|v| v.next_seq),
            self.replay.as_ref(),
        ) else {
            // Nothing to replay (no GOP, no video track), or a replay under
            // way brings a keyframe already: a waiting request is answered.
            self.replay_policy.keyframe_sent();
            return;
        };
        let now = Instant::now();
        match self
            .replay_policy
            .request(now, next_seq, self.rtx_cache.max_packets)
        {
            Verdict::Replay => {}
            Verdict::Repair | Verdict::Later(_) => return,
        }
        // The replay's packets stay retransmittable for its duration and a
        // second of round trips (until the next live keyframe makes them moot).
        let packets = frames.iter().map(|f| f.payloads.len()).sum();
        let bytes = frames
            .iter()
            .flat_map(|f| f.payloads.iter())
            .map(|p| p.len())
            .sum();
        self.set_rtx_cache(RtxCacheSize::for_replay(
            packets,
            bytes,
            pace.bytes_per_ms as u64,
            RTX_CACHE,
        ));
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
        self.gate.publisher = last.publisher;
        self.gate.video_started = true;
        self.gate.last_index = Some(
            self.gate
                .last_index
                .map_or(last.index, |i| i.max(last.index)),
        );
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
    fn continue_replay(&mut self, now: Instant, pace: ReplayPace) -> bool {
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
        let written = write_packets(
            &mut self.rtc,
            track,
            f,
            r.packet,
            &mut budget,
            rtp_time,
            true,
        );
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
    fn replay_due(&self, pace: ReplayPace) -> Option<Instant> {
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
mod tests {
    use super::*;

    fn frame(index: u64, kind: Kind, keyframe: bool) -> Arc<Frame> {
        frame_of(index, kind, keyframe, 1)
    }

    fn frame_of(index: u64, kind: Kind, keyframe: bool, publisher: u64) -> Arc<Frame> {
        let now = Instant::now();
        Arc::new(Frame {
            kind,
            index,
            rtp_time: index as u32,
            wallclock: now,
            received: now,
            keyframe,
            publisher,
            payloads: Box::new([Arc::from(vec![0u8; 4])]),
        })
    }

    #[test]
    fn a_full_queue_drops_the_oldest_and_viewers_resume_at_a_keyframe() {
        let metrics = Arc::new(ShardMetrics::default());
        let (tx, rx) = shard_queues(metrics.clone(), 8);
        let send = |f: Arc<Frame>| {
            tx.data(ShardMsg::Frame {
                stream: 1,
                frame: f,
            })
        };
        let mut gate = FrameGate::default();
        let mut sent = Vec::new();
        let drain = |gate: &mut FrameGate, sent: &mut Vec<u64>| {
            while let Ok(ShardMsg::Frame { frame, .. }) = rx.data.try_recv() {
                if gate.admit(&frame).send && frame.kind == Kind::Video {
                    sent.push(frame.index);
                }
            }
        };
        send(frame(0, Kind::Video, true));
        send(frame(1, Kind::Video, false));
        drain(&mut gate, &mut sent);
        // A shard that stalls while 18 frames arrive: the producer never
        // blocks, the queue holds the newest 8, and the rest are counted.
        for i in 2..20 {
            send(frame(i, Kind::Video, i == 15));
        }
        assert_eq!(rx.data.len(), 8);
        assert_eq!(metrics.queue_drops.load(Relaxed), 10);
        // Control messages have their own queue: none is lost.
        for id in 0..100 {
            assert!(tx.control(ShardMsg::Remove(id)));
        }
        assert_eq!(rx.ctl.len(), 100);
        drain(&mut gate, &mut sent);
        // 12, 13, 14 follow a gap and would not decode: skipped until 15.
        assert_eq!(sent, vec![0, 1, 15, 16, 17, 18, 19]);
        // A dead shard refuses new sessions.
        tx.alive.store(false, Relaxed);
        assert!(!tx.control(ShardMsg::Remove(1)));
    }

    #[test]
    fn the_gate_sends_each_frame_once_and_restarts_video_for_a_new_publisher() {
        let mut g = FrameGate::default();
        assert!(!g.admit(&frame(0, Kind::Video, false)).send);
        assert!(g.admit(&frame(1, Kind::Audio, false)).send);
        assert!(g.admit(&frame(2, Kind::Video, true)).send);
        assert!(!g.admit(&frame(2, Kind::Video, true)).send, "a duplicate");
        assert!(g.admit(&frame(3, Kind::Video, false)).send);
        let a = g.admit(&frame_of(4, Kind::Video, false, 2));
        assert!(a.new_publisher && !a.send && !a.gap);
        // Audio after a gap still passes; video waits for a keyframe.
        let a = g.admit(&frame_of(9, Kind::Audio, false, 2));
        assert!(a.gap && a.send);
        assert!(!g.admit(&frame_of(10, Kind::Video, false, 2)).send);
        assert!(g.admit(&frame_of(11, Kind::Video, true, 2)).send);
    }
}
